//! Routes the daemon asks for in the VM (kind pod CIDRs via their nodes, the
//! Service CIDR via a node), applied with netlink.
//!
//! Every route the agent adds carries a route protocol number of its own
//! (derived from the agent's tag, so two agents in one VM never touch each
//! other's routes). That is how the agent finds its routes again: after a
//! crash and restart the leftovers are kept until the daemon's next
//! `set-routes` replaces them, and SIGTERM or `cleanup` removes them all.
//!
//! The decisions (validation, the diff against the kernel's table) are pure
//! and unit-tested; only [`RouteTable`] talks to the kernel.

// Elsewhere the agent is only type-checked (macOS CI): the pure core has no
// caller there.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::fmt;
use std::net::Ipv4Addr;

use connector_protocol::vm_routes::{RouteFailure, VmRoute};
use ipnet::Ipv4Net;
use serde::Serialize;

/// A route of the main table as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub destination: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub protocol: u8,
    pub priority: u32,
    pub device: Option<String>,
}

impl fmt::Display for KernelRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.destination)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(dev) = &self.device {
            write!(f, " dev {dev}")?;
        }
        write!(f, " proto {}", self.protocol)
    }
}

/// What one `set-routes` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    /// The requested routes now in place.
    pub applied: Vec<VmRoute>,
    /// Our routes that were taken out (no longer wanted, or a new gateway).
    pub removed: Vec<VmRoute>,
    pub errors: Vec<RouteFailure>,
}

/// VmRoute protocol numbers 200-249: unassigned in iproute2's `rt_protos` and
/// by routing daemons (FRR uses 186-198, BIRD 12).
pub fn protocol_for_tag(tag: &str) -> u8 {
    // FNV-1a: stable across builds and platforms.
    let hash = tag.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    200 + (hash % 50) as u8
}

/// Refuses routes that could cut the agent off or make no sense. `protected`
/// are the tunnel addresses: a route covering them would pull the tunnel's
/// own traffic away from the tun.
pub fn validate(route: &VmRoute, protected: &[Ipv4Addr]) -> Result<(), String> {
    let d = route.destination;
    if d.prefix_len() == 0 {
        return Err("refusing to replace the default route".into());
    }
    if d.trunc() != d {
        return Err(format!(
            "destination has host bits set (did you mean {}?)",
            d.trunc()
        ));
    }
    let via = route.via;
    if via.is_unspecified() || via.is_loopback() || via.is_multicast() || via.is_broadcast() {
        return Err(format!("gateway {via} is not a unicast address"));
    }
    if d.contains(&via) {
        return Err(format!("gateway {via} lies inside the destination"));
    }
    if let Some(a) = protected.iter().find(|a| d.contains(*a)) {
        return Err(format!("destination covers the tunnel address {a}"));
    }
    Ok(())
}

/// The changes that make our routes exactly `desired`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Already in place.
    pub keep: Vec<VmRoute>,
    pub remove: Vec<VmRoute>,
    pub add: Vec<VmRoute>,
    pub refused: Vec<RouteFailure>,
}

/// Pure: `kernel` is the main table as listed just now; routes carrying
/// `protocol` are ours, the rest belong to someone else and are never
/// touched. A route for the same destination and metric that is not ours
/// (a Docker bridge, a user's route) makes ours impossible: refused.
pub fn diff(
    desired: &[VmRoute],
    kernel: &[KernelRoute],
    protocol: u8,
    protected: &[Ipv4Addr],
) -> Changes {
    let mut changes = Changes::default();
    let ours: Vec<&KernelRoute> = kernel.iter().filter(|r| r.protocol == protocol).collect();
    let mut wanted: Vec<&VmRoute> = Vec::new();
    for route in desired {
        if let Err(e) = validate(route, protected) {
            changes.refused.push(RouteFailure::new(route, e));
            continue;
        }
        if let Some(first) = wanted.iter().find(|w| w.destination == route.destination) {
            if first.via != route.via {
                changes.refused.push(RouteFailure::new(
                    route,
                    format!(
                        "{} is already requested via {}",
                        route.destination, first.via
                    ),
                ));
            }
            continue;
        }
        if let Some(foreign) = kernel.iter().find(|r| {
            r.protocol != protocol && r.destination == route.destination && r.priority == 0
        }) {
            changes.refused.push(RouteFailure::new(
                route,
                format!("conflicts with existing route {foreign}"),
            ));
            continue;
        }
        wanted.push(route);
        match ours.iter().find(|o| o.destination == route.destination) {
            Some(o) if o.gateway == Some(route.via) => changes.keep.push(route.clone()),
            _ => changes.add.push(route.clone()),
        }
    }
    for o in ours {
        let still = changes
            .keep
            .iter()
            .any(|k| k.destination == o.destination && Some(k.via) == o.gateway);
        if !still {
            changes.remove.push(VmRoute {
                destination: o.destination,
                via: o.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
            });
        }
    }
    changes
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("cannot list the routing table: {0}")]
    List(String),
    #[cfg(not(target_os = "linux"))]
    #[error("VM routes need Linux")]
    Unsupported,
}

