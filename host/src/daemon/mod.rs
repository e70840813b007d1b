//! `connector run`: sets everything up, serves the control socket, and undoes
//! its work on SIGINT/SIGTERM — at any moment, start-up included.
//!
//! Ownership: the tunnel tasks own the tun and the UDP socket; the [`Router`]
//! owns the host routes; the [`AgentManager`] owns the agent container (and
//! through the agent, the VM firewall rules and routes); the kind task owns
//! discovery; the status board answers `status`. This task holds them and
//! tears them down in reverse order.
//!
//! The decisions live in pure types: [`schedule::Scheduler`] says when each
//! kind of work is due, [`health::Health`] what to do about a silent agent,
//! the planners (`routes::plan`, `clusters::kind::plan`) what routes should
//! exist. This file only wires them to I/O.

mod health;
mod schedule;
mod start;
mod status;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use bollard::Docker;
use connector_protocol::signals::Shutdown;
use connector_tunnel::Tunnel;
use ipnet::IpNet;
use tokio::sync::mpsc;

use crate::agent::link::AgentLink;
use crate::agent::{Agent, AgentManager};
use crate::clusters::kind::watch::KindWatch;
use crate::clusters::kind::{Kind, Limits};
use crate::config::Config;
use crate::control;
use crate::control::protocol::{Request, Response, SyncReport};
use crate::engine::events::{self, Trigger};
use crate::progress::{Phase, Progress};
use crate::routes::os;
use crate::routes::router::Router;
use health::{Action, Health, Why};
use schedule::{Job, Scheduler};
use status::{StatusBoard, Verifier};

/// A full reconcile (agent, kind, routes) runs this often even without events.
const SAFETY_NET: Duration = Duration::from_secs(30);
/// Events arriving in a burst are handled together.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the data path is checked.
const HEALTH_EVERY: Duration = Duration::from_secs(2);
/// Teardown must end well inside launchd's 20 s before SIGKILL.
const TEARDOWN_BUDGET: Duration = Duration::from_secs(14);

pub async fn run(config: Config) -> Result<()> {
    // First: from here on no signal is lost.
    let mut shutdown = Shutdown::install().context("installing the SIGTERM/SIGINT handlers")?;
    let started = Instant::now();
    let progress = Arc::new(Progress::new(std::io::stderr().is_terminal()));
    let mut made = start::Made::default();
    let outcome = tokio::select! {
        biased;
        signal = shutdown.recv() => {
            tracing::info!(signal, "stopped during start-up; undoing what was set up");
            None
        }
        up = start::start(&config, started, progress, &mut made) => Some(up),
    };
    let (mut running, mut control) = match outcome {
        None => {
            made.undo().await;
            return Ok(());
        }
        Some(Err(e)) => {
            made.undo().await;
            return Err(e);
        }
        Some(Ok(up)) => up,
    };
    let result = running.serve(&mut control.inbox, &mut shutdown).await;
    drop(control);
    running.shutdown().await;
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "daemon stopped on error");
    }
    result
}

/// What the loop does next, once it is sure it is not stopping.
enum Work {
    Request((Request, tokio::sync::oneshot::Sender<Response>)),
    Jobs(Vec<Job>),
}

struct Running {
    config: Config,
    docker: Docker,
    agents: AgentManager,
    agent: Agent,
    tunnel: Tunnel,
    router: Router,
    started: Instant,
    docker_up: bool,
    /// The last agent error logged, so a persisting failure logs once.
    agent_error: Option<String>,
    /// kind clusters: planning and status; discovery runs in `kind_watch`.
    kind: Kind,
    kind_watch: KindWatch,
    /// Delivers the VM routes (kind pods and Services) to the agent.
    agent_link: AgentLink,
    board: Arc<StatusBoard>,
    verifier: Verifier,
    health: Health,
    schedule: Scheduler,
    /// Start-up's phases; a later pull or build of the agent image too.
    progress: Arc<Progress>,
}

