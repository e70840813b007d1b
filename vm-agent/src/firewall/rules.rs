//! Sans-IO core: which rules we want, how `iptables -S` output reads, and what
//! has to change to get from one to the other. Nothing here runs a process.

use std::fmt;
use std::net::IpAddr;

/// Tables the agent touches or cleans up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Raw,
    Mangle,
    Filter,
    Nat,
}

impl Table {
    /// Tables in which `ensure` installs rules (and so looks for stale ones).
    pub const MANAGED: [Table; 3] = [Table::Raw, Table::Filter, Table::Nat];
    /// Tables swept by a full cleanup; mangle is included for rules left by
    /// other versions of the agent.
    pub const ALL: [Table; 4] = [Table::Raw, Table::Mangle, Table::Filter, Table::Nat];

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Raw => "raw",
            Table::Mangle => "mangle",
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub use connector_protocol::agent_args::NatMode;

/// IPv4 (iptables) or IPv6 (ip6tables): the same rules, each family in its
/// own tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Prefix length of one host address.
    pub fn host_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    /// As people write it.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The sysctl that must be 1 for the VM to route this family to
    /// containers.
    pub fn forwarding_sysctl(self) -> &'static str {
        match self {
            Family::V4 => "net.ipv4.ip_forward",
            Family::V6 => "net.ipv6.conf.all.forwarding",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The filter chain that holds the agent's filter rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FilterChain {
    /// Docker's chain for user rules, evaluated ahead of all of Docker's own.
    DockerUser,
    /// The top of FORWARD, for a table without a live DOCKER-USER (engines
    /// whose IPv6 support predates it, or run without `ip6tables`). The rules
    /// mean the same there: accept from the tun, only replies towards it.
    Forward,
}

impl FilterChain {
    pub fn as_str(self) -> &'static str {
        match self {
            FilterChain::DockerUser => "DOCKER-USER",
            FilterChain::Forward => "FORWARD",
        }
    }
}

impl fmt::Display for FilterChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the rule set of one family depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallSpec {
    /// Name of the agent's tun interface in the VM.
    pub tun: String,
    /// The host (Mac) end of the tunnel: source of all routed traffic. Its
    /// family is the family of the rules.
    pub host_tunnel_ip: IpAddr,
    pub nat: NatMode,
    /// Comment put on every rule; identifies the rules this agent owns.
    pub tag: String,
    /// Let containers open connections to the host through the tunnel. Off:
    /// only replies (and their ICMP errors) leave the VM through the tun.
    pub allow_container_connections: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("invalid firewall tag {0:?}: use 1-64 characters from A-Z a-z 0-9 . _ : - (not starting with - or .)")]
    Tag(String),
    #[error("invalid tun interface name {0:?}: use 1-15 characters from A-Z a-z 0-9 . _ - (not starting with - or .)")]
    Interface(String),
}

fn token_ok(s: &str, max: usize, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && !s.starts_with(['-', '.'])
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' || extra.contains(&c)
        })
}

/// Tags and interface names become iptables arguments and are matched back in
/// `-S` output, so keep them to characters iptables prints unquoted.
pub fn validate_tag(tag: &str) -> Result<(), SpecError> {
    if token_ok(tag, 64, &[':']) {
        Ok(())
    } else {
        Err(SpecError::Tag(tag.to_owned()))
    }
}

impl FirewallSpec {
    pub fn family(&self) -> Family {
        Family::of(self.host_tunnel_ip)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        validate_tag(&self.tag)?;
        // IFNAMSIZ is 16 including the NUL.
        if !token_ok(&self.tun, 15, &[]) {
            return Err(SpecError::Interface(self.tun.clone()));
        }
        Ok(())
    }
}

/// One iptables rule: table, chain and the rule specification (matches and
/// target), in the order `iptables -S` prints them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub table: Table,
    pub chain: String,
    pub args: Vec<String>,
}

