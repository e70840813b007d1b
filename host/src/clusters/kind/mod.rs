//! kind clusters as first-class citizens: node IPs come with the `kind`
//! Docker network; this module adds pod IPs and Service ClusterIPs.
//!
//! [`discover`] reads the clusters through the Docker API, in its own task
//! ([`watch`]); per route reconcile, [`plan`] decides (pure) which cluster owns
//! which CIDR and which ranges are acceptable at all, the host router routes
//! the resulting pseudo-networks through the tun, and the VM routes (each
//! node's podCIDR via that node, the Service CIDR via a node) go to the agent
//! through [`crate::agent::link`].

mod discover;
mod kubeadm;
mod nodes;
pub mod plan;
pub mod watch;

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use serde::{Deserialize, Serialize};

use crate::agent::link::{LinkStatus, VmRoute};
use crate::config::KindConfig;
use crate::routes::plan::SubnetDecision;
pub use plan::{CidrState, ClusterSnapshot, ClusterStatus, KindPlan, Limits};

/// A cluster still starting (no kubeadm.conf or podCIDRs yet) is looked at
/// again this soon, then less and less often, up to the daemon's safety net.
const RETRY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_secs(3))
    .with_max_delay(Duration::from_secs(30))
    .without_max_times();

/// The kind part of `connector status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KindReport {
    pub clusters: Vec<ClusterStatus>,
    /// The routes the agent holds in the VM for these clusters.
    pub vm_routes: LinkStatus,
}

/// The planning side of kind (pure apart from its log lines): what to route
/// for the clusters of the latest scan, their status, and when to look again.
pub struct Kind {
    config: KindConfig,
    clusters: Vec<ClusterStatus>,
    pending: bool,
    retry: Option<ExponentialBackoff>,
}

impl Kind {
    pub fn new(config: KindConfig) -> Self {
        Kind {
            config,
            clusters: Vec::new(),
            pending: false,
            retry: None,
        }
    }

    /// Plans for `clusters` (a scan); call [`Kind::settle`] with the host
    /// router's decisions next.
    pub fn plan(&self, clusters: &[ClusterSnapshot], limits: &Limits) -> KindPlan {
        plan::plan(clusters, &self.config, limits)
    }

    /// The VM routes that survive the host planner's verdict; remembers the
    /// clusters' status.
    pub fn settle(&mut self, plan: KindPlan, decisions: &[SubnetDecision]) -> Vec<VmRoute> {
        let (routes, clusters) = plan::settle(plan, decisions);
        self.pending = clusters.iter().any(|c| {
            matches!(c.pods.state, CidrState::Pending { .. })
                || matches!(c.services.state, CidrState::Pending { .. })
        });
        if !self.pending {
            self.retry = None;
        }
        for c in &clusters {
            if let Some(problem) = &c.problem {
                tracing::debug!(cluster = %c.name, %problem, "kind cluster not fully readable");
            }
            let before = self.clusters.iter().find(|b| b.name == c.name);
            for (what, now, was) in [
                ("pods", &c.pods, before.map(|b| &b.pods)),
                ("services", &c.services, before.map(|b| &b.services)),
            ] {
                if was.map(|w| &w.state) != Some(&now.state) {
                    let subnets: Vec<String> =
                        now.subnets.iter().map(ToString::to_string).collect();
                    tracing::info!(cluster = %c.name, what, subnets = %subnets.join(","), state = %now.state, "kind cluster");
                }
            }
        }
        for gone in self
            .clusters
            .iter()
            .filter(|b| !clusters.iter().any(|c| c.name == b.name))
        {
            tracing::info!(cluster = %gone.name, "kind cluster gone");
        }
        self.clusters = clusters;
        routes
    }

    pub fn clusters(&self) -> &[ClusterStatus] {
        &self.clusters
    }

    /// Whether a cluster is still starting (worth another scan soon).
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// How long to wait before the next scan of a starting cluster: sooner
    /// at first, then less and less often. Each call is one more retry.
    pub fn next_retry(&mut self) -> Option<Duration> {
        if !self.pending {
            return None;
        }
        self.retry.get_or_insert_with(|| RETRY.build()).next()
    }
}

