//! Talking to the Docker engine: connecting (with API version negotiation)
//! and taking the network snapshot the planner works from.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use bollard::query_parameters::ListNetworksOptions;
use bollard::Docker;
use ipnet::IpNet;

use crate::plan::DockerNetwork;

/// How long one API call may take before we call the engine unresponsive.
const API_TIMEOUT_SECS: u64 = 30;

/// Connects to `endpoint` (`unix:///path`, `/path`, or `tcp://host:port`) and
/// negotiates the API version, so old and new engines both work.
pub async fn connect(endpoint: &str) -> Result<Docker> {
    let docker = if let Some(path) = endpoint.strip_prefix("unix://").or_else(|| endpoint.starts_with('/').then_some(endpoint)) {
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

/// Engine version string, for logs and status.
pub async fn engine_version(docker: &Docker) -> Result<String> {
    let v = docker.version().await.context("cannot read the Docker version")?;
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
