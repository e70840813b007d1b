//! The sans-IO core: what routes should exist, as a pure function of a Docker
//! snapshot, the configuration and the host routing table, and the diff
//! against the routes connector owns now.

use std::collections::BTreeSet;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::config::{Config, NetworkFilter};
use crate::routes::os::RouteEntry;

/// One Docker bridge network as seen in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerNetwork {
    pub id: String,
    pub name: String,
    pub internal: bool,
    /// IPv4 and IPv6 subnets from the network's IPAM config.
    pub subnets: Vec<IpNet>,
}

/// Why a subnet is not routed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SkipReason {
    /// The network is filtered out by `[networks]`.
    Excluded { rule: String },
    /// A route connector does not own overlaps the subnet (LAN, VPN).
    Conflict {
        route: String,
        interface: Option<String>,
        gateway: Option<String>,
    },
    /// The subnet overlaps connector's own tunnel network.
    TunnelOverlap { tunnel: String },
    /// `ipv6 = false` in the configuration.
    Ipv6Off,
    /// Link-local and multicast ranges are never routed.
    Unroutable,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Excluded { rule } => write!(f, "excluded by config ({rule})"),
            SkipReason::Conflict {
                route,
                interface,
                gateway,
            } => {
                write!(f, "conflicts with existing route {route}")?;
                if let Some(gw) = gateway {
                    write!(f, " via {gw}")?;
                }
                if let Some(iface) = interface {
                    write!(f, " dev {iface}")?;
                }
                Ok(())
            }
            SkipReason::TunnelOverlap { tunnel } => {
                write!(
                    f,
                    "overlaps connector's tunnel network {tunnel} (change `tunnel`)"
                )
            }
            SkipReason::Ipv6Off => write!(f, "IPv6 is off (`ipv6 = false`)"),
            SkipReason::Unroutable => {
                write!(f, "link-local and multicast ranges are never routed")
            }
        }
    }
}

/// The decision for one subnet of one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubnetDecision {
    pub network: String,
    pub subnet: IpNet,
    /// `None` = routed through the tunnel.
    pub skipped: Option<SkipReason>,
}

/// What the host should look like and what to change to get there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub decisions: Vec<SubnetDecision>,
    pub add: Vec<IpNet>,
    pub remove: Vec<IpNet>,
}

/// Which foreign routes keep a subnet from being routed: the one rule the
/// planner and `doctor` share.
///
/// A catch-all (the default route, or the halves `0.0.0.0/1` + `128.0.0.0/1`
/// and `::/1` + `8000::/1` that OpenVPN's `redirect-gateway def1` and
/// wg-quick install) never conflicts: a more specific route wins over it, as
/// it does for every VPN client that splits the default route. Any other
/// overlapping route does, unless it lies inside a CIDR the user listed in
/// `allow_conflicts` — then ours wins where it is more specific.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConflictPolicy {
    allowed: Vec<IpNet>,
}

impl ConflictPolicy {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        ConflictPolicy { allowed }
    }

    /// Whether a foreign route to `foreign` takes traffic from `subnet`
    /// (they overlap) in a way we must not override.
    pub fn conflicts(&self, foreign: &IpNet, subnet: &IpNet) -> bool {
        if !overlaps(foreign, subnet) || is_catch_all(foreign) {
            return false;
        }
        // The same prefix on two interfaces cannot coexist in the table:
        // listing it does not help.
        if foreign.prefix_len() == subnet.prefix_len() {
            return true;
        }
        !self.allowed.iter().any(|a| a.contains(foreign))
    }
}

/// The default route and its two halves (a VPN's full tunnel).
pub fn is_catch_all(destination: &IpNet) -> bool {
    destination.prefix_len() <= 1
}

/// connector's own tunnel networks; `v6` is `None` when IPv6 is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelNets {
    pub v4: Ipv4Net,
    pub v6: Option<Ipv6Net>,
}

impl TunnelNets {
    pub fn of(config: &Config) -> Self {
        TunnelNets {
            v4: config.tunnel,
            v6: config.tunnel_v6,
        }
    }

