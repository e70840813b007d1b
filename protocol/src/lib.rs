//! What connector's host daemon and its VM agent say to each other.
//!
//! The two ends talk over the WireGuard tunnel's control channel: JSON lines
//! over TCP to `<agent tunnel address>:`[`vm_routes::CONTROL_PORT`]. The
//! messages ([`vm_routes`]) and the bounded line framing both ends read them
//! with ([`lines`]) are defined here once, so the two crates cannot drift.

pub mod agent_args;
pub mod lines;
pub mod vm_routes;
