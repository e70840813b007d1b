//! Finding kind clusters through the Docker API: node containers by label,
//! their addresses on the kind network, the CIDRs in `/kind/kubeadm.conf`, and
//! the Node objects (podCIDRs) through `kubectl` inside the control plane —
//! nothing is installed or configured on the host.
//!
//! Whatever carries kind's labels is read, so everything read here is
//! untrusted: every `docker exec` is bounded in time and output, the number
//! of clusters and nodes looked at is capped, and clusters are read
//! concurrently so one slow node delays no other cluster. (What may be
//! *routed* from it is the planner's policy, in `plan.rs` beside this file.)
//!
//! Node IPs are read from Docker on every call (they change when Docker
//! restarts). What cannot change for a container's life is cached by
//! container ID: the kubeadm networking of a control plane, and a node's
//! podCIDRs (Kubernetes never changes them once set; refreshed now and then
//! anyway, in case the Node object was deleted and registered again).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bollard::models::ContainerSummary;
use bollard::Docker;
use futures_util::future::join_all;
use ipnet::IpNet;

use super::kubeadm::{self, Networking};
use super::nodes;
use super::plan::{ClusterSnapshot, NodeSnapshot, ROLE_CONTROL_PLANE};
use crate::engine::events::KIND_CLUSTER_LABEL;
use crate::engine::ExecLimits;

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
/// Each parser's own cap on what it reads (stderr gets a little room too).
const KUBEADM_LIMITS: ExecLimits = ExecLimits {
    timeout: Duration::from_secs(10),
    max_output: kubeadm::MAX_BYTES + 4096,
};
const KUBECTL_LIMITS: ExecLimits = ExecLimits {
    timeout: Duration::from_secs(10),
    max_output: nodes::MAX_BYTES + 4096,
};
const POD_CIDR_REFRESH: Duration = Duration::from_secs(300);
/// More clusters or nodes than anyone runs on a laptop: the rest are ignored
/// (and said so), so a flood of labelled containers costs bounded work.
pub const MAX_CLUSTERS: usize = 32;
pub const MAX_NODES: usize = 64;

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

/// What reading one cluster learnt, to be merged into the caches.
struct Found {
    snapshot: ClusterSnapshot,
    networking: Option<(String, Networking)>,
    pod_cidrs: Vec<(String, Vec<IpNet>)>,
}

impl Discovery {
    /// Every running kind cluster. Fails only when Docker cannot be listed;
    /// a cluster that cannot be read completely carries a `problem`.
    pub async fn snapshot(&mut self, docker: &Docker) -> Result<Vec<ClusterSnapshot>> {
        let listed =
            crate::engine::containers_labelled(docker, &[KIND_CLUSTER_LABEL.to_owned()], false)
                .await?;
        let network = std::env::var(NETWORK_ENV).unwrap_or_else(|_| DEFAULT_NETWORK.to_owned());
        let mut by_cluster: BTreeMap<String, Vec<Container>> = BTreeMap::new();
        for c in listed.iter().filter_map(|c| container(c, &network)) {
            by_cluster.entry(c.cluster.clone()).or_default().push(c);
        }
        if by_cluster.len() > MAX_CLUSTERS {
            tracing::warn!(
                clusters = by_cluster.len(),
                max = MAX_CLUSTERS,
                "more containers carry kind's labels than any laptop runs; reading the first clusters by name only"
            );
            while by_cluster.len() > MAX_CLUSTERS {
                by_cluster.pop_last();
            }
        }

        let live: HashSet<String> = by_cluster
            .values()
            .flatten()
            .map(|c| c.id.clone())
            .collect();
        self.networking.retain(|id, _| live.contains(id));
        self.pod_cidrs.retain(|id, _| live.contains(id));

        let found = join_all(
            by_cluster
                .into_iter()
                .map(|(name, containers)| self.cluster(docker, name, containers)),
        )
        .await;
        let mut clusters = Vec::with_capacity(found.len());
        for f in found {
            if let Some((id, n)) = f.networking {
                self.networking.insert(id, n);
            }
            for (id, cidrs) in f.pod_cidrs {
                self.pod_cidrs.insert(id, (cidrs, Instant::now()));
            }
            clusters.push(f.snapshot);
        }
        Ok(clusters)
    }

