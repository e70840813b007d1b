//! Creating the tun device (Linux `tun`, macOS `utun`) through tun-rs.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::TunnelError;

pub use tun_rs::AsyncDevice;

/// What the tun device should look like.
#[derive(Debug, Clone)]
pub struct TunSpec {
    /// Interface name; `None` lets the OS choose (macOS always picks `utunN`).
    pub name: Option<String>,
    /// Our address inside the tunnel.
    pub address: Ipv4Addr,
    /// The other end's address (point-to-point destination).
    pub peer: Ipv4Addr,
    pub prefix: u8,
    /// Our IPv6 address inside the tunnel and its prefix length; `None` = no
    /// IPv6 on the device.
    pub address6: Option<(Ipv6Addr, u8)>,
    pub mtu: u16,
}

/// Creates the device, gives it its address and MTU, and brings it up.
/// The device disappears when the returned handle is dropped.
///
/// On Linux the device is opened with offload (`IFF_VNET_HDR`, TSO, checksum
/// offload): the kernel then hands over and accepts TCP super-packets of up
/// to 64 KiB, which the data path cuts and merges itself. Should the kernel
/// refuse, the device is opened without it and the data path adapts.
pub fn create(spec: &TunSpec) -> Result<AsyncDevice, TunnelError> {
    let builder = || {
        let mut builder = tun_rs::DeviceBuilder::new()
            .ipv4(spec.address, spec.prefix, Some(spec.peer))
            .mtu(spec.mtu);
        if let Some((address, prefix)) = spec.address6 {
            builder = builder.ipv6(address, prefix);
        }
        if let Some(name) = &spec.name {
            builder = builder.name(name.clone());
        }
        // connector owns every route on the device; tun-rs would add one for the
        // tunnel prefix on BSDs.
        #[cfg(target_os = "macos")]
        {
            builder = builder.associate_route(false);
        }
        builder
    };
    #[cfg(target_os = "linux")]
    match builder().offload(true).build_async() {
        Ok(device) => return Ok(device),
        Err(error) => tracing::info!(%error, "tun offload unavailable; one packet per read"),
    }
    builder().build_async().map_err(TunnelError::Tun)
}
