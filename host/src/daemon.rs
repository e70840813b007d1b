//! `connector run`: sets everything up, serves the control socket, and undoes
//! its work on SIGINT/SIGTERM.
//!
//! Ownership: the tunnel tasks own the tun and the UDP socket; the [`Router`]
//! owns the host routes; the [`AgentManager`] owns the agent container (and
//! through the agent, the VM firewall rules). This task holds all three and
//! tears them down in reverse order.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bollard::Docker;
use connector_tunnel::keys::PublicKey;
use connector_tunnel::{Tunnel, TunnelConfig};
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::sleep_until;

use crate::agent::{Agent, AgentManager};
use crate::agent_link::AgentLink;
use crate::config::Config;
use crate::control;
use crate::events::{self, Trigger};
use crate::kind::{Kind, KindReport};
use crate::os::{self, RouteTable, TunConfig};
use crate::plan::SkipReason;
use crate::protocol::{
    AgentStatus, FirewallStatus, NetworkStatus, Request, Response, StatusReport, TunnelStatus,
};
use crate::router::Router;

/// On Linux we pick the name so routes and tests can refer to it; macOS
/// assigns `utunN` itself.
fn tun_name() -> Option<String> {
    cfg!(target_os = "linux").then(|| "connector0".to_owned())
}

/// Finds and connects to the engine, waiting (capped backoff, one log line)
/// while it is not there yet — under launchd the daemon often starts before
/// Docker Desktop. Misconfiguration (OrbStack, a broken context) is fatal.
async fn wait_for_docker(config: &Config) -> Result<Option<(String, Docker, String)>> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut backoff = Duration::from_millis(250);
    let mut waiting = false;
    loop {
        match crate::docker::connect_configured(config.docker_host.as_deref()).await {
            Ok(crate::docker::Engine {
                resolved,
                docker,
                version: engine,
            }) => {
                tracing::info!(endpoint = %resolved.endpoint, why = %resolved.why, %engine, "connected to Docker");
                return Ok(Some((resolved.endpoint, docker, engine)));
            }
            Err(e)
                if e.downcast_ref::<crate::discovery::DiscoveryError>()
                    .is_some_and(|d| {
                        !matches!(d, crate::discovery::DiscoveryError::NotFound { .. })
                    }) =>
            {
                return Err(e).context("cannot find the Docker engine")
            }
            Err(e) => {
                if !waiting {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "Docker is not reachable yet; waiting for it"
                    );
                    waiting = true;
                }
            }
        }
        tokio::select! {
            _ = sigterm.recv() => return Ok(None),
            _ = sigint.recv() => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A full reconcile (agent and routes) runs this often even without events.
const SAFETY_NET: Duration = Duration::from_secs(30);
/// Events arriving in a burst are handled together.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the data path is checked.
const HEALTH_EVERY: Duration = Duration::from_secs(2);
/// Silence from the agent (it sends a keepalive every 20 s) after which we
/// ask it to handshake again, and after which we replace it.
const SILENCE_NUDGE: Duration = Duration::from_secs(25);
const SILENCE_REPLACE: Duration = Duration::from_secs(45);

/// Work waiting for its debounce deadline.
#[derive(Default)]
struct Pending {
    networks: bool,
    agent: bool,
    deadline: Option<tokio::time::Instant>,
}

impl Pending {
    fn schedule(&mut self, after: Duration) {
        let at = tokio::time::Instant::now() + after;
        self.deadline = Some(self.deadline.map_or(at, |d| d.max(at)));
    }
}

struct Running {
    config: Config,
    docker: Docker,
    endpoint: String,
    engine: String,
    agents: AgentManager,
    agent: Agent,
    tunnel: Tunnel,
    router: Router,
    started: Instant,
    docker_up: bool,
    /// When the data path was last (re)established on our side: creation,
    /// adoption, nudge. Silence is measured from here or the last datagram.
    agent_since: Instant,
    nudged: bool,
    /// The last agent error logged, so a persisting failure logs once.
    agent_error: Option<String>,
    /// kind clusters: discovery, plan and status.
    kind: Kind,
    /// Delivers the VM routes (kind pods and Services) to the agent.
    agent_link: AgentLink,
}

pub async fn run(config: Config) -> Result<()> {
    let started = Instant::now();
    let Some((endpoint, docker, engine)) = wait_for_docker(&config).await? else {
        tracing::info!("stopped before Docker came up");
        return Ok(());
    };

    let host_key =
        crate::state::load_or_create_host_key(&config.state_dir, &config.host_key_path())?;
    let host_public = PublicKey::from(&host_key);
    let listener = control::bind(&config.control_socket).await?;
    let agents = AgentManager::new(docker.clone(), &config, &host_public);
    // Fail before touching the network when the image is unusable.
    agents.image_id().await?;

    let device = os::create_tun(&TunConfig {
        name: tun_name(),
        address: config.host_tunnel_ip(),
        peer: config.agent_tunnel_ip(),
        prefix: config.tunnel.prefix_len(),
        mtu: config.mtu,
    })?;
    let socket = UdpSocket::bind((config.listen_address, config.listen_port))
        .await
        .with_context(|| {
            format!(
                "cannot bind UDP {}:{}",
                config.listen_address, config.listen_port
            )
        })?;
    // Everything fallible happens before the agent exists, so an error
    // leaves no container behind.
    let interface = device.name().context("tun has no name")?;
    let table = RouteTable::new().await?;
    // The socket is bound before the agent starts, so its first handshake
    // waits in the socket buffer; the tunnel starts below with whatever key
    // the agent ends up with.
    let agent = agents.ensure(&|_| {}).await?;
    if agent.adopted {
        tracing::info!(container = %agent.container_id, "adopted the running agent container");
    }
    let tunnel = Tunnel::spawn(
        device,
        socket,
        TunnelConfig {
            private_key: host_key,
            peer_public: agent.public_key,
            keepalive: None,
            endpoint: None,
            allowed_sources: vec![ipnet::IpNet::V4(config.agent_tunnel_ip().into())],
        },
    );
    let mut running = Running {
        router: Router::new(table, interface, config.tunnel, config.networks.clone()),
        kind: Kind::new(config.kind.clone()),
        agent_link: AgentLink::spawn(config.host_tunnel_ip(), config.agent_tunnel_ip()),
        config,
        docker,
        endpoint,
        engine,
        agents,
        agent,
        tunnel,
        started,
        docker_up: true,
        agent_since: Instant::now(),
        nudged: false,
        agent_error: None,
    };
    let result = running.serve(listener).await;
    running.shutdown().await;
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "daemon stopped on error");
    }
    result
}

