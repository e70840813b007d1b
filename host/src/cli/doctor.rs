//! `connector doctor`: walks the whole path in order and says, for each
//! failure, what is wrong and the command that fixes it.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use ipnet::IpNet;

use crate::config::Config;
use crate::control::protocol::{FirewallStatus, Request, Response, StatusReport};
use crate::routes::os::{RouteEntry, RouteTable};
use crate::routes::plan::ConflictPolicy;

/// One step of the walk.
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
}

pub enum Outcome {
    Ok(String),
    Failed {
        problem: String,
        fix: String,
    },
    /// Not checked because an earlier step it depends on failed.
    Skipped(&'static str),
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            outcome: Outcome::Ok(detail.into()),
        }
    }
    fn failed(name: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            outcome: Outcome::Failed {
                problem: problem.into(),
                fix: fix.into(),
            },
        }
    }
    fn skipped(name: &'static str, why: &'static str) -> Check {
        Check {
            name,
            outcome: Outcome::Skipped(why),
        }
    }
}

/// How old the last datagram from the agent may be (keepalive is 20 s).
const MAX_SILENCE_SECS: u64 = 45;

pub async fn run(config_path: Option<&Path>) -> Vec<Check> {
    let mut checks = Vec::new();
    let config = match Config::load(config_path) {
        Ok(c) => {
            let shown = config_path
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "built-in defaults".into());
            checks.push(Check::ok("config", format!("{shown} is valid")));
            c
        }
        Err(e) => {
            checks.push(Check::failed(
                "config",
                e.to_string(),
                "fix the key named above (every key is optional; see README)",
            ));
            return checks;
        }
    };

    let status = match crate::control::request(&config.control_socket, &Request::Status).await {
        Ok(Response::Status(s)) => {
            checks.push(Check::ok(
                "daemon",
                format!("connector {} up {} s", s.version, s.uptime_secs),
            ));
            Some(*s)
        }
        Ok(other) => {
            checks.push(Check::failed(
                "daemon",
                format!("unexpected answer {other:?}"),
                "sudo connector run",
            ));
            None
        }
        Err(e) => {
            checks.push(Check::failed(
                "daemon",
                format!("{e:#}"),
                "sudo brew services start connector   (or: sudo connector run)",
            ));
            None
        }
    };

    let docker = match docker_check(&config).await {
        Ok((docker, detail)) => {
            checks.push(Check::ok("docker", detail));
            Some(docker)
        }
        Err(e) => {
            checks.push(Check::failed(
                "docker",
                e,
                "start Docker Desktop (or set docker_host in the config)",
            ));
            None
        }
    };

    checks.push(match &docker {
        None => Check::skipped("agent", "Docker is unreachable"),
        Some(docker) => agent_check(docker, &config).await,
    });

    let Some(status) = status else {
        for name in ["handshake", "routes", "conflicts", "vm-rules", "probe"] {
            checks.push(Check::skipped(name, "the daemon is not running"));
        }
        return checks;
    };
    checks.push(handshake_check(&status, &config));

    let table = match RouteTable::new().await {
        Ok(t) => t.list().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match table {
        Err(e) => {
            checks.push(Check::failed(
                "routes",
                format!("cannot read the routing table: {e}"),
                "run doctor with sudo",
            ));
            checks.push(Check::skipped(
                "conflicts",
                "the routing table is unreadable",
            ));
        }
        Ok(routes) => {
            checks.push(routes_check(&status, &routes));
            checks.push(conflicts_check(&status, &routes, &config));
        }
    }

    // Asked now, not the daemon's cached answer: doctor shows the present.
    let firewall = match &docker {
        Some(docker) => fresh_firewall(docker, &config.agent_name)
            .await
            .unwrap_or_else(|| status.firewall.clone()),
        None => status.firewall.clone(),
    };
    checks.push(if firewall.all_present {
        Check::ok(
            "vm-rules",
            format!(
                "every tagged rule is in place ({})",
                firewall.backend.as_deref().unwrap_or("?")
            ),
        )
    } else {
        Check::failed(
            "vm-rules",
            firewall.detail.join("; "),
            format!(
                "docker restart {}   (the agent re-inserts its rules at start and every 10 s)",
                config.agent_name
            ),
        )
    });

    // IPv6 in the VM matters once an IPv6 subnet is routed.
    if !firewall.ipv6.is_empty() && routed(&status).any(|(_, s)| s.addr().is_ipv6()) {
        checks.push(Check::failed(
            "vm-ipv6",
            firewall.ipv6.join("; "),
            format!(
                "IPv6 only (IPv4 works): turn IPv6 forwarding on in the Docker VM (Docker does when it runs an IPv6 network), or set ipv6 = false; then docker restart {}",
                config.agent_name
            ),
        ));
    }

    match &docker {
        None => checks.push(Check::skipped("probe", "Docker is unreachable")),
        Some(docker) => checks.extend(probe_checks(docker, &status, &config).await),
    }
    checks
}

