//! The WireGuard data path shared by both ends of connector.
//!
//! A [`Tunnel`] moves packets between a tun device and a UDP socket through
//! boringtun's `Tunn` state machine. The same code runs in the host daemon
//! (responder: learns the agent's endpoint from its first datagram) and in the
//! VM agent (initiator: knows the host endpoint, starts the handshake and keeps
//! the UDP mapping alive).
//!
//! The packet loops and a timer task share one [`peer`] (boringtun's `Tunn`
//! behind a mutex that is taken per packet and never held across an `.await`
//! or a system call). The loops own their buffers, so the steady state does
//! not allocate. Modules depend downwards only: `worker` (the [`Tunnel`]
//! facade) on the data paths, the data paths on `peer` and `failure`.
//!
//! - Linux (`linux`): one thread per tunnel runs both directions in batches —
//!   tun offload (TSO super-packets cut in place, TCP segments merged back),
//!   UDP GSO/GRO, `sendmmsg`/`recvmmsg` — and sleeps in `poll` when idle.
//! - Elsewhere (`plain`, i.e. macOS: utun has no offload): two tokio tasks,
//!   one packet per system call, no copy beyond the cipher's. Linux runs it
//!   too when [`TunnelConfig::per_packet`] says so, to measure it.

pub mod checksum;
mod error;
mod failure;
#[cfg(target_os = "linux")]
pub mod kernel_routes;
pub mod keys;
#[cfg(target_os = "linux")]
mod linux;
mod peer;
mod plain;
mod sources;
mod stats;
pub mod tun;
mod worker;

pub use error::TunnelError;
pub use stats::{Stats, StatsSnapshot};
pub use worker::{Tunnel, TunnelConfig};

/// The Linux data path's batched I/O pieces, public only so that
/// `examples/io-compare.rs` can measure them against well-kept crates doing
/// the same; not an API.
#[cfg(target_os = "linux")]
#[doc(hidden)]
pub mod linux_io {
    pub use crate::linux::offload::{Coalescer, Segmenter, FRAME_LEN};
    pub use crate::linux::udp::{configure, RxBatch, TxBatch, RX_MESSAGES};
}
