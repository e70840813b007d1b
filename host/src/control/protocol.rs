//! Messages on the control socket: one JSON request line, one JSON response
//! line. Shared by the daemon (server) and the CLI (client).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::routes::plan::SkipReason;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// Re-read Docker's networks and apply the routes now. Root only.
    SyncNetworks,
    /// Read-only snapshot of the daemon's state. Anyone.
    Status,
}

impl Request {
    /// Requests that change the system need root (or the daemon's own user).
    pub fn mutates(&self) -> bool {
        matches!(self, Request::SyncNetworks)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Sync(SyncReport),
    Status(Box<StatusReport>),
    Error { message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteChange {
    pub network: String,
    pub subnet: IpNet,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Skipped {
    pub network: String,
    pub subnet: IpNet,
    pub reason: SkipReason,
    /// Human form of `reason`.
    pub message: String,
}

/// What one reconcile changed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncReport {
    pub added: Vec<RouteChange>,
    pub removed: Vec<RouteChange>,
    pub skipped: Vec<Skipped>,
    /// Subnets routed after the sync.
    pub routed: Vec<RouteChange>,
    /// Route operations that failed (the rest were applied).
    pub errors: Vec<String>,
}

impl SyncReport {
    /// Lines a person reads: `+` added, `-` removed, `!` skipped.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.added {
            out += &format!("+ {} ({})\n", c.subnet, c.network);
        }
        for c in &self.removed {
            out += &format!("- {} ({})\n", c.subnet, c.network);
        }
        for s in &self.skipped {
            out += &format!("! {} ({}): {}\n", s.subnet, s.network, s.message);
        }
        for e in &self.errors {
            out += &format!("error: {e}\n");
        }
        if self.added.is_empty() && self.removed.is_empty() {
            out += &format!("no route changes; {} subnet(s) routed\n", self.routed.len());
        } else {
            out += &format!(
                "{} added, {} removed; {} subnet(s) routed\n",
                self.added.len(),
                self.removed.len(),
                self.routed.len()
            );
        }
        out
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub interface: String,
    pub address: String,
    pub listen: String,
    pub endpoint: Option<String>,
    /// Seconds since the last handshake; `None` = never.
    pub last_handshake_secs: Option<u64>,
    /// Seconds since the last authenticated datagram from the agent (it
    /// sends a keepalive every 20 s); `None` = never.
    pub last_received_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Decrypted packets dropped because their source address is not one
    /// the agent may send from (a routed subnet or its tunnel address).
    #[serde(default)]
    pub rx_dropped_source: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentStatus {
    pub name: String,
    pub container_id: String,
    pub image: String,
    pub adopted: bool,
    /// Last error ensuring the agent container, if it is failing.
    pub error: Option<String>,
}

/// The agent's firewall rules in the VM, as the agent itself reports them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FirewallStatus {
    /// `nft` or `legacy`; `None` when the agent could not be asked.
    pub backend: Option<String>,
    pub all_present: bool,
    /// The agent's report, one line per rule problem (or its error).
    pub detail: Vec<String>,
    /// IPv6 problems in the VM (forwarding off, no ip6tables, IPv6 rules
    /// missing): IPv4 works regardless, so they do not clear `all_present`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6: Vec<String>,
    /// Age of this report: the daemon asks the agent in the background and
    /// answers `status` from the last answer. `None` = not asked yet.
    #[serde(default)]
    pub checked_secs: Option<u64>,
}

/// What the daemon is doing: `ready`, or a step of its start (see
/// `progress.rs`): `waiting-for-docker`, `checking-image`, `pulling`,
/// `building` (detail `step n/m`), `starting-agent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How long the daemon has been in this phase.
    pub secs: u64,
}

impl PhaseStatus {
    /// Still starting (an older daemon reports no phase: not starting).
    pub fn starting(&self) -> bool {
        !self.name.is_empty() && self.name != "ready"
    }
}

/// The data-path health machine (the daemon's `health` module).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// `ok`, `silent`, `nudged` (asked to handshake again), `backing-off`
    /// (replaced agents stayed silent; the next replacement waits), or
    /// `docker-unreachable`.
    pub state: String,
    /// Seconds since the agent was last heard (or since it was created,
    /// adopted, or the daemon resumed from sleep).
    pub silence_secs: u64,
    /// Agents replaced since one was last heard.
    pub replacements: u32,
    pub last_replacement_secs: Option<u64>,
    pub next_replacement_in_secs: Option<u64>,
    /// Seconds since the daemon noticed it had not been running (sleep).
    pub last_resume_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub name: String,
    pub subnet: IpNet,
    /// `routed` or `skipped`.
    pub state: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub uptime_secs: u64,
    pub docker_endpoint: String,
    pub docker_reachable: bool,
    pub engine_version: String,
    pub agent: AgentStatus,
    pub firewall: FirewallStatus,
    pub tunnel: TunnelStatus,
    pub networks: Vec<NetworkStatus>,
    /// kind clusters and the VM routes held for them (absent from older daemons).
    #[serde(default)]
    pub kind: crate::clusters::kind::KindReport,
    #[serde(default)]
    pub health: HealthStatus,
    #[serde(default)]
    pub phase: PhaseStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        let text = serde_json::to_string(&Request::SyncNetworks).unwrap();
        assert_eq!(text, r#"{"command":"sync-networks"}"#);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"status"}"#).unwrap(),
            Request::Status
        );
        assert!(Request::SyncNetworks.mutates());
        assert!(!Request::Status.mutates());
    }

    #[test]
    fn report_renders_plus_minus_and_bang() {
        let report = SyncReport {
            added: vec![RouteChange {
                network: "a".into(),
                subnet: "172.20.0.0/16".parse().unwrap(),
            }],
            removed: vec![RouteChange {
                network: "b".into(),
                subnet: "172.21.0.0/16".parse().unwrap(),
            }],
            skipped: vec![Skipped {
                network: "lan".into(),
                subnet: "192.168.0.0/16".parse().unwrap(),
                reason: SkipReason::Ipv6Off,
                message: "why".into(),
            }],
            routed: vec![],
            errors: vec![],
        };
        let text = report.render();
        assert!(text.contains("+ 172.20.0.0/16 (a)\n"));
        assert!(text.contains("- 172.21.0.0/16 (b)\n"));
        assert!(text.contains("! 192.168.0.0/16 (lan): why\n"));
        assert!(text.contains("1 added, 1 removed"));
        assert!(SyncReport::default()
            .render()
            .starts_with("no route changes"));
    }

    use crate::testing::alloc_meter::measure;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter)
    }

    fn subnet() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<[u8; 4]>(), 0u8..=32)
                .prop_map(|(a, p)| IpNet::V4(ipnet::Ipv4Net::new(a.into(), p).unwrap())),
            (any::<[u8; 16]>(), 0u8..=128)
                .prop_map(|(a, p)| IpNet::V6(ipnet::Ipv6Net::new(a.into(), p).unwrap())),
        ]
    }

    fn change() -> impl Strategy<Value = RouteChange> {
        (text(), subnet()).prop_map(|(network, subnet)| RouteChange { network, subnet })
    }

    fn skip_reason() -> impl Strategy<Value = SkipReason> {
        prop_oneof![
            text().prop_map(|rule| SkipReason::Excluded { rule }),
            (text(), prop::option::of(text()), prop::option::of(text())).prop_map(
                |(route, interface, gateway)| SkipReason::Conflict {
                    route,
                    interface,
                    gateway
                }
            ),
            text().prop_map(|tunnel| SkipReason::TunnelOverlap { tunnel }),
            Just(SkipReason::Ipv6Off),
            Just(SkipReason::Unroutable),
        ]
    }

    fn sync_report() -> impl Strategy<Value = SyncReport> {
        (
            prop::collection::vec(change(), 0..3),
            prop::collection::vec(change(), 0..3),
            prop::collection::vec(
                (text(), subnet(), skip_reason(), text()).prop_map(
                    |(network, subnet, reason, message)| Skipped {
                        network,
                        subnet,
                        reason,
                        message,
                    },
                ),
                0..3,
            ),
            prop::collection::vec(change(), 0..3),
            prop::collection::vec(text(), 0..3),
        )
            .prop_map(|(added, removed, skipped, routed, errors)| SyncReport {
                added,
                removed,
                skipped,
                routed,
                errors,
            })
    }

    fn status_report() -> impl Strategy<Value = StatusReport> {
        let tunnel = (
            (text(), text(), text(), prop::option::of(text())),
            any::<(Option<u64>, Option<u64>, u64, u64, u64, u64, u64)>(),
        )
            .prop_map(|((interface, address, listen, endpoint), numbers)| {
                let (
                    last_handshake_secs,
                    last_received_secs,
                    rx_bytes,
                    tx_bytes,
                    rx_packets,
                    tx_packets,
                    rx_dropped_source,
                ) = numbers;
                TunnelStatus {
                    interface,
                    address,
                    listen,
                    endpoint,
                    last_handshake_secs,
                    last_received_secs,
                    rx_bytes,
                    tx_bytes,
                    rx_packets,
                    tx_packets,
                    rx_dropped_source,
                }
            });
        let agent = (
            text(),
            text(),
            text(),
            any::<bool>(),
            prop::option::of(text()),
        )
            .prop_map(|(name, container_id, image, adopted, error)| AgentStatus {
                name,
                container_id,
                image,
                adopted,
                error,
            });
        let firewall = (
            prop::option::of(text()),
            any::<bool>(),
            prop::collection::vec(text(), 0..3),
            (prop::collection::vec(text(), 0..2), any::<Option<u64>>()),
        )
            .prop_map(|(backend, all_present, detail, (ipv6, checked_secs))| {
                FirewallStatus {
                    backend,
                    all_present,
                    detail,
                    ipv6,
                    checked_secs,
                }
            });
        let health = (
            text(),
            any::<(u64, u32, Option<u64>, Option<u64>, Option<u64>)>(),
        )
            .prop_map(|(state, numbers)| {
                let (silence_secs, replacements, last, next, resume) = numbers;
                HealthStatus {
                    state,
                    silence_secs,
                    replacements,
                    last_replacement_secs: last,
                    next_replacement_in_secs: next,
                    last_resume_secs: resume,
                }
            });
        let network = (text(), subnet(), text(), prop::option::of(text())).prop_map(
            |(name, subnet, state, reason)| NetworkStatus {
                name,
                subnet,
                state,
                reason,
            },
        );
        (
            (text(), any::<u64>(), text(), any::<bool>(), text()),
            agent,
            firewall,
            tunnel,
            prop::collection::vec(network, 0..3),
            health,
        )
            .prop_map(
                |(
                    (version, uptime_secs, docker_endpoint, docker_reachable, engine_version),
                    agent,
                    firewall,
                    tunnel,
                    networks,
                    health,
                )| StatusReport {
                    version,
                    uptime_secs,
                    docker_endpoint,
                    docker_reachable,
                    engine_version,
                    agent,
                    firewall,
                    tunnel,
                    networks,
                    // kind's report has its own types and tests.
                    kind: Default::default(),
                    health,
                    phase: PhaseStatus {
                        name: "ready".into(),
                        detail: None,
                        secs: 0,
                    },
                },
            )
    }

    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            sync_report().prop_map(Response::Sync),
            status_report().prop_map(|s| Response::Status(Box::new(s))),
            text().prop_map(|message| Response::Error { message }),
        ]
    }

    /// JSON shaped like a request: objects with a `command`, and anything.
    fn request_like() -> impl Strategy<Value = String> {
        let word = prop::sample::select(vec![
            "command",
            "sync-networks",
            "status",
            "Status",
            "result",
            "",
            "x",
        ]);
        let leaf = prop_oneof![
            word.clone().prop_map(Value::from),
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            text().prop_map(Value::from),
        ];
        let value = leaf.prop_recursive(4, 32, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((word.clone().prop_map(String::from), inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        });
        prop_oneof![
            value.prop_map(|v| v.to_string()),
            prop::collection::vec(any::<char>(), 0..256).prop_map(String::from_iter),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any local user may write to the control socket.
        #[test]
        fn arbitrary_requests_never_panic_and_stay_bounded(line in request_like()) {
            let (_, peak) = measure(|| serde_json::from_str::<Request>(&line));
            prop_assert!(peak <= 4 * line.len() + 4096, "{peak} for {} bytes", line.len());
        }

    }

    proptest! {
        // Round trips of generated values: fewer cases than arbitrary input.
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn responses_round_trip(response in response()) {
            let line = serde_json::to_string(&response).unwrap();
            prop_assert!(!line.contains('\n'), "one line per response");
            let back: Response = serde_json::from_str(&line).unwrap();
            // Response has no PartialEq (StatusReport holds kind's types):
            // compare what each serialises to.
            prop_assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&response).unwrap());
            if let (Response::Sync(a), Response::Sync(b)) = (&back, &response) {
                prop_assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn requests_round_trip() {
        for request in [Request::SyncNetworks, Request::Status] {
            let line = serde_json::to_string(&request).unwrap();
            assert!(!line.contains('\n'), "one line per request");
            assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), request);
        }
    }

    #[test]
    fn unknown_commands_are_errors() {
        for line in [
            json!({"command": "reboot"}).to_string(),
            json!({}).to_string(),
            "sync-networks".into(),
        ] {
            assert!(serde_json::from_str::<Request>(&line).is_err(), "{line}");
        }
    }
}