async fn docker_check(config: &Config) -> Result<(Docker, String), String> {
    let engine = crate::engine::connect_configured(config.docker_host.as_deref())
        .await
        .map_err(|e| format!("{e:#}"))?;
    let detail = format!(
        "{} answers: Docker {}",
        engine.resolved.endpoint, engine.version
    );
    Ok((engine.docker, detail))
}

async fn agent_check(docker: &Docker, config: &Config) -> Check {
    match docker.inspect_container(&config.agent_name, None).await {
        Err(e) => Check::failed(
            "agent",
            format!("no agent container {:?}: {e}", config.agent_name),
            "sudo brew services restart connector   (the daemon creates the agent)",
        ),
        Ok(c) => {
            let state = c.state.unwrap_or_default();
            let image = c.config.and_then(|c| c.image).unwrap_or_default();
            if state.running == Some(true) {
                Check::ok("agent", format!("{} running ({image})", config.agent_name))
            } else {
                Check::failed(
                    "agent",
                    format!(
                        "{} is {} (exit code {})",
                        config.agent_name,
                        state
                            .status
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "not running".into()),
                        state.exit_code.unwrap_or_default()
                    ),
                    format!("docker logs {0}; docker start {0}", config.agent_name),
                )
            }
        }
    }
}

/// The agent's own report on its rules, asked through `docker exec` with the
/// arguments it runs with; `None` when the agent is not there to ask.
async fn fresh_firewall(docker: &Docker, agent: &str) -> Option<FirewallStatus> {
    let run = docker
        .inspect_container(agent, None)
        .await
        .ok()?
        .config?
        .cmd?;
    Some(crate::agent::firewall_status(
        crate::agent::verify(docker, agent, &run).await,
    ))
}

fn handshake_check(status: &StatusReport, config: &Config) -> Check {
    let t = &status.tunnel;
    match (t.last_handshake_secs, t.last_received_secs) {
        (Some(hs), Some(rx)) if rx <= MAX_SILENCE_SECS => Check::ok(
            "handshake",
            format!("last handshake {hs} s ago, last datagram {rx} s ago, from {}", t.endpoint.as_deref().unwrap_or("?")),
        ),
        (_, rx) => Check::failed(
            "handshake",
            match rx {
                None => "the agent has never completed a handshake".to_owned(),
                Some(rx) => format!("nothing heard from the agent for {rx} s"),
            },
            format!(
                "docker logs {}   (can it reach {}:{}? the daemon replaces a silent agent after {MAX_SILENCE_SECS} s)",
                config.agent_name, config.host_address, config.listen_port
            ),
        ),
    }
}

fn routed(status: &StatusReport) -> impl Iterator<Item = (&str, IpNet)> {
    status
        .networks
        .iter()
        .filter(|n| n.state == "routed")
        .map(|n| (n.name.as_str(), n.subnet))
}

fn routes_check(status: &StatusReport, routes: &[RouteEntry]) -> Check {
    let iface = status.tunnel.interface.as_str();
    let missing: Vec<String> = routed(status)
        .filter(|(_, subnet)| {
            !routes
                .iter()
                .any(|r| r.destination == *subnet && r.interface.as_deref() == Some(iface))
        })
        .map(|(name, subnet)| format!("{subnet} ({name})"))
        .collect();
    if missing.is_empty() {
        Check::ok(
            "routes",
            format!("{} subnet(s) routed via {iface}", routed(status).count()),
        )
    } else {
        Check::failed(
            "routes",
            format!("not routed via {iface}: {}", missing.join(", ")),
            "sudo connector sync-networks",
        )
    }
}

/// Pure: a route on another interface that is more specific than one of our
/// subnets steals part of it — unless the planner's rule (the same
/// [`ConflictPolicy`], `allow_conflicts` included) says it does not count.
pub fn shadowing_routes<'a>(
    ours: &[(String, IpNet)],
    interface: &str,
    routes: &'a [RouteEntry],
    policy: &ConflictPolicy,
) -> Vec<(String, &'a RouteEntry)> {
    let mut found = Vec::new();
    for (name, subnet) in ours {
        for r in routes {
            if r.interface.as_deref() != Some(interface)
                && r.destination.prefix_len() > subnet.prefix_len()
                && policy.conflicts(&r.destination, subnet)
            {
                found.push((name.clone(), r));
            }
        }
    }
    found
}