impl Rule {
    fn new(table: Table, chain: &str, args: &[&str]) -> Rule {
        Rule {
            table,
            chain: chain.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// True if the rule carries `-m comment --comment <tag>`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.args
            .windows(2)
            .any(|w| w[0] == "--comment" && w[1] == tag)
    }

    /// The rule's target (`-j X`), if any.
    pub fn target(&self) -> Option<&str> {
        self.args
            .windows(2)
            .find(|w| w[0] == "-j")
            .map(|w| w[1].as_str())
    }

    fn with_op(&self, op: &str, position: Option<&str>) -> Vec<String> {
        let mut v = vec![
            "-t".to_owned(),
            self.table.as_str().to_owned(),
            op.to_owned(),
            self.chain.clone(),
        ];
        v.extend(position.map(str::to_owned));
        v.extend(self.args.iter().cloned());
        v
    }

    /// Arguments for `iptables -C`.
    pub fn check_args(&self) -> Vec<String> {
        self.with_op("-C", None)
    }

    /// Arguments for inserting the rule at the top of its chain.
    pub fn insert_args(&self) -> Vec<String> {
        self.with_op("-I", Some("1"))
    }

    /// Arguments for deleting (the first copy of) the rule.
    pub fn delete_args(&self) -> Vec<String> {
        self.with_op("-D", None)
    }

    /// Option groups (`["!", "-o", "x"]`, `["-j", "ACCEPT"]`) sorted, so that
    /// two spellings of the same rule compare equal whatever the option order.
    fn canonical(&self) -> (Table, &str, Vec<Vec<&str>>) {
        let mut groups: Vec<Vec<&str>> = Vec::new();
        let mut negate_next = false;
        for arg in &self.args {
            let a = arg.as_str();
            if a == "!" {
                negate_next = true;
                continue;
            }
            if a.starts_with('-') || groups.is_empty() {
                let mut g = Vec::with_capacity(3);
                if negate_next {
                    g.push("!");
                }
                g.push(a);
                groups.push(g);
            } else if let Some(last) = groups.last_mut() {
                if negate_next {
                    // Negation of a value (old style `-s ! addr`).
                    last.push("!");
                }
                last.push(a);
            }
            negate_next = false;
        }
        groups.sort();
        (self.table, self.chain.as_str(), groups)
    }

    /// Same table, chain and rule specification.
    pub fn same_as(&self, other: &Rule) -> bool {
        self.canonical() == other.canonical()
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-t {} -A {}", self.table, self.chain)?;
        for a in &self.args {
            write!(f, " {}", shell_quote(a))?;
        }
        Ok(())
    }
}

/// Quote an argument for display in logs and error messages.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+!@%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Conntrack states of replies, spelled as `iptables -S` prints them (it
/// normalises `ESTABLISHED,RELATED` to this order).
const REPLIES: &str = "RELATED,ESTABLISHED";

/// The rules the agent wants, in the order they are inserted, with the
/// filter rules in `chain`. Both families get the same rules: Docker gives
/// every IPv4 drop an IPv6 twin.
pub fn desired_rules(spec: &FirewallSpec, chain: FilterChain) -> Vec<Rule> {
    let tun = spec.tun.as_str();
    let tag = spec.tag.as_str();
    let filter = chain.as_str();
    // Docker 28.2+ drops packets to container IPs in raw PREROUTING unless they
    // come from the bridge; an ACCEPT in raw ends only that table...
    let mut rules = vec![
        Rule::new(
            Table::Raw,
            "PREROUTING",
            &["-i", tun, "-m", "comment", "--comment", tag, "-j", "ACCEPT"],
        ),
        // ...so filter needs its own ACCEPT ahead of Docker's per-bridge DROPs.
        Rule::new(
            Table::Filter,
            filter,
            &["-i", tun, "-m", "comment", "--comment", tag, "-j", "ACCEPT"],
        ),
    ];
    // Towards the tun, replies need an ACCEPT too (Docker drops everything
    // leaving an `--internal` network). New connections from containers to the
    // host are dropped unless allowed: the two rules match disjoint packets, so
    // the order `ensure` leaves them in does not matter.
    if spec.allow_container_connections {
        rules.push(Rule::new(
            Table::Filter,
            filter,
            &["-o", tun, "-m", "comment", "--comment", tag, "-j", "ACCEPT"],
        ));
    } else {
        for (negate, target) in [(None, "ACCEPT"), (Some("!"), "DROP")] {
            let mut args = vec!["-o", tun, "-m", "conntrack"];
            args.extend(negate);
            args.extend(["--ctstate", REPLIES, "-m", "comment", "--comment", tag]);
            args.extend(["-j", target]);
            rules.push(Rule::new(Table::Filter, filter, &args));
        }
    }
    if spec.nat == NatMode::Masquerade {
        let src = format!("{}/{}", spec.host_tunnel_ip, spec.family().host_prefix());
        rules.push(Rule::new(
            Table::Nat,
            "POSTROUTING",
            &[
                "-s",
                &src,
                "!",
                "-o",
                tun,
                "-m",
                "comment",
                "--comment",
                tag,
                "-j",
                "MASQUERADE",
            ],
        ));
    }
    rules
}

/// Most `iptables -S` output read for one table: a Docker VM's tables hold a
/// few hundred kB even with hundreds of containers.
pub const MAX_LISTING: usize = 16 << 20;
/// How much of an unparseable line an error message quotes.
const QUOTED_LINE: usize = 200;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("cannot parse line {line_no} of `iptables -t {table} -S` output: {reason}: {line:?}")]
    Line {
        table: Table,
        line_no: usize,
        line: String,
        reason: &'static str,
    },
    #[error("`iptables -t {table} -S` printed {bytes} bytes, more than the {MAX_LISTING} the agent reads")]
    TooLong { table: Table, bytes: usize },
}

/// Refuse a listing too big to be a Docker VM's.
pub fn check_listing_size(table: Table, text: &str) -> Result<(), ParseError> {
    if text.len() > MAX_LISTING {
        return Err(ParseError::TooLong {
            table,
            bytes: text.len(),
        });
    }
    Ok(())
}

/// The words of the rule at the start of `text`, and how many bytes of
/// `text` it spans (its newline included). iptables double-quotes arguments
/// holding anything but `A-Za-z0-9_-` (comments) and backslash-escapes `"`,
/// `\` and `'` inside; a comment with a newline spans lines. Other words are
/// printed raw, separated by spaces, and may contain `"` or non-ASCII spaces
/// (interface names can), so only a `"` that starts a word opens a quote and
/// only ASCII whitespace separates words.
fn split_words(text: &str) -> (Result<Vec<String>, &'static str>, usize) {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\n' => {
                words.extend(cur.take());
                return (Ok(words), i + 1);
            }
            c if c.is_ascii_whitespace() => words.extend(cur.take()),
            '"' if cur.is_none() => {
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return (Err("unterminated quote"), text.len()),
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            None => return (Err("dangling backslash"), text.len()),
                            Some((_, e)) => word.push(e),
                        },
                        Some((_, o)) => word.push(o),
                    }
                }
                cur = Some(word);
            }
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    (Ok(words), text.len())
}

