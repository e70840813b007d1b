//! Reading Node objects as `kubectl get nodes -o json` prints them.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

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
    #[serde(default)]
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
    #[serde(rename = "podCIDRs", default)]
    pod_cidrs: Vec<String>,
}

#[derive(Deserialize, Default)]
struct Status {
    #[serde(default)]
    addresses: Vec<Address>,
}

#[derive(Deserialize)]
struct Address {
    #[serde(rename = "type")]
    kind: String,
    address: String,
}

pub fn parse(json: &str) -> Result<Vec<NodeInfo>, NodesError> {
    let list: List = serde_json::from_str(json).map_err(|e| NodesError(e.to_string()))?;
    if let Some(kind) = list.kind.as_deref() {
        if kind != "List" && kind != "NodeList" {
            return Err(NodesError(format!(
                "expected kind List or NodeList, got {kind:?}"
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
                        NodesError(format!("node {}: bad podCIDR {c:?}", node.metadata.name))
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
}
