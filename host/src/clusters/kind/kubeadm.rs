//! Reading a cluster's pod and Service CIDRs from `/kind/kubeadm.conf`.
//!
//! kind writes several YAML documents there (ClusterConfiguration,
//! InitConfiguration, JoinConfiguration, KubeletConfiguration,
//! KubeProxyConfiguration); with `kubeadmConfigPatches` it re-serialises them,
//! so key order, quoting and flow style vary. A real YAML parser
//! (yaml-rust2) reads them all; only the ClusterConfiguration matters here.
//!
//! The file comes from a container that merely carries kind's labels, so it is
//! untrusted. yaml-rust2's `YamlLoader` expands aliases by cloning (a "billion
//! laughs" file took the daemon to gigabytes), so this reads the parser's
//! event stream instead and keeps only the three scalars it needs: memory is
//! bounded by the input, which is bounded by [`MAX_BYTES`]. Anchors and
//! aliases are refused (kind never writes them), and the node count and the
//! nesting depth are capped.

use ipnet::IpNet;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// kind's file is about 3 KB; patches add a little. Far above, it is not
/// kind's.
pub const MAX_BYTES: usize = 256 * 1024;
/// Scalars, mappings and sequences over all documents; kind's file has about
/// 150.
pub const MAX_NODES: usize = 10_000;
/// Nested mappings and sequences; kind's file goes 3 deep, patches rarely
/// more than 5.
pub const MAX_DEPTH: usize = 32;
/// kubeadm accepts one CIDR per address family in `podSubnet` and
/// `serviceSubnet`.
pub const MAX_CIDRS: usize = 2;

/// kubeadm's default when `networking.serviceSubnet` is absent.
const KUBEADM_DEFAULT_SERVICE_SUBNET: &str = "10.96.0.0/12";

/// Longest piece of the file quoted in an error.
const QUOTE_MAX: usize = 80;

/// `networking` of the ClusterConfiguration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Networking {
    /// Empty when kubeadm allocates no pod CIDRs (`podSubnet` unset).
    pub pod_subnets: Vec<IpNet>,
    pub service_subnets: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KubeadmError {
    #[error(
        "kubeadm.conf is {size} bytes, over the {MAX_BYTES}-byte limit (kind writes about 3 KB)"
    )]
    TooLarge { size: usize },
    #[error("kubeadm.conf is not valid YAML: {0}")]
    Yaml(String),
    #[error(
        "kubeadm.conf uses a YAML anchor or alias (line {line}); kind never writes them, \
         so they are refused rather than expanded"
    )]
    Alias { line: usize },
    #[error("kubeadm.conf has more than {MAX_NODES} YAML nodes (line {line})")]
    TooManyNodes { line: usize },
    #[error("kubeadm.conf nests more than {MAX_DEPTH} levels deep (line {line})")]
    TooDeep { line: usize },
    #[error("kubeadm.conf has `{key}` twice in one document (line {line})")]
    DuplicateKey { key: &'static str, line: usize },
    #[error("kubeadm.conf has no ClusterConfiguration document")]
    NoClusterConfiguration,
    #[error("kubeadm.conf: networking.{key} {value:?} is not a comma-separated list of CIDRs")]
    BadSubnet { key: &'static str, value: String },
    #[error(
        "kubeadm.conf: networking.{key} {value:?} lists more than {MAX_CIDRS} CIDRs \
         (kubeadm takes one per address family)"
    )]
    TooManySubnets { key: &'static str, value: String },
}

pub fn parse(text: &str) -> Result<Networking, KubeadmError> {
    if text.len() > MAX_BYTES {
        return Err(KubeadmError::TooLarge { size: text.len() });
    }
    let found = extract(text)?.ok_or(KubeadmError::NoClusterConfiguration)?;
    let pod_subnets = match found.pod_subnet {
        Some(v) => cidrs("podSubnet", &v)?,
        None => Vec::new(),
    };
    let service_subnets = match found.service_subnet {
        Some(v) => cidrs("serviceSubnet", &v)?,
        None => cidrs("serviceSubnet", KUBEADM_DEFAULT_SERVICE_SUBNET)?,
    };
    Ok(Networking {
        pod_subnets,
        service_subnets,
    })
}

