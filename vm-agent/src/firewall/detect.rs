//! Which iptables variant holds Docker's chains. Rules only take effect in the
//! variant Docker itself uses; the other one may exist and even hold leftovers.

use std::fmt;

use super::rules::{check_listing_size, parse_listing, FilterChain, ParseError, Table};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    Legacy,
    Nft,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one variant's filter table says about Docker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    pub has_docker: bool,
    pub has_docker_user: bool,
    /// Number of rules in the DOCKER chain (one or more per running container/bridge).
    pub docker_rules: usize,
    /// FORWARD jumps to DOCKER-USER, i.e. rules there are actually evaluated.
    pub forward_to_docker_user: bool,
}

impl Evidence {
    pub fn has_docker_chains(&self) -> bool {
        self.has_docker || self.has_docker_user
    }

    // Ordering used when both variants hold Docker chains: the live one is
    // wired into FORWARD and has per-container rules; leftovers usually are not.
    fn rank(&self) -> (bool, bool, bool, usize) {
        (
            self.forward_to_docker_user,
            self.docker_rules > 0,
            self.has_docker_user,
            self.docker_rules,
        )
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.has_docker_chains() {
            return f.write_str("no Docker chains");
        }
        let mut parts = Vec::new();
        if self.has_docker {
            parts.push(format!("DOCKER with {} rules", self.docker_rules));
        }
        if self.has_docker_user {
            parts.push("DOCKER-USER".to_owned());
        }
        if self.forward_to_docker_user {
            parts.push("FORWARD jumps to DOCKER-USER".to_owned());
        }
        f.write_str(&parts.join(", "))
    }
}

/// Read the evidence out of `iptables -t filter -S`. Unparseable lines are
/// ignored here: a variant we cannot read is judged by what we can.
pub fn assess_filter_listing(text: &str) -> Result<Evidence, ParseError> {
    check_listing_size(Table::Filter, text)?;
    let mut ev = Evidence::default();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if w.next() == Some("-N") {
            match w.next() {
                Some("DOCKER") => ev.has_docker = true,
                Some("DOCKER-USER") => ev.has_docker_user = true,
                _ => {}
            }
        }
    }
    let rules: Vec<_> = text
        .lines()
        .filter_map(|l| parse_listing(Table::Filter, l).ok())
        .flatten()
        .collect();
    for r in &rules {
        match r.chain.as_str() {
            "DOCKER" => {
                ev.has_docker = true;
                ev.docker_rules += 1;
            }
            "DOCKER-USER" => ev.has_docker_user = true,
            "FORWARD" if r.target() == Some("DOCKER-USER") => ev.forward_to_docker_user = true,
            _ => {}
        }
    }
    Ok(ev)
}

/// Where filter rules take effect in a table with this evidence: DOCKER-USER
/// while FORWARD jumps to it, else the top of FORWARD. Engines without IPv6
/// firewall support (the lab's 20.10, or `"ip6tables": false`) have no IPv6
/// DOCKER-USER; creating one that nothing jumps to would filter nothing, and
/// putting nothing anywhere would let containers open IPv6 connections to
/// the host through the tun.
pub fn filter_chain(ev: &Evidence) -> FilterChain {
    if ev.forward_to_docker_user {
        FilterChain::DockerUser
    } else {
        FilterChain::Forward
    }
}

/// Result of probing one variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The binary is missing or could not list the filter table.
    Unavailable(String),
    Listed(Evidence),
}

impl Probe {
    fn evidence(&self) -> Option<&Evidence> {
        match self {
            Probe::Listed(e) if e.has_docker_chains() => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Unavailable(why) => write!(f, "unavailable: {why}"),
            Probe::Listed(e) => e.fmt(f),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DetectError {
    #[error(
        "iptables could not be run in either variant (legacy: {legacy}; nft: {nft}); the agent needs \
         --cap-add NET_ADMIN, --net host and iptables binaries (see --iptables-legacy/--iptables-nft)"
    )]
    Unusable { legacy: String, nft: String },
    #[error(
        "Docker's iptables chains (DOCKER, DOCKER-USER) were not found in either iptables variant \
         (legacy: {legacy}; nft: {nft}). A likely cause is Docker Engine 29+ running its nftables \
         firewall backend (\"firewall-backend\": \"nftables\"), where iptables rules cannot override \
         Docker's drops; switch the engine back to the iptables backend, or Docker is not running \
         with iptables enabled"
    )]
    NoDockerChains { legacy: String, nft: String },
    #[error(
        "the {backend} iptables variant holds Docker's DOCKER chain but no DOCKER-USER chain \
         ({evidence}); this Docker Engine is too old or is configured without it"
    )]
    NoDockerUser { backend: Backend, evidence: String },
}

