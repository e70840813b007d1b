//! connector-agent: runs as a host-network container inside the Docker VM,
//! holds the VM end of the WireGuard tunnel and the firewall rules that let
//! routed traffic from the tunnel reach containers.

mod control;
mod firewall;
mod ifaddr6;
mod routes;

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use backon::{BackoffBuilder, ExponentialBuilder};
use clap::{Args, Parser, Subcommand};
use connector_protocol::signals::{self, Shutdown};
use connector_tunnel::{keys, Tunnel, TunnelConfig};
use tokio::signal::unix::signal;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};

use firewall::{
    Backend, Binaries, Family, FilterChain, Firewall, FirewallSpec, IptablesCmd, NatMode, Table,
};
use routes::RouteTable;

/// How often the rules are re-asserted (Docker may rebuild its chains).
const REASSERT_EVERY: Duration = Duration::from_secs(10);
/// Docker Desktop's `host.docker.internal` can move; re-resolve this often...
const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// ...and this often after a failed resolution.
const RESOLVE_RETRY: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(
    name = "connector-agent",
    version,
    about = "connector's agent inside the Docker VM"
)]
struct Cli {
    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(
        long,
        global = true,
        env = "CONNECTOR_AGENT_LOG_LEVEL",
        default_value = "info"
    )]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Install the firewall rules, run the tunnel, remove the rules on SIGTERM/SIGINT.
    Run(RunArgs),
    /// Check (read-only) that every rule `run` would install is in place, and
    /// that the VM forwards IPv6 when the tunnel carries it; takes the same
    /// arguments as `run`. Exit 1 and one line per problem.
    Verify(RunArgs),
    /// Remove every rule carrying the tag, in both iptables variants, IPv4
    /// and IPv6.
    Cleanup(CleanupArgs),
    /// Print the agent version.
    Version,
}

#[derive(Args, Debug, Clone)]
struct IptablesArgs {
    /// Command for the legacy iptables variant (may include leading arguments,
    /// e.g. "xtables-legacy-multi iptables").
    #[arg(
        long,
        env = "CONNECTOR_AGENT_IPTABLES_LEGACY",
        default_value = "iptables-legacy"
    )]
    iptables_legacy: String,
    /// Command for the nf_tables iptables variant.
    #[arg(
        long,
        env = "CONNECTOR_AGENT_IPTABLES_NFT",
        default_value = "iptables-nft"
    )]
    iptables_nft: String,
    /// Command for the legacy ip6tables variant (IPv6 rules go in the variant
    /// the IPv4 rules use).
    #[arg(
        long,
        env = "CONNECTOR_AGENT_IP6TABLES_LEGACY",
        default_value = "ip6tables-legacy"
    )]
    ip6tables_legacy: String,
    /// Command for the nf_tables ip6tables variant.
    #[arg(
        long,
        env = "CONNECTOR_AGENT_IP6TABLES_NFT",
        default_value = "ip6tables-nft"
    )]
    ip6tables_nft: String,
}

impl IptablesArgs {
    /// The two variants' commands for `family`.
    fn binaries(&self, family: Family) -> Result<Binaries> {
        let ((legacy_flag, legacy), (nft_flag, nft)) = match family {
            Family::V4 => (
                ("--iptables-legacy", &self.iptables_legacy),
                ("--iptables-nft", &self.iptables_nft),
            ),
            Family::V6 => (
                ("--ip6tables-legacy", &self.ip6tables_legacy),
                ("--ip6tables-nft", &self.ip6tables_nft),
            ),
        };
        Ok(Binaries {
            legacy: legacy.parse().context(legacy_flag)?,
            nft: nft.parse().context(nft_flag)?,
        })
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Name of the agent's tun interface in the VM.
    #[arg(long, env = "CONNECTOR_AGENT_TUN_NAME", default_value = "connector-vm")]
    tun_name: String,
    /// The agent's address inside the tunnel.
    #[arg(long, env = "CONNECTOR_AGENT_ADDRESS", default_value = "10.254.253.2")]
    address: Ipv4Addr,
    /// The host's address inside the tunnel (source of routed traffic).
    #[arg(
        long,
        env = "CONNECTOR_AGENT_PEER_ADDRESS",
        default_value = "10.254.253.1"
    )]
    peer_address: Ipv4Addr,
    #[arg(long, env = "CONNECTOR_AGENT_PREFIX", default_value_t = 30,
          value_parser = clap::value_parser!(u8).range(1..=32))]
    prefix: u8,
    /// The agent's IPv6 address inside the tunnel. Without it the agent
    /// touches nothing of IPv6.
    #[arg(long, env = "CONNECTOR_AGENT_ADDRESS6", requires = "peer_address6")]
    address6: Option<Ipv6Addr>,
    /// The host's IPv6 address inside the tunnel (source of routed IPv6 traffic).
    #[arg(long, env = "CONNECTOR_AGENT_PEER_ADDRESS6", requires = "address6")]
    peer_address6: Option<Ipv6Addr>,
    /// Prefix length of the tunnel's IPv6 network (room for two addresses).
    #[arg(long, env = "CONNECTOR_AGENT_PREFIX6", default_value_t = 126,
          value_parser = clap::value_parser!(u8).range(1..=126))]
    prefix6: u8,
    #[arg(long, env = "CONNECTOR_AGENT_MTU", default_value_t = 1420,
          value_parser = clap::value_parser!(u16).range(576..=9000))]
    mtu: u16,
    /// The host daemon's UDP endpoint, host:port; the host name is re-resolved periodically.
    #[arg(
        long,
        env = "CONNECTOR_AGENT_ENDPOINT",
        default_value = "host.docker.internal:51871"
    )]
    endpoint: String,
    /// The host daemon's WireGuard public key (base64).
    #[arg(long, env = "CONNECTOR_AGENT_PEER_PUBLIC_KEY")]
    peer_public_key: String,
    /// File holding the agent's base64 WireGuard private key.
    #[arg(
        long,
        env = "CONNECTOR_AGENT_PRIVATE_KEY_FILE",
        default_value = "/etc/connector/agent.key"
    )]
    private_key_file: PathBuf,
    #[arg(long, env = "CONNECTOR_AGENT_NAT", default_value_t = NatMode::Masquerade)]
    nat: NatMode,
    /// Comment that marks the agent's firewall rules.
    #[arg(long, env = "CONNECTOR_AGENT_TAG", default_value = "connector")]
    tag: String,
    /// Let containers open connections to the host through the tunnel. By
    /// default only replies to the host's own connections go back.
    #[arg(long, env = "CONNECTOR_AGENT_ALLOW_CONTAINER_CONNECTIONS",
          value_parser = clap::builder::BoolishValueParser::new())]
    allow_container_connections: bool,
    /// Persistent keepalive in seconds (0 = off); keeps Docker Desktop's UDP mapping alive.
    #[arg(long, env = "CONNECTOR_AGENT_KEEPALIVE", default_value_t = 20)]
    keepalive: u16,
    #[command(flatten)]
    iptables: IptablesArgs,
}