    async fn cluster(&self, docker: &Docker, name: String, containers: Vec<Container>) -> Found {
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
        if nodes.len() > MAX_NODES {
            problems.push(format!(
                "{} node containers; only the first {MAX_NODES} are read",
                nodes.len()
            ));
            nodes.truncate(MAX_NODES);
        }

        let control_plane = nodes.iter().find(|c| c.role == ROLE_CONTROL_PLANE).copied();
        let mut learnt_networking = None;
        let networking = match control_plane {
            None => {
                problems.push("no running control-plane node".to_owned());
                None
            }
            Some(cp) => match self.networking.get(&cp.id) {
                Some(n) => Some(n.clone()),
                None => match read_networking(docker, cp).await {
                    Ok(n) => {
                        tracing::debug!(cluster = %cp.cluster, pods = ?n.pod_subnets, services = ?n.service_subnets, "kind cluster CIDRs");
                        learnt_networking = Some((cp.id.clone(), n.clone()));
                        Some(n)
                    }
                    Err(e) => {
                        problems.push(format!("{e:#}"));
                        None
                    }
                },
            },
        };

        let stale = |id: &String| match self.pod_cidrs.get(id) {
            None => true,
            Some((cidrs, at)) => cidrs.is_empty() || at.elapsed() >= POD_CIDR_REFRESH,
        };
        let mut learnt_cidrs: Vec<(String, Vec<IpNet>)> = Vec::new();
        if let Some(cp) = control_plane {
            if nodes.iter().any(|n| stale(&n.id)) {
                match crate::engine::exec_stdout(docker, &cp.id, &KUBECTL, KUBECTL_LIMITS)
                    .await
                    .and_then(|out| Ok(nodes::parse(&out)?))
                {
                    Ok(objects) => {
                        for n in &nodes {
                            if let Some(o) = objects.iter().find(|o| o.name == n.name) {
                                learnt_cidrs.push((n.id.clone(), o.pod_cidrs.clone()));
                            }
                        }
                    }
                    Err(e) => {
                        problems.push(format!("cannot list Node objects in {}: {e:#}", cp.name))
                    }
                }
            }
        }
        let pod_cidrs_of = |id: &String| {
            learnt_cidrs
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, c)| c.clone())
                .or_else(|| self.pod_cidrs.get(id).map(|(c, _)| c.clone()))
                .unwrap_or_default()
        };

        let (pod_subnets, service_subnets) = networking
            .map(|n| (n.pod_subnets, n.service_subnets))
            .unwrap_or_default();
        let snapshot = ClusterSnapshot {
            name,
            created,
            nodes: nodes
                .iter()
                .map(|c| NodeSnapshot {
                    name: c.name.clone(),
                    role: c.role.clone(),
                    ip: c.ip,
                    pod_cidrs: pod_cidrs_of(&c.id),
                })
                .collect(),
            pod_subnets,
            service_subnets,
            problem: (!problems.is_empty()).then(|| problems.join("; ")),
        };
        Found {
            snapshot,
            networking: learnt_networking,
            pod_cidrs: learnt_cidrs,
        }
    }
}

async fn read_networking(docker: &Docker, cp: &Container) -> Result<Networking> {
    let text = crate::engine::exec_stdout(docker, &cp.id, &["cat", KUBEADM_CONF], KUBEADM_LIMITS)
        .await
        .with_context(|| format!("cannot read {KUBEADM_CONF} in {}", cp.name))?;
    kubeadm::parse(&text).with_context(|| format!("in {}", cp.name))
}

/// kind's rule for cluster names (they become container names); anything
/// else is not a cluster kind made.
fn valid_cluster_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn container(c: &ContainerSummary, network: &str) -> Option<Container> {
    let labels = c.labels.as_ref()?;
    let cluster = labels.get(KIND_CLUSTER_LABEL)?.clone();
    if !valid_cluster_name(&cluster) {
        tracing::debug!(cluster = %cluster.chars().take(80).collect::<String>(), "ignoring a container whose kind cluster label is not a cluster name");
        return None;
    }
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
    fn a_cluster_label_that_is_no_cluster_name_is_ignored() {
        let mut s = summary("x", &[("kind", "172.18.0.9")]);
        for bad in ["", "a b", "../x", &"x".repeat(64)] {
            s.labels
                .as_mut()
                .unwrap()
                .insert(KIND_CLUSTER_LABEL.to_owned(), bad.to_owned());
            assert!(container(&s, "kind").is_none(), "{bad:?}");
        }
    }

    #[test]
    fn containers_without_the_cluster_label_are_not_nodes() {
        let mut s = summary("web", &[("kind", "172.18.0.9")]);
        s.labels = Some(HashMap::new());
        assert!(container(&s, "kind").is_none());
    }
}
