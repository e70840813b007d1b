//! The sans-IO kind planner: from a snapshot of kind clusters and the `[kind]`
//! config to (a) pseudo-networks the host router treats like Docker networks,
//! (b) routes the agent installs in the VM, (c) what `status` says about each
//! cluster.
//!
//! Every kind cluster gets the same default CIDRs, so two clusters often claim
//! the same pod or Service subnet. Exactly one is routed: the first in
//! `[kind] clusters` when that lists them, else the most recently created;
//! the others are reported as conflicts.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::agent::link::VmRoute;
use crate::config::KindConfig;
use crate::routes::plan::{DockerNetwork, SubnetDecision};

pub const ROLE_CONTROL_PLANE: &str = "control-plane";

/// One kind cluster as discovered just now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSnapshot {
    pub name: String,
    /// Creation time (Unix seconds) of the cluster's oldest node container.
    pub created: i64,
    pub nodes: Vec<NodeSnapshot>,
    /// From `/kind/kubeadm.conf`; empty when it could not be read.
    pub pod_subnets: Vec<IpNet>,
    pub service_subnets: Vec<IpNet>,
    /// Why something is missing (kubeadm.conf or kubectl failed).
    pub problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSnapshot {
    /// Container name = hostname = Node name.
    pub name: String,
    /// `io.x-k8s.kind.role`: control-plane or worker.
    pub role: String,
    /// The node's address on the kind network, read from Docker this reconcile.
    pub ip: Option<Ipv4Addr>,
    /// `spec.podCIDRs` of the Node object.
    pub pod_cidrs: Vec<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CidrKind {
    Pods,
    Services,
}

impl CidrKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CidrKind::Pods => "pods",
            CidrKind::Services => "services",
        }
    }
}

/// The host-side name of a cluster's pod or Service CIDRs (`kind/dev/pods`).
pub fn network_name(cluster: &str, kind: CidrKind) -> String {
    format!("kind/{cluster}/{}", kind.as_str())
}

/// What `connector status` shows for one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub name: String,
    pub created: i64,
    pub nodes: Vec<NodeStatus>,
    pub pods: CidrStatus,
    pub services: CidrStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: String,
    pub ip: Option<Ipv4Addr>,
    pub pod_cidrs: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CidrStatus {
    pub subnets: Vec<IpNet>,
    #[serde(flatten)]
    pub state: CidrState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum CidrState {
    /// Host route via the tunnel, VM routes via the nodes.
    Routed,
    /// Another cluster claims an overlapping subnet and is preferred.
    Conflict { with: String, subnet: IpNet },
    /// The host planner refused it (a LAN/VPN route, the tunnel network, IPv6).
    Skipped { reason: String },
    /// Turned off in `[kind]`.
    Disabled { reason: String },
    /// Nothing to route yet (CIDRs or podCIDRs unknown, no node IP).
    Pending { reason: String },
    /// The range read from the node is not acceptable (see [`rejection`]).
    Rejected { reason: String },
}

impl std::fmt::Display for CidrState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CidrState::Routed => write!(f, "routed"),
            CidrState::Conflict { with, subnet } => {
                write!(
                    f,
                    "conflict with cluster {with}: it is routed and also claims {subnet}"
                )
            }
            CidrState::Skipped { reason } => write!(f, "skipped: {reason}"),
            CidrState::Disabled { reason } => write!(f, "disabled: {reason}"),
            CidrState::Pending { reason } => write!(f, "pending: {reason}"),
            CidrState::Rejected { reason } => write!(f, "rejected: {reason}"),
        }
    }
}

/// A VM route waiting for the host planner's verdict on its pseudo-network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub network: String,
    pub route: VmRoute,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindPlan {
    /// For [`crate::routes::router::Router::sync_with`].
    pub extra: Vec<DockerNetwork>,
    pub candidates: Vec<Candidate>,
    pub clusters: Vec<ClusterStatus>,
}

