//! What connector's host daemon and its VM agent say to each other.
//!
//! The two ends talk over the WireGuard tunnel's control channel: JSON lines
//! over TCP to `<agent tunnel address>:`[`vm_routes::CONTROL_PORT`]. The
//! messages ([`vm_routes`]) and the bounded line framing both ends read them
//! with ([`lines`]) are defined here once, so the two crates cannot drift; so
//! are the values the daemon writes on the agent's command line
//! ([`agent_args`]) and the signals either end is stopped or nudged with
//! ([`signals`]).

pub mod agent_args;
pub mod lines;
pub mod signals;
pub mod vm_routes;
