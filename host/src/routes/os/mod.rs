//! Platform facade: the tun device and the host routing table.
//!
//! Everything above this module is platform-neutral. Each OS has one file
//! (`linux.rs`, `macos.rs`) that provides the same items:
//! - `create_tun(&TunConfig) -> Result<connector_tunnel::tun::AsyncDevice, OsError>`
//! - `RouteTable` with `new`, `list`, `add`, `delete`.
//!
//! `add`/`delete` always name the interface, so connector can never remove a
//! route that belongs to another interface (a VPN's, the LAN's).

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

mod interfaces;
mod tun;
mod types;

pub use interfaces::interface_networks;
pub use types::{RouteEntry, TunConfig};
