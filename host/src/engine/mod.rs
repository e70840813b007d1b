//! Talking to the Docker engine: connecting (with API version negotiation)
//! and taking the network snapshot the planner works from.

pub mod events;
pub mod snapshot;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use backon::{BackoffBuilder, ExponentialBuilder};
use bollard::query_parameters::ListNetworksOptions;
use bollard::Docker;
use ipnet::IpNet;

use crate::routes::plan::DockerNetwork;

pub const ENGINE_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Pauses between attempts to reach an engine that does not answer yet.
pub const ENGINE_BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(250))
    .with_max_delay(ENGINE_BACKOFF_MAX)
    .without_max_times();

/// How long one API call may take before we call the engine unresponsive.
const API_TIMEOUT_SECS: u64 = 30;

/// Connects to `endpoint` (`unix:///path`, `/path`, or `tcp://host:port`) and
/// negotiates the API version, so old and new engines both work.
pub async fn connect(endpoint: &str) -> Result<Docker> {
    let docker = if let Some(path) = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.starts_with('/').then_some(endpoint))
    {
        Docker::connect_with_unix(path, API_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
    } else if endpoint.starts_with("tcp://") || endpoint.starts_with("http://") {
        Docker::connect_with_http(endpoint, API_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
    } else {
        bail!("unsupported Docker endpoint {endpoint:?} (expected unix:// or tcp://)");
    }
    .with_context(|| format!("cannot connect to Docker at {endpoint}"))?;
    let docker = docker
        .negotiate_version()
        .await
        .with_context(|| format!("Docker at {endpoint} does not answer"))?;
    Ok(docker)
}

/// A connected engine, found the way the daemon finds it.
pub struct Engine {
    pub resolved: crate::engine::snapshot::Resolved,
    pub docker: Docker,
    /// [`engine_version`] of it.
    pub version: String,
}

/// Finds the engine (config `docker_host`, then discovery), connects and
/// reads its version. A discovery failure stays a [`DiscoveryError`] inside
/// the error, so callers can tell "not there yet" from misconfiguration.
///
/// [`DiscoveryError`]: crate::engine::snapshot::DiscoveryError
pub async fn connect_configured(configured: Option<&str>) -> Result<Engine> {
    let resolved =
        crate::engine::snapshot::resolve(configured, &crate::engine::snapshot::SystemEnv)?;
    let docker = connect(&resolved.endpoint).await?;
    let version = engine_version(&docker).await?;
    Ok(Engine {
        resolved,
        docker,
        version,
    })
}

/// [`connect_configured`], waiting (capped backoff, one log line) while no
/// engine answers yet — under launchd the daemon often starts before Docker
/// Desktop. Misconfiguration (OrbStack, an unusable `docker_host` or
/// `DOCKER_HOST`) is fatal; a broken docker context file is skipped by
/// discovery.
pub async fn wait_for_engine(configured: Option<&str>) -> Result<Engine> {
    let mut backoff = ENGINE_BACKOFF.build();
    let mut waiting = false;
    loop {
        match connect_configured(configured).await {
            Ok(engine) => {
                tracing::info!(endpoint = %engine.resolved.endpoint, why = %engine.resolved.why, engine = %engine.version, "connected to Docker");
                return Ok(engine);
            }
            Err(e)
                if e.downcast_ref::<crate::engine::snapshot::DiscoveryError>()
                    .is_some_and(|d| {
                        !matches!(d, crate::engine::snapshot::DiscoveryError::NotFound { .. })
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
        tokio::time::sleep(backoff.next().unwrap_or(ENGINE_BACKOFF_MAX)).await;
    }
}

/// Engine version string, for logs and status.
pub async fn engine_version(docker: &Docker) -> Result<String> {
    let v = docker
        .version()
        .await
        .context("cannot read the Docker version")?;
    Ok(format!(
        "{} (API {})",
        v.version.unwrap_or_default(),
        v.api_version.unwrap_or_default()
    ))
}

/// Every bridge network with its subnets.
pub async fn bridge_networks(docker: &Docker) -> Result<Vec<DockerNetwork>> {
    let filters = HashMap::from([("driver".to_owned(), vec!["bridge".to_owned()])]);
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters),
        }))
        .await
        .context("cannot list Docker networks")?;
    Ok(networks
        .into_iter()
        .filter(|n| n.driver.as_deref() == Some("bridge"))
        .map(|n| DockerNetwork {
            id: n.id.unwrap_or_default(),
            name: n.name.unwrap_or_default(),
            internal: n.internal.unwrap_or(false),
            subnets: n
                .ipam
                .and_then(|ipam| ipam.config)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c.subnet)
                .filter_map(|s| match s.parse::<IpNet>() {
                    Ok(net) => Some(net),
                    Err(_) => {
                        tracing::warn!(subnet = %s, "ignoring unparsable subnet");
                        None
                    }
                })
                .collect(),
        })
        .collect())
}

