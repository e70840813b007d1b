//! The host's own networks, read the same way on Linux and macOS.

use std::net::IpAddr;

use ipnet::IpNet;

/// The host's own networks: every interface address with its prefix, by
/// interface, except loopback and `skip` (our tun). Same code on Linux and
/// macOS (`getifaddrs`).
pub fn interface_networks(skip: &str) -> Vec<(String, IpNet)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        if a.interface_name == skip
            || a.flags
                .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        let (Some(addr), Some(mask)) = (a.address, a.netmask) else {
            continue;
        };
        let net = if let (Some(addr), Some(mask)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            let prefix = u32::from(mask.ip()).leading_ones() as u8;
            IpNet::new(IpAddr::V4(addr.ip()), prefix).ok()
        } else if let (Some(addr), Some(mask)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            let prefix = u128::from(mask.ip()).leading_ones() as u8;
            IpNet::new(IpAddr::V6(addr.ip()), prefix).ok()
        } else {
            None
        };
        if let Some(net) = net {
            out.push((a.interface_name.clone(), net.trunc()));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_networks_are_truncated_and_skip_loopback_and_ours() {
        let all = interface_networks("none");
        assert!(all.iter().all(|(_, n)| n.trunc() == *n), "{all:?}");
        assert!(all.iter().all(|(_, n)| !n.addr().is_loopback()), "{all:?}");
        if let Some((first, _)) = all.first() {
            assert!(interface_networks(first).iter().all(|(i, _)| i != first));
        }
    }
}