impl Running {
    async fn serve(&mut self, listener: tokio::net::UnixListener) -> Result<()> {
        // Subscribed before the first sync, so nothing between the two is missed.
        let (trigger_tx, mut triggers) = mpsc::channel(256);
        let follower = tokio::spawn(events::follow(self.docker.clone(), trigger_tx));
        if self.agent.adopted {
            // Our previous incarnation held the session; ask for a new one.
            if let Err(e) = self.agents.nudge().await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not nudge the adopted agent"
                );
            }
        }
        let report = match self.sync_routes().await {
            Ok(report) => report,
            Err(e) => {
                follower.abort();
                return Err(e);
            }
        };
        tracing::info!(
            routed = report.routed.len(),
            skipped = report.skipped.len(),
            interface = %self.router.interface(),
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "ready"
        );
        let (mut inbox, server) = control::serve(listener);
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut safety = tokio::time::interval(SAFETY_NET);
        safety.reset();
        let mut health = tokio::time::interval(HEALTH_EVERY);
        let mut pending = Pending::default();
        self.kind_retry(&mut pending);
        let result = loop {
            let deadline = pending.deadline;
            tokio::select! {
                _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break Ok(()) }
                _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break Ok(()) }
                error = self.tunnel.failed() => break Err(error).context("tunnel failed"),
                Some((request, reply)) = inbox.recv() => {
                    let response = self.handle(request).await;
                    let _ = reply.send(response);
                }
                Some(trigger) = triggers.recv() => self.on_trigger(trigger, &mut pending),
                _ = async { sleep_until(deadline.unwrap()).await }, if deadline.is_some() => {
                    let Pending { networks, agent, .. } = std::mem::take(&mut pending);
                    if agent {
                        self.reconcile_agent().await;
                        // Same container restarted by Docker, or a new one:
                        // either way it needs the VM routes again.
                        self.agent_link.resend();
                    }
                    if networks {
                        self.reconcile_routes().await;
                        self.kind_retry(&mut pending);
                    }
                }
                _ = safety.tick() => {
                    if self.docker_up {
                        self.reconcile_agent().await;
                        self.reconcile_routes().await;
                        self.kind_retry(&mut pending);
                    }
                }
                _ = health.tick() => self.check_data_path().await,
            }
        };
        follower.abort();
        server.abort();
        let _ = std::fs::remove_file(&self.config.control_socket);
        result
    }

    fn on_trigger(&mut self, trigger: Trigger, pending: &mut Pending) {
        match trigger {
            Trigger::Networks => {
                pending.networks = true;
                pending.schedule(DEBOUNCE);
            }
            Trigger::Agent { action } => {
                pending.agent = true;
                // A container Docker is about to restart is judged
                // "restarting" and left alone, so no grace period is needed.
                tracing::debug!(%action, "agent container event");
                let settle = DEBOUNCE;
                pending.schedule(settle);
            }
            Trigger::KindNode { .. } => {
                pending.networks = true;
                pending.schedule(DEBOUNCE);
            }
            Trigger::DockerDown { error } => {
                self.docker_up = false;
                tracing::warn!(%error, "Docker went away; routes stay until it returns");
            }
            Trigger::DockerUp => {
                self.docker_up = true;
                pending.agent = true;
                pending.networks = true;
                pending.schedule(DEBOUNCE);
            }
        }
    }

    /// Keeps exactly one agent running with our config; follows its key.
    async fn reconcile_agent(&mut self) {
        let tunnel = &self.tunnel;
        match self.agents.ensure(&|key| tunnel.set_peer(*key)).await {
            Ok(agent) => {
                if self.agent_error.take().is_some() {
                    tracing::info!("agent container is healthy again");
                }
                if agent.container_id != self.agent.container_id {
                    tracing::info!(container = %agent.container_id, adopted = agent.adopted, "agent container changed");
                    // A new agent's key was installed before it started;
                    // an adopted one may still differ from what we had.
                    if agent.adopted
                        && agent.public_key.as_bytes() != self.agent.public_key.as_bytes()
                    {
                        self.tunnel.set_peer(agent.public_key);
                    }
                    self.agent_since = Instant::now();
                    self.nudged = false;
                    self.agent = agent;
                    self.agent_link.resend();
                }
            }
            Err(e) => {
                let text = format!("{e:#}");
                if self.agent_error.as_deref() != Some(text.as_str()) {
                    tracing::error!(error = %text, "cannot ensure the agent container");
                    self.agent_error = Some(text);
                }
            }
        }
    }

    /// Docker networks and kind's pod/Service CIDRs on the host, then the
    /// kind VM routes to the agent. Every route sync goes through here, so a
    /// plain sync never drops the kind routes.
    async fn sync_routes(&mut self) -> Result<crate::protocol::SyncReport> {
        let kind = self.kind.plan(&self.docker).await?;
        let report = self.router.sync_with(&self.docker, &kind.extra).await?;
        let vm_routes = self.kind.settle(kind, self.router.decisions());
        self.agent_link.push(vm_routes);
        Ok(report)
    }

    /// A kind cluster still starting is looked at again soon.
    fn kind_retry(&self, pending: &mut Pending) {
        if let Some(after) = self.kind.retry_after() {
            pending.networks = true;
            pending.schedule(after);
        }
    }

    async fn reconcile_routes(&mut self) {
        match self.sync_routes().await {
            Ok(report) if !report.added.is_empty() || !report.removed.is_empty() => {
                tracing::info!(
                    added = report.added.len(),
                    removed = report.removed.len(),
                    routed = report.routed.len(),
                    "routes reconciled"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = format!("{e:#}"), "route reconcile failed"),
        }
    }

    /// Notices a dead data path with a live Docker socket (VM paused by
    /// Resource Saver, host sleep, lost UDP mapping): first asks the agent to
    /// handshake again, then replaces it.
    async fn check_data_path(&mut self) {
        if !self.docker_up {
            return;
        }
        let stats = self.tunnel.stats().snapshot();
        let since_datagram = stats.received_age(Instant::now());
        let silence = match since_datagram {
            Some(d) => d.min(self.agent_since.elapsed()),
            None => self.agent_since.elapsed(),
        };
        if silence >= SILENCE_REPLACE {
            tracing::warn!(
                silence_s = silence.as_secs(),
                "no datagram from the agent; replacing it"
            );
            if let Err(e) = self.agents.remove().await {
                tracing::warn!(error = format!("{e:#}"), "cannot remove the silent agent");
            }
            self.agent.container_id.clear();
            self.reconcile_agent().await;
            self.agent_since = Instant::now();
            self.nudged = false;
        } else if silence >= SILENCE_NUDGE && !self.nudged {
            tracing::warn!(
                silence_s = silence.as_secs(),
                "agent silent; asking it to handshake again"
            );
            self.nudged = true;
            if let Err(e) = self.agents.nudge().await {
                tracing::debug!(error = format!("{e:#}"), "nudge failed");
            }
        } else if silence < SILENCE_NUDGE {
            self.nudged = false;
        }
    }

    async fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::SyncNetworks => match self.sync_routes().await {
                Ok(report) => Response::Sync(report),
                Err(e) => Response::Error {
                    message: format!("{e:#}"),
                },
            },
            Request::Status => {
                let mut status = self.status();
                if self.docker_up {
                    status.firewall = firewall_status(self.agents.verify_rules().await);
                }
                Response::Status(Box::new(status))
            }
        }
    }

    fn status(&self) -> StatusReport {
        let stats = self.tunnel.stats().snapshot();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            docker_endpoint: self.endpoint.clone(),
            docker_reachable: self.docker_up,
            engine_version: self.engine.clone(),
            firewall: FirewallStatus {
                backend: None,
                all_present: false,
                detail: vec!["Docker is unreachable; cannot ask the agent".into()],
            },
            agent: AgentStatus {
                name: self.agents.name().to_owned(),
                container_id: self.agent.container_id.clone(),
                image: self.agent.image.clone(),
                adopted: self.agent.adopted,
                error: self.agent_error.clone(),
            },
            tunnel: TunnelStatus {
                interface: self.router.interface().to_owned(),
                address: format!(
                    "{}/{}",
                    self.config.host_tunnel_ip(),
                    self.config.tunnel.prefix_len()
                ),
                listen: format!("{}:{}", self.config.listen_address, self.config.listen_port),
                endpoint: stats.endpoint.map(|e| e.to_string()),
                last_handshake_secs: stats.handshake_age(Instant::now()).map(|d| d.as_secs()),
                last_received_secs: stats.received_age(Instant::now()).map(|d| d.as_secs()),
                rx_bytes: stats.rx_bytes,
                tx_bytes: stats.tx_bytes,
                rx_packets: stats.rx_packets,
                tx_packets: stats.tx_packets,
            },
            networks: self
                .router
                .decisions()
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
                .collect(),
            kind: KindReport {
                clusters: self.kind.clusters().to_vec(),
                vm_routes: self.agent_link.status(),
            },
        }
    }

    /// Routes first (so nothing points at a dead tunnel), then the agent
    /// (which removes its VM firewall rules on SIGTERM), then the tun.
    async fn shutdown(self) {
        let Running {
            mut router,
            agents,
            tunnel,
            ..
        } = self;
        match router.teardown().await {
            Ok(n) => tracing::info!(removed = n, "routes removed"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "route cleanup failed"),
        }
        match agents.remove().await {
            Ok(()) => tracing::info!(container = agents.name(), "agent container removed"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "agent removal failed"),
        }
        tunnel.shutdown().await;
        tracing::info!("stopped");
    }
}

/// Turns `connector-agent verify` output into the status section.
fn firewall_status(result: Result<crate::docker::ExecOutput>) -> FirewallStatus {
    match result {
        Err(e) => FirewallStatus {
            backend: None,
            all_present: false,
            detail: vec![format!("{e:#}")],
        },
        Ok(out) => {
            let lines: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
            let backend = ["nft", "legacy"]
                .into_iter()
                .find(|b| {
                    out.stdout.contains(&format!("({b})")) || out.stdout.contains(&format!("[{b}]"))
                })
                .map(str::to_owned);
            let mut detail: Vec<String> = lines
                .into_iter()
                .filter(|l| !l.starts_with("ok:"))
                .collect();
            if out.exit_code != 0 && detail.is_empty() {
                detail.push(
                    out.stderr
                        .lines()
                        .last()
                        .unwrap_or("verify failed")
                        .to_owned(),
                );
            }
            FirewallStatus {
                backend,
                all_present: out.exit_code == 0,
                detail,
            }
        }
    }
}
