//! Finding kind clusters through the Docker API: node containers by label,
//! their addresses on the kind network, the CIDRs in `/kind/kubeadm.conf`, and
//! the Node objects (podCIDRs) through `kubectl` inside the control plane —
//! nothing is installed or configured on the host.
//!
//! Node IPs are read from Docker on every call (they change when Docker
//! restarts). What cannot change for a container's life is cached by
//! container ID: the kubeadm networking of a control plane, and a node's
//! podCIDRs (Kubernetes never changes them once set; refreshed now and then
//! anyway, in case the Node object was deleted and registered again).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerSummary;
use bollard::Docker;
use futures_util::StreamExt;
use ipnet::IpNet;

use super::kubeadm::{self, Networking};
use super::nodes;
use super::plan::{ClusterSnapshot, NodeSnapshot, ROLE_CONTROL_PLANE};
use crate::events::KIND_CLUSTER_LABEL;

pub const KIND_ROLE_LABEL: &str = "io.x-k8s.kind.role";
const ROLE_LOAD_BALANCER: &str = "external-load-balancer";
const KUBEADM_CONF: &str = "/kind/kubeadm.conf";
/// The control plane's own kubectl and admin kubeconfig (kubeadm writes it);
/// a bounded request so a hung API server cannot stall a reconcile.
const KUBECTL: [&str; 8] = [
    "kubectl",
    "--kubeconfig",
    "/etc/kubernetes/admin.conf",
    "--request-timeout=5s",
    "get",
    "nodes",
    "-o",
    "json",
];
/// kind's network, unless the user moved clusters elsewhere.
const DEFAULT_NETWORK: &str = "kind";
const NETWORK_ENV: &str = "KIND_EXPERIMENTAL_DOCKER_NETWORK";
const EXEC_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_EXEC_OUTPUT: usize = 8 << 20;
const POD_CIDR_REFRESH: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct Discovery {
    networking: HashMap<String, Networking>,
    pod_cidrs: HashMap<String, (Vec<IpNet>, Instant)>,
}

/// One node container from the listing.
struct Container {
    id: String,
    name: String,
    cluster: String,
    role: String,
    created: i64,
    ip: Option<Ipv4Addr>,
}

impl Discovery {
    /// Every running kind cluster. Fails only when Docker cannot be listed;
    /// a cluster that cannot be read completely carries a `problem`.
    pub async fn snapshot(&mut self, docker: &Docker) -> Result<Vec<ClusterSnapshot>> {
        let listed =
            crate::docker::containers_labelled(docker, &[KIND_CLUSTER_LABEL.to_owned()], false)
                .await?;
        let network = std::env::var(NETWORK_ENV).unwrap_or_else(|_| DEFAULT_NETWORK.to_owned());
        let mut by_cluster: BTreeMap<String, Vec<Container>> = BTreeMap::new();
        for c in listed.iter().filter_map(|c| container(c, &network)) {
            by_cluster.entry(c.cluster.clone()).or_default().push(c);
        }

        let live: HashSet<String> = by_cluster
            .values()
            .flatten()
            .map(|c| c.id.clone())
            .collect();
        self.networking.retain(|id, _| live.contains(id));
        self.pod_cidrs.retain(|id, _| live.contains(id));

        let mut clusters = Vec::new();
        for (name, containers) in by_cluster {
            clusters.push(self.cluster(docker, name, containers).await);
        }
        Ok(clusters)
    }

