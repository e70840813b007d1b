//! Reading Node objects as `kubectl get nodes -o json` prints them.
//!
//! The output comes from a container that merely carries kind's labels, so it
//! is untrusted: its size, the number of nodes, and the podCIDRs and
//! addresses per node are capped; fields not read here are skipped without
//! being kept.

use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

use super::kubeadm::quote;

/// A kind node prints as 3-10 KB (most of it `status.images`), so this is
/// hundreds of nodes; a laptop runs a handful.
pub const MAX_BYTES: usize = 4 << 20;
/// Far more nodes than kind can run on one machine.
pub const MAX_NODES: usize = 1000;
/// Kubernetes allocates at most one pod CIDR per address family.
pub const MAX_POD_CIDRS: usize = 2;
/// A node reports an InternalIP per family, a Hostname, perhaps ExternalIPs.
pub const MAX_ADDRESSES: usize = 16;

/// What connector needs from one Node object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// `spec.podCIDRs` (or the older single `spec.podCIDR`); empty until the
    /// controller manager has allocated one.
    pub pod_cidrs: Vec<IpNet>,
    /// `status.addresses` of type InternalIP.
    pub internal_ips: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read the Node list printed by kubectl: {0}")]
pub struct NodesError(String);

#[derive(Deserialize)]
struct List {
    kind: Option<String>,
    #[serde(default, deserialize_with = "nodes")]
    items: Vec<Node>,
}

#[derive(Deserialize)]
struct Node {
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
    #[serde(default)]
    status: Status,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
}

#[derive(Deserialize, Default)]
struct Spec {
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs", default, deserialize_with = "pod_cidrs")]
    pod_cidrs: Vec<String>,
}

#[derive(Deserialize, Default)]
struct Status {
    #[serde(default, deserialize_with = "addresses")]
    addresses: Vec<Address>,
}

#[derive(Deserialize)]
struct Address {
    #[serde(rename = "type")]
    kind: String,
    address: String,
}

fn nodes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Node>, D::Error> {
    d.deserialize_seq(AtMost::new(MAX_NODES, "items (Node objects)"))
}

fn pod_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_seq(AtMost::new(MAX_POD_CIDRS, "spec.podCIDRs"))
}

fn addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Address>, D::Error> {
    d.deserialize_seq(AtMost::new(MAX_ADDRESSES, "status.addresses"))
}

/// A list of at most `max` items, refused as soon as one more appears.
struct AtMost<T> {
    max: usize,
    what: &'static str,
    item: PhantomData<T>,
}

impl<T> AtMost<T> {
    fn new(max: usize, what: &'static str) -> Self {
        AtMost {
            max,
            what,
            item: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for AtMost<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of at most {} {}", self.max, self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while out.len() < self.max {
            match seq.next_element()? {
                Some(item) => out.push(item),
                None => return Ok(out),
            }
        }
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format_args!(
                "more than {} {}",
                self.max, self.what
            )));
        }
        Ok(out)
    }
}