/// The `kind clusters:` part of `connector status`.
pub fn render(report: &KindReport) -> String {
    if report.clusters.is_empty() {
        return "kind clusters: none\n".into();
    }
    let mut out = String::from("kind clusters:\n");
    for c in &report.clusters {
        out += &format!("  {}\n", c.name);
        for (what, cidr) in [("pods", &c.pods), ("services", &c.services)] {
            let subnets = if cidr.subnets.is_empty() {
                "-".to_owned()
            } else {
                cidr.subnets
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            out += &format!("    {what:<9} {subnets:<20} {}\n", cidr.state);
        }
        for n in &c.nodes {
            let cidrs = if n.pod_cidrs.is_empty() {
                "-".to_owned()
            } else {
                n.pod_cidrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            out += &format!(
                "    node {:<28} {:<14} {:<15} podCIDRs {}\n",
                n.name,
                n.role,
                n.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                cidrs
            );
        }
        if let Some(p) = &c.problem {
            out += &format!("    problem: {p}\n");
        }
    }
    let v = &report.vm_routes;
    out += &format!("VM routes (agent): {}\n", v.summary());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clusters::kind::plan::{CidrStatus, NodeStatus};

    #[test]
    fn a_starting_cluster_is_retried_sooner_then_backs_off() {
        use crate::clusters::kind::plan::{ClusterSnapshot, NodeSnapshot};
        let mut kind = Kind::new(KindConfig::default());
        let mut starting = ClusterSnapshot {
            name: "dev".into(),
            created: 1,
            nodes: vec![NodeSnapshot {
                name: "dev-control-plane".into(),
                role: "control-plane".into(),
                ip: Some("172.18.0.2".parse().unwrap()),
                pod_cidrs: vec![],
            }],
            pod_subnets: vec![],
            service_subnets: vec![],
            problem: Some("cannot read /kind/kubeadm.conf".into()),
        };
        let mut delays = Vec::new();
        for _ in 0..6 {
            let plan = kind.plan(std::slice::from_ref(&starting), &Limits::default());
            kind.settle(plan, &[]);
            assert!(kind.pending());
            delays.push(kind.next_retry().unwrap().as_secs());
        }
        assert_eq!(delays, [3, 6, 12, 24, 30, 30]);
        starting.pod_subnets = vec!["10.244.0.0/16".parse().unwrap()];
        starting.service_subnets = vec!["10.96.0.0/16".parse().unwrap()];
        starting.nodes[0].pod_cidrs = vec!["10.244.0.0/24".parse().unwrap()];
        starting.problem = None;
        let plan = kind.plan(&[starting], &Limits::default());
        let routes = kind.settle(plan, &[]);
        assert_eq!(routes.len(), 2);
        assert_eq!(kind.next_retry(), None, "nothing pending: no early scan");
        assert_eq!(kind.clusters()[0].pods.state, CidrState::Routed);
    }

    #[test]
    fn status_lists_clusters_nodes_and_states() {
        let report = KindReport {
            clusters: vec![ClusterStatus {
                name: "dev".into(),
                created: 0,
                nodes: vec![NodeStatus {
                    name: "dev-control-plane".into(),
                    role: "control-plane".into(),
                    ip: Some("172.18.0.2".parse().unwrap()),
                    pod_cidrs: vec!["10.244.0.0/24".parse().unwrap()],
                }],
                pods: CidrStatus {
                    subnets: vec!["10.244.0.0/16".parse().unwrap()],
                    state: CidrState::Routed,
                },
                services: CidrStatus {
                    subnets: vec!["10.96.0.0/16".parse().unwrap()],
                    state: CidrState::Conflict {
                        with: "other".into(),
                        subnet: "10.96.0.0/16".parse().unwrap(),
                    },
                },
                problem: None,
            }],
            vm_routes: LinkStatus::default(),
        };
        let text = render(&report);
        assert!(text.contains("  dev\n"), "{text}");
        assert!(
            text.contains("pods      10.244.0.0/16        routed"),
            "{text}"
        );
        assert!(text.contains("conflict with cluster other"), "{text}");
        assert!(
            text.contains("node dev-control-plane")
                && text.contains("172.18.0.2")
                && text.contains("podCIDRs 10.244.0.0/24"),
            "{text}"
        );
        assert_eq!(render(&KindReport::default()), "kind clusters: none\n");
    }
}