/// The chosen variant and a one-line account of why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub backend: Backend,
    pub reason: String,
}

/// Pick the variant that holds Docker's chains.
pub fn choose(legacy: &Probe, nft: &Probe) -> Result<Choice, DetectError> {
    let (backend, ev, reason) = match (legacy.evidence(), nft.evidence()) {
        (None, None) => {
            // Nothing listed at all: a permission or packaging problem, not Docker's setup.
            let listed = |p: &Probe| matches!(p, Probe::Listed(_));
            let unusable = !listed(legacy) && !listed(nft);
            let (legacy, nft) = (legacy.to_string(), nft.to_string());
            return Err(if unusable {
                DetectError::Unusable { legacy, nft }
            } else {
                DetectError::NoDockerChains { legacy, nft }
            });
        }
        (Some(l), None) => (Backend::Legacy, l, format!("legacy: {l}; nft: {nft}")),
        (None, Some(n)) => (Backend::Nft, n, format!("nft: {n}; legacy: {legacy}")),
        (Some(l), Some(n)) => {
            // On a tie nft wins: it is what current Docker Desktop VMs use.
            if l.rank() > n.rank() {
                (
                    Backend::Legacy,
                    l,
                    format!(
                        "both variants hold Docker chains; legacy looks live ({l}) vs nft ({n})"
                    ),
                )
            } else {
                (
                    Backend::Nft,
                    n,
                    format!(
                        "both variants hold Docker chains; nft looks live ({n}) vs legacy ({l})"
                    ),
                )
            }
        }
    };
    if !ev.has_docker_user {
        return Err(DetectError::NoDockerUser {
            backend,
            evidence: ev.to_string(),
        });
    }
    Ok(Choice { backend, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real `iptables-nft -t filter -S` from Debian's docker.io 20.10 with one container.
    const DOCKER_20: &str = "\
-P INPUT ACCEPT
-P FORWARD DROP
-P OUTPUT ACCEPT
-N DOCKER
-N DOCKER-ISOLATION-STAGE-1
-N DOCKER-ISOLATION-STAGE-2
-N DOCKER-USER
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-USER -j RETURN
";

    // Docker 28: DOCKER-FORWARD, per-bridge DROP at the end of DOCKER.
    const DOCKER_28: &str = "\
-P FORWARD DROP
-N DOCKER
-N DOCKER-FORWARD
-N DOCKER-USER
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A DOCKER ! -i docker0 -o docker0 -j DROP
";

    const EMPTY: &str = "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n";

    // Leftovers of an earlier engine: chains exist but nothing is wired up.
    const LEFTOVER: &str = "-P FORWARD ACCEPT\n-N DOCKER\n-N DOCKER-USER\n";

    fn probe(s: &str) -> Probe {
        Probe::Listed(assess_filter_listing(s).unwrap())
    }

    #[test]
    fn assess_docker_20() {
        let ev = assess_filter_listing(DOCKER_20).unwrap();
        assert_eq!(
            ev,
            Evidence {
                has_docker: true,
                has_docker_user: true,
                docker_rules: 1,
                forward_to_docker_user: true
            }
        );
        assert_eq!(
            ev.to_string(),
            "DOCKER with 1 rules, DOCKER-USER, FORWARD jumps to DOCKER-USER"
        );
        assert_eq!(assess_filter_listing(EMPTY), Ok(Evidence::default()));
        assert_eq!(
            assess_filter_listing(EMPTY).unwrap().to_string(),
            "no Docker chains"
        );
    }

    #[test]
    fn only_nft() {
        let c = choose(&probe(EMPTY), &probe(DOCKER_20)).unwrap();
        assert_eq!(c.backend, Backend::Nft);
        assert!(
            c.reason.contains("legacy: no Docker chains"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn only_legacy_even_if_nft_missing() {
        let c = choose(
            &probe(DOCKER_28),
            &Probe::Unavailable("iptables-nft: not found".into()),
        )
        .unwrap();
        assert_eq!(c.backend, Backend::Legacy);
    }

    #[test]
    fn both_prefers_live_one() {
        assert_eq!(
            choose(&probe(DOCKER_28), &probe(LEFTOVER)).unwrap().backend,
            Backend::Legacy
        );
        assert_eq!(
            choose(&probe(LEFTOVER), &probe(DOCKER_20)).unwrap().backend,
            Backend::Nft
        );
        // Both wired into FORWARD: the one with DOCKER rules wins.
        let wired_empty = "-N DOCKER\n-N DOCKER-USER\n-A FORWARD -j DOCKER-USER\n";
        assert_eq!(
            choose(&probe(DOCKER_28), &probe(wired_empty))
                .unwrap()
                .backend,
            Backend::Legacy
        );
        // Tie: nft.
        assert_eq!(
            choose(&probe(DOCKER_28), &probe(DOCKER_28))
                .unwrap()
                .backend,
            Backend::Nft
        );
    }

    #[test]
    fn neither_mentions_nftables_backend() {
        let err = choose(
            &probe(EMPTY),
            &Probe::Unavailable("exit status 3: Table does not exist".into()),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("not found in either iptables variant"),
            "{msg}"
        );
        assert!(msg.contains("nftables firewall backend"), "{msg}");
        assert!(msg.contains("Docker Engine 29"), "{msg}");
        assert!(msg.contains("legacy: no Docker chains"), "{msg}");
        assert!(msg.contains("nft: unavailable: exit status 3"), "{msg}");
    }

    #[test]
    fn neither_listable_is_a_permission_problem() {
        let denied = "exit status 4: Could not fetch rule set generation id: Permission denied (you must be root)";
        let err = choose(
            &Probe::Unavailable("iptables-legacy not found".into()),
            &Probe::Unavailable(denied.into()),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DetectError::Unusable { .. }));
        assert!(
            msg.contains("NET_ADMIN") && msg.contains("Permission denied"),
            "{msg}"
        );
        assert!(!msg.contains("nftables firewall backend"), "{msg}");
    }

    #[test]
    fn docker_without_docker_user() {
        let err = choose(&probe("-N DOCKER\n-A DOCKER -j DROP\n"), &probe(EMPTY)).unwrap_err();
        assert!(matches!(
            err,
            DetectError::NoDockerUser {
                backend: Backend::Legacy,
                ..
            }
        ));
    }

    #[test]
    fn filter_rules_go_where_forward_leads() {
        let chain = |s: &str| filter_chain(&assess_filter_listing(s).unwrap());
        assert_eq!(chain(DOCKER_20), FilterChain::DockerUser);
        assert_eq!(chain(DOCKER_28), FilterChain::DockerUser);
        // Real `ip6tables-nft -t filter -S` next to the lab's Engine 20.10,
        // which runs no IPv6 firewall: no DOCKER-USER at all.
        assert_eq!(chain(EMPTY), FilterChain::Forward);
        // A DOCKER-USER nothing jumps to filters nothing.
        assert_eq!(chain(LEFTOVER), FilterChain::Forward);
        assert_eq!(
            chain("-N DOCKER-USER\n-A FORWARD -i eth0 -j ACCEPT\n-A DOCKER-USER -j RETURN\n"),
            FilterChain::Forward
        );
    }

    #[test]
    fn a_huge_listing_is_refused_by_name() {
        let huge = "-N X\n".repeat(crate::firewall::rules::MAX_LISTING / 5 + 1);
        let err = assess_filter_listing(&huge).unwrap_err().to_string();
        assert!(err.contains("more than the 16777216"), "{err}");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Listings made of the words the assessment looks at, in any order.
        fn listing() -> impl Strategy<Value = String> {
            let words = vec![
                "-A",
                "-N",
                "-P",
                "FORWARD",
                "DOCKER",
                "DOCKER-USER",
                "-j",
                "ACCEPT",
                "\"",
                "!",
                "-i",
                "x",
                " ",
                "\n",
            ];
            prop::collection::vec(prop::sample::select(words), 0..80).prop_map(|w| w.concat())
        }

        proptest! {
            #![proptest_config(crate::proptest_config(2000))]

            #[test]
            fn any_text_is_assessed_without_panicking(
                text in prop_oneof![any::<String>(), listing()],
            ) {
                let ev = assess_filter_listing(&text).unwrap();
                // Evidence only comes from what the text names.
                if !text.contains("DOCKER") {
                    prop_assert_eq!(&ev, &Evidence::default());
                }
                if ev.has_docker_user || ev.forward_to_docker_user {
                    prop_assert!(text.contains("DOCKER-USER"));
                }
                prop_assert!(ev.docker_rules <= text.matches("-A").count());
            }
        }
    }
}
