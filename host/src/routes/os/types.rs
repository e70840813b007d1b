//! What every OS file of the facade speaks: the tun's spec, a route of the
//! host's table, and the error.

use std::net::IpAddr;

use ipnet::IpNet;

/// What the tun device should look like: the tunnel crate's spec, which
/// both ends create their device from.
pub use connector_tunnel::tun::TunSpec as TunConfig;

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