fn quote_line(line: &str) -> String {
    match line.char_indices().nth(QUOTED_LINE) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

/// Every rule (`-A` line) of one table's `iptables -t <table> -S` output, in
/// chain order. Policy (`-P`), chain (`-N`) and warning (`#`) lines are skipped.
pub fn parse_listing(table: Table, text: &str) -> Result<Vec<Rule>, ParseError> {
    check_listing_size(table, text)?;
    let mut rules = Vec::new();
    let mut rest = text;
    let mut line_no = 1;
    while !rest.is_empty() {
        let head = rest.trim_start_matches(|c: char| c != '\n' && c.is_ascii_whitespace());
        // Skipped as text: a warning is prose and a chain name may hold a `"`.
        let (words, used) =
            if head.starts_with('#') || head.starts_with("-P ") || head.starts_with("-N ") {
                (
                    Ok(Vec::new()),
                    rest.find('\n').map_or(rest.len(), |i| i + 1),
                )
            } else {
                split_words(rest)
            };
        let (raw, first) = (&rest[..used], line_no);
        rest = &rest[used..];
        line_no += raw.matches('\n').count();
        let err = |reason| ParseError::Line {
            table,
            line_no: first,
            line: quote_line(raw.trim()),
            reason,
        };
        let mut words = words.map_err(err)?;
        if words.is_empty() {
            continue;
        }
        if words.len() < 2 || words[0] != "-A" {
            return Err(err("expected `-A <chain> ...`"));
        }
        let args = words.split_off(2);
        rules.push(Rule {
            table,
            chain: words.swap_remove(1),
            args,
        });
    }
    Ok(rules)
}

/// Only the rules carrying `tag`.
pub fn tagged<'a>(rules: &'a [Rule], tag: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
    rules.iter().filter(move |r| r.has_tag(tag))
}

/// What `ensure` has to do to turn the present rules into the desired ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleDiff {
    /// Desired rules not present at all.
    pub missing: Vec<Rule>,
    /// Tagged rules that are not desired (other tun name, other mode...), one
    /// entry per distinct rule; copies are removed by `-D` until `-C` fails.
    pub stale: Vec<Rule>,
    /// Extra copies of desired rules, one entry per surplus copy.
    pub duplicates: Vec<Rule>,
    /// Desired rules present but behind an untagged DROP/REJECT in the same
    /// chain (e.g. inserted by a Docker restart) that can catch their packets,
    /// so they no longer take effect.
    pub misplaced: Vec<Rule>,
}

impl RuleDiff {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.stale.is_empty()
            && self.duplicates.is_empty()
            && self.misplaced.is_empty()
    }
}

/// The interface a rule matches with `opt` (`-i`/`-o`), and whether negated.
/// `-S` prints interfaces before any `-p`, `-m` or target, so only that head
/// is searched (a comment's text may well be `-o`).
fn interface<'a>(rule: &'a Rule, opt: &str) -> Option<(bool, &'a str)> {
    let i = rule
        .args
        .iter()
        .take_while(|a| !matches!(a.as_str(), "-p" | "-m" | "-j" | "-g"))
        .position(|a| a == opt)?;
    let negated = i > 0 && rule.args[i - 1] == "!";
    Some((negated, rule.args.get(i + 1)?.as_str()))
}

/// iptables' interface match: a trailing `+` matches any name with that prefix.
fn interface_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// `blocker` is a DROP/REJECT that can catch packets `rule` is there for.
/// One that names another interface cannot: without this, two agents in one
/// VM would each see its rules behind the other's DROP and keep moving them.
fn shadows(blocker: &Rule, rule: &Rule) -> bool {
    let blocks = matches!(blocker.target(), Some("DROP" | "REJECT"));
    blocks && !["-i", "-o"].iter().any(|opt| excludes(blocker, rule, opt))
}

/// `blocker`'s `opt` interface match never holds for `rule`'s interface.
fn excludes(blocker: &Rule, rule: &Rule, opt: &str) -> bool {
    match (interface(rule, opt), interface(blocker, opt)) {
        (Some((false, ours)), Some((negated, theirs))) if !ours.ends_with('+') => {
            interface_matches(theirs, ours) == negated
        }
        _ => false,
    }
}

