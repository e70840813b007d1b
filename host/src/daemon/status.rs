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
use crate::agent::link::LinkStatus;
use crate::agent::{Agent, AgentManager};
use crate::clusters::kind::KindReport;
use crate::config::Config;
use crate::control::protocol::{
    AgentStatus, FirewallStatus, HealthStatus, NetworkStatus, PhaseStatus, StatusReport,
    TunnelStatus,
};
use crate::routes::plan::{SkipReason, SubnetDecision};

/// How often the agent is asked about its rules (and after it changes)…
const VERIFY_EVERY: Duration = Duration::from_secs(30);
/// …and while they are not all in place (an agent still starting installs
/// them within a second or two).
const VERIFY_AGAIN: Duration = Duration::from_secs(2);

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

/// The report at start; the loop and the live readers fill in the rest.
pub fn initial_report(
    config: &Config,
    endpoint: &str,
    engine: &str,
    interface: &str,
    agent_name: &str,
    agent: &Agent,
) -> StatusReport {
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: 0,
        docker_endpoint: endpoint.to_owned(),
        docker_reachable: true,
        engine_version: engine.to_owned(),
        agent: AgentStatus {
            name: agent_name.to_owned(),
            container_id: agent.container_id.clone(),
            image: agent.image.clone(),
            adopted: agent.adopted,
            error: None,
        },
        firewall: FirewallStatus {
            backend: None,
            all_present: false,
            detail: vec!["not asked yet".into()],
            ipv6: Vec::new(),
            checked_secs: None,
        },
        tunnel: TunnelStatus {
            interface: interface.to_owned(),
            address: format!("{}/{}", config.host_tunnel_ip(), config.tunnel.prefix_len()),
            listen: format!("{}:{}", config.listen_address, config.listen_port),
            endpoint: None,
            last_handshake_secs: None,
            last_received_secs: None,
            rx_bytes: 0,
            tx_bytes: 0,
            rx_packets: 0,
            tx_packets: 0,
            rx_dropped_source: 0,
        },
        networks: Vec::new(),
        kind: KindReport::default(),
        health: HealthStatus::default(),
        phase: PhaseStatus::default(),
    }
}

/// What `status` says before the daemon has an agent and a tunnel: who it
/// is and what it will run; the phase says how far start-up is.
pub fn starting_report(config: &Config, started: Instant) -> StatusReport {
    let agent = Agent {
        container_id: String::new(),
        public_key: connector_tunnel::keys::PublicKey::from([0u8; 32]),
        image: config.agent_image.clone(),
        adopted: false,
    };
    let mut report = initial_report(config, "", "", "", &config.agent_name, &agent);
    report.docker_reachable = false;
    report.uptime_secs = started.elapsed().as_secs();
    report.firewall.detail = vec!["the daemon is starting".into()];
    report
}

/// One row per subnet decision, as `status` shows them.
pub fn network_rows(decisions: &[SubnetDecision]) -> Vec<NetworkStatus> {
    decisions
        .iter()
        .map(|d| NetworkStatus {
            name: d.network.clone(),
            subnet: d.subnet,
            state: match &d.skipped {
                None => "routed".into(),
                Some(SkipReason::Excluded { .. }) => "excluded".into(),
                Some(_) => "skipped".into(),
            },
            reason: d.skipped.as_ref().map(|r| r.to_string()),
        })
        .collect()
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
                let mut next = VERIFY_EVERY;
                if board.docker_reachable() {
                    let firewall = crate::agent::firewall_status(agents.verify_rules().await);
                    if !firewall.all_present {
                        next = VERIFY_AGAIN;
                    }
                    board.set_firewall(firewall);
                }
                let _ = tokio::time::timeout(next, wake.notified()).await;
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
