//! The tunnel: packet loops (tun → UDP, UDP → tun) and WireGuard timers
//! around one boringtun `Tunn`.
//!
//! The loops themselves live in `linux` (batched, tun offload, one thread)
//! and `plain` (tokio tasks, one packet per system call, every other platform).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tun_rs::AsyncDevice;

#[cfg(target_os = "linux")]
use crate::linux as sys;
#[cfg(not(target_os = "linux"))]
use crate::plain as sys;
use crate::sources::{self, SourceFilter, Throttle};
use crate::stats::Stats;
use crate::TunnelError;

/// boringtun wants its timers driven "regularly"; 250 ms is what its own device uses.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// How often an initiator restarts a handshake after boringtun gave up on the peer.
const REINITIATE_AFTER: Duration = Duration::from_secs(5);
/// Room for a handshake message (the largest, an initiation, is 148 bytes).
pub(crate) const HANDSHAKE_BUF: usize = 256;
/// At most one log line a second about packets dropped for their source.
const DROP_LOG_EVERY: Duration = Duration::from_secs(1);

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
    /// Replaced as a whole. The Linux loop takes it once per receive round,
    /// the plain loop once per packet; no lock is held while checking.
    sources: RwLock<Arc<SourceFilter>>,
    drop_log: Throttle,
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

    /// The allowed sources as they are now.
    pub(crate) fn sources(&self) -> Arc<SourceFilter> {
        self.sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts a decrypted `packet` from `from` dropped for its source, and
    /// logs it now and then.
    pub(crate) fn drop_for_source(&self, from: SocketAddr, packet: &[u8]) {
        if sources::link_chatter(packet) {
            return;
        }
        let total = self.stats.add_dropped_source();
        if self.drop_log.ready(Instant::now()) {
            tracing::debug!(
                source = ?sources::source(packet),
                %from,
                dropped_total = total,
                "decrypted packet from a source the peer may not use; dropped"
            );
        }
    }

    /// After datagrams from `from` that [`from_peer`] vouches for: roaming,
    /// liveness, handshake age.
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

impl From<TunnResult<'_>> for Step {
    fn from(result: TunnResult<'_>) -> Step {
        match result {
            TunnResult::WriteToTunnelV4(packet, _) | TunnResult::WriteToTunnelV6(packet, _) => {
                Step::Tunnel(packet.len())
            }
            TunnResult::WriteToNetwork(reply) => Step::Network(reply.len()),
            TunnResult::Done => Step::Done,
            TunnResult::Err(error) => Step::Rejected(error),
        }
    }
}

/// WireGuard message types: the first byte of a datagram (the other three
/// bytes of the little-endian type field are zero).
const HANDSHAKE_RESPONSE: u8 = 2;
const TRANSPORT_DATA: u8 = 4;

/// Whether decapsulating `datagram` gave `step` (its output, if any, at the
/// start of `out`) proves that the peer sent it. Only such a datagram may
/// move the endpoint or count as a sign of life: one that decrypted under a
/// session (a packet or a keepalive), or the response to our own initiation
/// (which boringtun answers with a keepalive, a data message).
///
/// Not so an initiation: anyone who knows our public key can make one with
/// a valid mac1, and once boringtun is under load it answers those with a
/// cookie reply before authenticating anything. An initiation's sender
/// still gets the response; the endpoint moves with its first data message
/// (boringtun initiators send a keepalive right away). Nor a cookie reply,
/// nor anything rejected, nor the queued packets of a repeated call (empty
/// `datagram`).
pub(crate) fn from_peer(datagram: &[u8], step: &Step, out: &[u8]) -> bool {
    match (datagram.first(), step) {
        (Some(&TRANSPORT_DATA), Step::Tunnel(_) | Step::Done) => true,
        (Some(&HANDSHAKE_RESPONSE), Step::Network(_)) => out.first() == Some(&TRANSPORT_DATA),
        _ => false,
    }
}