    async fn cluster(
        &mut self,
        docker: &Docker,
        name: String,
        containers: Vec<Container>,
    ) -> ClusterSnapshot {
        let created = containers
            .iter()
            .map(|c| c.created)
            .min()
            .unwrap_or_default();
        let mut nodes: Vec<&Container> = containers
            .iter()
            .filter(|c| c.role != ROLE_LOAD_BALANCER)
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut problems = Vec::new();

        let control_plane = nodes.iter().find(|c| c.role == ROLE_CONTROL_PLANE).copied();
        let networking = match control_plane {
            None => {
                problems.push("no running control-plane node".to_owned());
                None
            }
            Some(cp) => match self.networking(docker, cp).await {
                Ok(n) => Some(n),
                Err(e) => {
                    problems.push(format!("{e:#}"));
                    None
                }
            },
        };

        let stale = |id: &String| match self.pod_cidrs.get(id) {
            None => true,
            Some((cidrs, at)) => cidrs.is_empty() || at.elapsed() >= POD_CIDR_REFRESH,
        };
        if let Some(cp) = control_plane {
            if nodes.iter().any(|n| stale(&n.id)) {
                match exec(docker, &cp.id, &KUBECTL)
                    .await
                    .and_then(|out| Ok(nodes::parse(&out)?))
                {
                    Ok(objects) => {
                        for n in &nodes {
                            if let Some(o) = objects.iter().find(|o| o.name == n.name) {
                                self.pod_cidrs
                                    .insert(n.id.clone(), (o.pod_cidrs.clone(), Instant::now()));
                            }
                        }
                    }
                    Err(e) => {
                        problems.push(format!("cannot list Node objects in {}: {e:#}", cp.name))
                    }
                }
            }
        }

        let (pod_subnets, service_subnets) = networking
            .map(|n| (n.pod_subnets, n.service_subnets))
            .unwrap_or_default();
        ClusterSnapshot {
            name,
            created,
            nodes: nodes
                .iter()
                .map(|c| NodeSnapshot {
                    name: c.name.clone(),
                    role: c.role.clone(),
                    ip: c.ip,
                    pod_cidrs: self
                        .pod_cidrs
                        .get(&c.id)
                        .map(|(v, _)| v.clone())
                        .unwrap_or_default(),
                })
                .collect(),
            pod_subnets,
            service_subnets,
            problem: (!problems.is_empty()).then(|| problems.join("; ")),
        }
    }

    async fn networking(&mut self, docker: &Docker, cp: &Container) -> Result<Networking> {
        if let Some(n) = self.networking.get(&cp.id) {
            return Ok(n.clone());
        }
        let text = exec(docker, &cp.id, &["cat", KUBEADM_CONF])
            .await
            .with_context(|| format!("cannot read {KUBEADM_CONF} in {}", cp.name))?;
        let networking = kubeadm::parse(&text).with_context(|| format!("in {}", cp.name))?;
        tracing::debug!(cluster = %cp.cluster, pods = ?networking.pod_subnets, services = ?networking.service_subnets, "kind cluster CIDRs");
        self.networking.insert(cp.id.clone(), networking.clone());
        Ok(networking)
    }
}

fn container(c: &ContainerSummary, network: &str) -> Option<Container> {
    let labels = c.labels.as_ref()?;
    let cluster = labels.get(KIND_CLUSTER_LABEL)?.clone();
    let role = labels.get(KIND_ROLE_LABEL).cloned().unwrap_or_default();
    let name = c
        .names
        .as_ref()?
        .first()?
        .trim_start_matches('/')
        .to_owned();
    let networks = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref());
    let ipv4 = |s: &bollard::models::EndpointSettings| {
        s.ip_address
            .as_deref()
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
    };
    let ip = networks.and_then(|nets| {
        nets.get(network).and_then(ipv4).or_else(|| {
            // A node on a single network is on the cluster's network,
            // whatever it is called.
            let mut all = nets.values().filter_map(ipv4);
            match (all.next(), all.next()) {
                (Some(ip), None) => Some(ip),
                _ => None,
            }
        })
    });
    Some(Container {
        id: c.id.clone()?,
        name,
        cluster,
        role,
        created: c.created.unwrap_or_default(),
        ip,
    })
}