    /// The tunnel network of `subnet`'s family that overlaps it, if any.
    pub fn overlapping(&self, subnet: &IpNet) -> Option<IpNet> {
        [Some(IpNet::V4(self.v4)), self.v6.map(IpNet::V6)]
            .into_iter()
            .flatten()
            .find(|t| overlaps(t, subnet))
    }
}

/// Inputs of [`plan`].
pub struct PlanInput<'a> {
    pub networks: &'a [DockerNetwork],
    pub filter: &'a NetworkFilter,
    pub tunnel: TunnelNets,
    /// The tun interface's name: routes on it are ours.
    pub interface: &'a str,
    /// The host's routing table as read just now.
    pub host_routes: &'a [RouteEntry],
    /// Subnets that do not come from a Docker network (kind pod and Service
    /// CIDRs), named by their owner; `[networks]` does not filter them, and
    /// they never take a range a Docker network has.
    pub extra: &'a [DockerNetwork],
    pub policy: &'a ConflictPolicy,
}

/// Decides every subnet and diffs the result against the routes on our tun.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let ours = |r: &RouteEntry| r.interface.as_deref() == Some(input.interface);
    let foreign: Vec<&RouteEntry> = input.host_routes.iter().filter(|r| !ours(r)).collect();
    let owned: BTreeSet<IpNet> = input
        .host_routes
        .iter()
        .filter(|r| ours(r) && !is_interface_route(&r.destination, &input.tunnel))
        .map(|r| r.destination)
        .collect();

    // Docker networks first: a pseudo-network read from a container (a kind
    // node's CIDRs) must never take a range a real network has.
    let mut networks: Vec<(&DockerNetwork, bool)> = input
        .networks
        .iter()
        .map(|n| (n, true))
        .chain(input.extra.iter().map(|n| (n, false)))
        .collect();
    networks.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.name.cmp(&b.0.name)));

    let mut decisions = Vec::new();
    let mut wanted = BTreeSet::new();
    for (network, filtered) in networks {
        let excluded = if filtered {
            input.filter.rejects(&network.name)
        } else {
            None
        };
        for subnet in &network.subnets {
            let subnet = subnet.trunc();
            let skipped = if let Some(rule) = excluded {
                Some(SkipReason::Excluded {
                    rule: rule.to_owned(),
                })
            } else if subnet.addr().is_ipv6() && input.tunnel.v6.is_none() {
                Some(SkipReason::Ipv6Off)
            } else if is_link_scoped(&subnet) {
                Some(SkipReason::Unroutable)
            } else if let Some(tunnel) = input.tunnel.overlapping(&subnet) {
                Some(SkipReason::TunnelOverlap {
                    tunnel: tunnel.to_string(),
                })
            } else if let Some(other) = wanted.iter().find(|w| overlaps(w, &subnet)) {
                Some(SkipReason::Conflict {
                    route: other.to_string(),
                    interface: None,
                    gateway: None,
                })
            } else {
                foreign
                    .iter()
                    .find(|r| input.policy.conflicts(&r.destination, &subnet))
                    .map(|route| SkipReason::Conflict {
                        route: route.destination.to_string(),
                        interface: route.interface.clone(),
                        gateway: route.gateway.map(|g| g.to_string()),
                    })
            };
            if skipped.is_none() {
                wanted.insert(subnet);
            }
            decisions.push(SubnetDecision {
                network: network.name.clone(),
                subnet,
                skipped,
            });
        }
    }
    Plan {
        decisions,
        add: wanted.difference(&owned).copied().collect(),
        remove: owned.difference(&wanted).copied().collect(),
    }
}

/// Routes the OS puts on the tun by itself (the tunnel networks, the peer's
/// host route, link-local and multicast): never ours to add or remove.
pub fn is_interface_route(destination: &IpNet, tunnel: &TunnelNets) -> bool {
    let inside = match destination {
        IpNet::V4(v4) => tunnel.v4.contains(v4),
        IpNet::V6(v6) => tunnel.v6.is_some_and(|t| t.contains(v6)),
    };
    inside || is_link_scoped(destination)
}

/// Link-local and multicast ranges: they never leave the link.
pub fn is_link_scoped(net: &IpNet) -> bool {
    match net {
        IpNet::V4(v4) => v4.addr().is_multicast() || v4.addr().is_link_local(),
        IpNet::V6(v6) => {
            let first = v6.addr().segments()[0];
            (first & 0xffc0) == 0xfe80 || (first & 0xff00) == 0xff00
        }
    }
}

pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, subnets: &[&str]) -> DockerNetwork {
        DockerNetwork {
            id: format!("id-{name}"),
            name: name.into(),
            internal: false,
            subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    fn route(dst: &str, iface: &str) -> RouteEntry {
        RouteEntry {
            destination: dst.parse().unwrap(),
            interface: Some(iface.into()),
            gateway: None,
        }
    }

    fn all() -> NetworkFilter {
        NetworkFilter::new(vec!["*".into()], vec![]).unwrap()
    }

    fn run(networks: &[DockerNetwork], filter: &NetworkFilter, routes: &[RouteEntry]) -> Plan {
        plan(&PlanInput {
            networks,
            filter,
            tunnel: tunnel(),
            interface: "connector0",
            host_routes: routes,
            extra: &[],
            policy: &ConflictPolicy::default(),
        })
    }

    fn tunnel() -> TunnelNets {
        TunnelNets {
            v4: "10.254.253.0/30".parse().unwrap(),
            v6: Some("fd5c:9a2e:83b1:fe53::/126".parse().unwrap()),
        }
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn routes_every_subnet_of_both_families_and_ignores_default_and_tunnel_routes() {
        let networks = [
            net("bridge", &["172.17.0.0/16"]),
            net("app", &["172.20.0.0/16", "fd00:1::/64"]),
        ];
        let routes = [
            route("0.0.0.0/0", "en0"),
            route("::/0", "en0"),
            route("10.254.253.0/30", "connector0"),
            route("fd5c:9a2e:83b1:fe53::/126", "connector0"),
            route("fe80::/64", "connector0"),
        ];
        let p = run(&networks, &all(), &routes);
        assert_eq!(
            p.add,
            nets(&["172.17.0.0/16", "172.20.0.0/16", "fd00:1::/64"])
        );
        assert!(p.remove.is_empty(), "{:?}", p.remove);
    }

    #[test]
    fn ipv6_follows_the_same_rules_and_can_be_turned_off() {
        let networks = [
            net(
                "a",
                &["fd00:1::/64", "fe80:1::/64", "fd5c:9a2e:83b1:fe53::/64"],
            ),
            net("b", &["fd00:2::/64"]),
        ];
        // A VPN's fd00::/8 conflicts; its ::/1 + 8000::/1 halves do not.
        let routes = [
            route("::/1", "utun9"),
            route("8000::/1", "utun9"),
            route("fd00:2::/48", "utun9"),
        ];
        let p = run(&networks, &all(), &routes);
        let reason = |s: &str| {
            p.decisions
                .iter()
                .find(|d| d.subnet.to_string() == s)
                .unwrap()
                .skipped
                .clone()
        };
        assert_eq!(reason("fd00:1::/64"), None);
        assert_eq!(reason("fe80:1::/64"), Some(SkipReason::Unroutable));
        assert_eq!(
            reason("fd5c:9a2e:83b1:fe53::/64"),
            Some(SkipReason::TunnelOverlap {
                tunnel: "fd5c:9a2e:83b1:fe53::/126".into()
            })
        );
        assert!(matches!(
            reason("fd00:2::/64"),
            Some(SkipReason::Conflict { .. })
        ));

        let off = plan(&PlanInput {
            networks: &networks,
            filter: &all(),
            tunnel: TunnelNets {
                v6: None,
                ..tunnel()
            },
            interface: "connector0",
            host_routes: &[route("fd00:1::/64", "connector0")],
            extra: &[],
            policy: &ConflictPolicy::default(),
        });
        assert!(off.add.is_empty());
        assert_eq!(
            off.remove,
            nets(&["fd00:1::/64"]),
            "a route left from before goes"
        );
        assert!(off
            .decisions
            .iter()
            .all(|d| d.skipped == Some(SkipReason::Ipv6Off)));
    }

    #[test]
    fn diff_adds_only_missing_and_removes_only_ours() {
        let networks = [net("a", &["172.20.0.0/16"]), net("b", &["172.21.0.0/16"])];
        let routes = [
            route("172.20.0.0/16", "connector0"),
            route("172.30.0.0/16", "connector0"),
            route("192.168.1.0/24", "en0"),
        ];
        let p = run(&networks, &all(), &routes);
        assert_eq!(p.add, nets(&["172.21.0.0/16"]));
        assert_eq!(p.remove, nets(&["172.30.0.0/16"]));
    }

    #[test]
    fn conflicting_foreign_route_is_skipped_not_routed() {
        let networks = [
            net("lan-clash", &["192.168.0.0/16"]),
            net("ok", &["172.22.0.0/16"]),
        ];
        let mut vpn = route("192.168.5.0/24", "utun3");
        vpn.gateway = Some("10.8.0.1".parse().unwrap());
        let p = run(&networks, &all(), &[vpn]);
        assert_eq!(p.add, nets(&["172.22.0.0/16"]));
        let clash = &p.decisions[0];
        assert_eq!(clash.network, "lan-clash");
        let reason = clash.skipped.as_ref().unwrap().to_string();
        assert_eq!(
            reason,
            "conflicts with existing route 192.168.5.0/24 via 10.8.0.1 dev utun3"
        );
    }

    #[test]
    fn a_conflict_appearing_later_removes_our_route() {
        let networks = [net("a", &["172.20.0.0/16"])];
        let routes = [
            route("172.20.0.0/16", "connector0"),
            route("172.20.0.0/24", "wg0"),
        ];
        let p = run(&networks, &all(), &routes);
        assert_eq!(p.remove, nets(&["172.20.0.0/16"]));
        assert!(p.add.is_empty());
    }

    #[test]
    fn excluded_networks_are_reported_and_unrouted() {
        let networks = [
            net("kind", &["172.18.0.0/16"]),
            net("secret", &["172.19.0.0/16"]),
        ];
        let filter = NetworkFilter::new(vec!["*".into()], vec!["sec*".into()]).unwrap();
        let routes = [route("172.19.0.0/16", "connector0")];
        let p = run(&networks, &filter, &routes);
        assert_eq!(p.add, nets(&["172.18.0.0/16"]));
        assert_eq!(p.remove, nets(&["172.19.0.0/16"]));
        assert_eq!(
            p.decisions[1].skipped.as_ref().unwrap().to_string(),
            "excluded by config (in networks.exclude)"
        );
    }

    #[test]
    fn subnet_overlapping_the_tunnel_is_refused() {
        let networks = [net("weird", &["10.254.0.0/16"])];
        let p = run(&networks, &all(), &[]);
        assert!(p.add.is_empty());
        assert!(matches!(
            p.decisions[0].skipped,
            Some(SkipReason::TunnelOverlap { .. })
        ));
    }

    #[test]
    fn routes_the_os_puts_on_the_tun_are_never_removed() {
        let routes = [
            route("10.254.253.0/30", "connector0"),
            route("10.254.253.2/32", "connector0"),
            route("fe80::/64", "connector0"),
            route("ff00::/8", "connector0"),
        ];
        let p = run(&[], &all(), &routes);
        assert!(p.remove.is_empty(), "{:?}", p.remove);
    }

    #[test]
    fn extra_subnets_bypass_the_network_filter_but_not_conflicts() {
        let filter = NetworkFilter::new(vec!["app".into()], vec![]).unwrap();
        let extra = [
            net("kind/dev/pods", &["10.244.0.0/16"]),
            net("kind/dev/services", &["192.168.0.0/16"]),
        ];
        let p = plan(&PlanInput {
            networks: &[
                net("app", &["172.20.0.0/16"]),
                net("other", &["172.21.0.0/16"]),
            ],
            filter: &filter,
            tunnel: tunnel(),
            interface: "connector0",
            host_routes: &[route("192.168.1.0/24", "en0")],
            extra: &extra,
            policy: &ConflictPolicy::default(),
        });
        assert_eq!(p.add, nets(&["10.244.0.0/16", "172.20.0.0/16"]));
        let services = p
            .decisions
            .iter()
            .find(|d| d.network == "kind/dev/services")
            .unwrap();
        assert!(matches!(
            services.skipped,
            Some(SkipReason::Conflict { .. })
        ));
    }

    #[test]
    fn two_networks_claiming_overlapping_subnets_route_only_the_first() {
        let networks = [net("a", &["172.20.0.0/16"]), net("b", &["172.20.5.0/24"])];
        let p = run(&networks, &all(), &[]);
        assert_eq!(p.add, nets(&["172.20.0.0/16"]));
        assert!(matches!(
            p.decisions[1].skipped,
            Some(SkipReason::Conflict { .. })
        ));
    }

    #[test]
    fn a_full_tunnel_vpn_is_not_a_conflict() {
        // OpenVPN `redirect-gateway def1` / wg-quick on macOS, plus the LAN's
        // default route underneath.
        let networks = [net("a", &["172.20.0.0/16"]), net("b", &["10.8.5.0/24"])];
        let routes = [
            route("0.0.0.0/0", "en0"),
            route("0.0.0.0/1", "utun3"),
            route("128.0.0.0/1", "utun3"),
            route("::/1", "utun3"),
            route("8000::/1", "utun3"),
        ];
        let p = run(&networks, &all(), &routes);
        assert_eq!(p.add, nets(&["10.8.5.0/24", "172.20.0.0/16"]));
        assert!(p.decisions.iter().all(|d| d.skipped.is_none()));
    }

    #[test]
    fn allowed_conflicts_are_overridden_where_ours_is_more_specific() {
        let networks = [
            net("corp", &["10.231.70.0/24"]),
            net("same", &["10.99.0.0/16"]),
            net("lan", &["192.168.1.0/24"]),
        ];
        let routes = [
            route("10.231.64.0/18", "utun4"),
            route("10.99.0.0/16", "utun4"),
            route("192.168.1.0/24", "en0"),
        ];
        // Without the key every overlap is a conflict.
        let p = run(&networks, &all(), &routes);
        assert!(p.add.is_empty());
        let policy = ConflictPolicy::new(nets(&["10.0.0.0/8"]));
        let p = plan(&PlanInput {
            networks: &networks,
            filter: &all(),
            tunnel: tunnel(),
            interface: "connector0",
            host_routes: &routes,
            extra: &[],
            policy: &policy,
        });
        // The corporate /18 is listed: our /24 wins. An identical prefix cannot
        // coexist with ours, listed or not; the unlisted LAN stays a conflict.
        assert_eq!(p.add, nets(&["10.231.70.0/24"]));
        let reason = |name: &str| {
            p.decisions
                .iter()
                .find(|d| d.network == name)
                .and_then(|d| d.skipped.as_ref())
                .map(ToString::to_string)
        };
        assert_eq!(
            reason("same").as_deref(),
            Some("conflicts with existing route 10.99.0.0/16 dev utun4")
        );
        assert!(reason("lan").unwrap().contains("192.168.1.0/24 dev en0"));
    }

    #[test]
    fn extra_subnets_never_take_a_docker_networks_range() {
        // A pseudo-network whose name sorts first still loses to a Docker network.
        let extra = [net("kind/a/pods", &["172.30.0.0/16"])];
        let p = plan(&PlanInput {
            networks: &[net("zzz", &["172.30.0.0/16"])],
            filter: &all(),
            tunnel: tunnel(),
            interface: "connector0",
            host_routes: &[],
            extra: &extra,
            policy: &ConflictPolicy::default(),
        });
        assert_eq!(p.add, nets(&["172.30.0.0/16"]));
        let pods = p
            .decisions
            .iter()
            .find(|d| d.network == "kind/a/pods")
            .unwrap();
        assert!(matches!(pods.skipped, Some(SkipReason::Conflict { .. })));
        assert!(p
            .decisions
            .iter()
            .find(|d| d.network == "zzz")
            .unwrap()
            .skipped
            .is_none());
    }

    #[test]
    fn plan_is_deterministic_whatever_the_snapshot_order() {
        let a = [net("b", &["172.21.0.0/16"]), net("a", &["172.20.0.0/16"])];
        let b = [net("a", &["172.20.0.0/16"]), net("b", &["172.21.0.0/16"])];
        assert_eq!(run(&a, &all(), &[]), run(&b, &all(), &[]));
    }
}