impl Shared {
    /// Decapsulates `datagram` (empty: the next queued packet after a
    /// handshake) into `out`.
    pub(crate) fn decapsulate(&self, from: SocketAddr, datagram: &[u8], out: &mut [u8]) -> Step {
        self.tunn()
            .decapsulate(Some(from.ip()), datagram, out)
            .into()
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
            sources: RwLock::new(Arc::new(SourceFilter::new(&config.allowed_sources))),
            drop_log: Throttle::new(DROP_LOG_EVERY),
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

    /// Replaces the source addresses the peer may use inside the tunnel
    /// (see [`TunnelConfig::allowed_sources`]).
    pub fn set_allowed_sources(&self, nets: Vec<IpNet>) {
        tracing::debug!(sources = ?nets, "allowed sources");
        let filter = Arc::new(SourceFilter::new(&nets));
        *self
            .shared
            .sources
            .write()
            .unwrap_or_else(|e| e.into_inner()) = filter;
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use boringtun::noise::rate_limiter::RateLimiter;

    use super::*;

    const FROM: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    fn tunn(private: &StaticSecret, peer: PublicKey, limiter: Option<u64>) -> Tunn {
        let limiter =
            limiter.map(|limit| Arc::new(RateLimiter::new(&PublicKey::from(private), limit)));
        Tunn::new(private.clone(), peer, None, None, 7, limiter)
    }

    /// Two ends that know each other; `limit`: the responder's handshakes
    /// per second before it answers with cookie replies (0: always).
    fn pair(limit: Option<u64>) -> (Tunn, Tunn, PublicKey) {
        let (i, r) = (crate::keys::generate(), crate::keys::generate());
        let r_public = PublicKey::from(&r);
        let initiator = tunn(&i, r_public, None);
        let responder = tunn(&r, PublicKey::from(&i), limit);
        (initiator, responder, r_public)
    }

    /// Decapsulates `datagram` at `tunn`; the verdict, the step and its output.
    fn receive(tunn: &mut Tunn, datagram: &[u8]) -> (bool, Step, Vec<u8>) {
        let mut out = vec![0u8; 2048];
        let step = Step::from(tunn.decapsulate(Some(FROM), datagram, &mut out));
        let len = match step {
            Step::Tunnel(n) | Step::Network(n) => n,
            _ => 0,
        };
        (from_peer(datagram, &step, &out), step, out[..len].to_vec())
    }

    fn initiation(tunn: &mut Tunn) -> Vec<u8> {
        let mut out = [0u8; HANDSHAKE_BUF];
        match tunn.format_handshake_initiation(&mut out, true) {
            TunnResult::WriteToNetwork(init) => init.to_vec(),
            other => panic!("no initiation: {other:?}"),
        }
    }

    /// A minimal IPv4 header (no payload) from 10.0.0.1.
    fn ipv4_packet() -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&20u16.to_be_bytes());
        p[8] = 64;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p
    }

    #[test]
    fn a_handshake_response_and_data_count_an_initiation_does_not() {
        let (mut i, mut r, _) = pair(None);
        let init = initiation(&mut i);
        let (heard, step, response) = receive(&mut r, &init);
        assert!(matches!(step, Step::Network(_)) && response[0] == HANDSHAKE_RESPONSE);
        assert!(!heard, "an initiation proves nothing about its sender");

        let (heard, step, keepalive) = receive(&mut i, &response);
        assert!(matches!(step, Step::Network(_)) && keepalive[0] == TRANSPORT_DATA);
        assert!(heard, "the response to our own initiation");

        let (heard, step, _) = receive(&mut r, &keepalive);
        assert!(matches!(step, Step::Done) && heard, "a keepalive");

        let mut datagram = [0u8; 256];
        let len = match i.encapsulate(&ipv4_packet(), &mut datagram) {
            TunnResult::WriteToNetwork(d) => d.len(),
            other => panic!("not encrypted: {other:?}"),
        };
        let (heard, step, packet) = receive(&mut r, &datagram[..len]);
        assert!(matches!(step, Step::Tunnel(20)) && heard);
        assert_eq!(packet, ipv4_packet());

        // Queued packets (a repeated call) are not a datagram from anyone.
        assert!(!from_peer(&[], &Step::Network(32), &datagram));
    }

    #[test]
    fn forged_initiations_and_cookie_replies_do_not_count() {
        // A responder under load answers every initiation with a valid mac1
        // with a cookie reply, before it looks any further.
        let (mut i, mut r, r_public) = pair(Some(0));
        let mut forger = tunn(&crate::keys::generate(), r_public, None);
        for init in [initiation(&mut forger), initiation(&mut i)] {
            let (heard, step, reply) = receive(&mut r, &init);
            assert!(matches!(step, Step::Network(64)), "{:?}", reply.first());
            assert_eq!(reply[0], 3, "a cookie reply");
            assert!(!heard);
            // The initiator takes the cookie; that proves nothing either.
            let (heard, step, _) = receive(&mut i, &reply);
            assert!(matches!(step, Step::Done | Step::Rejected(_)) && !heard);
        }

        // Not under load: the forgery is rejected outright.
        let (_, mut r, r_public) = pair(None);
        let mut forger = tunn(&crate::keys::generate(), r_public, None);
        let (heard, step, _) = receive(&mut r, &initiation(&mut forger));
        assert!(matches!(step, Step::Rejected(_)) && !heard);
    }

    #[test]
    fn a_response_answered_with_a_cookie_reply_does_not_count() {
        // The initiator is the one under load when the response comes.
        let (i, r) = (crate::keys::generate(), crate::keys::generate());
        let mut initiator = tunn(&i, PublicKey::from(&r), Some(0));
        let mut responder = tunn(&r, PublicKey::from(&i), None);
        let (_, _, response) = receive(&mut responder, &initiation(&mut initiator));
        let (heard, step, reply) = receive(&mut initiator, &response);
        assert!(matches!(step, Step::Network(_)) && reply[0] == 3 && !heard);
    }

    #[test]
    fn garbage_and_forged_data_messages_do_not_count() {
        let (mut i, mut r, _) = pair(None);
        let (_, _, response) = receive(&mut r, &initiation(&mut i));
        let (_, _, keepalive) = receive(&mut i, &response);
        let mut forged = keepalive.clone();
        *forged.last_mut().unwrap() ^= 1;
        for datagram in [&forged[..], &[4, 0, 0, 0][..], &[1; 148][..], &[3; 64][..]] {
            let (heard, step, _) = receive(&mut r, datagram);
            assert!(matches!(step, Step::Rejected(_)) && !heard);
        }
    }
}
