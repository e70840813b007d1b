//! The tunnel: packet loops (tun → UDP, UDP → tun) and WireGuard timers
//! around one boringtun `Tunn`.
//!
//! The loops themselves live in `linux` (batched, tun offload, one thread)
//! and `plain` (tokio tasks, one packet per system call, every other platform).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tun_rs::AsyncDevice;

#[cfg(target_os = "linux")]
use crate::linux as sys;
#[cfg(not(target_os = "linux"))]
use crate::plain as sys;
use crate::stats::Stats;
use crate::TunnelError;

/// boringtun wants its timers driven "regularly"; 250 ms is what its own device uses.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// How often an initiator restarts a handshake after boringtun gave up on the peer.
const REINITIATE_AFTER: Duration = Duration::from_secs(5);
/// Room for a handshake message (the largest, an initiation, is 148 bytes).
pub(crate) const HANDSHAKE_BUF: usize = 256;

/// How one end of the tunnel is set up.
pub struct TunnelConfig {
    pub private_key: StaticSecret,
    pub peer_public: PublicKey,
    /// Persistent keepalive in seconds (the initiating side sets it to keep
    /// Docker Desktop's UDP mapping alive).
    pub keepalive: Option<u16>,
    /// The peer's address when known up front. A tunnel with an endpoint is
    /// the initiator: it sends the first handshake and re-initiates forever.
    pub endpoint: Option<SocketAddr>,
}

/// What the loops and the timer task share. The `Tunn` lock is taken per
/// packet and never held across an `.await` or a system call, so its users
/// only ever wait for each other's cipher work (about a microsecond a packet).
pub(crate) struct Shared {
    tunn: Mutex<Tunn>,
    private_key: StaticSecret,
    keepalive: Option<u16>,
    initiator: bool,
    pub(crate) stats: Arc<Stats>,
    /// The tun and the UDP socket, as the platform's loops want them.
    pub(crate) io: sys::Io,
}

impl Shared {
    pub(crate) fn tunn(&self) -> MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn endpoint(&self) -> Option<SocketAddr> {
        *self
            .stats
            .endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_endpoint(&self, addr: SocketAddr) {
        let mut slot = self
            .stats
            .endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *slot != Some(addr) {
            tracing::info!(endpoint = %addr, "peer endpoint");
            *slot = Some(addr);
        }
    }

    pub(crate) async fn send_to_peer(&self, datagram: &[u8]) {
        if let Some(endpoint) = self.endpoint() {
            self.send_to(datagram, endpoint).await;
        }
    }

    pub(crate) async fn send_to(&self, datagram: &[u8], to: SocketAddr) {
        #[cfg(target_os = "linux")]
        self.io.send_to(datagram, to);
        #[cfg(not(target_os = "linux"))]
        self.io.send_to(datagram, to).await;
    }

    /// After authenticated datagrams from `from`: roaming, liveness, handshake age.
    pub(crate) fn heard_from(&self, from: SocketAddr) {
        self.set_endpoint(from);
        self.stats.mark_received();
        let age = self.tunn().time_since_last_handshake();
        self.stats.set_handshake_age(age);
    }
}

/// One step of decapsulating a datagram.
pub(crate) enum Step {
    /// A decrypted packet of this length is in the output buffer.
    Tunnel(usize),
    /// A message for the peer (handshake reply, queued packet) is in the output buffer.
    Network(usize),
    Done,
    Rejected(boringtun::noise::errors::WireGuardError),
}

impl Shared {
    /// Decapsulates `datagram` (empty: the next queued packet after a
    /// handshake) into `out`.
    pub(crate) fn decapsulate(&self, from: SocketAddr, datagram: &[u8], out: &mut [u8]) -> Step {
        match self.tunn().decapsulate(Some(from.ip()), datagram, out) {
            TunnResult::WriteToTunnelV4(packet, _) | TunnResult::WriteToTunnelV6(packet, _) => {
                Step::Tunnel(packet.len())
            }
            TunnResult::WriteToNetwork(reply) => Step::Network(reply.len()),
            TunnResult::Done => Step::Done,
            TunnResult::Err(error) => Step::Rejected(error),
        }
    }

