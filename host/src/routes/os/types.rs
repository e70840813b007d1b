//! What every OS file of the facade speaks: the tun's spec, a route of the
//! host's table, and the error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

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
    /// Our IPv6 address inside the tunnel and the tunnel's IPv6 prefix
    /// length; `None` = IPv6 is off.
    pub address6: Option<(Ipv6Addr, u8)>,
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
