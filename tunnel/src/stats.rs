//! Counters the data path updates and the daemon reads (status, health).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Live counters; cheap to update from the packet loops.
#[derive(Debug, Default)]
pub struct Stats {
    /// Bytes/packets decrypted and written to the tun.
    rx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    /// Bytes/packets read from the tun and sent encrypted.
    tx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    /// Unix time in milliseconds of the last completed handshake; 0 = never.
    last_handshake_ms: AtomicU64,
    /// Unix time in milliseconds of the last authenticated datagram from the peer.
    last_rx_ms: AtomicU64,
    pub(crate) endpoint: Mutex<Option<SocketAddr>>,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub last_handshake: Option<SystemTime>,
    pub last_received: Option<SystemTime>,
    pub endpoint: Option<SocketAddr>,
}

impl StatsSnapshot {
    /// Age of the last handshake, `None` if there never was one.
    pub fn handshake_age(&self, now: SystemTime) -> Option<Duration> {
        self.last_handshake
            .map(|t| now.duration_since(t).unwrap_or_default())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn from_ms(ms: u64) -> Option<SystemTime> {
    (ms != 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
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

    pub(crate) fn mark_received(&self) {
        self.last_rx_ms.store(now_ms(), Relaxed);
    }

    pub(crate) fn set_handshake_age(&self, age: Option<Duration>) {
        if let Some(age) = age {
            let at = now_ms().saturating_sub(age.as_millis() as u64);
            self.last_handshake_ms.store(at.max(1), Relaxed);
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            rx_bytes: self.rx_bytes.load(Relaxed),
            rx_packets: self.rx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            last_handshake: from_ms(self.last_handshake_ms.load(Relaxed)),
            last_received: from_ms(self.last_rx_ms.load(Relaxed)),
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
        stats.set_handshake_age(Some(Duration::from_secs(3)));
        let snap = stats.snapshot();
        assert_eq!((snap.rx_bytes, snap.rx_packets), (150, 2));
        assert_eq!((snap.tx_bytes, snap.tx_packets), (7, 1));
        let age = snap.handshake_age(SystemTime::now()).unwrap();
        assert!(age >= Duration::from_secs(3) && age < Duration::from_secs(10));
    }
}