#[derive(Args, Debug)]
struct CleanupArgs {
    #[arg(long, env = "CONNECTOR_AGENT_TAG", default_value = "connector")]
    tag: String,
    #[command(flatten)]
    iptables: IptablesArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_tracing(&cli.log_level) {
        eprintln!("connector-agent: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("connector-agent: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Verify(args) => verify(args).await,
            Command::Cleanup(args) => cleanup(args).await,
            Command::Version => {
                println!("connector-agent {}", env!("CARGO_PKG_VERSION"));
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(level: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("invalid --log-level {level:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

/// Longest DNS name (RFC 1035).
const MAX_HOST: usize = 253;

/// `host:port`: a host name, an IPv4 address or a bracketed IPv6 address
/// (resolved later), and a port in 1-65535.
fn check_endpoint(endpoint: &str) -> Result<()> {
    // First, so that no message below quotes a huge argument.
    if endpoint.len() > MAX_HOST + ":65535".len() {
        bail!(
            "--endpoint is {} bytes long; a host name has at most {MAX_HOST}",
            endpoint.len()
        );
    }
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("--endpoint {endpoint:?} must be host:port"))?;
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= MAX_HOST
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    };
    if !host_ok {
        bail!("--endpoint {endpoint:?}: the host must be a host name (A-Z a-z 0-9 . - _), an IPv4 address or [an IPv6 address]");
    }
    // Digits only: `parse` would also take a sign.
    if !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().map_or(true, |p| p == 0) {
        bail!("--endpoint {endpoint:?} must be host:port with a port in 1-65535");
    }
    Ok(())
}

/// First IPv4 address of the endpoint (the UDP socket is IPv4).
async fn resolve(endpoint: &str) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(Duration::from_secs(10), tokio::net::lookup_host(endpoint))
            .await
            .map_err(|_| anyhow!("resolving {endpoint} timed out"))?
            .with_context(|| format!("resolving {endpoint}"))?
            .collect();
    addrs
        .iter()
        .copied()
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| anyhow!("{endpoint} has no IPv4 address (got {addrs:?})"))
}

/// The tunnel's IPv6 end, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TunnelV6 {
    address: Ipv6Addr,
    peer: Ipv6Addr,
    prefix: u8,
}

/// Why `address` cannot be a tunnel end, if it cannot: it must be a unicast
/// address a route can lead to.
fn not_unicast(address: Ipv6Addr) -> Option<&'static str> {
    let first = address.segments()[0];
    if address.is_unspecified() {
        Some("the unspecified address")
    } else if address.is_loopback() {
        Some("the loopback address")
    } else if address.is_multicast() {
        Some("a multicast address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else if address.to_ipv4_mapped().is_some() {
        Some("an IPv4-mapped address")
    } else {
        None
    }
}

/// `--address6`, `--peer-address6` and `--prefix6` (clap keeps it in
/// 1..=126), or `None` when the tunnel carries no IPv6.
fn tunnel_v6(args: &RunArgs) -> Result<Option<TunnelV6>> {
    let (Some(address), Some(peer)) = (args.address6, args.peer_address6) else {
        return Ok(None);
    };
    let prefix = args.prefix6;
    for (flag, a) in [("--address6", address), ("--peer-address6", peer)] {
        if let Some(what) = not_unicast(a) {
            bail!("{flag} {a} is {what}; use a unicast address (a ULA under fd00::/8)");
        }
    }
    if address == peer {
        bail!("--address6 and --peer-address6 are both {address}");
    }
    let net = ipnet::Ipv6Net::new(address, prefix)
        .context("--prefix6")?
        .trunc();
    if !net.contains(&peer) {
        bail!("--peer-address6 {peer} is outside --address6's network {net} (--prefix6 {prefix})");
    }
    // The kernel gives the all-zero host part (the subnet-router anycast
    // address) to every forwarding interface on the network.
    for (flag, a) in [("--address6", address), ("--peer-address6", peer)] {
        if a == net.network() {
            bail!("{flag} {a} is the subnet-router anycast address of {net}; use another address in it");
        }
    }
    Ok(Some(TunnelV6 {
        address,
        peer,
        prefix,
    }))
}

async fn run(args: RunArgs) -> Result<()> {
    let mut shutdown = Shutdown::install().context("installing the SIGTERM/SIGINT handlers")?;
    check_endpoint(&args.endpoint)?;
    if args.address == args.peer_address {
        bail!("--address and --peer-address are both {}", args.address);
    }
    let v6 = tunnel_v6(&args)?;
    check_forwarding(Family::V4)?;
    let mut forwarding6 = v6.map(|_| ForwardingWatch::new(Family::V6));
    if let Some(watch) = &mut forwarding6 {
        watch.check();
    }
    // Keys before any rule goes in: a bad key must not leave rules behind.
    let private_key = keys::read_private_key_file(&args.private_key_file)?;
    let peer_public = keys::parse_public_key(&args.peer_public_key).context("--peer-public-key")?;

    let fw = detect_firewall(&args).await?;
    tracing::info!(backend = %fw.backend(), reason = fw.reason(), "iptables variant");
    let fw6 = twin_firewall(&args, &fw, v6.as_ref())?;
    // IPv4 first: its failures are fatal, IPv6's never are.
    let mut families: Vec<FamilyRules> = std::iter::once(fw)
        .chain(fw6)
        .map(FamilyRules::new)
        .collect();
    let routes = Arc::new(
        RouteTable::new(
            routes::protocol_for_tag(&args.tag),
            vec![args.address, args.peer_address],
        )
        .context("opening the routing table")?,
    );
    match routes.ours().await {
        // Left by a crashed run: kept (no gap for traffic) until the daemon's
        // next set-routes, which replaces them.
        Ok(left) if !left.is_empty() => {
            tracing::info!(
                count = left.len(),
                protocol = routes.protocol(),
                "routes of an earlier run found; kept until the daemon sends its set"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot list routes"),
    }

    // From here on every exit path removes the rules and the routes.
    let result = match install_rules(&mut families).await {
        Ok(()) => {
            serve(
                &args,
                v6,
                Guards {
                    families: &mut families,
                    forwarding6: forwarding6.as_mut(),
                },
                routes.clone(),
                private_key,
                peer_public,
                &mut shutdown,
            )
            .await
        }
        Err(e) => Err(e),
    };
    match routes.flush().await {
        Ok(removed) => {
            for r in removed {
                tracing::info!(route = %r, "removed route");
            }
        }
        Err(e) => tracing::error!(error = %e, "removing routes failed"),
    }
    let mut removal = Ok(());
    for (i, family) in families.iter().enumerate() {
        let fam = family.fw.family().as_str();
        match family.fw.remove().await {
            Ok(removed) => {
                for r in removed {
                    tracing::info!(family = fam, rule = %r.rule, copies = r.copies, "removed firewall rule");
                }
            }
            Err(e) => {
                tracing::error!(family = fam, error = %e, "removing firewall rules failed");
                // IPv4's rules decide the exit status; IPv6 trouble was
                // reported all along.
                if i == 0 {
                    removal = Err(e);
                }
            }
        }
    }
    result?;
    removal.context("removing firewall rules")?;
    tracing::info!("stopped");
    Ok(())
}

/// Whether the VM forwards `family`; fatal for IPv4 only.
fn check_forwarding(family: Family) -> Result<(), firewall::ForwardingError> {
    firewall::check_forwarding(family, Path::new(firewall::PROC))
}

/// The VM's IPv6 forwarding, logged when it changes: Docker turns it on when
/// it creates the first IPv6 network, often after the agent has started.
struct ForwardingWatch {
    family: Family,
    last: Option<Result<(), String>>,
}

impl ForwardingWatch {
    fn new(family: Family) -> ForwardingWatch {
        ForwardingWatch { family, last: None }
    }

    fn check(&mut self) {
        let now = check_forwarding(self.family).map_err(|e| e.to_string());
        if self.last.as_ref() == Some(&now) {
            return;
        }
        match &now {
            Ok(()) => tracing::info!(family = self.family.as_str(), "forwarding is on"),
            // The agent goes on: IPv4 does not need it, and Docker may turn it on later.
            Err(e) => {
                tracing::error!(family = self.family.as_str(), error = %e, "no routed traffic of this family reaches containers until forwarding is on")
            }
        }
        self.last = Some(now);
    }
}

/// One family's rules, and what was last logged about them: a lasting state
/// (an error, the chain the filter rules are in) is logged when it starts,
/// not every 10 s.
struct FamilyRules {
    fw: Firewall,
    chain: Option<FilterChain>,
    failing: Option<String>,
}

impl FamilyRules {
    fn new(fw: Firewall) -> FamilyRules {
        FamilyRules {
            fw,
            chain: None,
            failing: None,
        }
    }

    /// `ensure`, logging what it changed.
    async fn ensure(&mut self, reassert: bool) -> Result<(), firewall::FirewallError> {
        let family = self.fw.family().as_str();
        let report = self.fw.ensure().await?;
        if self.failing.take().is_some() {
            tracing::info!(family, "firewall rules can be managed again");
        }
        if self.chain != Some(report.chain) {
            match report.chain {
                FilterChain::DockerUser => {
                    tracing::info!(family, "filter rules go in DOCKER-USER")
                }
                FilterChain::Forward => tracing::warn!(
                    family,
                    "no DOCKER-USER chain that FORWARD jumps to (the engine has no firewall for this family); filter rules go at the top of FORWARD"
                ),
            }
            self.chain = Some(report.chain);
        }
        log_report(&report, family, reassert);
        Ok(())
    }

    /// Log a failure unless it is the one logged last.
    fn failed(&mut self, error: &anyhow::Error) {
        let key = error.root_cause().to_string();
        if self.failing.as_deref() != Some(key.as_str()) {
            tracing::error!(
                family = self.fw.family().as_str(),
                error = format!("{error:#}"),
                "firewall rules not in place; trying again every {} s",
                REASSERT_EVERY.as_secs()
            );
            self.failing = Some(key);
        }
    }
}

/// Install both families' rules and check they took effect. An IPv4 failure
/// stops the agent; an IPv6 one is logged and IPv4 goes on.
async fn install_rules(families: &mut [FamilyRules]) -> Result<()> {
    for (i, family) in families.iter_mut().enumerate() {
        match install_family(family).await {
            Err(e) if i == 0 => return Err(e),
            Err(e) => family.failed(&e),
            Ok(()) => {}
        }
    }
    Ok(())
}

async fn install_family(family: &mut FamilyRules) -> Result<()> {
    let name = family.fw.family().name();
    family
        .ensure(false)
        .await
        .with_context(|| format!("installing {name} firewall rules"))?;
    let missing = family
        .fw
        .verify()
        .await
        .with_context(|| format!("verifying {name} firewall rules"))?
        .missing;
    if !missing.is_empty() {
        for m in &missing {
            tracing::error!(family = family.fw.family().as_str(), rule = %m.rule, reason = ?m.reason, "rule not in effect after install");
        }
        bail!(
            "{} {name} firewall rule(s) not in effect right after installing them",
            missing.len()
        );
    }
    let spec = family.fw.spec();
    tracing::info!(family = spec.family().as_str(), nat = spec.nat.as_str(), tag = %spec.tag,
                   allow_container_connections = spec.allow_container_connections,
                   "firewall rules in place");
    Ok(())
}

fn log_report(report: &firewall::EnsureReport, family: &str, reassert: bool) {
    if !report.changed() {
        tracing::debug!(family, "firewall rules already in place");
        return;
    }
    for r in &report.removed_stale {
        tracing::info!(family, rule = %r.rule, copies = r.copies, "removed stale tagged rule");
    }
    if report.removed_duplicates > 0 {
        tracing::info!(
            family,
            count = report.removed_duplicates,
            "removed duplicate rules"
        );
    }
    for r in &report.reordered {
        tracing::warn!(family, rule = %r, "rule was behind a DROP; moved back to the top");
    }
    for r in &report.inserted {
        if reassert {
            tracing::warn!(family, rule = %r, "rule had disappeared; re-inserted");
        } else {
            tracing::info!(family, rule = %r, "inserted rule");
        }
    }
}

/// Initial resolution: the tunnel needs an endpoint to initiate, so wait for one.
async fn first_endpoint(endpoint: &str, shutdown: &mut Shutdown) -> Result<Option<SocketAddr>> {
    let mut delays = ExponentialBuilder::new()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(RESOLVE_EVERY)
        .without_max_times()
        .build();
    loop {
        let delay = delays.next().unwrap_or(RESOLVE_EVERY);
        match resolve(endpoint).await {
            Ok(addr) => return Ok(Some(addr)),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                retry_in_s = delay.as_secs(),
                "endpoint not resolvable yet"
            ),
        }
        tokio::select! {
            sig = shutdown.recv() => {
                tracing::info!(signal = sig, "shutting down");
                return Ok(None);
            }
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Stops a background task when the owner goes out of scope.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Event {
    Signal(&'static str),
    /// The host daemon restarted and lost the session: handshake again now.
    Rehandshake,
    TunnelFailed(connector_tunnel::TunnelError),
    Reassert,
    Resolve,
}

/// What the re-assert loop keeps in shape.
struct Guards<'a> {
    families: &'a mut [FamilyRules],
    forwarding6: Option<&'a mut ForwardingWatch>,
}

async fn serve(
    args: &RunArgs,
    v6: Option<TunnelV6>,
    mut guards: Guards<'_>,
    routes: Arc<RouteTable>,
    private_key: keys::StaticSecret,
    peer_public: keys::PublicKey,
    shutdown: &mut Shutdown,
) -> Result<()> {
    let spec = connector_tunnel::tun::TunSpec {
        name: Some(args.tun_name.clone()),
        address: args.address,
        peer: args.peer_address,
        prefix: args.prefix,
        address6: v6.map(|t| (t.address, t.prefix)),
        mtu: args.mtu,
    };
    let context = || {
        format!(
            "creating tun {} (needs --cap-add NET_ADMIN and --device /dev/net/tun)",
            args.tun_name
        )
    };
    let device = match connector_tunnel::tun::create(&spec) {
        Ok(device) => device,
        // A VM that refuses the IPv6 address (IPv6 disabled on new
        // interfaces) must not cost IPv4 its tunnel; `verify` reports it.
        Err(e) if spec.address6.is_some() => {
            let v4_only = connector_tunnel::tun::TunSpec {
                address6: None,
                ..spec.clone()
            };
            match connector_tunnel::tun::create(&v4_only) {
                Ok(device) => {
                    tracing::error!(error = %e, "the tun refused its IPv6 address; going on with IPv4 only");
                    device
                }
                // Not about IPv6 then: report the first attempt.
                Err(_) => return Err(e).with_context(context),
            }
        }
        Err(e) => return Err(e).with_context(context),
    };
    tracing::info!(tun = %args.tun_name, address = %args.address, peer = %args.peer_address,
                   prefix = args.prefix, address6 = ?spec.address6.map(|(a, _)| a),
                   mtu = args.mtu, "tun up");
    // The daemon's control channel rides inside the tunnel: bound to the
    // tun and its address, answering the host's tunnel address only.
    let listen = SocketAddrV4::new(args.address, connector_protocol::vm_routes::CONTROL_PORT);
    let _control = match control::listen(listen, &args.tun_name) {
        Ok(listener) => {
            tracing::info!(%listen, tun = %args.tun_name, "control channel up");
            Some(AbortOnDrop(tokio::spawn(control::serve(
                listener,
                args.peer_address,
                routes,
            ))))
        }
        Err(e) => {
            tracing::error!(error = %e, %listen, tun = %args.tun_name, "cannot listen for the daemon's control channel; VM routes (kind pods and Services) will not be managed");
            None
        }
    };

    let Some(mut endpoint) = first_endpoint(&args.endpoint, shutdown).await? else {
        return Ok(());
    };
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .context("binding the UDP socket")?;
    let local = socket.local_addr().ok();
    let mut tunnel = Tunnel::spawn(
        device,
        socket,
        TunnelConfig {
            private_key,
            peer_public,
            keepalive: (args.keepalive > 0).then_some(args.keepalive),
            endpoint: Some(endpoint),
            // Inside the tunnel only the host speaks to the agent.
            allowed_sources: std::iter::once(IpAddr::V4(args.peer_address))
                .chain(v6.map(|t| IpAddr::V6(t.peer)))
                .map(ipnet::IpNet::from)
                .collect(),
            // The VM is Linux even on a Mac: always the batched path.
            per_packet: false,
        },
    );
    tracing::info!(endpoint = %endpoint, name = %args.endpoint, local = ?local, keepalive_s = args.keepalive, "tunnel started");

    let stats = tunnel.stats();
    let mut usr1 = signal(signals::nudge_kind()).context("installing the SIGUSR1 handler")?;
    let mut had_handshake = false;
    let mut reassert = tokio::time::interval_at(Instant::now() + REASSERT_EVERY, REASSERT_EVERY);
    reassert.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_resolve = Instant::now() + RESOLVE_EVERY;

    let outcome = loop {
        let event = tokio::select! {
            sig = shutdown.recv() => Event::Signal(sig),
            _ = usr1.recv() => Event::Rehandshake,
            err = tunnel.failed() => Event::TunnelFailed(err),
            _ = reassert.tick() => Event::Reassert,
            _ = sleep_until(next_resolve) => Event::Resolve,
        };
        match event {
            Event::Signal(sig) => {
                tracing::info!(signal = sig, "shutting down");
                break Ok(());
            }
            Event::TunnelFailed(e) => break Err(anyhow!(e).context("tunnel stopped")),
            Event::Rehandshake => {
                tracing::info!("SIGUSR1: starting a new handshake");
                tunnel.rehandshake().await;
            }
            Event::Reassert => {
                for family in guards.families.iter_mut() {
                    if let Err(e) = family.ensure(true).await {
                        family.failed(&anyhow!(e).context("re-asserting firewall rules"));
                    }
                }
                if let Some(watch) = guards.forwarding6.as_deref_mut() {
                    watch.check();
                }
                let snap = stats.snapshot();
                if snap.last_handshake.is_some() != had_handshake {
                    had_handshake = !had_handshake;
                    if had_handshake {
                        tracing::info!(
                            rx_bytes = snap.rx_bytes,
                            tx_bytes = snap.tx_bytes,
                            "handshake with host completed"
                        );
                    }
                }
            }
            Event::Resolve => match resolve(&args.endpoint).await {
                Ok(addr) => {
                    if addr != endpoint {
                        tracing::info!(old = %endpoint, new = %addr, name = %args.endpoint, "endpoint moved");
                        endpoint = addr;
                        tunnel.set_endpoint(addr);
                    }
                    next_resolve = Instant::now() + RESOLVE_EVERY;
                }
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), keeping = %endpoint, "re-resolving endpoint failed");
                    next_resolve = Instant::now() + RESOLVE_RETRY;
                }
            },
        }
    };
    tunnel.shutdown().await;
    outcome
}

/// The rule set these arguments ask for, for traffic from `host`.
fn firewall_spec(args: &RunArgs, host: IpAddr) -> FirewallSpec {
    FirewallSpec {
        tun: args.tun_name.clone(),
        host_tunnel_ip: host,
        nat: args.nat,
        tag: args.tag.clone(),
        allow_container_connections: args.allow_container_connections,
    }
}

/// The agent's IPv4 rules for these arguments, in the iptables variant Docker uses.
async fn detect_firewall(args: &RunArgs) -> Result<Firewall> {
    let spec = firewall_spec(args, args.peer_address.into());
    Firewall::detect(spec, &args.iptables.binaries(Family::V4)?)
        .await
        .context("choosing the iptables variant")
}

/// The IPv6 twins of `v4`'s rules, when the tunnel carries IPv6.
fn twin_firewall(args: &RunArgs, v4: &Firewall, v6: Option<&TunnelV6>) -> Result<Option<Firewall>> {
    let Some(t) = v6 else { return Ok(None) };
    let spec = firewall_spec(args, t.peer.into());
    Ok(Some(v4.twin(spec, &args.iptables.binaries(Family::V6)?)?))
}

/// How output lines name a family's rules: `nft`, `nft ipv6`. The daemon
/// reads the IPv4 backend from `(nft)`/`[nft]`, which the IPv6 label never forms.
fn label(backend: Backend, family: Family) -> String {
    match family {
        Family::V4 => backend.to_string(),
        Family::V6 => format!("{backend} {family}"),
    }
}

/// What `verify` prints (one line per problem, or `ok:` lines), and a
/// summary of each problem.
#[derive(Debug, Default)]
struct VerifyReport {
    lines: Vec<String>,
    problems: Vec<String>,
}

/// Add `fw`'s rules to the report: an `ok:` line, or one line per rule not
/// in place.
async fn verify_family(fw: &Firewall, tag: &str, out: &mut VerifyReport) {
    let (family, label) = (fw.family(), label(fw.backend(), fw.family()));
    let found = match fw.verify().await {
        Ok(found) => found,
        Err(e) => {
            out.lines
                .push(format!("{family}: rules cannot be listed [{label}]: {e}"));
            out.problems
                .push(format!("{} rules cannot be listed", family.name()));
            return;
        }
    };
    let wanted = found.wanted;
    if found.missing.is_empty() {
        let which = match family {
            Family::V4 => String::new(),
            Family::V6 => format!("{} ", family.name()),
        };
        let chain = match found.chain {
            FilterChain::DockerUser => String::new(),
            FilterChain::Forward => {
                format!(
                    ", in FORWARD: the engine has no {} DOCKER-USER",
                    family.name()
                )
            }
        };
        out.lines.push(format!(
            "ok: all {wanted} {which}rules tagged {tag:?} are in place ({label}{chain})"
        ));
        return;
    }
    for m in &found.missing {
        let why = match m.reason {
            firewall::MissingReason::Absent => "missing",
            firewall::MissingReason::Shadowed => "behind a DROP rule",
        };
        out.lines.push(format!("{why}: [{label}] {}", m.rule));
    }
    out.problems.push(format!(
        "{} of {wanted} {} firewall rules are not in place",
        found.missing.len(),
        family.name()
    ));
}

/// Why the VM cannot route IPv6 through the tun outside the rules, if it
/// cannot, with the kernel's files under `proc`.
fn ipv6_path_problem(tun: &str, t: &TunnelV6, proc: &Path) -> Option<String> {
    if let Err(e) = firewall::check_forwarding(Family::V6, proc) {
        return Some(e.to_string());
    }
    match ifaddr6::read(proc) {
        Ok(text) if ifaddr6::holds(&text, tun, t.address) => None,
        // `run` goes on without it when the kernel refuses it.
        Ok(_) => Some(format!(
            "the tun {tun} does not hold {} (the agent's log says why): IPv6 subnets are unreachable",
            t.address
        )),
        Err(e) => Some(format!(
            "cannot read the VM's IPv6 addresses ({e}): IPv6 subnets are unreachable"
        )),
    }
}

/// Everything `verify` checks, with the kernel's files under `proc`. IPv6
/// that was asked for and cannot work is a problem: the daemon's status then
/// says why instead of "all rules present".
async fn verify_report(args: &RunArgs, proc: &Path) -> Result<VerifyReport> {
    let v6 = tunnel_v6(args)?;
    let fw = detect_firewall(args).await?;
    let mut out = VerifyReport::default();
    verify_family(&fw, &args.tag, &mut out).await;
    if let (Some(t), Some(fw6)) = (v6, twin_firewall(args, &fw, v6.as_ref())?) {
        if let Some(problem) = ipv6_path_problem(&args.tun_name, &t, proc) {
            out.lines.push(format!("{}: {problem}", Family::V6));
            out.problems
                .push(format!("{}: {problem}", Family::V6.name()));
        }
        verify_family(&fw6, &args.tag, &mut out).await;
    }
    Ok(out)
}

/// Used by `connector doctor` and the daemon's status through `docker exec`.
async fn verify(args: RunArgs) -> Result<()> {
    let report = verify_report(&args, Path::new(firewall::PROC)).await?;
    for line in &report.lines {
        println!("{line}");
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", report.problems.join("; "))
    }
}

async fn cleanup(args: CleanupArgs) -> Result<()> {
    firewall::validate_tag(&args.tag)?;
    let mut total = 0;
    let mut listed_v4 = false;
    // IPv6 too whatever this run was told: an earlier agent may have had it.
    for family in [Family::V4, Family::V6] {
        let binaries = args.iptables.binaries(family)?;
        for backend in [Backend::Legacy, Backend::Nft] {
            let ipt: &IptablesCmd = binaries.get(backend);
            let label = label(backend, family);
            // Table by table: a variant whose kernel side lacks a table (legacy
            // without its modules) still gets the others cleaned.
            for table in Table::ALL {
                match firewall::remove_tagged(ipt, &args.tag, &[table]).await {
                    Ok(removed) => {
                        listed_v4 |= family == Family::V4;
                        for r in removed {
                            total += r.copies;
                            println!(
                                "removed [{label}] {} ({} cop{})",
                                r.rule,
                                r.copies,
                                if r.copies == 1 { "y" } else { "ies" }
                            );
                        }
                    }
                    Err(e) if e.is_not_found() => {
                        eprintln!("skipped [{label}]: {} not found", ipt.program.display());
                        break;
                    }
                    Err(e) => eprintln!("skipped [{label}] table {table}: {e}"),
                }
            }
        }
    }
    if !listed_v4 {
        bail!("no iptables table could be listed in either variant (the agent needs --cap-add NET_ADMIN and --net host)");
    }
    println!("removed {total} rule(s) tagged {:?}", args.tag);
    let protocol = routes::protocol_for_tag(&args.tag);
    match RouteTable::new(protocol, Vec::new()) {
        Ok(table) => match table.flush().await {
            Ok(removed) => {
                for r in &removed {
                    println!("removed route {r} (proto {protocol})");
                }
                println!("removed {} route(s) of protocol {protocol}", removed.len());
            }
            Err(e) => eprintln!("skipped routes: {e}"),
        },
        Err(e) => eprintln!("skipped routes: {e}"),
    }
    Ok(())
}

/// Settings of the property tests: XorShift, as the default ChaCha generator
/// takes most of their time in unoptimised test builds.
#[cfg(test)]
fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_accepts_the_host_daemon_contract() {
        let cli = Cli::try_parse_from([
            "connector-agent",
            "run",
            "--tun-name",
            "connector-vm",
            "--address",
            "10.254.253.2",
            "--peer-address",
            "10.254.253.1",
            "--prefix",
            "30",
            "--mtu",
            "1420",
            "--endpoint",
            "host.docker.internal:51871",
            "--peer-public-key",
            "AAAA",
            "--private-key-file",
            "/etc/connector/agent.key",
            "--nat",
            "routed",
            "--tag",
            "connector",
            "--keepalive",
            "20",
            "--iptables-legacy",
            "xtables-legacy-multi iptables",
            "--iptables-nft",
            "iptables-nft",
            "--log-level",
            "debug",
        ])
        .unwrap();
        assert_eq!(cli.log_level, "debug");
        let Command::Run(run) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(run.nat, NatMode::Routed);
        assert_eq!((run.prefix, run.mtu, run.keepalive), (30, 1420, 20));
        let bins = run.iptables.binaries(Family::V4).unwrap();
        assert_eq!(bins.legacy.program, PathBuf::from("xtables-legacy-multi"));
        assert_eq!(bins.legacy.pre_args, ["iptables"]);
    }

    #[test]
    fn run_defaults_and_limits() {
        let cli =
            Cli::try_parse_from(["connector-agent", "run", "--peer-public-key", "AAAA"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(run.tun_name, "connector-vm");
        assert_eq!(run.nat, NatMode::Masquerade);
        assert_eq!(run.iptables.iptables_legacy, "iptables-legacy");
        assert_eq!(
            run.private_key_file,
            PathBuf::from("/etc/connector/agent.key")
        );
        assert!(
            Cli::try_parse_from(["connector-agent", "run"]).is_err(),
            "peer key is required"
        );
        assert!(Cli::try_parse_from([
            "connector-agent",
            "run",
            "--peer-public-key",
            "A",
            "--prefix",
            "33"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "connector-agent",
            "run",
            "--peer-public-key",
            "A",
            "--nat",
            "snat"
        ])
        .is_err());
    }

    #[test]
    fn container_connections_are_off_unless_asked_for_in_run_and_verify() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).unwrap();
            match cli.command {
                Command::Run(a) | Command::Verify(a) => a.allow_container_connections,
                other => panic!("unexpected {other:?}"),
            }
        };
        for sub in ["run", "verify"] {
            assert!(!parse(&["connector-agent", sub, "--peer-public-key", "A"]));
            assert!(parse(&[
                "connector-agent",
                sub,
                "--peer-public-key",
                "A",
                "--allow-container-connections"
            ]));
        }
    }