#[cfg(target_os = "linux")]
pub use netlink::RouteTable;

#[cfg(target_os = "linux")]
mod netlink {
    use std::net::{IpAddr, Ipv4Addr};

    use connector_tunnel::kernel_routes::{self, Families, MainRoute, MAIN_TABLE};
    use ipnet::IpNet;
    use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol};
    use rtnetlink::{Handle, RouteMessageBuilder};
    use tokio::sync::Mutex;

    use super::{diff, ApplyReport, KernelRoute, RouteError, RouteFailure, VmRoute};

    /// The agent's routes in the VM's main table. One `apply` at a time.
    pub struct RouteTable {
        handle: Handle,
        protocol: u8,
        protected: Vec<Ipv4Addr>,
        lock: Mutex<()>,
    }

    impl RouteTable {
        /// Needs a Tokio runtime (the netlink connection runs as a task).
        pub fn new(protocol: u8, protected: Vec<Ipv4Addr>) -> Result<RouteTable, RouteError> {
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(RouteError::Socket)?;
            tokio::spawn(connection);
            Ok(RouteTable {
                handle,
                protocol,
                protected,
                lock: Mutex::new(()),
            })
        }

        pub fn protocol(&self) -> u8 {
            self.protocol
        }

        /// IPv4 routes of the main table.
        pub async fn list(&self) -> Result<Vec<KernelRoute>, RouteError> {
            let routes = kernel_routes::main_table(&self.handle, Families::V4)
                .await
                .map_err(|e| RouteError::List(e.to_string()))?;
            Ok(routes.into_iter().filter_map(kernel_route).collect())
        }

        /// Our routes as they are in the kernel now.
        pub async fn ours(&self) -> Result<Vec<VmRoute>, RouteError> {
            let mut v: Vec<VmRoute> = self
                .list()
                .await?
                .into_iter()
                .filter(|r| r.protocol == self.protocol)
                .map(|r| VmRoute {
                    destination: r.destination,
                    via: r.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
                })
                .collect();
            v.sort();
            Ok(v)
        }

        /// Makes our routes exactly `desired` (minus what is refused).
        pub async fn apply(&self, desired: &[VmRoute]) -> Result<ApplyReport, RouteError> {
            let _one_at_a_time = self.lock.lock().await;
            let kernel = self.list().await?;
            let changes = diff(desired, &kernel, self.protocol, &self.protected);
            let mut report = ApplyReport {
                applied: changes.keep,
                removed: Vec::new(),
                errors: changes.refused,
            };
            // Removals first: a route moving to another gateway frees its
            // destination before the new one goes in.
            for r in changes.remove {
                match self.delete(&r).await {
                    Ok(()) => {
                        tracing::info!(destination = %r.destination, via = %r.via, "route removed");
                        report.removed.push(r);
                    }
                    Err(e) => report
                        .errors
                        .push(RouteFailure::new(&r, format!("cannot remove: {e}"))),
                }
            }
            for r in changes.add {
                match self.add(&r).await {
                    Ok(()) => {
                        tracing::info!(destination = %r.destination, via = %r.via, protocol = self.protocol, "route added");
                        report.applied.push(r);
                    }
                    Err(e) => report.errors.push(RouteFailure::new(&r, e)),
                }
            }
            report.applied.sort();
            for f in &report.errors {
                tracing::warn!(destination = %f.destination, via = %f.via, error = %f.error, "route not applied");
            }
            Ok(report)
        }

        /// Removes all our routes (shutdown, cleanup).
        pub async fn flush(&self) -> Result<Vec<VmRoute>, RouteError> {
            let _one_at_a_time = self.lock.lock().await;
            let mut removed = Vec::new();
            for r in self
                .list()
                .await?
                .into_iter()
                .filter(|r| r.protocol == self.protocol)
            {
                let route = VmRoute {
                    destination: r.destination,
                    via: r.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
                };
                match self.delete(&route).await {
                    Ok(()) => removed.push(route),
                    Err(e) => tracing::warn!(route = %r, error = %e, "cannot remove route"),
                }
            }
            Ok(removed)
        }

        fn message(&self, route: &VmRoute) -> RouteMessage {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(route.destination.addr(), route.destination.prefix_len())
                .protocol(RouteProtocol::from(self.protocol))
                .table_id(MAIN_TABLE);
            if !route.via.is_unspecified() {
                b = b.gateway(route.via);
            }
            b.build()
        }

        async fn add(&self, route: &VmRoute) -> Result<(), String> {
            self.handle
                .route()
                .add(self.message(route))
                .execute()
                .await
                .map_err(|e| explain(e, route))
        }

        /// The kernel deletes only a route with our protocol, so this can
        /// never take away someone else's route for the same destination.
        async fn delete(&self, route: &VmRoute) -> Result<(), String> {
            self.handle
                .route()
                .del(self.message(route))
                .execute()
                .await
                .map_err(|e| explain(e, route))
        }
    }

    fn explain(e: rtnetlink::Error, route: &VmRoute) -> String {
        let text = e.to_string();
        if text.contains("Network is unreachable") || text.contains("os error 101") {
            format!(
                "gateway {} is not on a connected network (node gone?): {text}",
                route.via
            )
        } else {
            text
        }
    }

    fn kernel_route(route: MainRoute) -> Option<KernelRoute> {
        let (IpNet::V4(destination), gateway) = (route.destination, route.gateway) else {
            return None;
        };
        Some(KernelRoute {
            destination,
            gateway: match gateway {
                Some(IpAddr::V4(a)) => Some(a),
                _ => None,
            },
            protocol: route.protocol,
            priority: route.priority,
            device: route.interface,
        })
    }
}

