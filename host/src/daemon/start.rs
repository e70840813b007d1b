//! Start-up: everything `connector run` makes before its loop runs, in an
//! order that leaves nothing behind when it stops half-way — on an error, or
//! on SIGTERM while it waits for Docker or for the agent image.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use connector_tunnel::keys::PublicKey;
use connector_tunnel::{Tunnel, TunnelConfig};
use ipnet::IpNet;
use tokio::net::UdpSocket;

use super::health::{Health, HealthConfig};
use super::schedule::{Job, Scheduler};
use super::status::{self, StatusBoard, Verifier};
use super::{Running, HEALTH_EVERY, SAFETY_NET, TEARDOWN_BUDGET};
use crate::agent::AgentManager;
use crate::agent_link::AgentLink;
use crate::config::Config;
use crate::control::{self, SocketFile};
use crate::kind::{Kind, KindWatch};
use crate::os::{self, RouteTable, TunConfig};
use crate::plan::ConflictPolicy;
use crate::router::Router;

/// On Linux we pick the name so routes and tests can refer to it; macOS
/// assigns `utunN` itself.
fn tun_name() -> Option<String> {
    cfg!(target_os = "linux").then(|| "connector0".to_owned())
}

/// What start-up has made so far, for undoing it when start-up stops (an
/// error or a signal). The tun and the sockets close when dropped.
#[derive(Default)]
pub(super) struct Made {
    socket: Option<SocketFile>,
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
        drop(self.socket);
    }
}

pub(super) type Up = (Running, tokio::net::UnixListener, SocketFile);

/// Everything fallible happens before the agent exists, so an error leaves
/// no container behind; what is made is recorded in `made`.
pub(super) async fn start(config: &Config, started: Instant, made: &mut Made) -> Result<Up> {
    let crate::docker::Engine {
        resolved,
        docker,
        version: engine,
    } = crate::docker::wait_for_engine(config.docker_host.as_deref()).await?;
    let endpoint = resolved.endpoint;
    let host_key =
        crate::state::load_or_create_host_key(&config.state_dir, &config.host_key_path())?;
    let host_public = PublicKey::from(&host_key);
    let (listener, socket) = control::bind(&config.control_socket).await?;
    made.socket = Some(socket);
    let agents = AgentManager::new(docker.clone(), config, &host_public);
    // Fail before touching the network when the image is unusable.
    agents.image_id().await?;

    let device = os::create_tun(&TunConfig {
        name: tun_name(),
        address: config.host_tunnel_ip(),
        peer: config.agent_tunnel_ip(),
        prefix: config.tunnel.prefix_len(),
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
    made.agents = Some(agents.clone());
    let agent = agents.ensure(&|_| {}).await?;
    if agent.adopted {
        tracing::info!(container = %agent.container_id, "adopted the running agent container");
    }
    let agent_net = IpNet::V4(config.agent_tunnel_ip().into());
    let tunnel = Tunnel::spawn(
        device,
        udp,
        TunnelConfig {
            private_key: host_key,
            peer_public: agent.public_key,
            keepalive: None,
            endpoint: None,
            // Widened to the routed subnets after the first route sync.
            allowed_sources: vec![agent_net],
        },
    );
    let agent_link = AgentLink::spawn(config.host_tunnel_ip(), config.agent_tunnel_ip());
    let board = Arc::new(StatusBoard::new(
        status::initial_report(config, &endpoint, &engine, &interface, &agents, &agent),
        started,
        tunnel.stats(),
        Box::new(agent_link.status_reader()),
    ));
    let now = Instant::now();
    let running = Running {
        router: Router::new(
            table,
            interface,
            config.tunnel,
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
    let socket = made.socket.take().expect("bound above");
    Ok((running, listener, socket))
}