/// What one document says; `None` values are absent, null or empty.
#[derive(Debug, Default)]
struct Document {
    cluster_configuration: bool,
    pod_subnet: Option<String>,
    service_subnet: Option<String>,
}

/// The keys that matter, by where they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Kind,
    Networking,
    PodSubnet,
    ServiceSubnet,
    /// Any other key, including a mapping or sequence used as a key.
    Other,
}

impl Key {
    fn path(self) -> &'static str {
        match self {
            Key::Kind => "kind",
            Key::Networking => "networking",
            Key::PodSubnet => "networking.podSubnet",
            Key::ServiceSubnet => "networking.serviceSubnet",
            Key::Other => "?",
        }
    }
}

/// Which mapping a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The document's top-level mapping.
    Root,
    /// `networking` of the top-level mapping.
    Networking,
    Other,
}

/// An open mapping or sequence.
#[derive(Debug)]
struct Frame {
    role: Role,
    mapping: bool,
    /// In a mapping: the key whose value comes next, `None` while a key is
    /// expected.
    key: Option<Key>,
    /// This mapping or sequence is itself a key of the enclosing mapping.
    is_key: bool,
    /// The keys of [`Key`] met so far, by bit, to refuse duplicates as a YAML
    /// loader does.
    seen: u8,
}

/// The first ClusterConfiguration document's fields, read from the event
/// stream without building a tree.
fn extract(text: &str) -> Result<Option<Document>, KubeadmError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut doc = Document::default();
    let mut found = None;
    let mut nodes = 0usize;
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| KubeadmError::Yaml(quote(&e.to_string())))?;
        // Every node counts, and none may carry an anchor (aliases need one).
        let mut node = |anchor: usize| {
            nodes += 1;
            if anchor != 0 {
                Err(KubeadmError::Alias { line: mark.line() })
            } else if nodes > MAX_NODES {
                Err(KubeadmError::TooManyNodes { line: mark.line() })
            } else {
                Ok(())
            }
        };
        match event {
            Event::StreamEnd => return Ok(found),
            Event::DocumentStart => doc = Document::default(),
            Event::DocumentEnd => {
                if doc.cluster_configuration && found.is_none() {
                    found = Some(std::mem::take(&mut doc));
                }
            }
            Event::Alias(_) => return Err(KubeadmError::Alias { line: mark.line() }),
            Event::Scalar(value, style, anchor, _) => {
                node(anchor)?;
                scalar(&mut stack, &mut doc, value, style, mark)?;
            }
            Event::MappingStart(anchor, _) => {
                node(anchor)?;
                open(&mut stack, &mut doc, true, mark)?;
            }
            Event::SequenceStart(anchor, _) => {
                node(anchor)?;
                open(&mut stack, &mut doc, false, mark)?;
            }
            Event::MappingEnd | Event::SequenceEnd => close(&mut stack),
            Event::StreamStart | Event::Nothing => {}
        }
    }
}

/// A mapping or sequence begins where the innermost frame expects a node.
fn open(
    stack: &mut Vec<Frame>,
    doc: &mut Document,
    mapping: bool,
    mark: Marker,
) -> Result<(), KubeadmError> {
    if stack.len() >= MAX_DEPTH {
        return Err(KubeadmError::TooDeep { line: mark.line() });
    }
    let mut is_key = false;
    let role = match stack.last_mut() {
        None => Role::Root,
        Some(parent) if parent.mapping => match parent.key {
            // A mapping or sequence as a key: nothing here looks inside it.
            None => {
                parent.key = Some(Key::Other);
                is_key = true;
                Role::Other
            }
            Some(key) => {
                // Not a scalar: as good as absent, like a null value.
                set(parent.role, key, doc, None);
                if parent.role == Role::Root && key == Key::Networking {
                    Role::Networking
                } else {
                    Role::Other
                }
            }
        },
        Some(_) => Role::Other,
    };
    // Only mappings hold the keys read here.
    let role = if mapping { role } else { Role::Other };
    stack.push(Frame {
        role,
        mapping,
        key: None,
        is_key,
        seen: 0,
    });
    Ok(())
}