/// Compare desired rules with what a listing of the managed tables shows.
/// `present` must hold every rule of those tables in listing order (tagged or not),
/// so that placement can be judged.
pub fn diff(desired: &[Rule], present: &[Rule], tag: &str) -> RuleDiff {
    let mut out = RuleDiff::default();
    let mut seen = vec![0usize; desired.len()];
    for (pos, rule) in present.iter().enumerate() {
        if !rule.has_tag(tag) {
            continue;
        }
        match desired.iter().position(|d| d.same_as(rule)) {
            Some(i) => {
                seen[i] += 1;
                if seen[i] > 1 {
                    out.duplicates.push(rule.clone());
                } else {
                    let shadowed = present[..pos].iter().any(|p| {
                        p.table == rule.table
                            && p.chain == rule.chain
                            && !p.has_tag(tag)
                            && shadows(p, rule)
                    });
                    if shadowed {
                        out.misplaced.push(desired[i].clone());
                    }
                }
            }
            None => {
                if !out.stale.iter().any(|s: &Rule| s.same_as(rule)) {
                    out.stale.push(rule.clone());
                }
            }
        }
    }
    for (i, d) in desired.iter().enumerate() {
        if seen[i] == 0 {
            out.missing.push(d.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn spec(nat: NatMode) -> FirewallSpec {
        FirewallSpec {
            tun: "connector-vm".into(),
            host_tunnel_ip: Ipv4Addr::new(10, 254, 253, 1).into(),
            nat,
            tag: "connector".into(),
            allow_container_connections: false,
        }
    }

    fn lines(rules: &[Rule]) -> Vec<String> {
        rules.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn desired_masquerade() {
        assert_eq!(
            lines(&desired_rules(&spec(NatMode::Masquerade), FilterChain::DockerUser)),
            [
                "-t raw -A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT",
                "-t filter -A DOCKER-USER -i connector-vm -m comment --comment connector -j ACCEPT",
                "-t filter -A DOCKER-USER -o connector-vm -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment connector -j ACCEPT",
                "-t filter -A DOCKER-USER -o connector-vm -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment connector -j DROP",
                "-t nat -A POSTROUTING -s 10.254.253.1/32 ! -o connector-vm -m comment --comment connector -j MASQUERADE",
            ]
        );
    }

    fn spec6(nat: NatMode) -> FirewallSpec {
        FirewallSpec {
            host_tunnel_ip: "fd5c:9a2e:83b1:fe53::1".parse::<Ipv6Addr>().unwrap().into(),
            ..spec(nat)
        }
    }

    #[test]
    fn desired_ipv6_twins() {
        let v6 = desired_rules(&spec6(NatMode::Masquerade), FilterChain::DockerUser);
        assert_eq!(
            lines(&v6),
            [
                "-t raw -A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT",
                "-t filter -A DOCKER-USER -i connector-vm -m comment --comment connector -j ACCEPT",
                "-t filter -A DOCKER-USER -o connector-vm -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment connector -j ACCEPT",
                "-t filter -A DOCKER-USER -o connector-vm -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment connector -j DROP",
                "-t nat -A POSTROUTING -s fd5c:9a2e:83b1:fe53::1/128 ! -o connector-vm -m comment --comment connector -j MASQUERADE",
            ]
        );
        assert_eq!(spec6(NatMode::Routed).family(), Family::V6);
        // Apart from the host address, the twins are the IPv4 rules.
        let v4 = desired_rules(&spec(NatMode::Masquerade), FilterChain::DockerUser);
        assert_eq!(v4[..4], v6[..4]);
        assert_eq!(
            desired_rules(&spec6(NatMode::Routed), FilterChain::DockerUser),
            v6[..4]
        );
    }

    #[test]
    fn forward_chain_holds_the_same_filter_rules() {
        for nat in [NatMode::Masquerade, NatMode::Routed] {
            let in_user = desired_rules(&spec6(nat), FilterChain::DockerUser);
            let in_forward = desired_rules(&spec6(nat), FilterChain::Forward);
            assert_eq!(in_user.len(), in_forward.len());
            for (u, f) in in_user.iter().zip(&in_forward) {
                if u.table == Table::Filter {
                    assert_eq!(
                        (u.chain.as_str(), f.chain.as_str()),
                        ("DOCKER-USER", "FORWARD")
                    );
                    assert_eq!(u.args, f.args);
                } else {
                    assert_eq!(u, f);
                }
            }
        }
        // Rules left in one chain are stale once the other is wanted.
        let in_forward = desired_rules(&spec6(NatMode::Routed), FilterChain::Forward);
        let d = diff(
            &desired_rules(&spec6(NatMode::Routed), FilterChain::DockerUser),
            &in_forward,
            "connector",
        );
        assert_eq!(d.stale, in_forward[1..].to_vec());
        assert_eq!(d.missing.len(), 3);
    }

    /// Lines as `ip6tables-nft -S` and `ip6tables-legacy -S` (1.8.9,
    /// identical) print them in a network namespace: the agent's IPv6 rules
    /// with the filter ones in FORWARD, as on an engine without IPv6
    /// DOCKER-USER (see `real_ip6tables_in_a_namespace`), beside rules shaped
    /// like Docker's.
    const REAL_V6: [(Table, &str); 3] = [
        (
            Table::Raw,
            "-P PREROUTING ACCEPT
-P OUTPUT ACCEPT
-A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT
-A PREROUTING -d fd42:1::2/128 ! -i br-1 -j DROP
",
        ),
        (
            Table::Filter,
            "-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
-A FORWARD -o connector-vm -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment connector -j DROP
-A FORWARD -o connector-vm -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment connector -j ACCEPT
-A FORWARD -i connector-vm -m comment --comment connector -j ACCEPT
-A FORWARD -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT
",
        ),
        (
            Table::Nat,
            "-P PREROUTING ACCEPT
-P INPUT ACCEPT
-P OUTPUT ACCEPT
-P POSTROUTING ACCEPT
-A POSTROUTING -s fd5c:9a2e:83b1:fe53::1/128 ! -o connector-vm -m comment --comment connector -j MASQUERADE
-A POSTROUTING -s fd00:0:0:1::1/128 -d fd00:1::/64 -m comment --comment \"x y\" -j MASQUERADE
",
        ),
    ];

    #[test]
    fn real_ipv6_listing_is_converged() {
        let present: Vec<Rule> = REAL_V6
            .iter()
            .flat_map(|(t, text)| parse_listing(*t, text).unwrap())
            .collect();
        assert_eq!(present.len(), 8);
        assert_eq!(
            present[7].args,
            [
                "-s",
                "fd00:0:0:1::1/128",
                "-d",
                "fd00:1::/64",
                "-m",
                "comment",
                "--comment",
                "x y",
                "-j",
                "MASQUERADE"
            ]
        );
        let desired = desired_rules(&spec6(NatMode::Masquerade), FilterChain::Forward);
        let d = diff(&desired, &present, "connector");
        assert!(d.is_empty(), "{d:?}");
        // The same listing does not satisfy the IPv4 rules (other source)...
        let d = diff(
            &desired_rules(&spec(NatMode::Masquerade), FilterChain::Forward),
            &present,
            "connector",
        );
        assert_eq!(
            lines(&d.missing),
            [lines(&desired_rules(
                &spec(NatMode::Masquerade),
                FilterChain::Forward
            ))[4]
                .clone()]
        );
        assert_eq!(d.stale.len(), 1);
        // ...and Docker's raw drop for an IPv6 container shadows a rule behind it.
        let raw = "-A PREROUTING -d fd42:1::2/128 ! -i br-1 -j DROP\n\
                   -A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT\n";
        let mut moved = present[1..].to_vec();
        moved.extend(parse_listing(Table::Raw, raw).unwrap());
        assert_eq!(
            diff(&desired, &moved, "connector").misplaced,
            [desired[0].clone()]
        );
    }

    #[test]
    fn desired_routed_has_no_nat() {
        let rules = desired_rules(&spec(NatMode::Routed), FilterChain::DockerUser);
        assert_eq!(rules.len(), 4);
        assert!(rules.iter().all(|r| r.table != Table::Nat));
        assert!(rules.iter().all(|r| r.has_tag("connector")));
    }

    #[test]
    fn command_args() {
        let r = desired_rules(&spec(NatMode::Masquerade), FilterChain::DockerUser)
            .pop()
            .unwrap();
        assert_eq!(
            r.insert_args().join(" "),
            "-t nat -I POSTROUTING 1 -s 10.254.253.1/32 ! -o connector-vm -m comment --comment connector -j MASQUERADE"
        );
        assert_eq!(r.check_args()[..4], ["-t", "nat", "-C", "POSTROUTING"]);
        assert_eq!(r.delete_args()[2], "-D");
        assert_eq!(r.target(), Some("MASQUERADE"));
    }

    #[test]
    fn validation() {
        assert!(spec(NatMode::Routed).validate().is_ok());
        for bad in ["", "-x", "a b", "with\"quote", ".x", &"t".repeat(65)] {
            let mut s = spec(NatMode::Routed);
            s.tag = bad.to_owned();
            assert_eq!(s.validate(), Err(SpecError::Tag(bad.to_owned())), "{bad:?}");
        }
        let mut s = spec(NatMode::Routed);
        s.tun = "sixteen-chars-xx".into();
        assert!(matches!(s.validate(), Err(SpecError::Interface(_))));
        s.tun = "utun+".into();
        assert!(matches!(s.validate(), Err(SpecError::Interface(_))));
        assert!(validate_tag("connector:dev-1.2_x").is_ok());
    }

    #[test]
    fn nat_mode_parse() {
        assert_eq!("routed".parse::<NatMode>(), Ok(NatMode::Routed));
        assert_eq!(
            "masquerade".parse::<NatMode>().unwrap().to_string(),
            "masquerade"
        );
        assert!("snat".parse::<NatMode>().is_err());
    }

    // Shapes copied from real `iptables-nft -S` output on Debian 12 (1.8.9).
    const RAW: &str = "\
# Warning: iptables-legacy tables present, use iptables-legacy to see them
-P PREROUTING ACCEPT
-P OUTPUT ACCEPT
-A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT
-A PREROUTING -d 172.17.0.2/32 ! -i docker0 -j DROP
";

    #[test]
    fn parse_skips_policies_and_warnings() {
        let rules = parse_listing(Table::Raw, RAW).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].chain, "PREROUTING");
        assert_eq!(
            rules[0].args,
            [
                "-i",
                "connector-vm",
                "-m",
                "comment",
                "--comment",
                "connector",
                "-j",
                "ACCEPT"
            ]
        );
        assert!(rules[0].has_tag("connector"));
        assert!(!rules[1].has_tag("connector"));
        assert_eq!(tagged(&rules, "connector").count(), 1);
        // Round trip through Display for the unquoted case.
        assert_eq!(
            rules[1].to_string(),
            "-t raw -A PREROUTING -d 172.17.0.2/32 ! -i docker0 -j DROP"
        );
    }

    #[test]
    fn parse_quoted_comment() {
        let text = "-N DOCKER-USER\n-A DOCKER-USER -i x -m comment --comment \"with space \\\"q\\\" \\\\\" -j ACCEPT\n";
        let rules = parse_listing(Table::Filter, text).unwrap();
        assert_eq!(rules[0].args[5], "with space \"q\" \\");
        assert!(rules[0].has_tag("with space \"q\" \\"));
        // A tag that is only a prefix of the comment does not match.
        assert!(!rules[0].has_tag("with"));
    }

    /// `iptables-nft -S` and `iptables-legacy -S` (1.8.9, identical) for
    /// comments and an interface name that need care.
    const ODD: &str = "-N DOCKER-USER
-A DOCKER-USER -i x -m comment --comment \"connector:dev-1.2_x\" -j ACCEPT
-A DOCKER-USER -i x -m comment --comment \"with space \\\"q\\\" \\\\\" -j ACCEPT
-A DOCKER-USER -i x -m comment --comment \"it\\'s\" -j ACCEPT
-A DOCKER-USER -i x -m comment --comment \"nl
x\" -j ACCEPT
-A DOCKER-USER -i x -m comment --comment \"tab\tx\" -j ACCEPT
-A DOCKER-USER -i x -m comment --comment \"\" -j ACCEPT
-A DOCKER-USER -i a\"b -j ACCEPT
-A DOCKER-USER ! -o eth0 -j DROP
";

    #[test]
    fn parse_real_odd_spellings() {
        let rules = parse_listing(Table::Filter, ODD).unwrap();
        let comments: Vec<&str> = rules
            .iter()
            .filter_map(|r| r.args.get(5).map(String::as_str))
            .take(6)
            .collect();
        assert_eq!(
            comments,
            [
                "connector:dev-1.2_x",
                "with space \"q\" \\",
                "it's",
                "nl\nx",
                "tab\tx",
                ""
            ]
        );
        assert!(rules[0].has_tag("connector:dev-1.2_x"));
        assert_eq!(rules[6].args, ["-i", "a\"b", "-j", "ACCEPT"]);
        assert_eq!(rules[7].args, ["!", "-o", "eth0", "-j", "DROP"]);
        assert_eq!(rules.len(), 8);
        // Line numbers count the comment's line break.
        let e = parse_listing(Table::Filter, &format!("{ODD}-X x\n")).unwrap_err();
        assert!(matches!(e, ParseError::Line { line_no: 11, .. }), "{e}");
    }

    #[test]
    fn parse_errors() {
        let e = parse_listing(Table::Nat, "-P POSTROUTING ACCEPT\n-X foo\n").unwrap_err();
        assert!(matches!(e, ParseError::Line { line_no: 2, .. }), "{e:?}");
        assert!(e.to_string().contains("iptables -t nat -S"));
        let e =
            parse_listing(Table::Nat, "-A POSTROUTING -m comment --comment \"open").unwrap_err();
        assert!(
            matches!(
                e,
                ParseError::Line {
                    reason: "unterminated quote",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(parse_listing(Table::Nat, "-A").is_err());
        // The error quotes a bounded part of the line.
        let long = format!("-X {}\n", "y".repeat(10_000));
        let e = parse_listing(Table::Nat, &long).unwrap_err().to_string();
        assert!(e.len() < 400 && e.ends_with("…\""), "{e}");
        // And a listing no Docker VM prints is refused as such.
        let huge = "-P OUTPUT ACCEPT\n".repeat(MAX_LISTING / 16 + 1);
        assert_eq!(
            parse_listing(Table::Raw, &huge),
            Err(ParseError::TooLong {
                table: Table::Raw,
                bytes: huge.len()
            })
        );
    }

    fn present(listings: &[(Table, &str)]) -> Vec<Rule> {
        listings
            .iter()
            .flat_map(|(t, s)| parse_listing(*t, s).unwrap())
            .collect()
    }

    #[test]
    fn diff_empty_system_all_missing() {
        let desired = desired_rules(&spec(NatMode::Masquerade), FilterChain::DockerUser);
        let d = diff(
            &desired,
            &present(&[(Table::Raw, "-P PREROUTING ACCEPT\n")]),
            "connector",
        );
        assert_eq!(d.missing, desired);
        assert!(d.stale.is_empty() && d.duplicates.is_empty() && d.misplaced.is_empty());
    }

    #[test]
    fn diff_converged_is_empty() {
        let desired = desired_rules(&spec(NatMode::Masquerade), FilterChain::DockerUser);
        let p = present(&[
            (Table::Raw, RAW),
            (
                Table::Filter,
                "-N DOCKER-USER\n\
                 -A DOCKER-USER -o connector-vm -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment connector -j DROP\n\
                 -A DOCKER-USER -o connector-vm -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment connector -j ACCEPT\n\
                 -A DOCKER-USER -i connector-vm -m comment --comment connector -j ACCEPT\n\
                 -A DOCKER-USER -j RETURN\n",
            ),
            (
                Table::Nat,
                "-A POSTROUTING -s 10.254.253.1/32 ! -o connector-vm -m comment --comment connector -j MASQUERADE\n\
                 -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n",
            ),
        ]);
        let d = diff(&desired, &p, "connector");
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn diff_option_order_does_not_matter() {
        let desired = desired_rules(&spec(NatMode::Masquerade), FilterChain::DockerUser);
        let p = present(&[(
            Table::Nat,
            "-A POSTROUTING ! -o connector-vm -s 10.254.253.1/32 -j MASQUERADE -m comment --comment connector\n",
        )]);
        let d = diff(&desired, &p, "connector");
        assert_eq!(d.missing.len(), 4);
        assert!(d.stale.is_empty());
        // But negation is significant.
        let p = present(&[(
            Table::Nat,
            "-A POSTROUTING -s 10.254.253.1/32 -o connector-vm -m comment --comment connector -j MASQUERADE\n",
        )]);
        let d = diff(&desired, &p, "connector");
        assert_eq!(d.stale.len(), 1);
        assert_eq!(d.missing.len(), 5);
    }

    #[test]
    fn diff_stale_from_other_tun_and_mode() {
        // An earlier run used tun "old-tun" in masquerade mode; now routed on connector-vm.
        let desired = desired_rules(&spec(NatMode::Routed), FilterChain::DockerUser);
        let p = present(&[
            (
                Table::Raw,
                "-A PREROUTING -i old-tun -m comment --comment connector -j ACCEPT\n\
                 -A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT\n",
            ),
            (
                Table::Nat,
                "-A POSTROUTING -s 10.254.253.1/32 ! -o old-tun -m comment --comment connector -j MASQUERADE\n\
                 -A POSTROUTING -s 10.254.253.1/32 ! -o old-tun -m comment --comment connector -j MASQUERADE\n\
                 -A POSTROUTING -s 10.9.9.1/32 ! -o other -m comment --comment other-tag -j MASQUERADE\n",
            ),
        ]);
        let d = diff(&desired, &p, "connector");
        assert_eq!(
            lines(&d.stale),
            [
                "-t raw -A PREROUTING -i old-tun -m comment --comment connector -j ACCEPT",
                "-t nat -A POSTROUTING -s 10.254.253.1/32 ! -o old-tun -m comment --comment connector -j MASQUERADE",
            ]
        );
        assert_eq!(d.missing, desired[1..].to_vec());
        assert!(d.duplicates.is_empty());
    }

    #[test]
    fn diff_duplicates() {
        let desired = desired_rules(&spec(NatMode::Routed), FilterChain::DockerUser);
        let line = "-A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT\n";
        let p = present(&[(Table::Raw, &line.repeat(3))]);
        let d = diff(&desired, &p, "connector");
        assert_eq!(d.duplicates, vec![desired[0].clone(), desired[0].clone()]);
        assert_eq!(d.missing.len(), 3);
    }

    #[test]
    fn diff_misplaced_behind_drop() {
        let desired = desired_rules(&spec(NatMode::Routed), FilterChain::DockerUser);
        let p = present(&[(
            Table::Raw,
            "-A PREROUTING -d 172.17.0.2/32 ! -i docker0 -j DROP\n\
             -A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT\n",
        )]);
        let d = diff(&desired, &p, "connector");
        assert_eq!(d.misplaced, vec![desired[0].clone()]);
        // A DROP in another chain or an untagged ACCEPT in front does not count.
        let p = present(&[
            (
                Table::Filter,
                "-A FORWARD -j DROP\n-A DOCKER-USER -i foo -j ACCEPT\n",
            ),
            (
                Table::Filter,
                "-A DOCKER-USER -i connector-vm -m comment --comment connector -j ACCEPT\n",
            ),
        ]);
        let d = diff(&desired, &p, "connector");
        assert!(d.misplaced.is_empty());
        assert_eq!(d.missing.len(), 3);
        assert!(!d.missing.contains(&desired[1]));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// How iptables prints a string option such as a comment
        /// (`xtables_save_string`): bare when only `A-Za-z0-9_-`, else
        /// double-quoted with `"`, `\` and `'` backslash-escaped.
        fn save_string(s: &str) -> String {
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
            {
                return s.to_owned();
            }
            let mut out = String::from('"');
            for c in s.chars() {
                if "\"\\'".contains(c) {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
            out
        }

        /// One `-S` line for a rule whose words are printed raw or, where
        /// `saved`, as a string option.
        fn save_line(chain: &str, words: &[(bool, String)]) -> String {
            let mut line = format!("-A {chain}");
            for (saved, w) in words {
                line.push(' ');
                line.push_str(&if *saved { save_string(w) } else { w.clone() });
            }
            line
        }

        /// `-S` spelling of one of our rules: only the comment is a string option.
        fn save_rule(rule: &Rule) -> String {
            let words: Vec<(bool, String)> = rule
                .args
                .iter()
                .enumerate()
                .map(|(i, a)| (i > 0 && rule.args[i - 1] == "--comment", a.clone()))
                .collect();
            save_line(&rule.chain, &words)
        }

        fn table() -> impl Strategy<Value = Table> {
            prop::sample::select(Table::ALL.to_vec())
        }

        /// Characters that matter to the parser first, then any.
        fn tricky_char() -> impl Strategy<Value = char> {
            prop_oneof![
                3 => prop::sample::select(vec!['"', '\\', '\'', '\n', '\t', ' ', '#', '-', '!', '\u{a0}']),
                3 => prop::char::range('a', 'z'),
                1 => any::<char>(),
            ]
        }

        fn text(max: usize) -> impl Strategy<Value = String> {
            prop::collection::vec(tricky_char(), 0..max).prop_map(String::from_iter)
        }

        fn word() -> impl Strategy<Value = (bool, String)> {
            prop_oneof![
                // Printed raw (addresses, interfaces, numbers): no ASCII
                // whitespace, and a leading `"` would read as a quote.
                text(16).prop_map(|t| {
                    let w: String = t.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                    match w.starts_with('"') || w.is_empty() {
                        true => (false, format!("x{w}")),
                        false => (false, w),
                    }
                }),
                // Comments: anything but NUL, newlines and quotes included.
                text(40).prop_map(|t| (true, t.replace('\0', ""))),
                prop::sample::select(vec!["!", "-i", "-o", "-j", "DROP", "--comment"])
                    .prop_map(|w| (false, w.to_owned())),
                // What ip6tables prints: addresses with colons, its own names.
                (any::<u128>(), 0u8..=128)
                    .prop_map(|(a, p)| { (false, format!("{}/{p}", std::net::Ipv6Addr::from(a))) }),
                prop::sample::select(vec![
                    "ipv6-icmp",
                    "icmp6",
                    "--icmpv6-type",
                    "::/0",
                    "::1/128"
                ])
                .prop_map(|w| (false, w.to_owned())),
            ]
        }

        /// A rule line or a line the parser must skip.
        fn listing_line() -> impl Strategy<Value = (Option<Vec<String>>, String)> {
            let chain = "[A-Za-z0-9_-]{1,28}";
            prop_oneof![
                4 => (chain, prop::collection::vec(word(), 0..10)).prop_map(|(c, words)| {
                    let line = save_line(&c, &words);
                    let mut all = vec![c];
                    all.extend(words.into_iter().map(|(_, w)| w));
                    (Some(all), line)
                }),
                1 => chain.prop_map(|c| (None, format!("-N {c}"))),
                1 => chain.prop_map(|c| (None, format!("-P {c} ACCEPT"))),
                1 => text(60).prop_map(|t| (None, format!("# {}", t.replace('\n', "")))),
                1 => Just((None, String::new())),
            ]
        }

        fn spec() -> impl Strategy<Value = FirewallSpec> {
            (
                "[A-Za-z0-9_][A-Za-z0-9._-]{0,14}",
                "[A-Za-z0-9_:][A-Za-z0-9._:-]{0,63}",
                prop_oneof![
                    any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
                    any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
                ],
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(|(tun, tag, ip, routed, allow)| FirewallSpec {
                    tun,
                    host_tunnel_ip: ip,
                    nat: if routed {
                        NatMode::Routed
                    } else {
                        NatMode::Masquerade
                    },
                    tag,
                    allow_container_connections: allow,
                })
        }

        proptest! {
            #![proptest_config(crate::proptest_config(2000))]

            #[test]
            fn any_text_parses_or_fails_without_panicking(
                table in table(),
                text in prop_oneof![
                    text(300),
                    prop::collection::vec(
                        prop::sample::select(vec!["-A", "-N", "-P", "X", "\"", "\\", "!", "#", " ", "\n"]),
                        0..60,
                    )
                    .prop_map(|w| w.concat()),
                ],
            ) {
                match parse_listing(table, &text) {
                    Ok(rules) => prop_assert!(rules.iter().all(|r| r.table == table)),
                    Err(ParseError::Line { line_no, line, .. }) => {
                        prop_assert!(line_no >= 1 && line_no <= text.split('\n').count());
                        prop_assert!(line.chars().count() <= QUOTED_LINE + 1);
                    }
                    Err(e) => prop_assert!(false, "{e}"),
                }
            }

        }

        proptest! {
            #![proptest_config(crate::proptest_config(1000))]

            #[test]
            fn printed_listings_parse_back(
                table in table(),
                lines in prop::collection::vec(listing_line(), 0..8),
            ) {
                let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
                let want: Vec<Rule> = lines
                    .into_iter()
                    .filter_map(|(words, _)| words)
                    .map(|mut w| {
                        let args = w.split_off(1);
                        Rule { table, chain: w.remove(0), args }
                    })
                    .collect();
                prop_assert_eq!(parse_listing(table, &text), Ok(want), "{}", text);
            }

            #[test]
            fn display_of_plain_rules_parses_back(
                table in table(),
                chain in "[A-Za-z0-9_-]{1,28}",
                args in prop::collection::vec("[A-Za-z0-9._/:=,+!@%-]{1,12}", 0..10),
            ) {
                let rule = Rule { table, chain, args };
                let shown = rule.to_string();
                let listed = shown.strip_prefix(&format!("-t {table} ")).unwrap();
                prop_assert_eq!(parse_listing(table, listed), Ok(vec![rule]));
            }

            #[test]
            fn our_rules_as_listed_are_converged_in_any_order(
                spec in spec(),
                forward in any::<bool>(),
                order in prop::collection::vec(any::<u32>(), 5),
            ) {
                prop_assume!(spec.validate().is_ok());
                let chain = if forward { FilterChain::Forward } else { FilterChain::DockerUser };
                let desired = desired_rules(&spec, chain);
                let mut present = Vec::new();
                for table in Table::MANAGED {
                    let mut ours: Vec<(u32, &Rule)> = desired
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.table == table)
                        .map(|(i, r)| (order[i], r))
                        .collect();
                    ours.sort_by_key(|(k, _)| *k);
                    let text: String = ours.iter().map(|(_, r)| save_rule(r) + "\n").collect();
                    present.extend(parse_listing(table, &text).unwrap());
                }
                let d = diff(&desired, &present, &spec.tag);
                prop_assert!(d.is_empty(), "{:?}", d);
            }
        }
    }
}
