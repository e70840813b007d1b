//! WireGuard's allowed-IPs rule for received packets, which boringtun leaves
//! to its user: a decrypted packet goes to the tun only if its source address
//! is one the peer may use. Without it, whoever holds the peer's key (a
//! compromised agent) could put packets with any source address on this end.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// The allowed sources, as integers ready for a per-packet check.
#[derive(Debug, Default)]
pub(crate) struct SourceFilter {
    /// (network, mask) pairs, aggregated and sorted.
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl SourceFilter {
    pub(crate) fn new(nets: &[IpNet]) -> SourceFilter {
        let mut filter = SourceFilter::default();
        for net in IpNet::aggregate(&nets.to_vec()) {
            match net {
                IpNet::V4(n) => filter
                    .v4
                    .push((u32::from(n.network()), u32::from(n.netmask()))),
                IpNet::V6(n) => filter
                    .v6
                    .push((u128::from(n.network()), u128::from(n.netmask()))),
            }
        }
        filter
    }

    /// Whether `packet`'s source address is allowed. Anything without a
    /// whole IPv4 or IPv6 header is not.
    pub(crate) fn allows(&self, packet: &[u8]) -> bool {
        match source(packet) {
            Some(IpAddr::V4(a)) => {
                let a = u32::from(a);
                self.v4.iter().any(|&(net, mask)| a & mask == net)
            }
            Some(IpAddr::V6(a)) => {
                let a = u128::from(a);
                self.v6.iter().any(|&(net, mask)| a & mask == net)
            }
            None => false,
        }
    }
}

/// The source address of an IP packet with a whole header.
pub(crate) fn source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let octets: [u8; 4] = packet[12..16].try_into().ok()?;
            Some(Ipv4Addr::from(octets).into())
        }
        6 if packet.len() >= 40 => {
            let octets: [u8; 16] = packet[8..24].try_into().ok()?;
            Some(Ipv6Addr::from(octets).into())
        }
        _ => None,
    }
}

/// Packets the other end's kernel sends to its own link by itself (IPv6
/// router solicitations and MLD reports from a link-local or unspecified
/// address): never routable, dropped like the rest but not worth a count.
pub(crate) fn link_chatter(packet: &[u8]) -> bool {
    match source(packet) {
        Some(IpAddr::V6(a)) => a.is_unspecified() || (a.segments()[0] & 0xffc0) == 0xfe80,
        _ => false,
    }
}

/// Lets a log line through at most once per interval, so that a flood of
/// dropped packets does not flood the log. Lock-free: the loops call it.
#[derive(Debug)]
pub(crate) struct Throttle {
    base: Instant,
    every: Duration,
    /// Milliseconds after `base` from which the next line may go.
    next: AtomicU64,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Throttle {
        Throttle {
            base: Instant::now(),
            every,
            next: AtomicU64::new(0),
        }
    }

    /// True if a line may be logged at `now` (and then not again for a while).
    pub(crate) fn ready(&self, now: Instant) -> bool {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let at = ms(now.saturating_duration_since(self.base));
        let next = self.next.load(Relaxed);
        at >= next
            && self
                .next
                .compare_exchange(next, at.saturating_add(ms(self.every)), Relaxed, Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernels_own_link_chatter_is_told_apart() {
        let mut v6 = vec![0x60u8; 40];
        v6[8..24].copy_from_slice(&"fe80::1".parse::<Ipv6Addr>().unwrap().octets());
        assert!(link_chatter(&v6));
        v6[8..24].copy_from_slice(&Ipv6Addr::UNSPECIFIED.octets());
        assert!(link_chatter(&v6));
        v6[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        assert!(!link_chatter(&v6));
        let mut v4 = vec![0x45u8; 20];
        v4[12..16].copy_from_slice(&[169, 254, 1, 1]);
        assert!(!link_chatter(&v4));
    }

    fn v4(src: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&[10, 0, 0, 9]);
        p
    }

    fn v6(src: &str) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        let src: Ipv6Addr = src.parse().unwrap();
        p[8..24].copy_from_slice(&src.octets());
        p
    }

    fn filter(nets: &[&str]) -> SourceFilter {
        let nets: Vec<IpNet> = nets.iter().map(|n| n.parse().unwrap()).collect();
        SourceFilter::new(&nets)
    }

    #[test]
    fn ipv4_sources_inside_the_networks_pass() {
        let f = filter(&["10.10.0.2/32", "172.18.0.0/16", "172.18.5.0/24"]);
        assert!(f.allows(&v4([10, 10, 0, 2])));
        assert!(f.allows(&v4([172, 18, 200, 1])));
        assert!(!f.allows(&v4([10, 10, 0, 3])));
        assert!(!f.allows(&v4([172, 19, 0, 1])));
        assert!(!f.allows(&v6("::ffff:10.10.0.2")), "no v6 network allowed");
        // The /24 inside the /16 is merged away.
        assert_eq!(f.v4.len(), 2);
    }

    #[test]
    fn ipv6_sources_inside_the_networks_pass() {
        let f = filter(&["fd00:1::/64", "2001:db8::7/128", "10.0.0.0/8"]);
        assert!(f.allows(&v6("fd00:1::abcd")));
        assert!(f.allows(&v6("2001:db8::7")));
        assert!(!f.allows(&v6("2001:db8::8")));
        assert!(!f.allows(&v6("fd00:2::1")));
        assert!(f.allows(&v4([10, 1, 2, 3])));
    }

    #[test]
    fn host_bits_of_a_network_do_not_matter() {
        let f = filter(&["192.168.7.99/24"]);
        assert!(f.allows(&v4([192, 168, 7, 1])));
        assert!(!f.allows(&v4([192, 168, 8, 1])));
    }

    #[test]
    fn malformed_and_short_packets_are_dropped() {
        let f = filter(&["0.0.0.0/0", "::/0"]);
        assert!(f.allows(&v4([1, 2, 3, 4])) && f.allows(&v6("::1")));
        assert!(!f.allows(&[]));
        assert!(!f.allows(&v4([1, 2, 3, 4])[..19]));
        assert!(!f.allows(&v6("::1")[..39]));
        let mut other = v4([1, 2, 3, 4]);
        other[0] = 0x55;
        assert!(!f.allows(&other), "IP version 5");
        assert_eq!(source(&other), None);
    }

    #[test]
    fn an_empty_set_drops_everything() {
        let f = filter(&[]);
        assert!(!f.allows(&v4([10, 0, 0, 1])));
        assert!(!f.allows(&v6("fd00::1")));
    }

    #[test]
    fn the_throttle_lets_one_line_through_per_interval() {
        let t = Throttle::new(Duration::from_secs(1));
        let start = t.base;
        assert!(t.ready(start));
        assert!(!t.ready(start + Duration::from_millis(10)));
        assert!(!t.ready(start + Duration::from_millis(999)));
        assert!(t.ready(start + Duration::from_millis(1000)));
        assert!(!t.ready(start + Duration::from_millis(1500)));
        assert!(t.ready(start + Duration::from_secs(60)));
    }
}
