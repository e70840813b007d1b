//! Counters the data path updates and the daemon reads (status, health).
//!
//! Times are monotonic (`Instant`), the clock the daemon measures silence
//! with: wall-clock time would jump on a Mac after sleep (during which
//! `Instant` stands still) and make a peer look silent for the whole sleep.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Live counters; cheap to update from the packet loops.
#[derive(Debug)]
pub struct Stats {
    /// Bytes/packets decrypted and written to the tun.
    rx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    /// Bytes/packets read from the tun and sent encrypted.
    tx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    /// Decrypted packets dropped: their source is not an allowed source.
    rx_dropped_source: AtomicU64,
    /// The last completed handshake, as [`to_ticks`]; 0 = never.
    last_handshake: AtomicU64,
    /// The last authenticated datagram from the peer, as [`to_ticks`]; 0 = never.
    last_received: AtomicU64,
    pub(crate) endpoint: Mutex<Option<SocketAddr>>,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// Decrypted packets dropped because of their source address.
    pub rx_dropped_source: u64,
    pub last_handshake: Option<Instant>,
    pub last_received: Option<Instant>,
    pub endpoint: Option<SocketAddr>,
}

impl StatsSnapshot {
    /// Age of the last handshake at `now`, `None` if there never was one.
    pub fn handshake_age(&self, now: Instant) -> Option<Duration> {
        self.last_handshake
            .map(|t| now.saturating_duration_since(t))
    }

    /// Time since the last authenticated datagram at `now`, `None` if none came yet.
    pub fn received_age(&self, now: Instant) -> Option<Duration> {
        self.last_received.map(|t| now.saturating_duration_since(t))
    }
}

/// The process-wide origin of stored times (an `Instant` has no number to
/// put in an atomic). Fixed when the first [`Stats`] is made, up to a day
/// before (as far as the clock goes back), so that the time of a handshake
/// reported by its age also lies after it.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(|| {
        let now = Instant::now();
        [86_400, 3_600, 60, 1]
            .into_iter()
            .find_map(|s| now.checked_sub(Duration::from_secs(s)))
            .unwrap_or(now)
    })
}

/// `at` as nanoseconds since [`base`], at least 1 (0 means never).
fn to_ticks(at: Instant) -> u64 {
    let nanos = at.saturating_duration_since(base()).as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX).max(1)
}

fn from_ticks(ticks: u64) -> Option<Instant> {
    (ticks != 0).then(|| base() + Duration::from_nanos(ticks))
}

impl Default for Stats {
    fn default() -> Stats {
        base();
        Stats {
            rx_bytes: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            rx_dropped_source: AtomicU64::new(0),
            last_handshake: AtomicU64::new(0),
            last_received: AtomicU64::new(0),
            endpoint: Mutex::new(None),
        }
    }
}

impl Stats {
    /// Counted per batch by the loops, not per packet.
    pub(crate) fn add_rx(&self, bytes: usize, packets: usize) {
        self.rx_bytes.fetch_add(bytes as u64, Relaxed);
        self.rx_packets.fetch_add(packets as u64, Relaxed);
    }

    pub(crate) fn add_tx(&self, bytes: usize, packets: usize) {
        self.tx_bytes.fetch_add(bytes as u64, Relaxed);
        self.tx_packets.fetch_add(packets as u64, Relaxed);
    }

    /// Counts one packet dropped for its source; returns the total so far.
    pub(crate) fn add_dropped_source(&self) -> u64 {
        self.rx_dropped_source.fetch_add(1, Relaxed) + 1
    }

    pub(crate) fn mark_received(&self) {
        self.last_received.store(to_ticks(Instant::now()), Relaxed);
    }

    pub(crate) fn set_handshake_age(&self, age: Option<Duration>) {
        if let Some(age) = age {
            let now = Instant::now();
            let at = now.checked_sub(age).unwrap_or(now);
            self.last_handshake.store(to_ticks(at), Relaxed);
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            rx_bytes: self.rx_bytes.load(Relaxed),
            rx_packets: self.rx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            rx_dropped_source: self.rx_dropped_source.load(Relaxed),
            last_handshake: from_ticks(self.last_handshake.load(Relaxed)),
            last_received: from_ticks(self.last_received.load(Relaxed)),
            endpoint: *self.endpoint.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_accumulate_and_handshake_starts_unknown() {
        let stats = Stats::default();
        assert_eq!(stats.snapshot().last_handshake, None);
        stats.add_rx(100, 1);
        stats.add_rx(50, 1);
        stats.add_tx(7, 1);
        assert_eq!(stats.add_dropped_source(), 1);
        assert_eq!(stats.add_dropped_source(), 2);
        stats.set_handshake_age(Some(Duration::from_millis(30)));
        let snap = stats.snapshot();
        assert_eq!((snap.rx_bytes, snap.rx_packets), (150, 2));
        assert_eq!((snap.tx_bytes, snap.tx_packets), (7, 1));
        assert_eq!(snap.rx_dropped_source, 2);
        let age = snap.handshake_age(Instant::now()).unwrap();
        assert!(age >= Duration::from_millis(30) && age < Duration::from_secs(10));
    }

    #[test]
    fn received_age_is_measured_on_the_monotonic_clock() {
        let stats = Stats::default();
        let before = Instant::now();
        assert_eq!(stats.snapshot().received_age(before), None);
        stats.mark_received();
        let snap = stats.snapshot();
        let at = snap.last_received.unwrap();
        assert!(at >= before && at <= Instant::now());
        let later = at + Duration::from_secs(42);
        assert_eq!(snap.received_age(later), Some(Duration::from_secs(42)));
        // A `now` taken before the datagram came is an age of zero, not a panic.
        assert_eq!(snap.received_age(before), Some(Duration::ZERO));
    }

    #[test]
    fn stored_times_round_trip_to_the_nanosecond() {
        let at = base() + Duration::from_nanos(123_456_789_012);
        assert_eq!(from_ticks(to_ticks(at)), Some(at));
        assert_eq!(from_ticks(0), None);
        // The base itself is stored as 1 ns after it, never as "never".
        assert_eq!(to_ticks(base()), 1);
        if let Some(earlier) = base().checked_sub(Duration::from_secs(1)) {
            assert_eq!(to_ticks(earlier), 1);
        }
    }
}
