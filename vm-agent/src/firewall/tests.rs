//! Apply-path tests against a fake iptables (a bash script keeping each table's
//! `-S` listing in a file), so the process plumbing runs without root.

use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::*;

const FAKE: &str = r#"
state="$1"; shift
echo "$*" >> "$state/calls"
if [ "$1" = "-w" ]; then shift; case "$1" in ''|*[!0-9]*) ;; *) shift ;; esac; fi
table=filter
if [ "$1" = "-t" ]; then table="$2"; shift 2; fi
f="$state/$table"
if [ ! -f "$f" ]; then
  echo "iptables v1.8.9 (legacy): can't initialize iptables table \`$table': Table does not exist" >&2
  exit 3
fi
op="$1"; shift
case "$op" in
  -S) cat "$f" ;;
  -C) grep -Fxq -- "-A $*" "$f" ;;
  -I)
    chain="$1"; shift 2
    awk -v c="-A $chain " -v l="-A $chain $*" \
      '!d && index($0, c) == 1 { print l; d = 1 } { print } END { if (!d) print l }' "$f" > "$f.new"
    mv "$f.new" "$f" ;;
  -D)
    awk -v l="-A $*" '!d && $0 == l { d = 1; next } { print } END { exit d ? 0 : 1 }' "$f" > "$f.new"
    rc=$?; mv "$f.new" "$f"
    if [ $rc != 0 ]; then echo "iptables: Bad rule (does a matching rule exist in that chain?)." >&2; exit 1; fi ;;
  *) echo "fake iptables: unsupported $op" >&2; exit 2 ;;
esac
"#;

const DOCKER_FILTER: &str = "\
-P INPUT ACCEPT
-P FORWARD DROP
-P OUTPUT ACCEPT
-N DOCKER
-N DOCKER-USER
-A FORWARD -j DOCKER-USER
-A FORWARD -o docker0 -j DOCKER
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-USER -j RETURN
";

pub(crate) struct Fake {
    dir: PathBuf,
}