impl Running {
    async fn serve(&mut self, inbox: &mut control::Inbox, shutdown: &mut Shutdown) -> Result<()> {
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
        self.board.set_health(&self.health);
        self.progress.set(Phase::Ready);
        let result = loop {
            let next = self.schedule.next();
            let work = tokio::select! {
                signal = shutdown.recv() => {
                    tracing::info!(signal, "shutting down");
                    break Ok(());
                }
                error = self.tunnel.failed() => break Err(error).context("tunnel failed"),
                Some(request) = inbox.recv() => Work::Request(request),
                Some(trigger) = triggers.recv() => {
                    self.on_trigger(trigger, Instant::now());
                    continue;
                }
                () = self.kind_watch.scanned() => {
                    self.schedule.soon(Job::Routes, Instant::now(), DEBOUNCE);
                    continue;
                }
                () = sleep_until(next) => Work::Jobs(self.schedule.take_due(Instant::now())),
            };
            // Work is idempotent: a signal may cut it short; the teardown (or
            // the next start) settles what it left.
            tokio::select! {
                biased;
                signal = shutdown.recv() => {
                    tracing::info!(signal, "shutting down");
                    break Ok(());
                }
                () = self.work(work) => {}
            }
        };
        follower.abort();
        result
    }

    fn on_trigger(&mut self, trigger: Trigger, now: Instant) {
        match trigger {
            Trigger::Networks => self.schedule.soon(Job::Routes, now, DEBOUNCE),
            Trigger::Agent { action } => {
                // A container Docker is about to restart is judged
                // "restarting" and left alone, so no grace period is needed.
                tracing::debug!(%action, "agent container event");
                self.schedule.soon(Job::Agent, now, DEBOUNCE);
            }
            Trigger::KindNode { .. } => self.kind_watch.rescan(),
            Trigger::DockerDown { error } => {
                self.set_docker_up(false);
                tracing::warn!(%error, "Docker went away; routes stay until it returns");
            }
            Trigger::DockerUp | Trigger::Resync => {
                self.set_docker_up(true);
                self.schedule.soon(Job::Agent, now, DEBOUNCE);
                self.schedule.soon(Job::Routes, now, DEBOUNCE);
                self.kind_watch.rescan();
            }
        }
    }

    fn set_docker_up(&mut self, up: bool) {
        self.docker_up = up;
        self.board.update(|r| r.docker_reachable = up);
    }

    async fn work(&mut self, work: Work) {
        match work {
            Work::Request((request, reply)) => {
                let _ = reply.send(self.handle(request).await);
            }
            Work::Jobs(jobs) => self.run_jobs(jobs).await,
        }
    }

    async fn run_jobs(&mut self, jobs: Vec<Job>) {
        for job in jobs {
            match job {
                Job::Agent => {
                    self.reconcile_agent().await;
                    // Same container restarted by Docker, or a new one:
                    // either way it needs the VM routes again.
                    self.agent_link.resend();
                }
                Job::Routes => self.reconcile_routes().await,
                Job::KindRescan => self.kind_watch.rescan(),
                Job::Resync => {
                    if self.docker_up {
                        self.reconcile_agent().await;
                        self.kind_watch.rescan();
                        self.reconcile_routes().await;
                    }
                }
                Job::Health => self.check_health().await,
            }
        }
    }

    /// Keeps exactly one agent running with our config; follows its key.
    async fn reconcile_agent(&mut self) {
        let tunnel = &self.tunnel;
        match self.agents.ensure(&|key| tunnel.set_peer(*key)).await {
            Ok(agent) => {
                // A pull or build on the way (the image was deleted) is over.
                self.progress.set(Phase::Ready);
                if self.agent_error.take().is_some() {
                    tracing::info!("agent container is healthy again");
                    self.board.update(|r| r.agent.error = None);
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
                    self.health.agent_changed(Instant::now());
                    self.board.update(|r| {
                        r.agent.container_id = agent.container_id.clone();
                        r.agent.image = agent.image.clone();
                        r.agent.adopted = agent.adopted;
                    });
                    self.agent = agent;
                    self.agent_link.resend();
                    self.verifier.refresh();
                }
            }
            Err(e) => {
                let text = format!("{e:#}");
                if self.agent_error.as_deref() != Some(text.as_str()) {
                    tracing::error!(error = %text, "cannot ensure the agent container");
                    self.agent_error = Some(text.clone());
                    self.board.update(|r| r.agent.error = Some(text));
                }
            }
        }
    }

