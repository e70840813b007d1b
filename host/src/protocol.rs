//! Messages on the control socket: one JSON request line, one JSON response
//! line. Shared by the daemon (server) and the CLI (client).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::plan::SkipReason;

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

#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub name: String,
    pub container_id: String,
    pub image: String,
    pub adopted: bool,
    /// Last error ensuring the agent container, if it is failing.
    pub error: Option<String>,
}

/// The agent's firewall rules in the VM, as the agent itself reports them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirewallStatus {
    /// `nft` or `legacy`; `None` when the agent could not be asked.
    pub backend: Option<String>,
    pub all_present: bool,
    /// The agent's report, one line per rule problem (or its error).
    pub detail: Vec<String>,
    /// Age of this report: the daemon asks the agent in the background and
    /// answers `status` from the last answer. `None` = not asked yet.
    #[serde(default)]
    pub checked_secs: Option<u64>,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub kind: crate::kind::KindReport,
    #[serde(default)]
    pub health: HealthStatus,
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
                reason: SkipReason::Ipv6NotSupported,
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
}