    /// Encapsulates `packet` into `out`; the length of the datagram to send, if any.
    pub(crate) fn encapsulate(&self, packet: &[u8], out: &mut [u8]) -> Option<usize> {
        match self.tunn().encapsulate(packet, out) {
            TunnResult::WriteToNetwork(datagram) => Some(datagram.len()),
            TunnResult::Err(error) => {
                tracing::debug!(?error, "encapsulate failed");
                None
            }
            // Queued until a session exists (a handshake is under way).
            _ => None,
        }
    }
}

/// Reports a stopped packet loop to [`Tunnel::failed`].
pub(crate) type FailSender = Arc<watch::Sender<Option<String>>>;

/// A running tunnel. Dropping it without [`Tunnel::shutdown`] also stops the
/// loops and closes the tun (once the loops have let go of it, right after).
pub struct Tunnel {
    shared: Arc<Shared>,
    loops: Option<sys::Loops>,
    timers: JoinHandle<()>,
    failed: watch::Receiver<Option<String>>,
}

fn new_tunn(private: &StaticSecret, peer: PublicKey, keepalive: Option<u16>) -> Tunn {
    // The session index only has to be unlikely to repeat across restarts.
    let index = rand_core::RngCore::next_u32(&mut rand_core::OsRng) >> 8;
    Tunn::new(private.clone(), peer, None, keepalive, index, None)
}

impl Tunnel {
    /// Starts the packet loops. Must be called inside a tokio runtime.
    pub fn spawn(device: AsyncDevice, socket: UdpSocket, config: TunnelConfig) -> Tunnel {
        let stats = Arc::new(Stats::default());
        *stats.endpoint.lock().unwrap() = config.endpoint;
        let shared = Arc::new(Shared {
            tunn: Mutex::new(new_tunn(
                &config.private_key,
                config.peer_public,
                config.keepalive,
            )),
            private_key: config.private_key,
            keepalive: config.keepalive,
            initiator: config.endpoint.is_some(),
            stats,
            io: sys::Io::new(device, socket),
        });
        let (fail_tx, failed) = watch::channel(None);
        let fail_tx = Arc::new(fail_tx);
        let loops = sys::start(&shared, &fail_tx);
        let timers = tokio::spawn(timers(shared.clone()));
        Tunnel {
            shared,
            loops: Some(loops),
            timers,
            failed,
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// Points the tunnel at a (new) peer address, e.g. after re-resolving
    /// `host.docker.internal`.
    pub fn set_endpoint(&self, addr: SocketAddr) {
        self.shared.set_endpoint(addr);
    }

    /// Replaces the peer (a recreated agent has a new key); drops all sessions.
    pub fn set_peer(&self, peer: PublicKey) {
        let fresh = new_tunn(&self.shared.private_key, peer, self.shared.keepalive);
        *self.shared.tunn() = fresh;
    }

    /// Starts a new handshake now (e.g. the other end restarted and lost the
    /// session). Harmless if the peer is unreachable.
    pub async fn rehandshake(&self) {
        let mut datagram = [0u8; HANDSHAKE_BUF];
        let len = match self
            .shared
            .tunn()
            .format_handshake_initiation(&mut datagram, true)
        {
            TunnResult::WriteToNetwork(out) => out.len(),
            _ => return,
        };
        self.shared.send_to_peer(&datagram[..len]).await;
    }

    /// Name of the tun interface (e.g. `utun5` on macOS).
    pub fn interface_name(&self) -> std::io::Result<String> {
        self.shared.io.name()
    }

    /// Resolves when a packet loop stopped because of an I/O error on the tun
    /// or the socket (for example the tun was deleted under us).
    pub async fn failed(&mut self) -> TunnelError {
        loop {
            if let Some(reason) = self.failed.borrow_and_update().clone() {
                return TunnelError::Tun(std::io::Error::other(reason));
            }
            if self.failed.changed().await.is_err() {
                // All senders gone: the loops ended without a recorded error.
                return TunnelError::Tun(std::io::Error::other("packet loops stopped"));
            }
        }
    }

    /// Stops the loops and closes the tun device.
    pub async fn shutdown(mut self) {
        self.timers.abort();
        if let Some(loops) = self.loops.take() {
            loops.join(&self.shared).await;
        }
        let _ = (&mut self.timers).await;
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.timers.abort();
        if let Some(loops) = &self.loops {
            loops.stop(&self.shared);
        }
    }
}

/// Persistent errors make the loop stop (and report) instead of spinning.
pub(crate) fn is_fatal(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    !matches!(
        error.kind(),
        Interrupted | WouldBlock | ConnectionRefused | ConnectionReset | TimedOut
    ) && error.raw_os_error() != Some(libc_enobufs())
}

/// ENOBUFS is transient on both Linux (105) and macOS (55).
const fn libc_enobufs() -> i32 {
    if cfg!(target_os = "linux") {
        105
    } else {
        55
    }
}

/// Records why a loop stopped, for [`Tunnel::failed`].
pub(crate) fn report(fail: &FailSender, what: &str, error: &std::io::Error) {
    tracing::warn!(%error, "{what} failed; stopping the tunnel");
    let _ = fail.send(Some(format!("{what}: {error}")));
}

async fn timers(shared: Arc<Shared>) {
    let mut datagram = [0u8; HANDSHAKE_BUF];
    let mut last_initiation: Option<Instant> = None;
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let initiate_now = shared.initiator
            && shared.endpoint().is_some()
            && last_initiation.is_none_or(|t| t.elapsed() >= REINITIATE_AFTER);
        let len = {
            let mut tunn = shared.tunn();
            let result = match tunn.update_timers(&mut datagram) {
                TunnResult::WriteToNetwork(out) => Some(out.len()),
                // An initiator never gives up: Docker Desktop's VM may come
                // back (Resource Saver, sleep) long after boringtun's 90 s.
                _ if initiate_now && tunn.time_since_last_handshake().is_none() => {
                    last_initiation = Some(Instant::now());
                    match tunn.format_handshake_initiation(&mut datagram, false) {
                        TunnResult::WriteToNetwork(out) => Some(out.len()),
                        _ => None,
                    }
                }
                _ => None,
            };
            shared
                .stats
                .set_handshake_age(tunn.time_since_last_handshake());
            result
        };
        if let Some(len) = len {
            shared.send_to_peer(&datagram[..len]).await;
        }
    }
}