pub fn parse(json: &str) -> Result<Vec<NodeInfo>, NodesError> {
    if json.len() > MAX_BYTES {
        return Err(NodesError(format!(
            "{} bytes, over the {MAX_BYTES}-byte limit",
            json.len()
        )));
    }
    let list: List = serde_json::from_str(json).map_err(|e| NodesError(e.to_string()))?;
    if let Some(kind) = list.kind.as_deref() {
        if kind != "List" && kind != "NodeList" {
            return Err(NodesError(format!(
                "expected kind List or NodeList, got {:?}",
                quote(kind)
            )));
        }
    }
    list.items
        .into_iter()
        .map(|node| {
            let mut texts = node.spec.pod_cidrs;
            if texts.is_empty() {
                texts.extend(node.spec.pod_cidr.filter(|c| !c.is_empty()));
            }
            let pod_cidrs = texts
                .iter()
                .map(|c| {
                    c.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
                        NodesError(format!(
                            "node {}: bad podCIDR {:?}",
                            quote(&node.metadata.name),
                            quote(c)
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let internal_ips = node
                .status
                .addresses
                .iter()
                .filter(|a| a.kind == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect();
            Ok(NodeInfo {
                name: node.metadata.name,
                pod_cidrs,
                internal_ips,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from a real `kubectl get nodes -o json` of a two-node kind cluster.
    const TWO_NODES: &str = r#"{
        "apiVersion": "v1",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "labels": {"kubernetes.io/hostname": "dev-control-plane", "node-role.kubernetes.io/control-plane": ""},
                    "name": "dev-control-plane"
                },
                "spec": {
                    "podCIDR": "10.244.0.0/24",
                    "podCIDRs": ["10.244.0.0/24"],
                    "providerID": "kind://docker/dev/dev-control-plane",
                    "taints": [{"effect": "NoSchedule", "key": "node-role.kubernetes.io/control-plane"}]
                },
                "status": {
                    "addresses": [
                        {"address": "172.18.0.3", "type": "InternalIP"},
                        {"address": "dev-control-plane", "type": "Hostname"}
                    ]
                }
            },
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": "dev-worker"},
                "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
                "status": {"addresses": [{"address": "172.18.0.2", "type": "InternalIP"}]}
            },
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": "dev-worker2"},
                "spec": {},
                "status": {}
            }
        ],
        "kind": "List",
        "metadata": {"resourceVersion": ""}
    }"#;

    #[test]
    fn reads_pod_cidrs_and_internal_ips() {
        let nodes = parse(TWO_NODES).unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].name, "dev-control-plane");
        assert_eq!(
            nodes[0].pod_cidrs,
            vec!["10.244.0.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            nodes[0].internal_ips,
            vec!["172.18.0.3".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            nodes[1].pod_cidrs.len(),
            2,
            "dual-stack keeps both families"
        );
        assert!(
            nodes[2].pod_cidrs.is_empty(),
            "a node without a podCIDR yet is listed, empty"
        );
    }

    #[test]
    fn old_servers_with_only_pod_cidr_work() {
        let json = r#"{"kind":"List","items":[{"metadata":{"name":"n"},"spec":{"podCIDR":"10.244.3.0/24"}}]}"#;
        assert_eq!(
            parse(json).unwrap()[0].pod_cidrs,
            vec!["10.244.3.0/24".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn garbage_is_an_error_naming_the_problem() {
        assert!(parse("error: You must be logged in to the server").is_err());
        let err = parse(r#"{"kind":"Pod","items":[]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Pod"), "{err}");
        let err = parse(
            r#"{"kind":"List","items":[{"metadata":{"name":"n"},"spec":{"podCIDRs":["x"]}}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("node n") && err.contains("\"x\""), "{err}");
    }

    #[test]
    fn limits_are_errors_naming_the_limit() {
        let node = |i: usize| format!(r#"{{"metadata":{{"name":"n{i}"}}}}"#);
        let list = |n: usize| {
            let items: Vec<String> = (0..n).map(node).collect();
            format!(r#"{{"kind":"List","items":[{}]}}"#, items.join(","))
        };
        assert_eq!(parse(&list(MAX_NODES)).unwrap().len(), MAX_NODES);
        let err = parse(&list(MAX_NODES + 1)).unwrap_err().to_string();
        assert!(
            err.contains(&format!("more than {MAX_NODES} items")),
            "{err}"
        );

        let three = r#"{"items":[{"metadata":{"name":"n"},"spec":{"podCIDRs":["10.0.0.0/24","fd00::/64","10.1.0.0/24"]}}]}"#;
        let err = parse(three).unwrap_err().to_string();
        assert!(err.contains("more than 2 spec.podCIDRs"), "{err}");

        let address = r#"{"type":"InternalIP","address":"10.0.0.1"}"#;
        let node = |n: usize| {
            format!(
                r#"{{"items":[{{"metadata":{{"name":"n"}},"status":{{"addresses":[{}]}}}}]}}"#,
                vec![address; n].join(",")
            )
        };
        assert_eq!(
            parse(&node(MAX_ADDRESSES)).unwrap()[0].internal_ips.len(),
            MAX_ADDRESSES
        );
        let err = parse(&node(MAX_ADDRESSES + 1)).unwrap_err().to_string();
        assert!(err.contains("more than 16 status.addresses"), "{err}");

        let big = format!(
            r#"{{"kind":"List","items":[],"x":"{}"}}"#,
            "x".repeat(MAX_BYTES)
        );
        let (result, peak) = measure(|| parse(&big));
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains(&big.len().to_string()) && err.contains(&MAX_BYTES.to_string()),
            "{err}"
        );
        assert!(peak < 4096, "{peak}");
    }

    #[test]
    fn errors_quote_at_most_a_line_of_the_input() {
        let long = "x".repeat(10_000);
        let json = format!(
            r#"{{"items":[{{"metadata":{{"name":"{long}"}},"spec":{{"podCIDR":"{long}"}}}}]}}"#
        );
        let err = parse(&json).unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
        let json = format!(r#"{{"kind":"{long}"}}"#);
        assert!(parse(&json).unwrap_err().to_string().len() < 200);
    }

    /// Inputs of the largest accepted size, shaped to stress the parser.
    fn worst_cases() -> Vec<(&'static str, String)> {
        let fill = |unit: &str, head: &str, tail: &str| {
            let n = (MAX_BYTES - head.len() - tail.len()) / unit.len();
            format!("{head}{}{tail}", unit.repeat(n))
        };
        vec![
            ("one long ignored string", fill("x", r#"{"x":""#, r#""}"#)),
            ("one long escaped string", fill(r"\n", r#"{"x":""#, r#""}"#)),
            (
                "one long node name",
                fill("x", r#"{"items":[{"metadata":{"name":""#, r#""}}]}"#),
            ),
            (
                "one long podCIDR",
                fill(
                    "x",
                    r#"{"items":[{"metadata":{"name":"n"},"spec":{"podCIDR":""#,
                    r#""}}]}"#,
                ),
            ),
            ("many ignored items", fill("0,", r#"{"x":["#, "0]}")),
            (
                "long address",
                fill(
                    "x",
                    r#"{"items":[{"metadata":{"name":"n"},"status":{"addresses":[{"type":"InternalIP","address":""#,
                    r#""}]}}]}"#,
                ),
            ),
            (
                "many addresses",
                fill(
                    r#"{"type":"InternalIP","address":"10.0.0.1"},"#,
                    r#"{"items":[{"metadata":{"name":"n"},"status":{"addresses":["#,
                    r#"{"type":"x","address":"y"}]}}]}"#,
                ),
            ),
            (
                "many nodes",
                fill(
                    r#"{"metadata":{"name":"n"}},"#,
                    r#"{"items":["#,
                    r#"{"metadata":{"name":"n"}}]}"#,
                ),
            ),
            ("deep nesting", fill("[", r#"{"x":"#, "")),
            ("whitespace", fill(" ", "", "{}")),
        ]
    }

    #[test]
    fn worst_case_inputs_stay_bounded() {
        assert_worst_cases_bounded(worst_cases(), MAX_BYTES, parse);
    }

    use crate::testing::alloc_meter::{assert_worst_cases_bounded, measure, parser_peak_allowed};
    use crate::testing::json_of::json_of;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// JSON made of the names this module reads, in any shape.
    fn json_value() -> impl Strategy<Value = Value> {
        const WORDS: &[&str] = &[
            "kind",
            "List",
            "NodeList",
            "items",
            "metadata",
            "name",
            "spec",
            "podCIDR",
            "podCIDRs",
            "status",
            "addresses",
            "type",
            "address",
            "InternalIP",
            "10.244.0.0/24",
            "fd00::/64",
            "172.18.0.2",
            "",
        ];
        json_of(WORDS, 6, 6)
    }

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    fn cidr() -> impl Strategy<Value = IpNet> {
        (ip(), any::<u8>()).prop_map(|(ip, p)| {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            IpNet::new(ip, p % (max + 1)).unwrap()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics_and_stays_bounded(
            text in prop::collection::vec(any::<char>(), 0..512).prop_map(String::from_iter)
        ) {
            let (_, peak) = measure(|| parse(&text));
            prop_assert!(peak <= parser_peak_allowed(text.len()), "{peak}");
        }

        #[test]
        fn arbitrary_json_never_panics_and_stays_bounded(
            value in json_value(),
            wrap in any::<bool>(),
        ) {
            // Bare, or as the list kubectl prints around it.
            let value = if wrap { json!({"kind": "List", "items": [value]}) } else { value };
            let text = value.to_string();
            let (_, peak) = measure(|| parse(&text));
            prop_assert!(peak <= parser_peak_allowed(text.len()), "{peak}");
        }

    }

    proptest! {
        // Round trips of generated values: fewer cases than arbitrary input.
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn generated_lists_round_trip(
            nodes in prop::collection::vec(
                ("[a-z0-9.-]{1,20}", prop::collection::vec(cidr(), 0..=2), prop::collection::vec(ip(), 0..3), any::<bool>()),
                0..8,
            ),
            kind in prop::sample::select(vec![None, Some("List"), Some("NodeList")]),
        ) {
            let items: Vec<Value> = nodes
                .iter()
                .map(|(name, cidrs, ips, single)| {
                    let mut spec = json!({});
                    if *single && cidrs.len() == 1 {
                        spec["podCIDR"] = json!(cidrs[0].to_string());
                    } else {
                        spec["podCIDRs"] = json!(cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>());
                    }
                    let mut addresses: Vec<Value> = ips
                        .iter()
                        .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
                        .collect();
                    addresses.push(json!({"type": "Hostname", "address": name}));
                    json!({"metadata": {"name": name}, "spec": spec, "status": {"addresses": addresses}})
                })
                .collect();
            let mut list = json!({"items": items});
            if let Some(kind) = kind {
                list["kind"] = json!(kind);
            }
            let parsed = parse(&list.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parsed.len(), nodes.len());
            for (got, (name, cidrs, ips, _)) in parsed.iter().zip(&nodes) {
                prop_assert_eq!(&got.name, name);
                prop_assert_eq!(&got.pod_cidrs, &cidrs.iter().map(IpNet::trunc).collect::<Vec<_>>());
                prop_assert_eq!(&got.internal_ips, ips);
            }
        }
    }
}
