//! Platform facade: the tun device and the host routing table.
//!
//! Everything above this module is platform-neutral. Each OS has one file
//! (`linux.rs`, `macos.rs`) that provides the same items:
//! - `create_tun(&TunConfig) -> Result<connector_tunnel::tun::AsyncDevice, OsError>`
//! - `RouteTable` with `new`, `list`, `add`, `delete`.
//!
//! `add`/`delete` always name the interface, so connector can never remove a
//! route that belongs to another interface (a VPN's, the LAN's).

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::{create_tun, RouteTable};

#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
pub use macos::{create_tun, RouteTable};

/// Pure encoding/decoding of BSD routing-socket messages; compiled on every
/// platform so Linux unit tests cover it.
pub mod route_socket;

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
compile_error!("connector supports Linux and macOS hosts only");

/// What the tun device should look like.
#[derive(Debug, Clone)]
pub struct TunConfig {
    /// Interface name; `None` lets the OS choose (macOS always picks `utunN`).
    pub name: Option<String>,
    /// Our address inside the tunnel.
    pub address: Ipv4Addr,
    /// The agent's address inside the tunnel (point-to-point destination).
    pub peer: Ipv4Addr,
    /// Prefix length of the tunnel network.
    pub prefix: u8,
    pub mtu: u16,
}

/// One route of the host's main routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub destination: IpNet,
    /// Outgoing interface name, when the OS reports one.
    pub interface: Option<String>,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum OsError {
    #[error("cannot create tun device: {0}")]
    Tun(std::io::Error),
    #[error("cannot {op} route {destination} on {interface}: {error}")]
    Route {
        op: &'static str,
        destination: IpNet,
        interface: String,
        error: std::io::Error,
    },
    #[error("cannot read the routing table: {0}")]
    ListRoutes(std::io::Error),
    #[error("routing socket: {0}")]
    Socket(std::io::Error),
}

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

/// tun-rs creates both Linux `tun` and macOS `utun` devices; only the route
/// handling differs per OS.
fn create_tun_with_tun_rs(
    config: &TunConfig,
) -> Result<connector_tunnel::tun::AsyncDevice, OsError> {
    connector_tunnel::tun::create(&connector_tunnel::tun::TunSpec {
        name: config.name.clone(),
        address: config.address,
        peer: config.peer,
        prefix: config.prefix,
        mtu: config.mtu,
    })
    .map_err(|e| match e {
        connector_tunnel::TunnelError::Tun(io) => OsError::Tun(io),
        other => OsError::Tun(std::io::Error::other(other.to_string())),
    })
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
