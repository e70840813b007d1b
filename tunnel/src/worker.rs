//! The tunnel: a data path (tun → UDP, UDP → tun) and WireGuard timers
//! around one [`Peer`].
//!
//! The loops themselves live in `linux` (batched, tun offload, one thread)
//! and `plain` (tokio tasks, one packet per system call: every other
//! platform, and Linux when [`TunnelConfig::per_packet`] asks for it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tun_rs::AsyncDevice;

use crate::error::TunnelError;
use crate::failure::FailSender;
#[cfg(target_os = "linux")]
use crate::linux;
use crate::peer::{Peer, HANDSHAKE_BUF};
use crate::plain;
use crate::stats::Stats;

/// boringtun wants its timers driven "regularly"; 250 ms is what its own device uses.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// How often an initiator restarts a handshake after boringtun gave up on the peer.
const REINITIATE_AFTER: Duration = Duration::from_secs(5);

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
    /// Source addresses the peer may use inside the tunnel (WireGuard's
    /// allowed IPs); other decrypted packets are dropped. Empty: none.
    /// Changed later with [`Tunnel::set_allowed_sources`].
    pub allowed_sources: Vec<IpNet>,
    /// Force the one-packet-per-system-call path macOS uses (no tun offload,
    /// no UDP GSO/GRO, two tokio tasks); for measurement. On Linux the
    /// batched path runs otherwise; elsewhere this is the only path.
    pub per_packet: bool,
}

/// The data path's tun and socket; the timers send handshakes through it.
#[derive(Clone)]
enum Io {
    #[cfg(target_os = "linux")]
    Batched(Arc<linux::Io>),
    PerPacket(Arc<plain::Io>),
}

/// The data path's running loops.
enum Loops {
    #[cfg(target_os = "linux")]
    Batched(linux::Loops),
    PerPacket(plain::Loops),
}

/// Starts the data path `per_packet` asks for (on Linux).
fn start(
    device: AsyncDevice,
    socket: UdpSocket,
    per_packet: bool,
    peer: &Arc<Peer>,
    fail: &FailSender,
) -> (Io, Loops) {
    #[cfg(target_os = "linux")]
    if !per_packet {
        let io = Arc::new(linux::Io::new(device, socket));
        let loops = linux::start(peer, &io, fail);
        return (Io::Batched(io), Loops::Batched(loops));
    }
    if cfg!(target_os = "linux") && per_packet {
        tracing::info!("data path: one packet per system call, as on macOS (per_packet)");
    }
    let io = Arc::new(plain::Io::new(device, socket));
    let loops = plain::start(peer, &io, fail);
    (Io::PerPacket(io), Loops::PerPacket(loops))
}

impl Io {
    /// Sends `datagram` to the peer, if we know where it is.
    async fn send_to_peer(&self, peer: &Peer, datagram: &[u8]) {
        match self {
            #[cfg(target_os = "linux")]
            Io::Batched(io) => io.send_to_peer(peer, datagram),
            Io::PerPacket(io) => io.send_to_peer(peer, datagram).await,
        }
    }

    fn name(&self) -> std::io::Result<String> {
        match self {
            #[cfg(target_os = "linux")]
            Io::Batched(io) => io.name(),
            Io::PerPacket(io) => io.name(),
        }
    }
}

impl Loops {
    fn stop(&self) {
        match self {
            #[cfg(target_os = "linux")]
            Loops::Batched(loops) => loops.stop(),
            Loops::PerPacket(loops) => loops.stop(),
        }
    }

    async fn join(self) {
        match self {
            #[cfg(target_os = "linux")]
            Loops::Batched(loops) => loops.join().await,
            Loops::PerPacket(loops) => loops.join().await,
        }
    }
}

/// A running tunnel. Dropping it without [`Tunnel::shutdown`] also stops the
/// loops and closes the tun (once the loops have let go of it, right after).
pub struct Tunnel {
    peer: Arc<Peer>,
    io: Io,
    loops: Option<Loops>,
    timers: JoinHandle<()>,
    failed: watch::Receiver<Option<String>>,
}

impl Tunnel {
    /// Starts the packet loops. Must be called inside a tokio runtime.
    pub fn spawn(device: AsyncDevice, socket: UdpSocket, config: TunnelConfig) -> Tunnel {
        let peer = Arc::new(Peer::new(
            config.private_key,
            config.peer_public,
            config.keepalive,
            config.endpoint,
            &config.allowed_sources,
        ));
        let (fail_tx, failed) = watch::channel(None);
        let fail_tx = Arc::new(fail_tx);
        let (io, loops) = start(device, socket, config.per_packet, &peer, &fail_tx);
        let timers = tokio::spawn(timers(peer.clone(), io.clone()));
        Tunnel {
            peer,
            io,
            loops: Some(loops),
            timers,
            failed,
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.peer.stats.clone()
    }

    /// Points the tunnel at a (new) peer address, e.g. after re-resolving
    /// `host.docker.internal`.
    pub fn set_endpoint(&self, addr: SocketAddr) {
        self.peer.set_endpoint(addr);
    }

    /// Replaces the source addresses the peer may use inside the tunnel
    /// (see [`TunnelConfig::allowed_sources`]).
    pub fn set_allowed_sources(&self, nets: Vec<IpNet>) {
        tracing::debug!(sources = ?nets, "allowed sources");
        self.peer.set_sources(&nets);
    }

    /// Replaces the peer (a recreated agent has a new key); drops all sessions.
    pub fn set_peer(&self, peer: PublicKey) {
        self.peer.set_public_key(peer);
    }

    /// Starts a new handshake now (e.g. the other end restarted and lost the
    /// session). Harmless if the peer is unreachable.
    pub async fn rehandshake(&self) {
        let mut datagram = [0u8; HANDSHAKE_BUF];
        let len = match self
            .peer
            .tunn()
            .format_handshake_initiation(&mut datagram, true)
        {
            TunnResult::WriteToNetwork(out) => out.len(),
            _ => return,
        };
        self.io.send_to_peer(&self.peer, &datagram[..len]).await;
    }

    /// Name of the tun interface (e.g. `utun5` on macOS).
    pub fn interface_name(&self) -> std::io::Result<String> {
        self.io.name()
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
            loops.join().await;
        }
        let _ = (&mut self.timers).await;
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.timers.abort();
        if let Some(loops) = &self.loops {
            loops.stop();
        }
    }
}

async fn timers(peer: Arc<Peer>, io: Io) {
    let mut datagram = [0u8; HANDSHAKE_BUF];
    let mut last_initiation: Option<Instant> = None;
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let initiate_now = peer.initiator
            && peer.endpoint().is_some()
            && last_initiation.is_none_or(|t| t.elapsed() >= REINITIATE_AFTER);
        let len = {
            let mut tunn = peer.tunn();
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
            peer.stats
                .set_handshake_age(tunn.time_since_last_handshake());
            result
        };
        if let Some(len) = len {
            io.send_to_peer(&peer, &datagram[..len]).await;
        }
    }
}
