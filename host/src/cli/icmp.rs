//! One ICMP or ICMPv6 echo, for `connector doctor`'s probes through the tunnel.
//!
//! Uses an unprivileged ICMP datagram socket where the OS allows it (macOS,
//! Linux with `ping_group_range`), else a raw socket (root). Written here
//! rather than shelling out to `ping`, whose flags differ per OS and which
//! minimal Linux images lack.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use connector_tunnel::checksum::checksum;
use socket2::{Domain, Protocol, Socket, Type};

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
const PAYLOAD: &[u8] = b"connector doctor";

/// An echo request. ICMPv4's checksum is ours to fill in; ICMPv6's covers
/// a pseudo-header with the source address, so the kernel computes it.
pub fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut packet = vec![if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST }, 0, 0, 0];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(PAYLOAD);
    if !v6 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// Whether `data` (ICMP message, after any IP header) is our echo reply.
/// Datagram sockets rewrite the identifier, so only seq and payload count.
pub fn is_our_reply(data: &[u8], v6: bool, seq: u16) -> bool {
    data.len() >= 8 + PAYLOAD.len()
        && data[0] == if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY }
        && u16::from_be_bytes([data[6], data[7]]) == seq
        && &data[8..8 + PAYLOAD.len()] == PAYLOAD
}

/// Sends one echo request and waits for the reply (blocking).
pub fn ping(ip: IpAddr, timeout: Duration) -> io::Result<bool> {
    let v6 = ip.is_ipv6();
    let (domain, protocol) = if v6 {
        (Domain::IPV6, Protocol::ICMPV6)
    } else {
        (Domain::IPV4, Protocol::ICMPV4)
    };
    let (socket, raw) = match Socket::new(domain, Type::DGRAM, Some(protocol)) {
        Ok(s) => (s, false),
        Err(_) => (Socket::new(domain, Type::RAW, Some(protocol))?, true),
    };
    let seq = (std::process::id() as u16) ^ 0x5a5a;
    socket.send_to(
        &echo_request(v6, std::process::id() as u16, seq),
        &SocketAddr::from((ip, 0)).into(),
    )?;
    let deadline = Instant::now() + timeout;
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        socket.set_read_timeout(Some(left))?;
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false)
            }
            Err(e) => return Err(e),
        };
        // SAFETY: recv_from initialised the first n bytes.
        let data: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        let icmp = if !v6
            && (raw || (cfg!(target_os = "macos") && data.first().is_some_and(|b| b >> 4 == 4)))
        {
            // IPv4 raw sockets (and macOS datagram ones) include the IP header;
            // IPv6 sockets never do.
            let ihl = usize::from(data.first().copied().unwrap_or(0) & 0x0f) * 4;
            data.get(ihl..).unwrap_or(&[])
        } else {
            &data[..]
        };
        if from.as_socket().map(|a| a.ip()) == Some(ip) && is_our_reply(icmp, v6, seq) {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_checksums_to_zero_and_reply_is_recognised() {
        let req = echo_request(false, 0x1234, 7);
        assert_eq!(req[0], ECHO_REQUEST);
        assert_eq!(checksum(&req), 0, "a packet with its checksum sums to zero");
        let mut reply = req.clone();
        reply[0] = ECHO_REPLY;
        assert!(is_our_reply(&reply, false, 7));
        assert!(!is_our_reply(&reply, false, 8));
        assert!(!is_our_reply(&req, false, 7));
        assert!(!is_our_reply(&reply[..6], false, 7));
        assert!(
            !is_our_reply(&reply, true, 7),
            "an ICMPv4 reply is not an ICMPv6 one"
        );
    }

    #[test]
    fn icmpv6_requests_leave_the_checksum_to_the_kernel() {
        let req = echo_request(true, 0x1234, 7);
        assert_eq!((req[0], req[2], req[3]), (ECHO_REQUEST_V6, 0, 0));
        let mut reply = req.clone();
        reply[0] = ECHO_REPLY_V6;
        assert!(is_our_reply(&reply, true, 7));
        assert!(!is_our_reply(&req, true, 7));
    }
}