impl Fake {
    /// A fake variant whose tables start with the given listings; tables not
    /// given do not exist.
    pub(crate) fn new(name: &str, tables: &[(&str, &str)]) -> Fake {
        let dir =
            std::env::temp_dir().join(format!("connector-agent-fw-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("fake-iptables"), FAKE).unwrap();
        for (t, text) in tables {
            fs::write(dir.join(t), text).unwrap();
        }
        Fake { dir }
    }

    /// Run through bash with the script and state dir as leading arguments:
    /// exercises `pre_args` and avoids exec'ing a just-written file.
    pub(crate) fn cmd(&self) -> IptablesCmd {
        IptablesCmd {
            program: "bash".into(),
            pre_args: vec![
                self.dir.join("fake-iptables").display().to_string(),
                self.dir.display().to_string(),
            ],
        }
    }

    fn table(&self, t: &str) -> String {
        fs::read_to_string(self.dir.join(t)).unwrap()
    }

    pub(crate) fn calls(&self) -> String {
        fs::read_to_string(self.dir.join("calls")).unwrap_or_default()
    }

    pub(crate) fn rules(&self, t: &str) -> Vec<String> {
        self.table(t)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn docker_tables() -> Vec<(&'static str, &'static str)> {
    vec![
        ("raw", "-P PREROUTING ACCEPT\n-P OUTPUT ACCEPT\n"),
        ("mangle", "-P PREROUTING ACCEPT\n"),
        ("filter", DOCKER_FILTER),
        (
            "nat",
            "-P POSTROUTING ACCEPT\n-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n",
        ),
    ]
}

pub(crate) fn empty_tables() -> Vec<(&'static str, &'static str)> {
    vec![
        ("raw", "-P PREROUTING ACCEPT\n"),
        ("mangle", "-P PREROUTING ACCEPT\n"),
        ("filter", "-P FORWARD ACCEPT\n"),
        ("nat", "-P POSTROUTING ACCEPT\n"),
    ]
}

fn spec(nat: NatMode) -> FirewallSpec {
    FirewallSpec {
        tun: "connector-vm".into(),
        host_tunnel_ip: Ipv4Addr::new(10, 254, 253, 1).into(),
        nat,
        tag: "connector".into(),
        allow_container_connections: false,
    }
}

#[tokio::test]
async fn detect_ensure_idempotent_remove() {
    let legacy = Fake::new("e2e-legacy", &empty_tables());
    let nft = Fake::new("e2e-nft", &docker_tables());
    let bins = Binaries {
        legacy: legacy.cmd(),
        nft: nft.cmd(),
    };

    let fw = Firewall::detect(spec(NatMode::Masquerade), &bins)
        .await
        .unwrap();
    assert_eq!(fw.backend(), Backend::Nft);
    assert!(
        fw.reason().contains("FORWARD jumps to DOCKER-USER"),
        "{}",
        fw.reason()
    );
    assert_eq!(fw.verify().await.unwrap().missing.len(), 5);

    let first = fw.ensure().await.unwrap();
    assert_eq!(first.inserted.len(), 5);
    assert!(first.changed());
    assert_eq!(
        nft.rules("filter")[3..],
        [
            "-A DOCKER-USER -o connector-vm -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment connector -j DROP",
            "-A DOCKER-USER -o connector-vm -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment connector -j ACCEPT",
            "-A DOCKER-USER -i connector-vm -m comment --comment connector -j ACCEPT",
            "-A DOCKER-USER -j RETURN",
        ]
    );
    assert_eq!(
        nft.rules("nat")[0],
        "-A POSTROUTING -s 10.254.253.1/32 ! -o connector-vm -m comment --comment connector -j MASQUERADE"
    );
    assert_eq!(
        nft.rules("raw"),
        ["-A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT"]
    );
    // Legacy was only probed.
    assert_eq!(legacy.calls().trim(), "-w 10 -t filter -S");
    // Every call waits for the xtables lock.
    assert!(nft.calls().lines().all(|l| l.starts_with("-w 10 ")));

    let second = fw.ensure().await.unwrap();
    assert!(!second.changed(), "{second:?}");
    assert!(fw.verify().await.unwrap().missing.is_empty());
    assert_eq!(nft.rules("filter").len(), 7);

    let removed = fw.remove().await.unwrap();
    assert_eq!(removed.len(), 5);
    assert!(removed.iter().all(|r| r.copies == 1));
    assert_eq!(nft.table("filter"), DOCKER_FILTER);
    assert!(nft.rules("raw").is_empty());
    assert_eq!(
        nft.rules("nat"),
        ["-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"]
    );
}

#[tokio::test]
async fn ensure_cleans_stale_duplicates_and_shadowed() {
    let ours = "-A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT\n";
    let raw = format!(
        "-P PREROUTING ACCEPT\n\
         -A PREROUTING -d 172.17.0.2/32 ! -i docker0 -j DROP\n\
         {ours}{ours}\
         -A PREROUTING -i old-tun -m comment --comment connector -j ACCEPT\n\
         -A PREROUTING -i old-tun -m comment --comment connector -j ACCEPT\n\
         -A PREROUTING -i other -m comment --comment someone-else -j ACCEPT\n"
    );
    let mut tables = docker_tables();
    tables[0].1 = &raw;
    let nft = Fake::new("stale-nft", &tables);
    let legacy = Fake::new("stale-legacy", &[]);
    let fw = Firewall::detect(
        spec(NatMode::Routed),
        &Binaries {
            legacy: legacy.cmd(),
            nft: nft.cmd(),
        },
    )
    .await
    .unwrap();
    let missing = fw.verify().await.unwrap().missing;
    assert_eq!(missing.len(), 4);
    assert_eq!(missing[3].reason, MissingReason::Shadowed);

    let report = fw.ensure().await.unwrap();
    assert_eq!(report.removed_stale.len(), 1);
    assert_eq!(report.removed_stale[0].copies, 2);
    assert_eq!(report.removed_duplicates, 1);
    assert_eq!(report.reordered.len(), 1);
    assert_eq!(report.inserted.len(), 3); // the DOCKER-USER rules; routed: no nat
    assert_eq!(
        nft.rules("raw"),
        [
            "-A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT",
            "-A PREROUTING -d 172.17.0.2/32 ! -i docker0 -j DROP",
            "-A PREROUTING -i other -m comment --comment someone-else -j ACCEPT",
        ]
    );
    assert!(!fw.ensure().await.unwrap().changed());
}

#[tokio::test]
async fn remove_tagged_everywhere_and_copies() {
    let line = "-A PREROUTING -i x -m comment --comment fwtest -j ACCEPT\n";
    let raw = format!("-P PREROUTING ACCEPT\n{}", line.repeat(3));
    let mangle =
        "-A PREROUTING -i y -m comment --comment fwtest -j MARK --set-xmark 0x1/0xffffffff\n";
    let fake = Fake::new(
        "remove",
        &[
            ("raw", &raw),
            ("mangle", mangle),
            ("filter", DOCKER_FILTER),
            ("nat", ""),
        ],
    );
    let removed = remove_tagged(&fake.cmd(), "fwtest", &Table::ALL)
        .await
        .unwrap();
    assert_eq!(removed.len(), 2);
    assert_eq!((removed[0].rule.table, removed[0].copies), (Table::Raw, 3));
    assert_eq!(removed[1].rule.table, Table::Mangle);
    assert!(fake.rules("raw").is_empty() && fake.rules("mangle").is_empty());
    assert!(remove_tagged(&fake.cmd(), "fwtest", &Table::ALL)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        remove_tagged(&fake.cmd(), "bad tag", &Table::ALL).await,
        Err(FirewallError::Spec(_))
    ));
}

#[tokio::test]
async fn errors_carry_command_and_stderr() {
    // No nat table: listing it fails like a missing kernel module would.
    let tables: Vec<_> = docker_tables()
        .into_iter()
        .filter(|(t, _)| *t != "nat")
        .collect();
    let nft = Fake::new("err-nft", &tables);
    let legacy = Fake::new("err-legacy", &[]);
    let fw = Firewall::detect(
        spec(NatMode::Masquerade),
        &Binaries {
            legacy: legacy.cmd(),
            nft: nft.cmd(),
        },
    )
    .await
    .unwrap();
    let msg = fw.ensure().await.unwrap_err().to_string();
    assert!(msg.contains("-w 10 -t nat -S"), "{msg}");
    assert!(msg.contains("exit status 3"), "{msg}");
    assert!(msg.contains("Table does not exist"), "{msg}");
}

#[tokio::test]
async fn detect_neither_variant() {
    let nft = Fake::new("none-nft", &empty_tables());
    let missing = IptablesCmd::from_str("/nonexistent/iptables-legacy").unwrap();
    let err = Firewall::detect(
        spec(NatMode::Routed),
        &Binaries {
            legacy: missing,
            nft: nft.cmd(),
        },
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(
        err,
        FirewallError::Detect(DetectError::NoDockerChains { .. })
    ));
    assert!(
        msg.contains("legacy: unavailable: /nonexistent/iptables-legacy not found"),
        "{msg}"
    );
    assert!(msg.contains("nft: no Docker chains"), "{msg}");
    assert!(msg.contains("nftables firewall backend"), "{msg}");
}

#[tokio::test]
async fn detect_rejects_invalid_spec() {
    let nft = Fake::new("spec-nft", &docker_tables());
    let mut s = spec(NatMode::Routed);
    s.tun = "has space".into();
    let err = Firewall::detect(
        s,
        &Binaries {
            legacy: nft.cmd(),
            nft: nft.cmd(),
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FirewallError::Spec(SpecError::Interface(_))));
    assert!(nft.calls().is_empty());
}

#[test]
fn iptables_cmd_parse() {
    let c = IptablesCmd::from_str("xtables-legacy-multi  iptables").unwrap();
    assert_eq!(c.program, PathBuf::from("xtables-legacy-multi"));
    assert_eq!(c.pre_args, ["iptables"]);
    assert_eq!(
        c.command_line(&["-t".into(), "raw".into(), "-S".into()]),
        "xtables-legacy-multi iptables -w 10 -t raw -S"
    );
    assert!(matches!(
        IptablesCmd::from_str("  "),
        Err(FirewallError::EmptyCommand)
    ));
}

#[test]
fn forwarding_check_per_family() {
    let proc = std::env::temp_dir().join(format!("connector-agent-fwd-{}", std::process::id()));
    let set = |family: Family, value: &str| {
        let p = sysctl_path(&proc, family.forwarding_sysctl());
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, value).unwrap();
    };
    for family in [Family::V4, Family::V6] {
        set(family, "1\n");
        assert!(check_forwarding(family, &proc).is_ok());
        set(family, "yes");
        assert!(matches!(
            check_forwarding(family, &proc),
            Err(ForwardingError::Unexpected { .. })
        ));
        set(family, "0\n");
    }
    assert_eq!(
        check_forwarding(Family::V4, &proc).unwrap_err().to_string(),
        "forwarding is off in the Docker VM (net.ipv4.ip_forward=0): IPv4 subnets are unreachable"
    );
    assert_eq!(
        check_forwarding(Family::V6, &proc).unwrap_err().to_string(),
        "forwarding is off in the Docker VM (net.ipv6.conf.all.forwarding=0): IPv6 subnets are unreachable"
    );
    // A kernel without IPv6 has no such file.
    let err = check_forwarding(Family::V6, &proc.join("absent")).unwrap_err();
    assert!(
        err.to_string()
            .contains("absent/sys/net/ipv6/conf/all/forwarding"),
        "{err}"
    );
    let _ = fs::remove_dir_all(&proc);
    // The files the agent reads are the kernel's.
    assert_eq!(
        sysctl_path(Path::new(PROC), Family::V6.forwarding_sysctl()),
        Path::new("/proc/sys/net/ipv6/conf/all/forwarding")
    );
    assert_eq!(
        sysctl_path(Path::new(PROC), Family::V4.forwarding_sysctl()),
        Path::new("/proc/sys/net/ipv4/ip_forward")
    );
}

fn allowing(nat: NatMode) -> FirewallSpec {
    FirewallSpec {
        allow_container_connections: true,
        ..spec(nat)
    }
}

fn docker_user(rules: &[Rule]) -> Vec<String> {
    rules
        .iter()
        .filter(|r| r.chain == "DOCKER-USER")
        .map(|r| r.to_string())
        .collect()
}

#[test]
fn desired_rules_by_container_mode() {
    let replies_only = desired_rules(&spec(NatMode::Masquerade), FilterChain::DockerUser);
    assert_eq!(
        docker_user(&replies_only),
        [
            "-t filter -A DOCKER-USER -i connector-vm -m comment --comment connector -j ACCEPT",
            "-t filter -A DOCKER-USER -o connector-vm -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment connector -j ACCEPT",
            "-t filter -A DOCKER-USER -o connector-vm -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment connector -j DROP",
        ]
    );
    let allowed = desired_rules(&allowing(NatMode::Masquerade), FilterChain::DockerUser);
    assert_eq!(
        docker_user(&allowed),
        [
            "-t filter -A DOCKER-USER -i connector-vm -m comment --comment connector -j ACCEPT",
            "-t filter -A DOCKER-USER -o connector-vm -m comment --comment connector -j ACCEPT",
        ]
    );
    // raw and nat do not depend on the mode.
    let others = |rules: &[Rule]| -> Vec<Rule> {
        rules
            .iter()
            .filter(|r| r.chain != "DOCKER-USER")
            .cloned()
            .collect()
    };
    assert_eq!(others(&replies_only), others(&allowed));
    assert_eq!(
        desired_rules(&allowing(NatMode::Routed), FilterChain::DockerUser).len(),
        3
    );
    // The two `-o` rules are each other's negation: one ACCEPT, one DROP.
    let (accept, drop) = (&replies_only[2], &replies_only[3]);
    assert_eq!(
        (accept.target(), drop.target()),
        (Some("ACCEPT"), Some("DROP"))
    );
    let without_bang: Vec<&String> = drop.args.iter().filter(|a| *a != "!").collect();
    assert_eq!(
        without_bang[..without_bang.len() - 1],
        accept.args.iter().collect::<Vec<_>>()[..accept.args.len() - 1]
    );
}

/// `iptables-nft -S DOCKER-USER` and `iptables-legacy -S DOCKER-USER` (both
/// 1.8.9, identical output) after the agent's replies-only rules were inserted
/// with `--ctstate ESTABLISHED,RELATED`: iptables prints the states in its own
/// order and the negation before the option.
const REAL_DOCKER_USER: &str = "\
-N DOCKER-USER
-A DOCKER-USER -o connector-vm -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment connector -j DROP
-A DOCKER-USER -o connector-vm -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment connector -j ACCEPT
-A DOCKER-USER -i connector-vm -m comment --comment connector -j ACCEPT
-A DOCKER-USER -j RETURN
";

#[test]
fn real_listing_round_trips() {
    let desired = desired_rules(&spec(NatMode::Routed), FilterChain::DockerUser);
    let listed = parse_listing(Table::Filter, REAL_DOCKER_USER).unwrap();
    // Each listed rule has exactly the arguments the agent passes to -I/-C/-D.
    for d in &desired[1..] {
        assert!(listed.contains(d), "{d} not listed as such");
    }
    let mut present = parse_listing(
        Table::Raw,
        "-A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT\n",
    )
    .unwrap();
    present.extend(listed);
    let d = diff(&desired, &present, "connector");
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn own_drop_shadows_nothing_but_foreign_drops_do() {
    let desired = desired_rules(&spec(NatMode::Routed), FilterChain::DockerUser);
    let with_first = |first: &str| {
        let mut present =
            parse_listing(Table::Filter, &format!("{first}\n{REAL_DOCKER_USER}")).unwrap();
        present.extend(
            parse_listing(
                Table::Raw,
                "-A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT\n",
            )
            .unwrap(),
        );
        diff(&desired, &present, "connector")
    };
    // Our own DROP ahead of our ACCEPTs: converged.
    assert!(with_first("").is_empty());
    // Another agent's DROP for its own tun cannot catch our packets...
    let other_agent = "-A DOCKER-USER -o cvm1234 -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment other -j DROP";
    let d = with_first(other_agent);
    // ...except tun-to-tun packets, which `-i connector-vm` also matches.
    assert_eq!(d.misplaced, vec![desired[1].clone()]);
    // Interfaces that exclude ours, by name, wildcard or negation.
    for first in [
        "-A DOCKER-USER -i eth0 -o docker0 -j DROP",
        "-A DOCKER-USER ! -o connector-vm -i br-1 -j REJECT --reject-with icmp-port-unreachable",
    ] {
        assert!(with_first(first).is_empty(), "{first}");
    }
    // Ones that catch our packets.
    for (first, shadowed) in [
        ("-A DOCKER-USER -j DROP", 3),
        ("-A DOCKER-USER -o connector+ -j DROP", 3),
        ("-A DOCKER-USER -i connector-vm -j DROP", 3),
        ("-A DOCKER-USER ! -o eth0 -j DROP", 3),
        ("-A DOCKER-USER -o docker0 -j DROP", 1),
        // Replies from containers come in from a bridge.
        ("-A DOCKER-USER -i docker+ -j DROP", 2),
        // A comment that reads like an interface option is not one.
        ("-A DOCKER-USER -m comment --comment -o -j DROP", 3),
    ] {
        assert_eq!(with_first(first).misplaced.len(), shadowed, "{first}");
    }
}

#[tokio::test]
async fn upgrade_replaces_the_old_accept_and_back() {
    let old = "-A DOCKER-USER -o connector-vm -m comment --comment connector -j ACCEPT";
    let filter = DOCKER_FILTER.replace(
        "-A DOCKER-USER -j RETURN\n",
        &format!(
            "-A DOCKER-USER -i connector-vm -m comment --comment connector -j ACCEPT\n{old}\n-A DOCKER-USER -j RETURN\n"
        ),
    );
    let mut tables = docker_tables();
    tables[0].1 = "-P PREROUTING ACCEPT\n-A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT\n";
    tables[2].1 = &filter;
    let nft = Fake::new("upgrade-nft", &tables);
    let legacy = Fake::new("upgrade-legacy", &[]);
    let bins = Binaries {
        legacy: legacy.cmd(),
        nft: nft.cmd(),
    };

    let fw = Firewall::detect(spec(NatMode::Routed), &bins)
        .await
        .unwrap();
    let report = fw.ensure().await.unwrap();
    assert_eq!(report.removed_stale.len(), 1);
    assert_eq!(
        report.removed_stale[0].rule.to_string(),
        format!("-t filter {old}")
    );
    assert_eq!(report.inserted.len(), 2);
    assert_eq!(
        nft.rules("filter")[3..],
        REAL_DOCKER_USER.lines().skip(1).collect::<Vec<_>>()[..]
    );
    assert!(!fw.ensure().await.unwrap().changed());

    // Allowing container connections again: back to the single ACCEPT.
    let fw = Firewall::detect(allowing(NatMode::Routed), &bins)
        .await
        .unwrap();
    let report = fw.ensure().await.unwrap();
    assert_eq!(report.removed_stale.len(), 2);
    assert_eq!(report.inserted.len(), 1);
    assert!(nft.table("filter").contains(old));
    assert!(!nft.table("filter").contains("ctstate"));
    assert!(fw.verify().await.unwrap().missing.is_empty());
}

#[tokio::test]
async fn two_agents_in_one_vm_settle() {
    let nft = Fake::new("two-nft", &docker_tables());
    let legacy = Fake::new("two-legacy", &[]);
    let bins = Binaries {
        legacy: legacy.cmd(),
        nft: nft.cmd(),
    };
    let a = Firewall::detect(spec(NatMode::Masquerade), &bins)
        .await
        .unwrap();
    let b = Firewall::detect(
        FirewallSpec {
            tun: "cvm1234".into(),
            host_tunnel_ip: Ipv4Addr::new(10, 254, 252, 1).into(),
            tag: "connector-lab".into(),
            ..spec(NatMode::Masquerade)
        },
        &bins,
    )
    .await
    .unwrap();
    a.ensure().await.unwrap();
    b.ensure().await.unwrap();
    // A's `-i` ACCEPT is behind B's DROP for B's tun (that DROP does catch
    // A-to-B tun traffic): moved once, after which both stay put.
    let report = a.ensure().await.unwrap();
    assert_eq!(report.reordered.len(), 1, "{report:?}");
    for _ in 0..2 {
        assert!(!a.ensure().await.unwrap().changed());
        assert!(!b.ensure().await.unwrap().changed());
    }
    assert!(a.verify().await.unwrap().missing.is_empty());
    assert!(b.verify().await.unwrap().missing.is_empty());
}

fn spec6(nat: NatMode) -> FirewallSpec {
    FirewallSpec {
        host_tunnel_ip: "fd5c:9a2e:83b1:fe53::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .into(),
        ..spec(nat)
    }
}

/// `ip6tables-nft -S` of each table next to Engine 20.10, which has no IPv6
/// firewall: policies only.
pub(crate) fn engine_20_ipv6_tables() -> Vec<(&'static str, &'static str)> {
    vec![
        ("raw", "-P PREROUTING ACCEPT\n-P OUTPUT ACCEPT\n"),
        ("mangle", "-P PREROUTING ACCEPT\n"),
        (
            "filter",
            "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n",
        ),
        ("nat", "-P POSTROUTING ACCEPT\n"),
    ]
}

#[tokio::test]
async fn ipv6_twins_follow_the_ipv4_variant_and_docker_user() {
    let legacy = Fake::new("v6-legacy", &empty_tables());
    let nft = Fake::new("v6-nft", &docker_tables());
    let legacy6 = Fake::new("v6-legacy6", &engine_20_ipv6_tables());
    let nft6 = Fake::new("v6-nft6", &engine_20_ipv6_tables());
    let v4 = Firewall::detect(
        spec(NatMode::Masquerade),
        &Binaries {
            legacy: legacy.cmd(),
            nft: nft.cmd(),
        },
    )
    .await
    .unwrap();
    let v6 = v4
        .twin(
            spec6(NatMode::Masquerade),
            &Binaries {
                legacy: legacy6.cmd(),
                nft: nft6.cmd(),
            },
        )
        .unwrap();
    assert_eq!((v6.backend(), v6.family()), (Backend::Nft, Family::V6));
    assert_eq!(v6.reason(), "the variant IPv4 rules use");

    // No IPv6 DOCKER-USER: the filter rules go at the top of FORWARD.
    let report = v6.ensure().await.unwrap();
    assert_eq!(report.chain, FilterChain::Forward);
    assert_eq!(report.inserted.len(), 5);
    assert_eq!(
        nft6.rules("filter"),
        [
            "-A FORWARD -o connector-vm -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment connector -j DROP",
            "-A FORWARD -o connector-vm -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment connector -j ACCEPT",
            "-A FORWARD -i connector-vm -m comment --comment connector -j ACCEPT",
        ]
    );
    assert_eq!(
        nft6.rules("nat"),
        ["-A POSTROUTING -s fd5c:9a2e:83b1:fe53::1/128 ! -o connector-vm -m comment --comment connector -j MASQUERADE"]
    );
    assert_eq!(
        nft6.rules("raw"),
        ["-A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT"]
    );
    // The other variant is never run for IPv6, and IPv4's tables are untouched.
    assert_eq!(legacy6.calls(), "");
    assert_eq!(nft.table("filter"), DOCKER_FILTER);
    let found = v6.verify().await.unwrap();
    assert_eq!((found.chain, found.wanted), (FilterChain::Forward, 5));
    assert!(found.missing.is_empty());
    assert!(!v6.ensure().await.unwrap().changed());

    // The engine gains an IPv6 firewall (restarted with ip6tables): the
    // rules move to its DOCKER-USER, none left behind in FORWARD.
    let filter = fs::read_to_string(nft6.dir.join("filter")).unwrap();
    fs::write(
        nft6.dir.join("filter"),
        format!("{filter}-N DOCKER-USER\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\n"),
    )
    .unwrap();
    let found = v6.verify().await.unwrap();
    assert_eq!(
        (found.chain, found.missing.len()),
        (FilterChain::DockerUser, 3)
    );
    let report = v6.ensure().await.unwrap();
    assert_eq!(report.chain, FilterChain::DockerUser);
    assert_eq!((report.removed_stale.len(), report.inserted.len()), (3, 3));
    assert!(nft6
        .rules("filter")
        .iter()
        .all(|r| !r.contains("FORWARD -o")));
    assert!(!v6.ensure().await.unwrap().changed());

    let removed = v6.remove().await.unwrap();
    assert_eq!(removed.len(), 5);
    assert!(nft6.rules("raw").is_empty() && nft6.rules("nat").is_empty());
    assert_eq!(
        nft6.rules("filter"),
        ["-A FORWARD -j DOCKER-USER", "-A DOCKER-USER -j RETURN"]
    );
}

#[tokio::test]
async fn ipv6_without_ip6tables_fails_alone() {
    let nft = Fake::new("no6-nft", &docker_tables());
    let legacy = Fake::new("no6-legacy", &[]);
    let v4 = Firewall::detect(
        spec(NatMode::Routed),
        &Binaries {
            legacy: legacy.cmd(),
            nft: nft.cmd(),
        },
    )
    .await
    .unwrap();
    let missing = Binaries {
        legacy: IptablesCmd::from_str("/nonexistent/ip6tables-legacy").unwrap(),
        nft: IptablesCmd::from_str("/nonexistent/ip6tables-nft").unwrap(),
    };
    let v6 = v4.twin(spec6(NatMode::Routed), &missing).unwrap();
    let err = v6.ensure().await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        err.to_string()
            .starts_with("could not run `/nonexistent/ip6tables-nft -w 10 -t filter -S`"),
        "{err}"
    );
    assert!(v6.verify().await.unwrap_err().is_not_found());
    // IPv4 is not affected.
    assert_eq!(v4.ensure().await.unwrap().inserted.len(), 4);
    assert!(v4.verify().await.unwrap().missing.is_empty());
    // A twin's spec is checked like any other.
    let mut bad = spec6(NatMode::Routed);
    bad.tag = "two words".into();
    assert!(matches!(
        v4.twin(bad, &missing),
        Err(FirewallError::Spec(_))
    ));
}

/// A network namespace of its own, deleted on drop (also when a test fails).
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("cnv6{}", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} failed (needs root)");
        Netns(name)
    }