/// Runs a command in a container and returns its stdout; a non-zero exit is
/// an error carrying stderr.
async fn exec(docker: &Docker, container: &str, cmd: &[&str]) -> Result<String> {
    let run = async {
        let created = docker
            .create_exec(
                container,
                CreateExecOptions {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(cmd.to_vec()),
                    ..Default::default()
                },
            )
            .await
            .context("docker exec create")?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        match docker
            .start_exec(&created.id, None)
            .await
            .context("docker exec start")?
        {
            StartExecResults::Attached { mut output, .. } => {
                while let Some(chunk) = output.next().await {
                    match chunk.context("docker exec output")? {
                        LogOutput::StdOut { message } => stdout.extend_from_slice(&message),
                        LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                        _ => {}
                    }
                    if stdout.len() + stderr.len() > MAX_EXEC_OUTPUT {
                        bail!("output larger than {MAX_EXEC_OUTPUT} bytes");
                    }
                }
            }
            StartExecResults::Detached => bail!("docker exec detached unexpectedly"),
        }
        let code = docker
            .inspect_exec(&created.id)
            .await
            .context("docker exec inspect")?
            .exit_code;
        if code != Some(0) {
            let err = String::from_utf8_lossy(&stderr);
            bail!(
                "`{}` exited with {}: {}",
                cmd.join(" "),
                code.map_or("no status".to_owned(), |c| c.to_string()),
                err.trim().lines().last().unwrap_or("(no stderr)")
            );
        }
        String::from_utf8(stdout).map_err(|_| anyhow!("`{}` printed invalid UTF-8", cmd.join(" ")))
    };
    tokio::time::timeout(EXEC_TIMEOUT, run).await.map_err(|_| {
        anyhow!(
            "`{}` did not finish within {} s",
            cmd.join(" "),
            EXEC_TIMEOUT.as_secs()
        )
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerSummaryNetworkSettings, EndpointSettings};

    fn summary(name: &str, networks: &[(&str, &str)]) -> ContainerSummary {
        ContainerSummary {
            id: Some(format!("id-{name}")),
            names: Some(vec![format!("/{name}")]),
            created: Some(1_700_000_000),
            labels: Some(HashMap::from([
                (KIND_CLUSTER_LABEL.to_owned(), "dev".to_owned()),
                (KIND_ROLE_LABEL.to_owned(), "worker".to_owned()),
            ])),
            network_settings: Some(ContainerSummaryNetworkSettings {
                networks: Some(
                    networks
                        .iter()
                        .map(|(n, ip)| {
                            (
                                n.to_string(),
                                EndpointSettings {
                                    ip_address: Some(ip.to_string()),
                                    ..Default::default()
                                },
                            )
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn node_ip_comes_from_the_kind_network() {
        let c = container(
            &summary(
                "dev-worker",
                &[("other", "172.30.0.5"), ("kind", "172.18.0.3")],
            ),
            "kind",
        )
        .unwrap();
        assert_eq!(c.ip, Some(Ipv4Addr::new(172, 18, 0, 3)));
        assert_eq!(
            (c.name.as_str(), c.cluster.as_str(), c.role.as_str()),
            ("dev-worker", "dev", "worker")
        );
    }

    #[test]
    fn a_single_network_of_another_name_is_used_but_two_are_ambiguous() {
        let c = container(&summary("dev-worker", &[("mykind", "172.30.0.5")]), "kind").unwrap();
        assert_eq!(c.ip, Some(Ipv4Addr::new(172, 30, 0, 5)));
        let c = container(
            &summary("dev-worker", &[("a", "172.30.0.5"), ("b", "172.31.0.5")]),
            "kind",
        )
        .unwrap();
        assert_eq!(c.ip, None);
    }

    #[test]
    fn containers_without_the_cluster_label_are_not_nodes() {
        let mut s = summary("web", &[("kind", "172.18.0.9")]);
        s.labels = Some(HashMap::new());
        assert!(container(&s, "kind").is_none());
    }
}
