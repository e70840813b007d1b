//! `connector run`: sets everything up, serves the control socket, and undoes
//! its work on SIGINT/SIGTERM.
//!
//! Ownership: the tunnel tasks own the tun and the UDP socket; the [`Router`]
//! owns the host routes; the [`AgentManager`] owns the agent container (and
//! through the agent, the VM firewall rules). This task holds all three and
//! tears them down in reverse order.

use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use bollard::Docker;
use connector_tunnel::keys::PublicKey;
use connector_tunnel::{Tunnel, TunnelConfig};
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};

use crate::agent::{Agent, AgentManager};
use crate::config::Config;
use crate::control;
use crate::os::{self, RouteTable, TunConfig};
use crate::plan::SkipReason;
use crate::protocol::{AgentStatus, NetworkStatus, Request, Response, StatusReport, TunnelStatus};
use crate::router::Router;

/// On Linux we pick the name so routes and tests can refer to it; macOS
/// assigns `utunN` itself.
fn tun_name() -> Option<String> {
    cfg!(target_os = "linux").then(|| "connector0".to_owned())
}

/// Where the Docker engine is: config, then `DOCKER_HOST`, then discovery.
fn docker_endpoint(config: &Config) -> Result<String> {
    let resolved = crate::discovery::resolve(config.docker_host.as_deref(), &crate::discovery::SystemEnv)
        .context("cannot find the Docker engine")?;
    tracing::info!(endpoint = %resolved.endpoint, why = %resolved.why, "Docker endpoint");
    Ok(resolved.endpoint)
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
}

pub async fn run(config: Config) -> Result<()> {
    let started = Instant::now();
    let endpoint = docker_endpoint(&config)?;
    let docker = crate::docker::connect(&endpoint).await?;
    let engine = crate::docker::engine_version(&docker).await?;
    tracing::info!(%engine, "connected to Docker");

    let host_key = crate::state::load_or_create_host_key(&config.state_dir, &config.host_key_path())?;
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
        .with_context(|| format!("cannot bind UDP {}:{}", config.listen_address, config.listen_port))?;
    // Bound before the agent starts, so its first handshake waits in the
    // socket buffer instead of being refused.
    let agent = agents.ensure().await?;
    let tunnel = Tunnel::spawn(
        device,
        socket,
        TunnelConfig {
            private_key: host_key,
            peer_public: agent.public_key,
            keepalive: None,
            endpoint: None,
        },
    );
    let mut running = Running {
        router: Router::new(
            RouteTable::new().await?,
            tunnel.interface_name().context("tun has no name")?,
            config.tunnel,
            config.networks.clone(),
        ),
        config,
        docker,
        endpoint,
        engine,
        agents,
        agent,
        tunnel,
        started,
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
        if self.agent.adopted {
            // Our previous incarnation held the session; ask for a new one.
            if let Err(e) = self.agents.nudge().await {
                tracing::warn!(error = format!("{e:#}"), "could not nudge the adopted agent");
            }
        }
        let report = self.router.sync(&self.docker).await?;
        tracing::info!(
            routed = report.routed.len(),
            skipped = report.skipped.len(),
            interface = %self.router_interface(),
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "ready"
        );
        let (mut inbox, server) = control::serve(listener);
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let result = loop {
            tokio::select! {
                _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break Ok(()) }
                _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break Ok(()) }
                error = self.tunnel.failed() => break Err(error).context("tunnel failed"),
                Some((request, reply)) = inbox.recv() => {
                    let response = self.handle(request).await;
                    let _ = reply.send(response);
                }
            }
        };
        server.abort();
        let _ = std::fs::remove_file(&self.config.control_socket);
        result
    }

    fn router_interface(&self) -> String {
        self.tunnel.interface_name().unwrap_or_default()
    }

    async fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::SyncNetworks => match self.router.sync(&self.docker).await {
                Ok(report) => Response::Sync(report),
                Err(e) => Response::Error { message: format!("{e:#}") },
            },
            Request::Status => Response::Status(Box::new(self.status())),
        }
    }

    fn status(&self) -> StatusReport {
        let stats = self.tunnel.stats().snapshot();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            docker_endpoint: self.endpoint.clone(),
            engine_version: self.engine.clone(),
            agent: AgentStatus {
                name: self.agents.name().to_owned(),
                container_id: self.agent.container_id.clone(),
                image: self.agent.image.clone(),
                adopted: self.agent.adopted,
            },
            tunnel: TunnelStatus {
                interface: self.router_interface(),
                address: format!("{}/{}", self.config.host_tunnel_ip(), self.config.tunnel.prefix_len()),
                listen: format!("{}:{}", self.config.listen_address, self.config.listen_port),
                endpoint: stats.endpoint.map(|e| e.to_string()),
                last_handshake_secs: stats.handshake_age(SystemTime::now()).map(|d| d.as_secs()),
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
        }
    }

    /// Routes first (so nothing points at a dead tunnel), then the agent
    /// (which removes its VM firewall rules on SIGTERM), then the tun.
    async fn shutdown(self) {
        let Running { mut router, agents, tunnel, .. } = self;
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