    #[test]
    fn cleanup_and_version_parse() {
        let cli =
            Cli::try_parse_from(["connector-agent", "cleanup", "--tag", "fwtest-tag"]).unwrap();
        let Command::Cleanup(c) = cli.command else {
            panic!("expected cleanup")
        };
        assert_eq!(c.tag, "fwtest-tag");
        assert!(matches!(
            Cli::try_parse_from(["connector-agent", "version"])
                .unwrap()
                .command,
            Command::Version
        ));
    }

    #[test]
    fn endpoint_syntax() {
        assert!(check_endpoint("host.docker.internal:51871").is_ok());
        assert!(check_endpoint("192.168.65.254:1").is_ok());
        assert!(check_endpoint("[fd00::1]:51871").is_ok());
        for bad in [
            "host.docker.internal",
            ":51871",
            "h:0",
            "h:70000",
            "h:x",
            "h:+80",
            "h:",
            "a b:1",
            "h\n:1",
            "[fd00::1:51871",
            "[nope]:1",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
        let long = format!("{}:1", "h".repeat(300));
        let err = check_endpoint(&long).unwrap_err().to_string();
        assert_eq!(
            err,
            "--endpoint is 302 bytes long; a host name has at most 253"
        );
    }

    fn run_args(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["connector-agent", "run", "--peer-public-key", "A"];
        argv.extend(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Run(args) => Ok(args),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn v6_args(address: &str, peer: &str, prefix: &str) -> Result<RunArgs, clap::Error> {
        run_args(&[
            "--address6",
            address,
            "--peer-address6",
            peer,
            "--prefix6",
            prefix,
        ])
    }

    #[test]
    fn ipv6_flags_of_the_host_contract() {
        let args = v6_args("fd5c:9a2e:83b1:fe53::2", "fd5c:9a2e:83b1:fe53::1", "126").unwrap();
        assert_eq!(
            tunnel_v6(&args).unwrap(),
            Some(TunnelV6 {
                address: "fd5c:9a2e:83b1:fe53::2".parse().unwrap(),
                peer: "fd5c:9a2e:83b1:fe53::1".parse().unwrap(),
                prefix: 126,
            })
        );
        // Without --address6 nothing of IPv6 is set up.
        let plain = run_args(&[]).unwrap();
        assert_eq!(tunnel_v6(&plain).unwrap(), None);
        assert_eq!(plain.prefix6, 126);
        assert_eq!(
            (
                plain.iptables.ip6tables_legacy.as_str(),
                plain.iptables.ip6tables_nft.as_str()
            ),
            ("ip6tables-legacy", "ip6tables-nft")
        );
        let bins = run_args(&["--ip6tables-nft", "xtables-nft-multi ip6tables"])
            .unwrap()
            .iptables
            .binaries(Family::V6)
            .unwrap();
        assert_eq!(bins.nft.program, PathBuf::from("xtables-nft-multi"));
        assert_eq!(bins.nft.pre_args, ["ip6tables"]);
        assert_eq!(bins.legacy.program, PathBuf::from("ip6tables-legacy"));
        let err = run_args(&["--ip6tables-legacy", " "])
            .unwrap()
            .iptables
            .binaries(Family::V6)
            .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "--ip6tables-legacy: empty iptables command"
        );
        // Both ends or neither; verify takes them like run.
        for half in [
            &["--address6", "fd00::2"][..],
            &["--peer-address6", "fd00::1"][..],
        ] {
            let err = run_args(half).unwrap_err().to_string();
            assert!(err.contains("required"), "{err}");
        }
        let cli = Cli::try_parse_from([
            "connector-agent",
            "verify",
            "--peer-public-key",
            "A",
            "--address6",
            "fd00::2",
            "--peer-address6",
            "fd00::1",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Verify(a) if a.address6.is_some()));
    }

    #[test]
    fn ipv6_flags_read_their_environment_names() {
        let cmd = Cli::command();
        let run = cmd.find_subcommand("run").unwrap();
        let env = |id: &str| {
            run.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        for (id, name) in [
            ("address6", "CONNECTOR_AGENT_ADDRESS6"),
            ("peer_address6", "CONNECTOR_AGENT_PEER_ADDRESS6"),
            ("prefix6", "CONNECTOR_AGENT_PREFIX6"),
            ("ip6tables_legacy", "CONNECTOR_AGENT_IP6TABLES_LEGACY"),
            ("ip6tables_nft", "CONNECTOR_AGENT_IP6TABLES_NFT"),
        ] {
            assert_eq!(env(id).as_deref(), Some(name), "{id}");
        }
    }

    #[test]
    fn ipv6_tunnel_addresses_are_checked() {
        let err = |a: &str, p: &str, len: &str| match v6_args(a, p, len) {
            Err(e) => e.to_string(),
            Ok(args) => format!("{:#}", tunnel_v6(&args).unwrap_err()),
        };
        for (a, p, len, want) in [
            ("fe80::2", "fe80::1", "64", "--address6 fe80::2 is a link-local address"),
            ("fd00::2", "ff02::1", "126", "--peer-address6 ff02::1 is a multicast address"),
            ("::1", "::2", "126", "--address6 ::1 is the loopback address"),
            ("::", "::1", "126", "--address6 :: is the unspecified address"),
            ("::ffff:10.0.0.2", "::ffff:10.0.0.1", "126", "--address6 ::ffff:10.0.0.2 is an IPv4-mapped address"),
            ("fd00::1", "fd00::1", "126", "--address6 and --peer-address6 are both fd00::1"),
            ("fd00::2", "fd00::5", "126", "--peer-address6 fd00::5 is outside --address6's network fd00::/126 (--prefix6 126)"),
            ("fd00::2", "fd00::", "126", "--peer-address6 fd00:: is the subnet-router anycast address of fd00::/126"),
            ("fd00::2", "fd00::1", "127", "invalid value '127' for '--prefix6 <PREFIX6>'"),
            ("fd00::2", "fd00::1", "0", "invalid value '0' for '--prefix6 <PREFIX6>'"),
            ("fd00::x", "fd00::1", "126", "invalid value 'fd00::x' for '--address6 <ADDRESS6>'"),
        ] {
            let e = err(a, p, len);
            assert!(e.contains(want), "{a} {p} /{len}: {e}");
        }
        // Global unicast and a wider network are fine.
        assert!(tunnel_v6(&v6_args("2001:db8::2", "2001:db8::ffff", "64").unwrap()).is_ok());
    }

    #[test]
    fn ipv6_labels_never_read_as_the_ipv4_backend() {
        // The daemon names the backend after `(nft)`, `[nft]`, `(legacy)`, `[legacy]`.
        for backend in [Backend::Legacy, Backend::Nft] {
            let v6 = label(backend, Family::V6);
            assert_eq!(v6, format!("{backend} ipv6"));
            for b in ["nft", "legacy"] {
                for shown in [format!("[{v6}]"), format!("({v6})")] {
                    assert!(
                        !shown.contains(&format!("[{b}]")) && !shown.contains(&format!("({b})"))
                    );
                }
            }
            assert_eq!(label(backend, Family::V4), backend.as_str());
        }
    }

    /// A command-line value running `fake`.
    fn fake_arg(fake: &firewall::tests::Fake) -> String {
        let cmd = fake.cmd();
        format!("{} {}", cmd.program.display(), cmd.pre_args.join(" "))
    }

    #[tokio::test]
    async fn verify_reports_ipv6_next_to_ipv4() {
        use firewall::tests::{docker_tables, empty_tables, engine_20_ipv6_tables, Fake};
        let legacy = Fake::new("verify-legacy", &empty_tables());
        let nft = Fake::new("verify-nft", &docker_tables());
        let nft6 = Fake::new("verify-nft6", &engine_20_ipv6_tables());
        // The kernel's files: forwarding off, the tun without its address.
        let proc =
            std::env::temp_dir().join(format!("connector-agent-verify-{}", std::process::id()));
        let forwarding = firewall::sysctl_path(&proc, Family::V6.forwarding_sysctl());
        std::fs::create_dir_all(forwarding.parent().unwrap()).unwrap();
        std::fs::create_dir_all(proc.join("net")).unwrap();
        std::fs::write(&forwarding, "0\n").unwrap();
        let if_inet6 = proc.join("net/if_inet6");
        let tun_line = "fd000000000000000000000000000002 02 7e 00 80 connector-vm\n";
        std::fs::write(&if_inet6, "").unwrap();
        let (legacy_arg, nft_arg, nft6_arg) = (fake_arg(&legacy), fake_arg(&nft), fake_arg(&nft6));
        let with = |ip6tables_nft: &str, v6: bool| {
            let mut extra = vec![
                "--iptables-legacy",
                legacy_arg.as_str(),
                "--iptables-nft",
                nft_arg.as_str(),
                "--ip6tables-legacy",
                "/nonexistent/ip6tables-legacy",
                "--ip6tables-nft",
                ip6tables_nft,
                "--nat",
                "routed",
            ];
            if v6 {
                extra.extend(["--address6", "fd00::2", "--peer-address6", "fd00::1"]);
            }
            run_args(&extra).unwrap()
        };

        // IPv4 rules in place, IPv6 neither installed nor forwarded.
        let args = with(&nft6_arg, true);
        let fw = detect_firewall(&args).await.unwrap();
        fw.ensure().await.unwrap();
        let report = verify_report(&args, &proc).await.unwrap();
        assert_eq!(
            report.lines[0],
            "ok: all 4 rules tagged \"connector\" are in place (nft)"
        );
        assert_eq!(
            report.lines[1],
            "ipv6: forwarding is off in the Docker VM (net.ipv6.conf.all.forwarding=0): IPv6 subnets are unreachable"
        );
        assert_eq!(
            report.lines[2],
            "missing: [nft ipv6] -t raw -A PREROUTING -i connector-vm -m comment --comment connector -j ACCEPT"
        );
        assert!(
            report.lines[3].starts_with("missing: [nft ipv6] -t filter -A FORWARD -i connector-vm")
        );
        assert_eq!(report.lines.len(), 6);
        assert_eq!(report.problems.len(), 2);
        // Without --address6, IPv6 is not looked at at all.
        let calls = nft6.calls();
        std::fs::write(&forwarding, "garbage").unwrap();
        let report = verify_report(&with(&nft6_arg, false), &proc).await.unwrap();
        assert_eq!(report.lines.len(), 1);
        assert!(report.problems.is_empty());
        assert_eq!(nft6.calls(), calls);

        // Forwarding on, but the tun never got its address.
        std::fs::write(&forwarding, "1\n").unwrap();
        let report = verify_report(&args, &proc).await.unwrap();
        assert_eq!(
            report.lines[1],
            "ipv6: the tun connector-vm does not hold fd00::2 (the agent's log says why): IPv6 subnets are unreachable"
        );
        std::fs::remove_file(&if_inet6).unwrap();
        let report = verify_report(&args, &proc).await.unwrap();
        assert!(
            report.lines[1].starts_with("ipv6: cannot read the VM's IPv6 addresses (No such file"),
            "{}",
            report.lines[1]
        );

        // Forwarding on, the address there and the twins installed: two `ok:` lines.
        std::fs::write(&if_inet6, tun_line).unwrap();
        fw.twin(
            firewall_spec(&args, "fd00::1".parse::<Ipv6Addr>().unwrap().into()),
            &args.iptables.binaries(Family::V6).unwrap(),
        )
        .unwrap()
        .ensure()
        .await
        .unwrap();
        let report = verify_report(&args, &proc).await.unwrap();
        assert_eq!(
            report.lines[1],
            "ok: all 4 IPv6 rules tagged \"connector\" are in place (nft ipv6, in FORWARD: the engine has no IPv6 DOCKER-USER)"
        );
        assert!(report.problems.is_empty(), "{:?}", report.problems);

        // No ip6tables: one line says so, IPv4 still reads ok.
        let report = verify_report(&with("/nonexistent/ip6tables-nft", true), &proc)
            .await
            .unwrap();
        assert_eq!(
            report.lines[0],
            "ok: all 4 rules tagged \"connector\" are in place (nft)"
        );
        assert_eq!(
            report.lines[1],
            "ipv6: rules cannot be listed [nft ipv6]: could not run `/nonexistent/ip6tables-nft -w 10 -t filter -S`: No such file or directory (os error 2)"
        );
        assert_eq!(report.problems, ["IPv6 rules cannot be listed"]);
        let _ = std::fs::remove_dir_all(&proc);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn port() -> impl Strategy<Value = String> {
            prop_oneof![
                (1u16..).prop_map(|p| p.to_string()),
                Just("0".to_owned()),
                "[+-]?[0-9]{0,7}",
                "\\PC{0,6}",
            ]
        }

        fn host() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,10}){0,4}",
                any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
                any::<u128>().prop_map(|a| format!("[{}]", std::net::Ipv6Addr::from(a))),
                "\\PC{0,30}",
                (0usize..400).prop_map(|n| "h".repeat(n)),
            ]
        }

        proptest! {
            #![proptest_config(crate::proptest_config(2000))]

            #[test]
            fn endpoints_are_checked_without_panicking(
                endpoint in prop_oneof![
                    (host(), port()).prop_map(|(h, p)| format!("{h}:{p}")),
                    any::<String>(),
                ],
            ) {
                let Ok(()) = check_endpoint(&endpoint) else {
                    return Ok(());
                };
                // Accepted: what `resolve` can look up.
                prop_assert!(endpoint.len() <= MAX_HOST + 6);
                let (host, port) = endpoint.rsplit_once(':').unwrap();
                prop_assert!(port.parse::<u16>().is_ok_and(|p| p > 0));
                prop_assert!(!host.is_empty() && !host.contains(char::is_whitespace));
            }

            #[test]
            fn names_and_addresses_with_a_port_are_accepted(
                host in prop_oneof![
                    "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,10}){0,4}",
                    any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
                    any::<u128>().prop_map(|a| format!("[{}]", std::net::Ipv6Addr::from(a))),
                ],
                port in 1u16..,
            ) {
                let endpoint = format!("{host}:{port}");
                prop_assert!(check_endpoint(&endpoint).is_ok(), "{}", endpoint);
            }
        }
    }
}