    /// `program` run inside the namespace.
    fn cmd(&self, program: &str) -> IptablesCmd {
        IptablesCmd {
            program: "ip".into(),
            pre_args: vec![
                "netns".into(),
                "exec".into(),
                self.0.clone(),
                program.into(),
            ],
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

async fn run_in(ipt: &IptablesCmd, args: &str) -> String {
    let args: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
    ipt.run(&args).await.unwrap()
}

/// The real iptables and ip6tables (both variants) in a throw-away network
/// namespace: Docker's IPv4 chains in one variant and, as next to Engine
/// 20.10, no IPv6 firewall at all. Run as root with
/// `cargo test -p connector-agent -- --ignored real_`.
#[tokio::test]
#[ignore = "needs root, ip netns and both iptables variants"]
async fn real_ip6tables_in_a_namespace() {
    for variant in ["nft", "legacy"] {
        let ns = Netns::new();
        let bins = |fam: &str| Binaries {
            legacy: ns.cmd(&format!("{fam}-legacy")),
            nft: ns.cmd(&format!("{fam}-nft")),
        };
        let (v4_bins, v6_bins) = (bins("iptables"), bins("ip6tables"));
        let backend = if variant == "nft" {
            Backend::Nft
        } else {
            Backend::Legacy
        };
        let ipt = v4_bins.get(backend);
        for step in [
            "-N DOCKER",
            "-N DOCKER-USER",
            "-A FORWARD -j DOCKER-USER",
            "-A DOCKER-USER -j RETURN",
        ] {
            run_in(ipt, step).await;
        }
        let v4 = Firewall::detect(spec(NatMode::Masquerade), &v4_bins)
            .await
            .unwrap();
        assert_eq!(v4.backend(), backend);
        let v6 = v4.twin(spec6(NatMode::Masquerade), &v6_bins).unwrap();
        let ip6 = v6_bins.get(backend);

        assert_eq!(v4.ensure().await.unwrap().inserted.len(), 5);
        let report = v6.ensure().await.unwrap();
        assert_eq!(
            (report.chain, report.inserted.len()),
            (FilterChain::Forward, 5)
        );
        let listed = format!(
            "{}{}{}",
            run_in(ip6, "-t raw -S").await,
            run_in(ip6, "-t filter -S").await,
            run_in(ip6, "-t nat -S").await
        );
        println!("ip6tables-{variant} -S after ensure:\n{listed}");
        let rules: Vec<&str> = listed.lines().filter(|l| l.starts_with("-A")).collect();
        assert_eq!(
            rules,
            [
                "-A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT",
                "-A FORWARD -o connector-vm -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment connector -j DROP",
                "-A FORWARD -o connector-vm -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment connector -j ACCEPT",
                "-A FORWARD -i connector-vm -m comment --comment connector -j ACCEPT",
                "-A POSTROUTING -s fd5c:9a2e:83b1:fe53::1/128 ! -o connector-vm -m comment --comment connector -j MASQUERADE",
            ]
        );
        assert!(v6.verify().await.unwrap().missing.is_empty());
        assert!(!v6.ensure().await.unwrap().changed());
        // The other variant's IPv6 tables were left alone.
        let other = v6_bins.get(match backend {
            Backend::Nft => Backend::Legacy,
            Backend::Legacy => Backend::Nft,
        });
        assert!(!run_in(other, "-t filter -S").await.contains("connector"));

        // A rule deleted behind the agent's back comes back, once.
        run_in(ip6, "-t raw -F PREROUTING").await;
        assert_eq!(v6.ensure().await.unwrap().inserted.len(), 1);

        // The engine gains an IPv6 DOCKER-USER: the filter rules move there.
        for step in [
            "-N DOCKER-USER",
            "-I FORWARD 1 -j DOCKER-USER",
            "-A DOCKER-USER -j RETURN",
        ] {
            run_in(ip6, step).await;
        }
        let report = v6.ensure().await.unwrap();
        assert_eq!(report.chain, FilterChain::DockerUser);
        assert_eq!((report.removed_stale.len(), report.inserted.len()), (3, 3));
        let filter = run_in(ip6, "-t filter -S").await;
        println!("ip6tables-{variant} -t filter -S with DOCKER-USER:\n{filter}");
        assert_eq!(filter.matches("-A DOCKER-USER -").count(), 4, "{filter}");
        assert!(!filter.contains("-A FORWARD -i connector-vm"), "{filter}");

        // Removal leaves no tagged rule in either family.
        assert_eq!(v6.remove().await.unwrap().len(), 5);
        assert_eq!(v4.remove().await.unwrap().len(), 5);
        for ipt in [ip6, ipt] {
            for table in ["raw", "filter", "nat"] {
                let text = run_in(ipt, &format!("-t {table} -S")).await;
                assert!(!text.contains("connector"), "{text}");
            }
        }
    }
}
