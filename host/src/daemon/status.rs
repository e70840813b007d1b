//! What `connector status` shows, kept ready so the control socket answers
//! without the daemon's loop: the loop writes its decisions here after each
//! change, the live parts (tunnel counters, VM routes, health) are read at
//! answer time, and the agent's own view of its firewall rules (a `docker
//! exec`) is refreshed by a task of its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connector_tunnel::Stats;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::health::Health;
use crate::agent::AgentManager;
use crate::agent_link::LinkStatus;
use crate::protocol::{FirewallStatus, StatusReport};

/// How often the agent is asked about its rules (and after it changes).
const VERIFY_EVERY: Duration = Duration::from_secs(30);

type LinkReader = Box<dyn Fn() -> LinkStatus + Send + Sync>;

pub struct StatusBoard {
    started: Instant,
    stats: Arc<Stats>,
    link: LinkReader,
    state: Mutex<Board>,
}

struct Board {
    report: StatusReport,
    firewall_at: Option<Instant>,
    health: Option<Health>,
}

impl StatusBoard {
    /// `report` holds everything that does not change by itself; uptime
    /// counts from `started`.
    pub fn new(
        report: StatusReport,
        started: Instant,
        stats: Arc<Stats>,
        link: LinkReader,
    ) -> StatusBoard {
        StatusBoard {
            started,
            stats,
            link,
            state: Mutex::new(Board {
                report,
                firewall_at: None,
                health: None,
            }),
        }
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn update(&self, f: impl FnOnce(&mut StatusReport)) {
        f(&mut self.board().report);
    }

    pub fn docker_reachable(&self) -> bool {
        self.board().report.docker_reachable
    }

    pub fn set_health(&self, health: &Health) {
        self.board().health = Some(health.clone());
    }

    fn set_firewall(&self, firewall: FirewallStatus) {
        let mut board = self.board();
        board.report.firewall = firewall;
        board.firewall_at = Some(Instant::now());
    }

    /// The report as of now.
    pub fn report(&self) -> StatusReport {
        let now = Instant::now();
        let stats = self.stats.snapshot();
        let link = (self.link)();
        let board = self.board();
        let mut r = board.report.clone();
        r.uptime_secs = now.saturating_duration_since(self.started).as_secs();
        r.firewall.checked_secs = board
            .firewall_at
            .map(|t| now.saturating_duration_since(t).as_secs());
        r.tunnel.endpoint = stats.endpoint.map(|e| e.to_string());
        r.tunnel.last_handshake_secs = stats.handshake_age(now).map(|d| d.as_secs());
        r.tunnel.last_received_secs = stats.received_age(now).map(|d| d.as_secs());
        r.tunnel.rx_bytes = stats.rx_bytes;
        r.tunnel.tx_bytes = stats.tx_bytes;
        r.tunnel.rx_packets = stats.rx_packets;
        r.tunnel.tx_packets = stats.tx_packets;
        r.tunnel.rx_dropped_source = stats.rx_dropped_source;
        r.kind.vm_routes = link;
        if let Some(h) = &board.health {
            r.health = h.status(now, stats.last_received);
        }
        r
    }
}

/// Asks the agent about its firewall rules now and then, off the loop.
pub struct Verifier {
    now: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Verifier {
    pub fn spawn(agents: AgentManager, board: Arc<StatusBoard>) -> Verifier {
        let now = Arc::new(Notify::new());
        let wake = now.clone();
        let task = tokio::spawn(async move {
            loop {
                if board.docker_reachable() {
                    board.set_firewall(crate::agent::firewall_status(agents.verify_rules().await));
                }
                let _ = tokio::time::timeout(VERIFY_EVERY, wake.notified()).await;
            }
        });
        Verifier { now, task }
    }

    /// Ask again soon (the agent changed).
    pub fn refresh(&self) {
        self.now.notify_one();
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}
