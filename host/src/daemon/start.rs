//! Start-up: everything `connector run` makes before its loop runs, in an
//! order that leaves nothing behind when it stops half-way — on an error, or
//! on SIGTERM while it waits for Docker or for the agent image.

use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use connector_tunnel::keys::PublicKey;
use connector_tunnel::{Tunnel, TunnelConfig};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::health::{Health, HealthConfig};
use super::schedule::{Job, Scheduler};
use super::status::{self, StatusBoard, Verifier};
use super::{Running, HEALTH_EVERY, SAFETY_NET, TEARDOWN_BUDGET};
use crate::agent::link::AgentLink;
use crate::agent::AgentManager;
use crate::clusters::kind::watch::KindWatch;
use crate::clusters::kind::Kind;
use crate::config::Config;
use crate::control::{self, SocketFile};
use crate::progress::{Phase, Progress};
use crate::routes::os::{self, RouteTable, TunConfig};
use crate::routes::plan::{ConflictPolicy, TunnelNets};
use crate::routes::router::Router;

/// On Linux we pick the name so routes and tests can refer to it; macOS
/// assigns `utunN` itself.
fn tun_name() -> Option<String> {
    cfg!(target_os = "linux").then(|| "connector0".to_owned())
}

/// What start-up has made so far, for undoing it when start-up stops (an
/// error or a signal). The tun and the sockets close when dropped.
#[derive(Default)]
pub(super) struct Made {
    control: Option<ControlPlane>,
    agents: Option<AgentManager>,
}

impl Made {
    pub(super) async fn undo(self) {
        if let Some(agents) = self.agents {
            match tokio::time::timeout(TEARDOWN_BUDGET, agents.remove()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = format!("{e:#}"), "agent removal failed"),
                Err(_) => tracing::warn!("agent removal did not finish in time"),
            }
        }
        drop(self.control);
    }
}

/// The control socket, served from the start so `status` can say what
/// start-up is doing; its file is removed when this is dropped.
pub(super) struct ControlPlane {
    pub(super) inbox: control::Inbox,
    server: JoinHandle<()>,
    _file: SocketFile,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Everything fallible happens before the agent exists, so an error leaves
/// no container behind; what is made is recorded in `made`.
pub(super) async fn start(
    config: &Config,
    started: Instant,
    progress: Arc<Progress>,
    made: &mut Made,
) -> Result<(Running, ControlPlane)> {
    // First the control socket: `status` works (and a second daemon is
    // refused) while the rest takes its time.
    let (listener, file) = control::bind(&config.control_socket).await?;
    let board: Arc<OnceLock<Arc<StatusBoard>>> = Arc::default();
    let status = {
        let (board, progress, config) = (board.clone(), progress.clone(), config.clone());
        move || {
            let mut report = match board.get() {
                Some(board) => board.report(),
                None => status::starting_report(&config, started),
            };
            report.phase = progress.status();
            report
        }
    };
    let (inbox, server) = control::serve(listener, Arc::new(status), control::CAPS);
    made.control = Some(ControlPlane {
        inbox,
        server,
        _file: file,
    });

    progress.set(Phase::WaitingForDocker);
    let crate::engine::Engine {
        resolved,
        docker,
        version: engine,
    } = crate::engine::wait_for_engine(config.docker_host.as_deref()).await?;
    let endpoint = resolved.endpoint;
    let host_key =
        crate::state::load_or_create_host_key(&config.state_dir, &config.host_key_path())?;
    let host_public = PublicKey::from(&host_key);
    let agents = AgentManager::new(docker.clone(), config, &host_public, progress.clone());
    // Fail before touching the network when the image is unusable.
    progress.set(Phase::CheckingImage);
    agents.image_id().await?;

    let device = os::create_tun(&TunConfig {
        name: tun_name(),
        address: config.host_tunnel_ip(),
        peer: config.agent_tunnel_ip(),
        prefix: config.tunnel.prefix_len(),
        address6: config
            .host_tunnel_ip6()
            .zip(config.tunnel_v6.map(|n| n.prefix_len())),
        mtu: config.mtu,
    })?;
    let udp = UdpSocket::bind((config.listen_address, config.listen_port))
        .await
        .with_context(|| {
            format!(
                "cannot bind UDP {}:{}",
                config.listen_address, config.listen_port
            )
        })?;
    let interface = device.name().context("tun has no name")?;
    let table = RouteTable::new().await?;
    // The socket is bound before the agent starts, so its first handshake
    // waits in the socket buffer; the tunnel starts below with whatever key
    // the agent ends up with.
    progress.set(Phase::StartingAgent);
    made.agents = Some(agents.clone());
    let agent = agents.ensure(&|_| {}).await?;
    if agent.adopted {
        tracing::info!(container = %agent.container_id, "adopted the running agent container");
    }
    let tunnel = Tunnel::spawn(
        device,
        udp,
        TunnelConfig {
            private_key: host_key,
            peer_public: agent.public_key,
            keepalive: None,
            endpoint: None,
            // Widened to the routed subnets after the first route sync.
            allowed_sources: config.agent_tunnel_nets(),
            // For scripts/bench: measure on Linux the path macOS runs.
            per_packet: std::env::var("CONNECTOR_DATA_PATH").is_ok_and(|v| v == "per-packet"),
        },
    );
    let agent_link = AgentLink::spawn(config.host_tunnel_ip(), config.agent_tunnel_ip());
    let report = status::initial_report(
        config,
        &endpoint,
        &engine,
        &interface,
        agents.name(),
        &agent,
    );
    let board = board
        .get_or_init(|| {
            Arc::new(StatusBoard::new(
                report,
                started,
                tunnel.stats(),
                Box::new(agent_link.status_reader()),
            ))
        })
        .clone();
    let now = Instant::now();
    let running = Running {
        router: Router::new(
            table,
            interface,
            TunnelNets::of(config),
            config.networks.clone(),
            ConflictPolicy::new(config.allow_conflicts.clone()),
        ),
        kind: Kind::new(config.kind.clone()),
        kind_watch: KindWatch::spawn(docker.clone()),
        verifier: Verifier::spawn(agents.clone(), board.clone()),
        agent_link,
        board,
        health: Health::new(HealthConfig::default(), now, SystemTime::now()),
        schedule: Scheduler::new(
            now,
            &[(Job::Resync, SAFETY_NET), (Job::Health, HEALTH_EVERY)],
        ),
        progress,
        config: config.clone(),
        docker,
        agents,
        agent,
        tunnel,
        started,
        docker_up: true,
        agent_error: None,
    };
    made.agents = None; // owned by `running` now
    let control = made.control.take().expect("served above");
    Ok((running, control))
}