/// What a range read from a node container must stay clear of. Whatever
/// carries kind's labels is read as a cluster, so its CIDRs are untrusted.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Subnets of Docker networks, by network name: a cluster never takes one
    /// (its VM routes would steal that network's traffic inside the VM).
    pub docker: Vec<(String, IpNet)>,
    /// The host's own networks (its interfaces' addresses), by interface.
    pub host: Vec<(String, IpNet)>,
    /// connector's tunnel network.
    pub tunnel: Option<IpNet>,
}

/// The narrowest prefix accepted, per family: nothing a cluster needs is wider.
const MIN_PREFIX_V4: u8 = 8;
const MIN_PREFIX_V6: u8 = 32;

/// Ranges that are never a cluster's, whatever it claims.
const SPECIAL: [(&str, &str); 9] = [
    ("0.0.0.0/8", "\"this network\""),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved and broadcast"),
    ("::/128", "the unspecified address"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// Why a range read from a node may not be routed, if it may not.
pub fn rejection(net: &IpNet, limits: &Limits) -> Option<String> {
    let min = match net {
        IpNet::V4(_) => MIN_PREFIX_V4,
        IpNet::V6(_) => MIN_PREFIX_V6,
    };
    if net.prefix_len() == 0 {
        return Some(format!("{net} is the default route"));
    }
    if net.prefix_len() < min {
        return Some(format!("{net} is wider than /{min}"));
    }
    for (range, what) in SPECIAL {
        let range: IpNet = range.parse().expect("valid constant");
        if overlaps(net, &range) {
            return Some(format!("{net} overlaps {what} {range}"));
        }
    }
    if let Some(t) = limits.tunnel.filter(|t| overlaps(net, t)) {
        return Some(format!("{net} overlaps connector's tunnel network {t}"));
    }
    if let Some((name, subnet)) = limits.docker.iter().find(|(_, s)| overlaps(net, s)) {
        return Some(format!("{net} overlaps Docker network {name} ({subnet})"));
    }
    if let Some((iface, subnet)) = limits.host.iter().find(|(_, s)| overlaps(net, s)) {
        return Some(format!(
            "{net} overlaps the host's network {subnet} on {iface}"
        ));
    }
    None
}

/// Decides which cluster owns which CIDR and what to route for it.
pub fn plan(clusters: &[ClusterSnapshot], config: &KindConfig, limits: &Limits) -> KindPlan {
    let selected =
        |c: &ClusterSnapshot| config.clusters.is_empty() || config.clusters.contains(&c.name);
    let mut order: Vec<&ClusterSnapshot> = clusters.iter().filter(|c| selected(c)).collect();
    if config.clusters.is_empty() {
        order.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.name.cmp(&b.name)));
    } else {
        order.sort_by_key(|c| config.clusters.iter().position(|n| *n == c.name));
    }

    let mut out = KindPlan::default();
    let mut claimed: Vec<(IpNet, String)> = Vec::new();
    for cluster in order {
        let pods = decide(
            cluster,
            CidrKind::Pods,
            config.pods,
            limits,
            &mut claimed,
            &mut out,
        );
        let services = decide(
            cluster,
            CidrKind::Services,
            config.services,
            limits,
            &mut claimed,
            &mut out,
        );
        out.clusters.push(status(cluster, pods, services));
    }
    for cluster in clusters.iter().filter(|c| !selected(c)) {
        let off = |subnets: &[IpNet]| CidrStatus {
            subnets: subnets.to_vec(),
            state: CidrState::Disabled {
                reason: "not listed in [kind] clusters".into(),
            },
        };
        out.clusters.push(status(
            cluster,
            off(&cluster.pod_subnets),
            off(&cluster.service_subnets),
        ));
    }
    out.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    out.extra.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn status(cluster: &ClusterSnapshot, pods: CidrStatus, services: CidrStatus) -> ClusterStatus {
    let mut nodes: Vec<NodeStatus> = cluster
        .nodes
        .iter()
        .map(|n| NodeStatus {
            name: n.name.clone(),
            role: n.role.clone(),
            ip: n.ip,
            pod_cidrs: n.pod_cidrs.clone(),
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    ClusterStatus {
        name: cluster.name.clone(),
        created: cluster.created,
        nodes,
        pods,
        services,
        problem: cluster.problem.clone(),
    }
}

fn v4(subnets: &[IpNet]) -> Vec<Ipv4Net> {
    subnets
        .iter()
        .filter_map(|s| match s {
            IpNet::V4(v) => Some(v.trunc()),
            IpNet::V6(_) => None,
        })
        .collect()
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn decide(
    cluster: &ClusterSnapshot,
    kind: CidrKind,
    enabled: bool,
    limits: &Limits,
    claimed: &mut Vec<(IpNet, String)>,
    out: &mut KindPlan,
) -> CidrStatus {
    let subnets = match kind {
        CidrKind::Pods => &cluster.pod_subnets,
        CidrKind::Services => &cluster.service_subnets,
    };
    let state = |state| CidrStatus {
        subnets: subnets.clone(),
        state,
    };
    if !enabled {
        return state(CidrState::Disabled {
            reason: format!("{} = false in [kind]", kind.as_str()),
        });
    }
    if subnets.is_empty() {
        let reason = match (&cluster.problem, kind) {
            (Some(p), _) => p.clone(),
            (None, CidrKind::Pods) => "kubeadm.conf sets no podSubnet".into(),
            (None, CidrKind::Services) => "no serviceSubnet known".into(),
        };
        return state(CidrState::Pending { reason });
    }
    // Before claiming: a rejected range must not keep a real cluster out.
    let rejected: Vec<String> = subnets
        .iter()
        .filter_map(|s| rejection(s, limits))
        .collect();
    if !rejected.is_empty() {
        return state(CidrState::Rejected {
            reason: rejected.join("; "),
        });
    }
    if let Some((subnet, owner)) = subnets
        .iter()
        .find_map(|s| claimed.iter().find(|(c, _)| overlaps(c, s)).cloned())
    {
        return state(CidrState::Conflict {
            with: owner,
            subnet,
        });
    }
    // Claimed as soon as known, so a preferred cluster that is still starting
    // keeps its CIDRs instead of letting another cluster flap in and out.
    claimed.extend(subnets.iter().map(|s| (*s, cluster.name.clone())));

    let wanted = v4(subnets);
    if wanted.is_empty() {
        return state(CidrState::Skipped {
            reason: "IPv6 subnets are not routed yet".into(),
        });
    }
    let network = network_name(&cluster.name, kind);
    let routes = match kind {
        CidrKind::Pods => pod_routes(cluster, &wanted),
        CidrKind::Services => service_routes(cluster, &wanted),
    };
    if routes.is_empty() {
        let reason = match (kind, cluster.nodes.iter().any(|n| n.ip.is_some())) {
            (_, false) => "no node has an IPv4 address on the kind network".to_owned(),
            (CidrKind::Pods, true) => cluster
                .problem
                .clone()
                .unwrap_or_else(|| "no node has a podCIDR yet".into()),
            (CidrKind::Services, true) => "no node to route through".into(),
        };
        return state(CidrState::Pending { reason });
    }
    out.extra.push(DockerNetwork {
        id: network.clone(),
        name: network.clone(),
        internal: false,
        subnets: wanted.iter().map(|s| IpNet::V4(*s)).collect(),
    });
    out.candidates
        .extend(routes.into_iter().map(|route| Candidate {
            network: network.clone(),
            route,
        }));
    state(CidrState::Routed)
}

/// Each node's podCIDR via that node: kindnet does not masquerade traffic to
/// pods, so replies leave through the node that owns the pod, and the
/// forward path must enter there too.
fn pod_routes(cluster: &ClusterSnapshot, pod_subnets: &[Ipv4Net]) -> Vec<VmRoute> {
    let mut routes = Vec::new();
    for node in &cluster.nodes {
        let Some(via) = node.ip else { continue };
        for cidr in v4(&node.pod_cidrs) {
            if pod_subnets.iter().any(|s| s.contains(&cidr)) {
                routes.push(VmRoute {
                    destination: cidr,
                    via,
                });
            }
        }
    }
    routes.sort();
    routes.dedup_by(|a, b| a.destination == b.destination);
    routes
}

/// kube-proxy on any node translates ClusterIPs; the control plane is the
/// node that exists for the cluster's whole life.
fn service_routes(cluster: &ClusterSnapshot, service_subnets: &[Ipv4Net]) -> Vec<VmRoute> {
    let mut nodes: Vec<&NodeSnapshot> = cluster.nodes.iter().filter(|n| n.ip.is_some()).collect();
    nodes.sort_by_key(|n| (n.role != ROLE_CONTROL_PLANE, n.name.clone()));
    let Some(via) = nodes.first().and_then(|n| n.ip) else {
        return Vec::new();
    };
    service_subnets
        .iter()
        .map(|s| VmRoute {
            destination: *s,
            via,
        })
        .collect()
}

/// Applies the host planner's verdict: a pseudo-network the host does not
/// route (a VPN owns the range, …) gets no VM routes either, and its status
/// says why.
pub fn settle(plan: KindPlan, decisions: &[SubnetDecision]) -> (Vec<VmRoute>, Vec<ClusterStatus>) {
    let refused = |network: &str, destination: &Ipv4Net| {
        decisions.iter().find(|d| {
            d.network == network
                && d.skipped.is_some()
                && d.subnet.contains(&IpNet::V4(*destination).network())
        })
    };
    let mut routes: Vec<VmRoute> = plan
        .candidates
        .iter()
        .filter(|c| refused(&c.network, &c.route.destination).is_none())
        .map(|c| c.route.clone())
        .collect();
    routes.sort();
    routes.dedup();

    let mut clusters = plan.clusters;
    for cluster in &mut clusters {
        for (kind, cidr) in [
            (CidrKind::Pods, &mut cluster.pods),
            (CidrKind::Services, &mut cluster.services),
        ] {
            if cidr.state != CidrState::Routed {
                continue;
            }
            let network = network_name(&cluster.name, kind);
            if let Some(d) = decisions
                .iter()
                .find(|d| d.network == network && d.skipped.is_some())
            {
                cidr.state = CidrState::Skipped {
                    reason: format!(
                        "{}: {}",
                        d.subnet,
                        d.skipped
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    ),
                };
            }
        }
    }
    (routes, clusters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::plan::SkipReason;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn node(name: &str, role: &str, ip: &str, pod_cidr: &str) -> NodeSnapshot {
        NodeSnapshot {
            name: name.into(),
            role: role.into(),
            ip: (!ip.is_empty()).then(|| ip.parse().unwrap()),
            pod_cidrs: if pod_cidr.is_empty() {
                vec![]
            } else {
                vec![net(pod_cidr)]
            },
        }
    }

    /// A two-node cluster with kind's default CIDRs; `base` is the last octet
    /// of its control plane's IP.
    fn cluster(name: &str, created: i64, base: u8) -> ClusterSnapshot {
        ClusterSnapshot {
            name: name.into(),
            created,
            nodes: vec![
                node(
                    &format!("{name}-worker"),
                    "worker",
                    &format!("172.18.0.{}", base + 1),
                    "10.244.1.0/24",
                ),
                node(
                    &format!("{name}-control-plane"),
                    "control-plane",
                    &format!("172.18.0.{base}"),
                    "10.244.0.0/24",
                ),
            ],
            pod_subnets: vec![net("10.244.0.0/16")],
            service_subnets: vec![net("10.96.0.0/16")],
            problem: None,
        }
    }

    fn config(pods: bool, services: bool, clusters: &[&str]) -> KindConfig {
        KindConfig {
            pods,
            services,
            clusters: clusters.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn route(dst: &str, via: &str) -> VmRoute {
        VmRoute {
            destination: dst.parse().unwrap(),
            via: via.parse().unwrap(),
        }
    }

    fn routes(p: &KindPlan) -> Vec<VmRoute> {
        let mut r: Vec<VmRoute> = p.candidates.iter().map(|c| c.route.clone()).collect();
        r.sort();
        r
    }

    fn find<'a>(p: &'a KindPlan, name: &str) -> &'a ClusterStatus {
        p.clusters.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn hostile_ranges_are_rejected_and_claim_nothing() {
        let limits = Limits {
            docker: vec![("web".into(), net("172.30.0.0/16"))],
            host: vec![("en0".into(), net("192.168.1.0/24"))],
            tunnel: Some(net("10.254.253.0/30")),
        };
        let cases = [
            ("0.0.0.0/0", "is the default route"),
            ("10.0.0.0/7", "is wider than /8"),
            ("127.0.0.0/8", "overlaps loopback 127.0.0.0/8"),
            ("169.254.0.0/24", "link-local"),
            ("224.1.0.0/16", "multicast"),
            (
                "172.30.5.0/24",
                "overlaps Docker network web (172.30.0.0/16)",
            ),
            (
                "192.168.0.0/16",
                "overlaps the host's network 192.168.1.0/24 on en0",
            ),
            ("10.254.0.0/16", "connector's tunnel network"),
            ("fd00::/16", "is wider than /32"),
        ];
        for (range, why) in cases {
            let reason = rejection(&net(range), &limits).unwrap_or_default();
            assert!(reason.contains(why), "{range}: {reason:?}");
        }
        assert_eq!(rejection(&net("10.244.0.0/16"), &limits), None);
        assert_eq!(rejection(&net("fd00:10:244::/56"), &limits), None);

        // A hostile cluster created last (preferred) claiming a Docker
        // network's range and the default route: rejected, routes nothing,
        // and the real cluster keeps its own ranges.
        let mut hostile = cluster("evil", 999, 20);
        hostile.pod_subnets = vec![net("172.30.0.0/16")];
        hostile.service_subnets = vec![net("0.0.0.0/0")];
        for n in &mut hostile.nodes {
            n.pod_cidrs = vec![net("172.30.1.0/24")];
        }
        let p = plan(
            &[cluster("dev", 100, 2), hostile],
            &config(true, true, &[]),
            &limits,
        );
        let evil = p.clusters.iter().find(|c| c.name == "evil").unwrap();
        assert!(
            matches!(evil.pods.state, CidrState::Rejected { .. }),
            "{:?}",
            evil.pods
        );
        assert!(evil
            .services
            .state
            .to_string()
            .starts_with("rejected: 0.0.0.0/0 is the default route"));
        let dev = p.clusters.iter().find(|c| c.name == "dev").unwrap();
        assert_eq!(
            (&dev.pods.state, &dev.services.state),
            (&CidrState::Routed, &CidrState::Routed)
        );
        assert!(p.extra.iter().all(|n| n.name.starts_with("kind/dev/")));
        assert!(p
            .candidates
            .iter()
            .all(|c| c.network.starts_with("kind/dev/")));
    }

    #[test]
    fn one_cluster_routes_each_podcidr_via_its_node_and_services_via_the_control_plane() {
        let p = plan(
            &[cluster("dev", 100, 2)],
            &config(true, true, &[]),
            &Limits::default(),
        );
        assert_eq!(
            routes(&p),
            vec![
                route("10.96.0.0/16", "172.18.0.2"),
                route("10.244.0.0/24", "172.18.0.2"),
                route("10.244.1.0/24", "172.18.0.3"),
            ]
        );
        let names: Vec<&str> = p.extra.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["kind/dev/pods", "kind/dev/services"]);
        assert_eq!(p.extra[0].subnets, vec![net("10.244.0.0/16")]);
        let dev = find(&p, "dev");
        assert_eq!(dev.pods.state, CidrState::Routed);
        assert_eq!(dev.services.state, CidrState::Routed);
        assert_eq!(
            dev.nodes[0].name, "dev-control-plane",
            "nodes are listed by name"
        );
    }

    #[test]
    fn same_cidrs_route_only_the_most_recent_cluster() {
        let p = plan(
            &[cluster("old", 100, 2), cluster("new", 200, 4)],
            &config(true, true, &[]),
            &Limits::default(),
        );
        assert_eq!(
            routes(&p),
            vec![
                route("10.96.0.0/16", "172.18.0.4"),
                route("10.244.0.0/24", "172.18.0.4"),
                route("10.244.1.0/24", "172.18.0.5"),
            ]
        );
        assert_eq!(p.extra.len(), 2, "never both clusters: {:?}", p.extra);
        let old = find(&p, "old");
        assert_eq!(
            old.pods.state,
            CidrState::Conflict {
                with: "new".into(),
                subnet: net("10.244.0.0/16")
            }
        );
        assert!(
            matches!(old.services.state, CidrState::Conflict { ref with, .. } if with == "new")
        );
        assert_eq!(
            old.pods.state.to_string(),
            "conflict with cluster new: it is routed and also claims 10.244.0.0/16"
        );
    }

    #[test]
    fn configured_order_beats_creation_time_and_unlisted_clusters_are_disabled() {
        let clusters = [
            cluster("old", 100, 2),
            cluster("new", 200, 4),
            cluster("other", 300, 6),
        ];
        let p = plan(
            &clusters,
            &config(true, true, &["old", "new"]),
            &Limits::default(),
        );
        assert_eq!(find(&p, "old").pods.state, CidrState::Routed);
        assert!(
            matches!(find(&p, "new").pods.state, CidrState::Conflict { ref with, .. } if with == "old")
        );
        assert_eq!(
            find(&p, "other").pods.state,
            CidrState::Disabled {
                reason: "not listed in [kind] clusters".into()
            }
        );
        assert!(
            routes(&p).iter().all(|r| r.via.octets()[3] < 4),
            "{:?}",
            routes(&p)
        );
    }

    #[test]
    fn distinct_cidrs_route_both_clusters() {
        let mut b = cluster("b", 200, 4);
        b.pod_subnets = vec![net("10.245.0.0/16")];
        b.service_subnets = vec![net("10.97.0.0/16")];
        for n in &mut b.nodes {
            n.pod_cidrs = vec![net(&n.pod_cidrs[0].to_string().replace("10.244", "10.245"))];
        }
        let p = plan(
            &[cluster("a", 100, 2), b],
            &config(true, true, &[]),
            &Limits::default(),
        );
        assert_eq!(p.extra.len(), 4);
        assert_eq!(routes(&p).len(), 6);
    }

    #[test]
    fn pods_off_leaves_services_and_the_reverse() {
        let p = plan(
            &[cluster("dev", 100, 2)],
            &config(false, true, &[]),
            &Limits::default(),
        );
        assert_eq!(routes(&p), vec![route("10.96.0.0/16", "172.18.0.2")]);
        assert_eq!(
            find(&p, "dev").pods.state.to_string(),
            "disabled: pods = false in [kind]"
        );
        let p = plan(
            &[cluster("dev", 100, 2)],
            &config(true, false, &[]),
            &Limits::default(),
        );
        assert_eq!(routes(&p).len(), 2);
        assert!(routes(&p)
            .iter()
            .all(|r| r.destination.to_string().starts_with("10.244.")));
    }

    #[test]
    fn a_disabled_kind_does_not_claim_its_cidr() {
        // `pods = false`: the pod subnets of the newer cluster are not claimed,
        // so nothing is routed for pods at all, and the older cluster is not
        // reported in conflict for them either.
        let p = plan(
            &[cluster("old", 100, 2), cluster("new", 200, 4)],
            &config(false, true, &[]),
            &Limits::default(),
        );
        assert!(matches!(
            find(&p, "old").pods.state,
            CidrState::Disabled { .. }
        ));
        assert!(matches!(
            find(&p, "old").services.state,
            CidrState::Conflict { .. }
        ));
    }

    #[test]
    fn nodes_without_ip_or_podcidr_are_listed_but_not_routed() {
        let mut c = cluster("dev", 100, 2);
        c.nodes[0].pod_cidrs.clear();
        c.nodes[1].ip = None;
        let p = plan(&[c], &config(true, true, &[]), &Limits::default());
        assert_eq!(
            routes(&p),
            vec![route("10.96.0.0/16", "172.18.0.3")],
            "services fall back to a worker"
        );
        assert!(matches!(
            find(&p, "dev").pods.state,
            CidrState::Pending { .. }
        ));
        assert!(
            p.extra.iter().all(|n| n.name != "kind/dev/pods"),
            "no host route without a VM route"
        );
        assert_eq!(find(&p, "dev").nodes.len(), 2);
    }

    #[test]
    fn unknown_subnets_are_pending_with_the_discovery_problem_and_claim_nothing() {
        let mut starting = cluster("starting", 300, 6);
        starting.pod_subnets.clear();
        starting.service_subnets.clear();
        starting.problem = Some("cannot read /kind/kubeadm.conf".into());
        let p = plan(
            &[starting, cluster("dev", 100, 2)],
            &config(true, true, &[]),
            &Limits::default(),
        );
        assert_eq!(
            find(&p, "starting").pods.state,
            CidrState::Pending {
                reason: "cannot read /kind/kubeadm.conf".into()
            }
        );
        assert_eq!(find(&p, "dev").pods.state, CidrState::Routed);
    }

    #[test]
    fn a_podcidr_outside_the_pod_subnet_and_ipv6_are_not_routed() {
        let mut c = cluster("dev", 100, 2);
        c.nodes[0].pod_cidrs = vec![net("10.99.0.0/24"), net("fd00:10:244:1::/64")];
        c.pod_subnets.push(net("fd00:10:244::/56"));
        let p = plan(&[c], &config(true, true, &[]), &Limits::default());
        assert_eq!(
            routes(&p)
                .iter()
                .filter(|r| r.destination.to_string().starts_with("10.244."))
                .count(),
            1
        );
        assert_eq!(
            p.extra[0].subnets,
            vec![net("10.244.0.0/16")],
            "only IPv4 goes to the host"
        );
        assert_eq!(
            find(&p, "dev").pods.subnets.len(),
            2,
            "status shows both families"
        );
    }

    #[test]
    fn ipv6_only_cluster_is_skipped_with_a_reason() {
        let mut c = cluster("v6", 100, 2);
        c.pod_subnets = vec![net("fd00:10:244::/56")];
        c.service_subnets = vec![net("fd00:10:96::/112")];
        let p = plan(&[c], &config(true, true, &[]), &Limits::default());
        assert!(p.extra.is_empty() && p.candidates.is_empty());
        assert!(matches!(
            find(&p, "v6").pods.state,
            CidrState::Skipped { .. }
        ));
    }

    #[test]
    fn a_host_conflict_drops_the_vm_routes_and_says_why() {
        let p = plan(
            &[cluster("dev", 100, 2)],
            &config(true, true, &[]),
            &Limits::default(),
        );
        let decisions = [
            SubnetDecision {
                network: "kind/dev/pods".into(),
                subnet: net("10.244.0.0/16"),
                skipped: Some(SkipReason::Conflict {
                    route: "10.244.0.0/16".into(),
                    interface: Some("utun4".into()),
                    gateway: None,
                }),
            },
            SubnetDecision {
                network: "kind/dev/services".into(),
                subnet: net("10.96.0.0/16"),
                skipped: None,
            },
        ];
        let (vm, clusters) = settle(p, &decisions);
        assert_eq!(vm, vec![route("10.96.0.0/16", "172.18.0.2")]);
        assert_eq!(
            clusters[0].pods.state.to_string(),
            "skipped: 10.244.0.0/16: conflicts with existing route 10.244.0.0/16 dev utun4"
        );
        assert_eq!(clusters[0].services.state, CidrState::Routed);
    }

    #[test]
    fn status_json_names_state_and_peer() {
        let p = plan(
            &[cluster("old", 100, 2), cluster("new", 200, 4)],
            &config(true, true, &[]),
            &Limits::default(),
        );
        let json = serde_json::to_value(find(&p, "old")).unwrap();
        assert_eq!(json["pods"]["state"], "conflict");
        assert_eq!(json["pods"]["with"], "new");
        assert_eq!(json["pods"]["subnets"][0], "10.244.0.0/16");
        assert_eq!(json["nodes"][0]["ip"], "172.18.0.2");
        let back: ClusterStatus = serde_json::from_value(json).unwrap();
        assert_eq!(&back, find(&p, "old"));
    }
}