fn scalar(
    stack: &mut [Frame],
    doc: &mut Document,
    value: String,
    style: TScalarStyle,
    mark: Marker,
) -> Result<(), KubeadmError> {
    let Some(frame) = stack.last_mut().filter(|f| f.mapping) else {
        return Ok(()); // a sequence item or a whole document that is one scalar
    };
    match frame.key {
        None => {
            let key = key(frame.role, &value);
            if key != Key::Other {
                let bit = 1 << key as u8;
                if frame.seen & bit != 0 {
                    return Err(KubeadmError::DuplicateKey {
                        key: key.path(),
                        line: mark.line(),
                    });
                }
                frame.seen |= bit;
            }
            frame.key = Some(key);
        }
        Some(key) => {
            set(frame.role, key, doc, Some((value, style)));
            frame.key = None;
        }
    }
    Ok(())
}

/// The innermost mapping or sequence has ended: in a mapping around it, a
/// key is followed by its value and a value by the next key.
fn close(stack: &mut Vec<Frame>) {
    let Some(closed) = stack.pop() else { return };
    if let Some(parent) = stack.last_mut().filter(|f| f.mapping) {
        if !closed.is_key {
            parent.key = None;
        }
    }
}

fn key(role: Role, text: &str) -> Key {
    match (role, text) {
        (Role::Root, "kind") => Key::Kind,
        (Role::Root, "networking") => Key::Networking,
        (Role::Networking, "podSubnet") => Key::PodSubnet,
        (Role::Networking, "serviceSubnet") => Key::ServiceSubnet,
        _ => Key::Other,
    }
}

/// Record the value of `key` in a mapping of `role`.
fn set(role: Role, key: Key, doc: &mut Document, value: Option<(String, TScalarStyle)>) {
    let text = value.and_then(|(text, style)| {
        // YAML's nulls, and empty values, mean "not set".
        let null =
            style == TScalarStyle::Plain && matches!(text.as_str(), "~" | "null" | "Null" | "NULL");
        (!null && !text.trim().is_empty()).then_some(text)
    });
    match (role, key) {
        (Role::Root, Key::Kind) => {
            doc.cluster_configuration = text.as_deref() == Some("ClusterConfiguration")
        }
        (Role::Networking, Key::PodSubnet) => doc.pod_subnet = text,
        (Role::Networking, Key::ServiceSubnet) => doc.service_subnet = text,
        _ => {}
    }
}

/// Dual-stack clusters list one CIDR per family, comma-separated.
fn cidrs(key: &'static str, value: &str) -> Result<Vec<IpNet>, KubeadmError> {
    if value.splitn(MAX_CIDRS + 1, ',').count() > MAX_CIDRS {
        return Err(KubeadmError::TooManySubnets {
            key,
            value: quote(value),
        });
    }
    value
        .split(',')
        .map(|part| {
            part.trim()
                .parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|_| KubeadmError::BadSubnet {
                    key,
                    value: quote(value),
                })
        })
        .collect()
}

/// Untrusted text for an error message, cut to [`QUOTE_MAX`] characters.
pub(super) fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape kind v0.2x writes (v1beta3 template), abridged only in the
    /// documents that do not matter here.
    const KIND_DEFAULT: &str = r#"# config generated by kind
apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
metadata:
  name: config
kubernetesVersion: v1.31.0
clusterName: "dev"
controlPlaneEndpoint: "dev-control-plane:6443"
# on docker for mac we have to expose the api server via port forward,
# so we need to ensure the cert is valid for localhost so we can talk
# to the cluster after rewriting the kubeconfig to point to localhost
apiServer:
  certSANs: [localhost, "127.0.0.1"]
  extraArgs:
    "runtime-config": ""
