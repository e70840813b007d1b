//! The tun device, made by tun-rs on both OSes.

use super::types::{OsError, TunConfig};

/// tun-rs creates both Linux `tun` and macOS `utun` devices; only the route
/// handling differs per OS.
pub(super) fn create_tun_with_tun_rs(
    config: &TunConfig,
) -> Result<connector_tunnel::tun::AsyncDevice, OsError> {
    connector_tunnel::tun::create(config).map_err(|e| match e {
        connector_tunnel::TunnelError::Tun(io) => OsError::Tun(io),
        other => OsError::Tun(std::io::Error::other(other.to_string())),
    })
}
