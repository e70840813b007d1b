//! Firewall rules that let routed traffic from the tunnel reach containers
//! through Docker Engine's own rules (see `rules.rs` for the why of each rule).
//!
//! The decisions live in the sans-IO modules `rules` and `detect`; this module
//! only runs iptables and applies what they decide.

mod detect;
mod rules;

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

pub use detect::{
    assess_filter_listing, choose, filter_chain, Backend, Choice, DetectError, Probe,
};
pub use rules::{
    desired_rules, diff, parse_listing, shell_quote, tagged, validate_tag, Family, FilterChain,
    FirewallSpec, NatMode, ParseError, Rule, SpecError, Table,
};

/// Seconds iptables waits for the xtables lock (legacy only; nft ignores it).
const XTABLES_WAIT_SECS: &str = "10";
/// Upper bound for one iptables invocation, lock wait included.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Guard for the delete-until-absent loop: far more copies than any bug could leave.
const MAX_COPIES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Parse(#[from] ParseError),
    // `error`, not `source`: the message already shows it, and anyhow's `{:#}`
    // would print a `#[source]` a second time.
    #[error("could not run `{command}`: {error}")]
    Spawn { command: String, error: io::Error },
    #[error("`{command}` did not finish within {secs} s", secs = COMMAND_TIMEOUT.as_secs())]
    Timeout { command: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` still finds the rule after {MAX_COPIES} deletions")]
    DeleteLoop { command: String },
    #[error("empty iptables command")]
    EmptyCommand,
}

impl FirewallError {
    /// The binary does not exist (as opposed to failing when run).
    pub fn is_not_found(&self) -> bool {
        matches!(self, FirewallError::Spawn { error, .. } if error.kind() == io::ErrorKind::NotFound)
    }
}

pub type Result<T, E = FirewallError> = std::result::Result<T, E>;

/// How to invoke one iptables variant: a program plus leading arguments, so
/// both `iptables-nft` and `xtables-nft-multi iptables` work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IptablesCmd {
    pub program: PathBuf,
    pub pre_args: Vec<String>,
}

impl FromStr for IptablesCmd {
    type Err = FirewallError;
    /// Whitespace-separated: `iptables-legacy` or `xtables-legacy-multi iptables`.
    fn from_str(s: &str) -> Result<Self> {
        let mut words = s.split_whitespace();
        let program = words.next().ok_or(FirewallError::EmptyCommand)?;
        Ok(IptablesCmd {
            program: program.into(),
            pre_args: words.map(str::to_owned).collect(),
        })
    }
}

/// Exit status of one iptables run whose failure the caller interprets itself.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl IptablesCmd {
    fn full_args(&self, args: &[String]) -> Vec<String> {
        let mut v = self.pre_args.clone();
        v.push("-w".to_owned());
        v.push(XTABLES_WAIT_SECS.to_owned());
        v.extend(args.iter().cloned());
        v
    }

    fn command_line(&self, args: &[String]) -> String {
        let mut s = shell_quote(&self.program.to_string_lossy());
        for a in self.full_args(args) {
            s.push(' ');
            s.push_str(&shell_quote(&a));
        }
        s
    }

    async fn run_raw(&self, args: &[String]) -> Result<Outcome> {
        let command = self.command_line(args);
        tracing::trace!(%command, "running iptables");
        let child = tokio::process::Command::new(&self.program)
            .args(self.full_args(args))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let out = match tokio::time::timeout(COMMAND_TIMEOUT, child).await {
            Err(_) => return Err(FirewallError::Timeout { command }),
            Ok(Err(error)) => return Err(FirewallError::Spawn { command, error }),
            Ok(Ok(out)) => out,
        };
        Ok(Outcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }

    /// Run and require success; returns stdout.
    async fn run(&self, args: &[String]) -> Result<String> {
        let out = self.run_raw(args).await?;
        if out.code == Some(0) {
            Ok(out.stdout)
        } else {
            Err(self.failure(args, &out))
        }
    }

    fn failure(&self, args: &[String], out: &Outcome) -> FirewallError {
        FirewallError::Command {
            command: self.command_line(args),
            status: match out.code {
                Some(c) => format!("exit status {c}"),
                None => "killed by a signal".to_owned(),
            },
            stderr: if out.stderr.is_empty() {
                "(no stderr)".to_owned()
            } else {
                out.stderr.clone()
            },
        }
    }

    /// `-S` output of one table.
    async fn list_text(&self, table: Table) -> Result<String> {
        self.run(&["-t".to_owned(), table.as_str().to_owned(), "-S".to_owned()])
            .await
    }

    /// All rules of one table.
    pub async fn list(&self, table: Table) -> Result<Vec<Rule>> {
        Ok(parse_listing(table, &self.list_text(table).await?)?)
    }

    /// `-C`: exit 0 means present, 1 means absent (iptables uses 1 both for
    /// "no such rule" and "no such chain"); anything else is an error.
    pub async fn exists(&self, rule: &Rule) -> Result<bool> {
        let args = rule.check_args();
        let out = self.run_raw(&args).await?;
        match out.code {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(self.failure(&args, &out)),
        }
    }

    pub async fn insert(&self, rule: &Rule) -> Result<()> {
        self.run(&rule.insert_args()).await.map(drop)
    }

    pub async fn delete_one(&self, rule: &Rule) -> Result<()> {
        self.run(&rule.delete_args()).await.map(drop)
    }

    /// Delete every copy of `rule`; returns how many were deleted.
    pub async fn delete_all(&self, rule: &Rule) -> Result<usize> {
        let mut n = 0;
        while self.exists(rule).await? {
            if n == MAX_COPIES {
                return Err(FirewallError::DeleteLoop {
                    command: self.command_line(&rule.delete_args()),
                });
            }
            self.delete_one(rule).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Probe the filter table for Docker's chains.
    pub async fn probe(&self) -> Probe {
        match self.list_text(Table::Filter).await {
            Ok(text) => match assess_filter_listing(&text) {
                Ok(evidence) => Probe::Listed(evidence),
                Err(e) => Probe::Unavailable(e.to_string()),
            },
            Err(e) if e.is_not_found() => {
                Probe::Unavailable(format!("{} not found", self.program.display()))
            }
            Err(e) => Probe::Unavailable(e.to_string()),
        }
    }
}

/// The two variants' commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binaries {
    pub legacy: IptablesCmd,
    pub nft: IptablesCmd,
}

impl Binaries {
    pub fn get(&self, backend: Backend) -> &IptablesCmd {
        match backend {
            Backend::Legacy => &self.legacy,
            Backend::Nft => &self.nft,
        }
    }
}

/// A removed rule, with how many copies went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    pub rule: Rule,
    pub copies: usize,
}

/// Delete every rule carrying `tag` from the given tables of one variant. A
/// table that cannot be listed is an error; the caller decides whether that matters.
pub async fn remove_tagged(ipt: &IptablesCmd, tag: &str, tables: &[Table]) -> Result<Vec<Removed>> {
    validate_tag(tag)?;
    let mut removed = Vec::new();
    for &table in tables {
        let rules = ipt.list(table).await?;
        let mut distinct: Vec<&Rule> = Vec::new();
        for r in tagged(&rules, tag) {
            if !distinct.iter().any(|d| d.same_as(r)) {
                distinct.push(r);
            }
        }
        for rule in distinct {
            let copies = ipt.delete_all(rule).await?;
            if copies > 0 {
                removed.push(Removed {
                    rule: rule.clone(),
                    copies,
                });
            }
        }
    }
    Ok(removed)
}

/// What one `ensure` changed. Nothing when the rules were already in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnsureReport {
    /// Where the filter rules are now.
    pub chain: FilterChain,
    pub inserted: Vec<Rule>,
    pub removed_stale: Vec<Removed>,
    pub removed_duplicates: usize,
    pub reordered: Vec<Rule>,
}

impl EnsureReport {
    pub fn changed(&self) -> bool {
        !(self.inserted.is_empty()
            && self.removed_stale.is_empty()
            && self.removed_duplicates == 0
            && self.reordered.is_empty())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingReason {
    Absent,
    /// Present but behind one of Docker's DROP rules.
    Shadowed,
}

/// A desired rule that is not (effectively) in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingRule {
    pub rule: Rule,
    pub reason: MissingReason,
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// Where the filter rules belong in the tables as they are now.
    pub chain: FilterChain,
    /// How many rules the agent wants.
    pub wanted: usize,
    /// Desired rules that are absent or shadowed; empty when all is well.
    pub missing: Vec<MissingRule>,
}

/// The tables as they are, and the rules wanted in them.
struct Snapshot {
    chain: FilterChain,
    desired: Vec<Rule>,
    present: Vec<Rule>,
}

/// The agent's rules of one family, in the variant Docker uses.
#[derive(Debug)]
pub struct Firewall {
    spec: FirewallSpec,
    backend: Backend,
    ipt: IptablesCmd,
    reason: String,
}

impl Firewall {
    /// Probe both variants and settle on the one holding Docker's chains.
    pub async fn detect(spec: FirewallSpec, binaries: &Binaries) -> Result<Firewall> {
        spec.validate()?;
        let (legacy, nft) = tokio::join!(binaries.legacy.probe(), binaries.nft.probe());
        tracing::debug!(%legacy, %nft, "probed iptables variants");
        let Choice { backend, reason } = choose(&legacy, &nft)?;
        Ok(Firewall {
            spec,
            backend,
            ipt: binaries.get(backend).clone(),
            reason,
        })
    }

    /// The rules of `spec` (the other family) in this firewall's variant:
    /// Docker runs iptables and ip6tables of one variant, and IPv6 tables
    /// without Docker chains (older engines) say nothing about which.
    pub fn twin(&self, spec: FirewallSpec, binaries: &Binaries) -> Result<Firewall> {
        spec.validate()?;
        Ok(Firewall {
            spec,
            backend: self.backend,
            ipt: binaries.get(self.backend).clone(),
            reason: format!("the variant {} rules use", self.family().name()),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn family(&self) -> Family {
        self.spec.family()
    }

    /// Why this backend was chosen (for logs and status).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn spec(&self) -> &FirewallSpec {
        &self.spec
    }

    /// The managed tables' rules, and the desired ones for where the filter
    /// table lets them take effect (decided afresh each time, so rules follow
    /// an engine that gains or loses DOCKER-USER).
    async fn snapshot(&self) -> Result<Snapshot> {
        let filter = self.ipt.list_text(Table::Filter).await?;
        let chain = filter_chain(&assess_filter_listing(&filter)?);
        let mut present = parse_listing(Table::Filter, &filter)?;
        for table in Table::MANAGED {
            if table != Table::Filter {
                present.extend(self.ipt.list(table).await?);
            }
        }
        Ok(Snapshot {
            chain,
            desired: desired_rules(&self.spec, chain),
            present,
        })
    }

    /// Bring the rules to the desired state. Idempotent: a converged system
    /// costs three listings and no changes.
    pub async fn ensure(&self) -> Result<EnsureReport> {
        let Snapshot {
            chain,
            desired,
            present,
        } = self.snapshot().await?;
        let d = diff(&desired, &present, &self.spec.tag);
        let mut report = EnsureReport {
            chain,
            inserted: Vec::new(),
            removed_stale: Vec::new(),
            removed_duplicates: 0,
            reordered: Vec::new(),
        };
        if d.is_empty() {
            return Ok(report);
        }
        for rule in &d.stale {
            let copies = self.ipt.delete_all(rule).await?;
            if copies > 0 {
                report.removed_stale.push(Removed {
                    rule: rule.clone(),
                    copies,
                });
            }
        }
        for rule in &d.duplicates {
            // Copies are identical, so deleting the first match removes a surplus one.
            self.ipt.delete_one(rule).await?;
            report.removed_duplicates += 1;
        }
        for rule in &d.misplaced {
            self.ipt.delete_one(rule).await?;
            self.ipt.insert(rule).await?;
            report.reordered.push(rule.clone());
        }
        for rule in &d.missing {
            // Re-check right before inserting: another agent run may race us.
            if !self.ipt.exists(rule).await? {
                self.ipt.insert(rule).await?;
                report.inserted.push(rule.clone());
            }
        }
        Ok(report)
    }

    /// Which desired rules are absent or shadowed.
    pub async fn verify(&self) -> Result<Verification> {
        let Snapshot {
            chain,
            desired,
            present,
        } = self.snapshot().await?;
        let d = diff(&desired, &present, &self.spec.tag);
        let absent = d.missing.into_iter().map(|rule| MissingRule {
            rule,
            reason: MissingReason::Absent,
        });
        let shadowed = d.misplaced.into_iter().map(|rule| MissingRule {
            rule,
            reason: MissingReason::Shadowed,
        });
        Ok(Verification {
            chain,
            wanted: desired.len(),
            missing: absent.chain(shadowed).collect(),
        })
    }

    /// Delete every rule carrying our tag (any tun, any mode) in the chosen variant.
    pub async fn remove(&self) -> Result<Vec<Removed>> {
        remove_tagged(&self.ipt, &self.spec.tag, &Table::ALL).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardingError {
    #[error(
        "forwarding is off in the Docker VM ({}=0): {} subnets are unreachable",
        .0.forwarding_sysctl(),
        .0.name()
    )]
    Disabled(Family),
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: io::Error },
    #[error("unexpected content {content:?} in {path}")]
    Unexpected { path: String, content: String },
}

/// Where the kernel's files are.
pub const PROC: &str = "/proc";

/// The file that shows sysctl `name` under `proc`.
pub fn sysctl_path(proc: &Path, name: &str) -> PathBuf {
    proc.join("sys").join(name.replace('.', "/"))
}

/// Whether the VM forwards `family`, as `proc` (normally [`PROC`]) shows.
/// A host-network container cannot set `net.*` sysctls, so only report.
pub fn check_forwarding(family: Family, proc: &Path) -> Result<(), ForwardingError> {
    let path = sysctl_path(proc, family.forwarding_sysctl());
    let shown = path.display().to_string();
    let content = std::fs::read_to_string(&path).map_err(|error| ForwardingError::Read {
        path: shown.clone(),
        error,
    })?;
    match content.trim() {
        "1" => Ok(()),
        "0" => Err(ForwardingError::Disabled(family)),
        other => Err(ForwardingError::Unexpected {
            path: shown,
            content: other.to_owned(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests;