    /// Docker networks and the kind CIDRs of the latest scan on the host,
    /// then the kind VM routes to the agent, then the tunnel's source filter.
    /// Every route sync goes through here, so a plain sync never drops the
    /// kind routes.
    async fn sync_routes(&mut self) -> Result<SyncReport> {
        let networks = crate::engine::bridge_networks(&self.docker).await?;
        let limits = Limits {
            docker: networks
                .iter()
                .flat_map(|n| n.subnets.iter().map(|s| (n.name.clone(), s.trunc())))
                .collect(),
            host: os::interface_networks(self.router.interface()),
            tunnel: Some(IpNet::V4(self.config.tunnel)),
        };
        let kind = self.kind.plan(&self.kind_watch.latest(), &limits);
        let report = self.router.sync(&networks, &kind.extra).await?;
        let vm_routes = self.kind.settle(kind, self.router.decisions());
        self.agent_link.push(vm_routes);
        // WireGuard's allowed IPs: the agent may send from what we route to
        // it (replies) and from its own tunnel address.
        let mut sources: Vec<IpNet> = self.router.routed().collect();
        sources.extend(self.config.agent_tunnel_nets());
        self.tunnel.set_allowed_sources(sources);
        self.publish_routes();
        self.schedule_kind_retry();
        Ok(report)
    }

    /// A kind cluster still starting is looked at again later, on its own
    /// deadline (never delaying any other work).
    fn schedule_kind_retry(&mut self) {
        if !self.kind.pending() {
            self.schedule.cancel(Job::KindRescan);
        } else if self.schedule.deadline(Job::KindRescan).is_none() {
            if let Some(after) = self.kind.next_retry() {
                self.schedule.at(Job::KindRescan, Instant::now() + after);
            }
        }
    }

    fn publish_routes(&self) {
        let networks = status::network_rows(self.router.decisions());
        let clusters = self.kind.clusters().to_vec();
        self.board.update(|r| {
            r.networks = networks;
            r.kind.clusters = clusters;
        });
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
    /// Resource Saver, host sleep, lost UDP mapping) and acts on what the
    /// health machine decides.
    async fn check_health(&mut self) {
        let last_heard = self.tunnel.stats().snapshot().last_received;
        let action = self.health.tick(
            Instant::now(),
            SystemTime::now(),
            last_heard,
            self.docker_up,
        );
        match action {
            Action::Nothing => {}
            Action::Nudge(why) => {
                match why {
                    Why::Silent => tracing::warn!("agent silent; asking it to handshake again"),
                    Why::Resumed => tracing::info!(
                        "resumed after not running for a while (sleep?); asking the agent to handshake again"
                    ),
                }
                if let Err(e) = self.agents.nudge().await {
                    tracing::debug!(error = format!("{e:#}"), "nudge failed");
                }
            }
            Action::Replace => {
                let status = self.health.status(Instant::now(), last_heard);
                tracing::warn!(
                    silence_s = status.silence_secs,
                    replacements = status.replacements,
                    "no datagram from the agent; replacing it"
                );
                if let Err(e) = self.agents.remove().await {
                    tracing::warn!(error = format!("{e:#}"), "cannot remove the silent agent");
                }
                self.agent.container_id.clear();
                self.reconcile_agent().await;
            }
        }
        self.board.set_health(&self.health);
    }

    async fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::SyncNetworks => {
                self.kind_watch.rescan();
                match self.sync_routes().await {
                    Ok(report) => Response::Sync(report),
                    Err(e) => Response::Error {
                        message: format!("{e:#}"),
                    },
                }
            }
            // Answered by the control task from the board.
            Request::Status => Response::Status(Box::new(self.board.report())),
        }
    }

    /// Routes first (so nothing points at a dead tunnel), then the agent
    /// (which removes its VM firewall rules on SIGTERM), then the tun; all of
    /// it within launchd's patience.
    async fn shutdown(self) {
        let Running {
            mut router,
            agents,
            tunnel,
            kind_watch,
            verifier,
            ..
        } = self;
        drop((kind_watch, verifier));
        match router.teardown().await {
            Ok(n) => tracing::info!(removed = n, "routes removed"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "route cleanup failed"),
        }
        match tokio::time::timeout(TEARDOWN_BUDGET, agents.remove()).await {
            Ok(Ok(())) => tracing::info!(container = agents.name(), "agent container removed"),
            Ok(Err(e)) => tracing::warn!(error = format!("{e:#}"), "agent removal failed"),
            Err(_) => tracing::warn!(
                container = agents.name(),
                "agent removal did not finish in time; the next start replaces it"
            ),
        }
        tunnel.shutdown().await;
        tracing::info!("stopped");
    }
}

/// Sleeps until `deadline`, forever if there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