fn conflicts_check(status: &StatusReport, routes: &[RouteEntry], config: &Config) -> Check {
    let ours: Vec<(String, IpNet)> = routed(status).map(|(n, s)| (n.to_owned(), s)).collect();
    let policy = ConflictPolicy::new(config.allow_conflicts.clone());
    let shadows = shadowing_routes(&ours, &status.tunnel.interface, routes, &policy);
    if shadows.is_empty() {
        return Check::ok(
            "conflicts",
            "no more-specific route overrides a routed subnet",
        );
    }
    let text: Vec<String> = shadows
        .iter()
        .map(|(name, r)| {
            format!(
                "{} dev {} takes part of {name}",
                r.destination,
                r.interface.as_deref().unwrap_or("?")
            )
        })
        .collect();
    let first = shadows[0].1;
    Check::failed(
        "conflicts",
        text.join("; "),
        format!(
            "remove the other route if it is stale (sudo route delete {}), list it in allow_conflicts if you know it, or exclude the network in [networks] exclude",
            first.destination
        ),
    )
}

/// Pings a container (else the agent's tunnel address) through the tunnel;
/// over IPv6 as well when a container has an address in a routed IPv6 subnet.
async fn probe_checks(docker: &Docker, status: &StatusReport, config: &Config) -> Vec<Check> {
    let subnets: Vec<IpNet> = routed(status).map(|(_, s)| s).collect();
    let ips = crate::engine::container_ips(docker)
        .await
        .unwrap_or_default();
    let target = |v6: bool| {
        ips.iter()
            .find(|(name, ip)| {
                name != &config.agent_name
                    && ip.is_ipv6() == v6
                    && subnets.iter().any(|s| s.contains(ip))
            })
            .cloned()
    };
    let mut checks = Vec::new();
    let v4 = match target(false) {
        Some((name, ip)) => (format!("container {name}"), ip),
        None => (
            "the agent's tunnel address".to_owned(),
            IpAddr::V4(config.agent_tunnel_ip()),
        ),
    };
    checks.push(probe("probe", v4, config).await);
    if let Some((name, ip)) = target(true) {
        checks.push(probe("probe6", (format!("container {name}"), ip), config).await);
    }
    checks
}

async fn probe(check: &'static str, (what, ip): (String, IpAddr), config: &Config) -> Check {
    if ping(ip).await {
        Check::ok(
            check,
            format!("{what} ({ip}) answers ping through the tunnel"),
        )
    } else {
        Check::failed(
            check,
            format!("{what} ({ip}) does not answer ping through the tunnel"),
            format!(
                "ping {ip}; check the steps above, then: docker restart {}",
                config.agent_name
            ),
        )
    }
}

async fn ping(ip: IpAddr) -> bool {
    for _ in 0..3 {
        let attempt =
            tokio::task::spawn_blocking(move || crate::cli::icmp::ping(ip, Duration::from_secs(2)))
                .await;
        match attempt {
            Ok(Ok(true)) => return true,
            Ok(Err(e)) => tracing::debug!(error = %e, "icmp probe failed"),
            _ => {}
        }
    }
    false
}

/// Prints the walk; returns whether everything passed.
pub fn render(checks: &[Check]) -> (String, bool) {
    let mut out = String::new();
    let mut all_ok = true;
    for c in checks {
        match &c.outcome {
            Outcome::Ok(detail) => out += &format!("ok    {:<10} {detail}\n", c.name),
            Outcome::Failed { problem, fix } => {
                all_ok = false;
                out += &format!("FAIL  {:<10} {problem}\n      fix: {fix}\n", c.name);
            }
            Outcome::Skipped(why) => {
                all_ok = false;
                out += &format!("skip  {:<10} {why}\n", c.name);
            }
        }
    }
    out += if all_ok {
        "doctor: everything works\n"
    } else {
        "doctor: problems found\n"
    };
    (out, all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, iface: &str) -> RouteEntry {
        RouteEntry {
            destination: dst.parse().unwrap(),
            interface: Some(iface.into()),
            gateway: None,
        }
    }

    #[test]
    fn more_specific_foreign_route_is_reported() {
        let ours = vec![("app".to_owned(), "172.20.0.0/16".parse().unwrap())];
        let routes = [
            route("172.20.0.0/16", "utun4"),
            route("172.20.3.0/24", "utun9"),
            route("172.0.0.0/8", "en0"),
            route("0.0.0.0/0", "en0"),
        ];
        let found = shadowing_routes(&ours, "utun4", &routes, &ConflictPolicy::default());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1.destination.to_string(), "172.20.3.0/24");
        // Listed in allow_conflicts: the user knows; not reported.
        let allowed = ConflictPolicy::new(vec!["172.20.0.0/16".parse().unwrap()]);
        assert!(shadowing_routes(&ours, "utun4", &routes, &allowed).is_empty());
    }

    #[test]
    fn render_names_the_fix_and_fails_on_any_problem() {
        let checks = vec![
            Check::ok("config", "fine"),
            Check::failed("agent", "agent is exited", "docker start connector-agent"),
            Check::skipped("probe", "Docker is unreachable"),
        ];
        let (text, ok) = render(&checks);
        assert!(!ok);
        assert!(text.contains("FAIL  agent"));
        assert!(text.contains("fix: docker start connector-agent"));
        let (_, ok) = render(&checks[..1]);
        assert!(ok);
    }
}