/// Elsewhere (the workspace is type-checked for macOS) the agent has no
/// routing table to manage.
#[cfg(not(target_os = "linux"))]
pub struct RouteTable;

#[cfg(not(target_os = "linux"))]
impl RouteTable {
    pub fn new(_protocol: u8, _protected: Vec<Ipv4Addr>) -> Result<RouteTable, RouteError> {
        Err(RouteError::Unsupported)
    }
    pub fn protocol(&self) -> u8 {
        0
    }
    pub async fn ours(&self) -> Result<Vec<VmRoute>, RouteError> {
        Err(RouteError::Unsupported)
    }
    pub async fn apply(&self, _desired: &[VmRoute]) -> Result<ApplyReport, RouteError> {
        Err(RouteError::Unsupported)
    }
    pub async fn flush(&self) -> Result<Vec<VmRoute>, RouteError> {
        Err(RouteError::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u8 = 222;

    fn route(d: &str, v: &str) -> VmRoute {
        format!("{d} via {v}").parse().unwrap()
    }

    fn kernel(d: &str, gw: Option<&str>, protocol: u8, dev: &str) -> KernelRoute {
        KernelRoute {
            destination: d.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            protocol,
            priority: 0,
            device: Some(dev.into()),
        }
    }

    fn tunnel() -> Vec<Ipv4Addr> {
        vec![
            "10.254.253.2".parse().unwrap(),
            "10.254.253.1".parse().unwrap(),
        ]
    }

    #[test]
    fn protocol_is_per_tag_stable_and_in_the_unassigned_range() {
        for tag in ["connector-agent", "connector-agent-lab", "x"] {
            let p = protocol_for_tag(tag);
            assert!((200..250).contains(&p), "{tag}: {p}");
            assert_eq!(p, protocol_for_tag(tag));
        }
        assert_ne!(
            protocol_for_tag("connector-agent"),
            protocol_for_tag("connector-agent-kind")
        );
    }

    #[test]
    fn adds_missing_keeps_present_removes_unwanted_and_never_touches_foreign() {
        let table = [
            kernel("172.18.0.0/16", None, 2, "br-kind"),
            kernel("10.244.0.0/24", Some("172.18.0.2"), P, "br-kind"),
            kernel("10.244.9.0/24", Some("172.18.0.9"), P, "br-kind"),
            kernel("10.50.0.0/16", Some("192.168.1.1"), 4, "eth0"),
        ];
        let desired = [
            route("10.244.0.0/24", "172.18.0.2"),
            route("10.244.1.0/24", "172.18.0.3"),
        ];
        let c = diff(&desired, &table, P, &tunnel());
        assert_eq!(c.keep, vec![route("10.244.0.0/24", "172.18.0.2")]);
        assert_eq!(c.add, vec![route("10.244.1.0/24", "172.18.0.3")]);
        assert_eq!(c.remove, vec![route("10.244.9.0/24", "172.18.0.9")]);
        assert!(c.refused.is_empty());
    }

    #[test]
    fn a_new_gateway_replaces_our_route() {
        let table = [kernel("10.244.0.0/24", Some("172.18.0.2"), P, "br-kind")];
        let c = diff(
            &[route("10.244.0.0/24", "172.18.0.7")],
            &table,
            P,
            &tunnel(),
        );
        assert_eq!(c.remove, vec![route("10.244.0.0/24", "172.18.0.2")]);
        assert_eq!(c.add, vec![route("10.244.0.0/24", "172.18.0.7")]);
    }

    #[test]
    fn a_foreign_route_for_the_same_destination_refuses_ours_with_its_description() {
        let table = [kernel("10.96.0.0/16", None, 2, "br-other")];
        let c = diff(&[route("10.96.0.0/16", "172.18.0.2")], &table, P, &tunnel());
        assert!(c.add.is_empty());
        assert_eq!(
            c.refused,
            vec![RouteFailure {
                destination: "10.96.0.0/16".into(),
                via: "172.18.0.2".into(),
                error: "conflicts with existing route 10.96.0.0/16 dev br-other proto 2".into(),
            }]
        );
        // A foreign route at a higher metric does not stop ours (ours wins).
        let mut low = kernel("10.96.0.0/16", None, 4, "eth0");
        low.priority = 100;
        assert_eq!(
            diff(&[route("10.96.0.0/16", "172.18.0.2")], &[low], P, &tunnel())
                .add
                .len(),
            1
        );
    }

    #[test]
    fn dangerous_routes_are_refused() {
        for (r, why) in [
            (route("0.0.0.0/0", "172.18.0.2"), "default route"),
            (route("10.244.1.5/24", "172.18.0.2"), "host bits"),
            (route("10.244.1.0/24", "0.0.0.0"), "not a unicast"),
            (
                route("172.18.0.0/16", "172.18.0.2"),
                "inside the destination",
            ),
            (
                route("10.254.0.0/16", "172.18.0.2"),
                "tunnel address 10.254.253.2",
            ),
        ] {
            let c = diff(std::slice::from_ref(&r), &[], P, &tunnel());
            assert!(c.add.is_empty(), "{r}");
            assert!(
                c.refused[0].error.contains(why),
                "{r}: {}",
                c.refused[0].error
            );
        }
    }

    #[test]
    fn one_destination_twice_with_different_gateways_keeps_the_first() {
        let c = diff(
            &[
                route("10.244.0.0/24", "172.18.0.2"),
                route("10.244.0.0/24", "172.18.0.3"),
            ],
            &[],
            P,
            &tunnel(),
        );
        assert_eq!(c.add, vec![route("10.244.0.0/24", "172.18.0.2")]);
        assert_eq!(c.refused.len(), 1);
    }

    #[test]
    fn an_empty_set_removes_all_of_ours() {
        let table = [
            kernel("10.244.0.0/24", Some("172.18.0.2"), P, "br-kind"),
            kernel("10.244.0.0/24", Some("172.18.0.2"), P + 1, "br-kind"),
        ];
        let c = diff(&[], &table, P, &tunnel());
        assert_eq!(
            c.remove,
            vec![route("10.244.0.0/24", "172.18.0.2")],
            "another agent's route stays"
        );
    }

    #[test]
    fn wire_format_is_destination_and_via() {
        let r = route("10.244.1.0/24", "172.18.0.3");
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"destination":"10.244.1.0/24","via":"172.18.0.3"}"#
        );
        assert_eq!(r.to_string(), "10.244.1.0/24 via 172.18.0.3");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Addresses near `base` (so containment happens often) or anywhere,
        /// with the special ones a gateway must not be.
        fn addr(base: u32) -> impl Strategy<Value = Ipv4Addr> {
            prop_oneof![
                4 => any::<u16>().prop_map(move |low| Ipv4Addr::from(base ^ u32::from(low))),
                1 => any::<u32>().prop_map(Ipv4Addr::from),
                1 => prop::sample::select(vec![
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::LOCALHOST,
                    Ipv4Addr::BROADCAST,
                    Ipv4Addr::new(224, 0, 0, 1),
                ]),
            ]
        }

        fn route(base: u32) -> impl Strategy<Value = VmRoute> {
            (addr(base), 0u8..=32, any::<bool>(), addr(base)).prop_map(|(a, prefix, exact, via)| {
                let net = Ipv4Net::new(a, prefix).unwrap();
                VmRoute {
                    destination: if exact { net.trunc() } else { net },
                    via,
                }
            })
        }

        fn case() -> impl Strategy<Value = (VmRoute, Vec<Ipv4Addr>)> {
            any::<u32>()
                .prop_flat_map(|base| (route(base), prop::collection::vec(addr(base), 0..3)))
        }

        fn tables() -> impl Strategy<Value = (Vec<VmRoute>, Vec<KernelRoute>, Vec<Ipv4Addr>)> {
            any::<u32>().prop_flat_map(|base| {
                let kernel = (
                    route(base),
                    prop::sample::select(vec![P, P + 1, 2]),
                    0u32..2,
                )
                    .prop_map(|(r, protocol, priority)| KernelRoute {
                        destination: r.destination.trunc(),
                        gateway: (!r.via.is_unspecified()).then_some(r.via),
                        protocol,
                        priority,
                        device: None,
                    });
                (
                    prop::collection::vec(route(base), 0..8),
                    prop::collection::vec(kernel, 0..8),
                    prop::collection::vec(addr(base), 0..3),
                )
            })
        }

        proptest! {
            #![proptest_config(crate::proptest_config(4000))]

            #[test]
            fn validate_accepts_exactly_the_safe_routes((route, protected) in case()) {
                let d = route.destination;
                let via = route.via;
                let safe = d.prefix_len() > 0
                    && d.trunc() == d
                    && !(via.is_unspecified() || via.is_loopback() || via.is_multicast() || via.is_broadcast())
                    && !d.contains(&via)
                    && !protected.iter().any(|a| d.contains(a));
                let verdict = validate(&route, &protected);
                prop_assert_eq!(verdict.is_ok(), safe, "{} {:?}: {:?}", route, protected, verdict);
            }
        }

        proptest! {
            #![proptest_config(crate::proptest_config(2000))]

            #[test]
            fn diff_only_adds_safe_routes_and_only_removes_ours(
                (desired, kernel, protected) in tables(),
            ) {
                let c = diff(&desired, &kernel, P, &protected);
                let placed: Vec<&VmRoute> = c.keep.iter().chain(&c.add).collect();
                for r in &placed {
                    prop_assert!(validate(r, &protected).is_ok(), "{}", r);
                    prop_assert_eq!(placed.iter().filter(|o| o.destination == r.destination).count(), 1);
                }
                for r in &c.remove {
                    prop_assert!(kernel.iter().any(|k| k.protocol == P && k.destination == r.destination));
                }
                for (i, r) in desired.iter().enumerate() {
                    let answered = placed.contains(&r)
                        || c.refused.iter().any(|f| f.destination == r.destination.to_string() && f.via == r.via.to_string())
                        || desired[..i].contains(r);
                    prop_assert!(answered, "{} neither placed nor refused", r);
                }
            }
        }
    }
}
