//! The one peer of a tunnel: its boringtun session, where it is, which
//! sources it may use, and the counters — what both data paths (`linux`,
//! `plain`) and the timer task share.
//!
//! The `Tunn` lock is taken per packet and never held across an `.await` or
//! a system call, so its users only ever wait for each other's cipher work
//! (about a microsecond a packet).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;

use crate::sources::{self, SourceFilter, Throttle};
use crate::stats::Stats;

/// Room for a handshake message (the largest, an initiation, is 148 bytes).
pub(crate) const HANDSHAKE_BUF: usize = 256;
/// At most one log line a second about packets dropped for their source.
const DROP_LOG_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Peer {
    tunn: Mutex<Tunn>,
    private_key: StaticSecret,
    keepalive: Option<u16>,
    /// A tunnel that knows the peer's address up front starts the handshakes.
    pub(crate) initiator: bool,
    pub(crate) stats: Arc<Stats>,
    /// Replaced as a whole. The Linux loop takes it once per receive round,
    /// the plain loop once per packet; no lock is held while checking.
    sources: RwLock<Arc<SourceFilter>>,
    drop_log: Throttle,
}

fn new_tunn(private: &StaticSecret, peer: PublicKey, keepalive: Option<u16>) -> Tunn {
    // The session index only has to be unlikely to repeat across restarts.
    let index = rand_core::RngCore::next_u32(&mut rand_core::OsRng) >> 8;
    Tunn::new(private.clone(), peer, None, keepalive, index, None)
}

impl Peer {
    /// `endpoint`: the peer's address when known up front (then we initiate).
    pub(crate) fn new(
        private_key: StaticSecret,
        peer_public: PublicKey,
        keepalive: Option<u16>,
        endpoint: Option<SocketAddr>,
        allowed_sources: &[IpNet],
    ) -> Peer {
        let stats = Arc::new(Stats::default());
        *stats.endpoint.lock().unwrap() = endpoint;
        Peer {
            tunn: Mutex::new(new_tunn(&private_key, peer_public, keepalive)),
            private_key,
            keepalive,
            initiator: endpoint.is_some(),
            stats,
            sources: RwLock::new(Arc::new(SourceFilter::new(allowed_sources))),
            drop_log: Throttle::new(DROP_LOG_EVERY),
        }
    }

    pub(crate) fn tunn(&self) -> MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the peer (a recreated agent has a new key); drops all sessions.
    pub(crate) fn set_public_key(&self, peer: PublicKey) {
        let fresh = new_tunn(&self.private_key, peer, self.keepalive);
        *self.tunn() = fresh;
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

    /// The allowed sources as they are now.
    pub(crate) fn sources(&self) -> Arc<SourceFilter> {
        self.sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_sources(&self, nets: &[IpNet]) {
        let filter = Arc::new(SourceFilter::new(nets));
        *self.sources.write().unwrap_or_else(|e| e.into_inner()) = filter;
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