controllerManager:
  extraArgs:
    enable-hostpath-provisioner: "true"
    # configure ipv6 default addresses for IPv6 clusters
    
scheduler:
  extraArgs:
    # configure ipv6 default addresses for IPv6 clusters
    
networking:
  podSubnet: "10.244.0.0/16"
  serviceSubnet: "10.96.0.0/16"
---
apiVersion: kubeadm.k8s.io/v1beta3
kind: InitConfiguration
metadata:
  name: config
bootstrapTokens:
- token: "abcdef.0123456789abcdef"
localAPIEndpoint:
  advertiseAddress: "172.18.0.2"
  bindPort: 6443
nodeRegistration:
  criSocket: "unix:///run/containerd/containerd.sock"
  kubeletExtraArgs:
    node-ip: "172.18.0.2"
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
metadata:
  name: config
cgroupDriver: systemd
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
metadata:
  name: config
mode: "iptables"
iptables:
  minSyncPeriod: 1s
"#;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn reads_kinds_default_template() {
        let n = parse(KIND_DEFAULT).unwrap();
        assert_eq!(n.pod_subnets, nets(&["10.244.0.0/16"]));
        assert_eq!(n.service_subnets, nets(&["10.96.0.0/16"]));
    }

    #[test]
    fn cluster_configuration_need_not_come_first_and_may_be_reserialised() {
        // What kind writes after applying kubeadmConfigPatches: sorted keys,
        // no quotes, ClusterConfiguration after another document.
        let text = "apiVersion: kubeadm.k8s.io/v1beta3\nkind: InitConfiguration\n---\n\
                    apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\n\
                    networking: {podSubnet: 10.100.0.0/16, serviceSubnet: 10.200.0.0/20}\n";
        let n = parse(text).unwrap();
        assert_eq!(n.pod_subnets, nets(&["10.100.0.0/16"]));
        assert_eq!(n.service_subnets, nets(&["10.200.0.0/20"]));
    }

    #[test]
    fn dual_stack_lists_both_families() {
        let text = "kind: ClusterConfiguration\nnetworking:\n  podSubnet: \"10.244.0.0/16,fd00:10:244::/56\"\n  serviceSubnet: \"10.96.0.0/16,fd00:10:96::/112\"\n";
        let n = parse(text).unwrap();
        assert_eq!(n.pod_subnets, nets(&["10.244.0.0/16", "fd00:10:244::/56"]));
        assert_eq!(
            n.service_subnets,
            nets(&["10.96.0.0/16", "fd00:10:96::/112"])
        );
    }

    #[test]
    fn absent_values_fall_back_to_kubeadms_behaviour() {
        let n = parse("kind: ClusterConfiguration\nnetworking: {}\n").unwrap();
        assert!(n.pod_subnets.is_empty());
        assert_eq!(n.service_subnets, nets(&["10.96.0.0/12"]));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            parse("kind: InitConfiguration\n"),
            Err(KubeadmError::NoClusterConfiguration)
        );
        let err =
            parse("kind: ClusterConfiguration\nnetworking:\n  podSubnet: banana\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kubeadm.conf: networking.podSubnet \"banana\" is not a comma-separated list of CIDRs"
        );
        assert!(matches!(
            parse("kind: [unclosed\n"),
            Err(KubeadmError::Yaml(_))
        ));
    }

    #[test]
    fn documents_and_keys_are_read_as_a_yaml_loader_reads_them() {
        // The first ClusterConfiguration document counts.
        let text = "kind: ClusterConfiguration\nnetworking: {podSubnet: 10.1.0.0/16}\n---\n\
                    kind: ClusterConfiguration\nnetworking: {podSubnet: 10.9.0.0/16}\n";
        assert_eq!(parse(text).unwrap().pod_subnets, nets(&["10.1.0.0/16"]));
        // `kind` may come last; nested or non-scalar look-alikes do not count.
        let text = "networking:\n  podSubnet: 10.3.0.0/16\nkind: ClusterConfiguration\n";
        assert_eq!(parse(text).unwrap().pod_subnets, nets(&["10.3.0.0/16"]));
        let text = "x: {kind: ClusterConfiguration}\n---\nkind: [ClusterConfiguration]\n";
        assert_eq!(parse(text), Err(KubeadmError::NoClusterConfiguration));
        let text = "kind: ClusterConfiguration\nx:\n  networking: {podSubnet: banana}\n\
                    ? [networking]\n: {podSubnet: banana}\nnetworking:\n  podSubnet: [a]\n  \
                    serviceSubnet: ~\n";
        let n = parse(text).unwrap();
        assert!(n.pod_subnets.is_empty());
        assert_eq!(n.service_subnets, nets(&["10.96.0.0/12"]));
        // After a complex key comes its value, not another key.
        let text = "? [a]\n: kind\nClusterConfiguration: x\n";
        assert_eq!(parse(text), Err(KubeadmError::NoClusterConfiguration));
        // A key that matters, twice, is ambiguous: an error, as for a loader.
        let text = "kind: ClusterConfiguration\nnetworking:\n  podSubnet: 10.1.0.0/16\n  \
                    'podSubnet': 10.2.0.0/16\n";
        let err = parse(text).unwrap_err();
        assert_eq!(
            err,
            KubeadmError::DuplicateKey {
                key: "networking.podSubnet",
                line: 4
            }
        );
        assert!(err.to_string().contains("networking.podSubnet"), "{err}");
    }

    #[test]
    fn too_many_cidrs_is_an_error() {
        let text = "kind: ClusterConfiguration\nnetworking:\n  podSubnet: 10.1.0.0/16,10.2.0.0/16,10.3.0.0/16\n";
        let err = parse(text).unwrap_err();
        assert!(
            matches!(
                err,
                KubeadmError::TooManySubnets {
                    key: "podSubnet",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("more than 2 CIDRs"), "{err}");
    }

    #[test]
    fn errors_quote_at_most_a_line_of_the_file() {
        let long = "x".repeat(10_000);
        let text = format!("kind: ClusterConfiguration\nnetworking:\n  serviceSubnet: {long}\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
        assert!(err.contains("xxxx…"), "{err}");
    }

    #[test]
    fn oversized_input_is_refused_unread() {
        let text = format!("kind: ClusterConfiguration\n#{}\n", "x".repeat(MAX_BYTES));
        let (result, peak) = measure(|| parse(&text));
        let err = result.unwrap_err();
        assert_eq!(err, KubeadmError::TooLarge { size: text.len() });
        assert!(err.to_string().contains(&text.len().to_string()), "{err}");
        assert!(err.to_string().contains(&MAX_BYTES.to_string()), "{err}");
        assert!(peak < 4096, "{peak}");
    }

    /// "Billion laughs": nine levels of nine aliases, 9^9 scalars once
    /// expanded. `YamlLoader` took gigabytes on it.
    fn alias_bomb() -> String {
        let mut text = String::from(
            "kind: ClusterConfiguration\na: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n",
        );
        for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
            let refs = vec![format!("*{prev}"); 9].join(",");
            text += &format!("{name}: &{name} [{refs}]\n");
        }
        text + "networking: {podSubnet: 10.244.0.0/16}\n"
    }

    #[test]
    fn alias_bomb_is_refused_without_expanding() {
        let bomb = alias_bomb();
        let (result, peak) = measure(|| parse(&bomb));
        assert_eq!(result, Err(KubeadmError::Alias { line: 2 }));
        assert!(peak < 1 << 20, "peak {peak} bytes");
        eprintln!("alias bomb ({} bytes): peak {peak} bytes", bomb.len());
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("anchor or alias") && err.contains("line 2"),
            "{err}"
        );
        // An alias alone (no anchor in this document) is an error too.
        assert!(matches!(parse("kind: *x\n"), Err(KubeadmError::Yaml(_))));
        assert!(matches!(
            parse("a: &x 1\n---\nkind: *x\n"),
            Err(KubeadmError::Alias { line: 1 })
        ));
    }

    #[test]
    fn nodes_and_depth_are_capped() {
        let many = format!(
            "kind: ClusterConfiguration\nx: [{}]\n",
            vec!["1"; MAX_NODES].join(",")
        );
        let err = parse(&many).unwrap_err();
        assert_eq!(err, KubeadmError::TooManyNodes { line: 2 });
        assert!(err.to_string().contains(&MAX_NODES.to_string()), "{err}");

        let deep = format!("kind: ClusterConfiguration\nx: {}\n", "[".repeat(MAX_DEPTH));
        let err = parse(&deep).unwrap_err();
        assert_eq!(err, KubeadmError::TooDeep { line: 2 });
        assert!(err.to_string().contains(&MAX_DEPTH.to_string()), "{err}");
        // At the limit is fine.
        let text = format!(
            "kind: ClusterConfiguration\nx: {}{}\n",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(parse(&text).is_ok());
    }

    /// Inputs of the largest accepted size, shaped to stress the parser.
    fn worst_cases() -> Vec<(&'static str, String)> {
        let fill = |unit: &str, head: &str, tail: &str| {
            let n = (MAX_BYTES - head.len() - tail.len()) / unit.len();
            format!("{head}{}{tail}", unit.repeat(n))
        };
        vec![
            ("one long plain scalar", fill("x", "kind: ", "\n")),
            ("one long quoted scalar", fill("x", "kind: \"", "\"\n")),
            (
                "long block scalar",
                fill("  xxxxx\n", "kind: ClusterConfiguration\nx: |\n", ""),
            ),
            ("many documents", fill("---\n", "", "")),
            ("many short lines", fill("a: b\n", "", "")),
            ("many flow items", fill("a,", "x: [", "]\n")),
            ("deep flow nesting", fill("[", "", "")),
            ("deep block nesting", fill(" ", "a:\n", "b: c\n")),
            ("whitespace", fill(" ", "", "")),
            ("comments", fill("#", "", "")),
            ("unclosed quote", fill("x", "kind: '", "")),
            ("many keys", fill("? a\n", "", "")),
            ("dashes", fill("- ", "", "")),
            ("long key", fill("k", "", ": v\n")),
        ]
    }

    #[test]
    fn worst_case_inputs_stay_bounded() {
        assert_worst_cases_bounded(worst_cases(), MAX_BYTES, parse);
    }

    use crate::testing::alloc_meter::{assert_worst_cases_bounded, measure, parser_peak_allowed};
    use proptest::prelude::*;

    /// Any characters. Short: proptest's generation, not the parse, is what
    /// takes the time; long inputs are [`worst_cases`].
    fn arbitrary_text() -> impl Strategy<Value = String> {
        prop::collection::vec(any::<char>(), 0..512).prop_map(String::from_iter)
    }

    /// Pieces that make a parser take its interesting paths.
    fn yamlish() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "kind",
            "ClusterConfiguration",
            "networking",
            "podSubnet",
            "serviceSubnet",
            ":",
            ": ",
            " ",
            "  ",
            "\n",
            "\n  ",
            "- ",
            "[",
            "]",
            "{",
            "}",
            ",",
            "? ",
            "&a ",
            "*a",
            "---\n",
            "...\n",
            "'",
            "\"",
            "\\",
            "#",
            "|\n",
            ">-\n",
            "!!str ",
            "!x ",
            "%YAML 1.2\n",
            "%TAG ! tag:x:\n",
            "10.244.0.0/16",
            "fd00::/64",
            ",",
            "~",
            "null",
            "\t",
            "\r\n",
            "é",
            "\u{feff}",
            "\0",
        ]);
        prop::collection::vec(piece, 0..200).prop_map(|v| v.concat())
    }

    fn cidr() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<[u8; 4]>(), 0u8..=32)
                .prop_map(|(a, p)| IpNet::V4(ipnet::Ipv4Net::new(a.into(), p).unwrap())),
            (any::<[u8; 16]>(), 0u8..=128)
                .prop_map(|(a, p)| IpNet::V6(ipnet::Ipv6Net::new(a.into(), p).unwrap())),
        ]
    }

    /// A scalar as YAML may write it: plain, single- or double-quoted. In
    /// flow style a plain scalar cannot hold a comma.
    fn styled(text: String, style: u8, flow: bool) -> String {
        match style % 3 {
            0 if !(flow && text.contains(',')) => text,
            1 => format!("'{text}'"),
            _ => format!("\"{text}\""),
        }
    }

    /// The parse this module did before reading events: `YamlLoader`, whose
    /// answers on alias-free input the event reader must match.
    fn loader_parse(text: &str) -> Result<Networking, KubeadmError> {
        use yaml_rust2::{Yaml, YamlLoader};
        let docs =
            YamlLoader::load_from_str(text).map_err(|e| KubeadmError::Yaml(e.to_string()))?;
        let cluster = docs
            .iter()
            .find(|d| d["kind"].as_str() == Some("ClusterConfiguration"))
            .ok_or(KubeadmError::NoClusterConfiguration)?;
        let scalar = |value: &Yaml| {
            let text = match value {
                Yaml::String(s) | Yaml::Real(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                _ => return None,
            };
            (!text.trim().is_empty()).then_some(text)
        };
        let networking = &cluster["networking"];
        Ok(Networking {
            pod_subnets: match scalar(&networking["podSubnet"]) {
                Some(v) => cidrs("podSubnet", &v)?,
                None => Vec::new(),
            },
            service_subnets: cidrs(
                "serviceSubnet",
                &scalar(&networking["serviceSubnet"])
                    .unwrap_or_else(|| KUBEADM_DEFAULT_SERVICE_SUBNET.into()),
            )?,
        })
    }

    /// Random YAML documents made of the keys and values that matter here,
    /// written out by yaml-rust2's emitter.
    fn documents() -> impl Strategy<Value = String> {
        use yaml_rust2::yaml::{Hash, Yaml};
        let words = || {
            prop::sample::select(vec![
                "kind",
                "networking",
                "podSubnet",
                "serviceSubnet",
                "ClusterConfiguration",
                "10.244.0.0/16",
                "fd00:10::/64,10.1.0.0/16",
                "banana",
                "",
                "~",
            ])
            .prop_map(|w| Yaml::String(w.into()))
        };
        let leaf = prop_oneof![
            4 => words(),
            1 => Just(Yaml::Null),
            1 => (0i64..100).prop_map(Yaml::Integer),
        ];
        let node = leaf.clone().prop_recursive(4, 48, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Yaml::Array),
                prop::collection::vec((words(), inner.clone()), 0..5)
                    .prop_map(|kv| Yaml::Hash(kv.into_iter().collect::<Hash>())),
                // A mapping or sequence as a key.
                (inner.clone(), inner)
                    .prop_map(|(k, v)| Yaml::Hash(std::iter::once((k, v)).collect::<Hash>())),
            ]
        });
        // Mostly something close to a ClusterConfiguration.
        let string = |s: &str| Yaml::String(s.into());
        let networking_key = prop_oneof![
            2 => prop::sample::select(vec!["podSubnet", "serviceSubnet"])
                .prop_map(|w| Yaml::String(w.into())),
            1 => words(),
        ];
        let networking = prop_oneof![
            3 => prop::collection::vec((networking_key, leaf), 0..4)
                .prop_map(|kv| Yaml::Hash(kv.into_iter().collect::<Hash>())),
            1 => node.clone(),
        ];
        let any_key = prop_oneof![3 => words(), 1 => node.clone()];
        let cluster = (
            prop::collection::vec((any_key, node.clone()), 0..3),
            networking,
            any::<bool>(),
        )
            .prop_map(move |(extra, networking, kind_first)| {
                let mut h: Hash = extra.into_iter().collect();
                let kind = (string("kind"), string("ClusterConfiguration"));
                if kind_first {
                    h.insert(kind.0.clone(), kind.1.clone());
                }
                h.insert(string("networking"), networking);
                if !kind_first {
                    h.insert(kind.0, kind.1);
                }
                Yaml::Hash(h)
            });
        let document = prop_oneof![node, cluster];
        prop::collection::vec(document, 1..4).prop_map(|docs| {
            let mut out = String::new();
            for doc in &docs {
                yaml_rust2::YamlEmitter::new(&mut out).dump(doc).unwrap();
                out.push('\n');
            }
            out
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn reads_what_a_yaml_loader_reads(text in prop_oneof![documents(), yamlish()]) {
            let new = parse(&text);
            let old = loader_parse(&text);
            match (&new, &old) {
                // Refused for a reason of the reader's own, or by both.
                (Err(KubeadmError::Alias { .. } | KubeadmError::TooManySubnets { .. }), _) => {}
                (Err(KubeadmError::Yaml(_) | KubeadmError::DuplicateKey { .. }), Err(KubeadmError::Yaml(_))) => {}
                // The loader refuses duplicates anywhere; the reader only
                // among the keys it reads.
                (_, Err(KubeadmError::Yaml(e))) if e.contains("duplicated key") => {}
                _ => prop_assert_eq!(new, old, "{}", text),
            }
        }

        #[test]
        fn arbitrary_text_never_panics_and_stays_bounded(text in arbitrary_text()) {
            let (_, peak) = measure(|| parse(&text));
            prop_assert!(peak <= parser_peak_allowed(text.len()), "{peak}");
        }

        #[test]
        fn yamlish_text_never_panics_and_stays_bounded(text in yamlish()) {
            let (_, peak) = measure(|| parse(&text));
            prop_assert!(peak <= parser_peak_allowed(text.len()), "{peak}");
        }

        #[test]
        fn generated_documents_round_trip(
            pods in prop::collection::vec(cidr(), 0..=2),
            services in prop::collection::vec(cidr(), 0..=2),
            styles in any::<[u8; 3]>(),
            flow in any::<bool>(),
            kind_last in any::<bool>(),
            before in any::<bool>(),
            after in any::<bool>(),
        ) {
            let join = |v: &[IpNet]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
            let mut fields = Vec::new();
            if !pods.is_empty() {
                fields.push(("podSubnet", styled(join(&pods), styles[0], flow)));
            }
            if !services.is_empty() {
                fields.push(("serviceSubnet", styled(join(&services), styles[1], flow)));
            }
            let networking = if flow {
                let inner: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("networking: {{{}}}\n", inner.join(", "))
            } else if fields.is_empty() {
                "networking:\n".to_owned()
            } else {
                let inner: String = fields.iter().map(|(k, v)| format!("  {k}: {v}\n")).collect();
                format!("networking:\n{inner}")
            };
            let kind = format!("kind: {}\n", styled("ClusterConfiguration".into(), styles[2], false));
            let cluster = if kind_last {
                format!("apiVersion: kubeadm.k8s.io/v1beta3\n{networking}{kind}")
            } else {
                format!("apiVersion: kubeadm.k8s.io/v1beta3\n{kind}{networking}")
            };
            let mut text = String::new();
            if before {
                text += "kind: InitConfiguration\nnetworking: {podSubnet: 1.2.3.0/24}\n---\n";
            }
            text += &cluster;
            if after {
                text += "---\nkind: KubeletConfiguration\ncgroupDriver: systemd\n";
            }
            let n = parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            let trunc = |v: &[IpNet]| v.iter().map(IpNet::trunc).collect::<Vec<_>>();
            prop_assert_eq!(n.pod_subnets, trunc(&pods));
            if services.is_empty() {
                prop_assert_eq!(n.service_subnets, nets(&[KUBEADM_DEFAULT_SERVICE_SUBNET]));
            } else {
                prop_assert_eq!(n.service_subnets, trunc(&services));
            }
        }
    }
}
