//! `connector status`: the daemon's report as a user reads it.

use crate::control::protocol::StatusReport;

pub fn render(s: &StatusReport) -> String {
    let phase = &s.phase;
    if phase.starting() {
        return format!(
            "connector {} starting, up {}s: {}{} ({}s in this step)\n",
            s.version,
            s.uptime_secs,
            phase.name,
            phase
                .detail
                .as_deref()
                .map(|d| format!(" {d}"))
                .unwrap_or_default(),
            phase.secs
        );
    }
    let mut out = format!(
        "connector {} up {}s\ndocker: {} ({}){}\nagent: {} {} ({}){}\n",
        s.version,
        s.uptime_secs,
        s.docker_endpoint,
        s.engine_version,
        if s.docker_reachable {
            ""
        } else {
            " UNREACHABLE"
        },
        s.agent.name,
        &s.agent
            .container_id
            .get(..12)
            .unwrap_or(&s.agent.container_id),
        s.agent.image,
        s.agent
            .error
            .as_deref()
            .map(|e| format!(" error: {e}"))
            .unwrap_or_default(),
    );
    out += &format!(
        "firewall: {} {}{}\n",
        s.firewall.backend.as_deref().unwrap_or("?"),
        if s.firewall.all_present {
            "all rules present".to_owned()
        } else {
            s.firewall.detail.join("; ")
        },
        s.firewall
            .checked_secs
            .map(|t| format!(" (checked {t}s ago)"))
            .unwrap_or_default()
    );
    for line in &s.firewall.ipv6 {
        out += &format!("  {line}\n");
    }
    let t = &s.tunnel;
    out += &format!(
        "tunnel: {} {} listen {} peer {} handshake {} last datagram {} rx {} B tx {} B\n",
        t.interface,
        t.address,
        t.listen,
        t.endpoint.as_deref().unwrap_or("-"),
        t.last_handshake_secs
            .map(|s| format!("{s}s ago"))
            .unwrap_or_else(|| "never".into()),
        t.last_received_secs
            .map(|s| format!("{s}s ago"))
            .unwrap_or_else(|| "never".into()),
        t.rx_bytes,
        t.tx_bytes
    );
    let h = &s.health;
    out += &format!(
        "health: {}, silent {}s, {} replacement(s){}{}\n",
        h.state,
        h.silence_secs,
        h.replacements,
        h.next_replacement_in_secs
            .map(|t| format!(", next in {t}s"))
            .unwrap_or_default(),
        h.last_resume_secs
            .map(|t| format!(", resumed {t}s ago"))
            .unwrap_or_default(),
    );
    if t.rx_dropped_source > 0 {
        out += &format!(
            "  {} packet(s) from the agent dropped: source outside the routed subnets\n",
            t.rx_dropped_source
        );
    }
    out += "networks:\n";
    for n in &s.networks {
        out += &format!(
            "  {:<24} {:<20} {}{}\n",
            n.name,
            n.subnet.to_string(),
            n.state,
            n.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    out += &crate::clusters::kind::render(&s.kind);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::PhaseStatus;

    #[test]
    fn a_starting_daemon_says_what_it_is_doing() {
        let report = StatusReport {
            version: "0.1.0".into(),
            uptime_secs: 40,
            phase: PhaseStatus {
                name: "building".into(),
                detail: Some("step 3/12".into()),
                secs: 31,
            },
            ..Default::default()
        };
        assert_eq!(
            render(&report),
            "connector 0.1.0 starting, up 40s: building step 3/12 (31s in this step)\n"
        );
    }
}