/// What a command run with `docker exec` printed, and how it ended.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// Bounds on one `docker exec`: the container may be anyone's (a kind node
/// is whatever carries kind's labels), so its output and its time are capped.
#[derive(Debug, Clone, Copy)]
pub struct ExecLimits {
    pub timeout: Duration,
    /// stdout and stderr together.
    pub max_output: usize,
}

/// Runs `cmd` inside a running container and collects its output, within
/// `limits` (exceeding one is an error that names it).
pub async fn exec(
    docker: &Docker,
    container: &str,
    cmd: &[&str],
    limits: ExecLimits,
) -> Result<ExecOutput> {
    use bollard::container::LogOutput;
    use bollard::exec::{CreateExecOptions, StartExecResults};
    use futures_util::StreamExt;

    let shown = || cmd.join(" ");
    let run = async {
        let created = docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("cannot exec in container {container}"))?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        if let StartExecResults::Attached { mut output, .. } = docker
            .start_exec(&created.id, None)
            .await
            .with_context(|| format!("cannot start exec in container {container}"))?
        {
            while let Some(chunk) = output.next().await {
                match chunk.context("reading exec output")? {
                    LogOutput::StdOut { message } => stdout.extend_from_slice(&message),
                    LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                    _ => {}
                }
                if stdout.len() + stderr.len() > limits.max_output {
                    bail!(
                        "`{}` in {container} printed more than {} bytes",
                        shown(),
                        limits.max_output
                    );
                }
            }
        }
        let inspected = docker
            .inspect_exec(&created.id)
            .await
            .context("cannot read the exec result")?;
        Ok(ExecOutput {
            exit_code: inspected.exit_code.unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    };
    tokio::time::timeout(limits.timeout, run)
        .await
        .map_err(|_| {
            anyhow!(
                "`{}` in {container} did not finish within {} s",
                shown(),
                limits.timeout.as_secs()
            )
        })?
}

/// Containers carrying every one of `labels` (`key` or `key=value`);
/// stopped ones too when `all`.
pub async fn containers_labelled(
    docker: &Docker,
    labels: &[String],
    all: bool,
) -> Result<Vec<bollard::models::ContainerSummary>> {
    let filters = HashMap::from([("label".to_owned(), labels.to_vec())]);
    docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .with_context(|| format!("cannot list containers labelled {}", labels.join(", ")))
}

/// Running containers' names and IP addresses on all their networks.
pub async fn container_ips(docker: &Docker) -> Result<Vec<(String, std::net::IpAddr)>> {
    let containers = docker
        .list_containers(None::<bollard::query_parameters::ListContainersOptions>)
        .await
        .context("cannot list containers")?;
    let mut out = Vec::new();
    for c in containers {
        let name = c
            .names
            .and_then(|n| n.into_iter().next())
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned();
        let networks = c
            .network_settings
            .and_then(|s| s.networks)
            .unwrap_or_default();
        for endpoint in networks.values() {
            for address in [&endpoint.ip_address, &endpoint.global_ipv6_address] {
                if let Some(ip) = address.as_deref().and_then(|a| a.parse().ok()) {
                    out.push((name.clone(), ip));
                }
            }
        }
    }
    Ok(out)
}
/// [`exec`] for its stdout; a non-zero exit is an
/// error carrying the last line of stderr.
pub async fn exec_stdout(
    docker: &Docker,
    container: &str,
    cmd: &[&str],
    limits: ExecLimits,
) -> Result<String> {
    let out = exec(docker, container, cmd, limits).await?;
    if out.exit_code != 0 {
        bail!(
            "`{}` exited with {}: {}",
            cmd.join(" "),
            out.exit_code,
            out.stderr.trim().lines().last().unwrap_or("(no stderr)")
        );
    }
    Ok(out.stdout)
}
