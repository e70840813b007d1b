//! connector-agent: runs as a host-network container inside the Docker VM,
//! holds the VM end of the WireGuard tunnel and the firewall rules that let
//! routed traffic from the tunnel reach containers.

mod control;
mod firewall;
mod routes;

use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
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

use firewall::{Backend, Binaries, Firewall, FirewallSpec, IptablesCmd, NatMode, Table};
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
    /// Check (read-only) that every rule `run` would install is in place;
    /// takes the same arguments as `run`. Exit 1 and one line per missing rule.
    Verify(RunArgs),
    /// Remove every rule carrying the tag, in both iptables variants.
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
}

impl IptablesArgs {
    fn binaries(&self) -> Result<Binaries> {
        Ok(Binaries {
            legacy: self.iptables_legacy.parse().context("--iptables-legacy")?,
            nft: self.iptables_nft.parse().context("--iptables-nft")?,
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

async fn run(args: RunArgs) -> Result<()> {
    let mut shutdown = Shutdown::install().context("installing the SIGTERM/SIGINT handlers")?;
    check_endpoint(&args.endpoint)?;
    if args.address == args.peer_address {
        bail!("--address and --peer-address are both {}", args.address);
    }
    firewall::check_ip_forward(Path::new(firewall::IP_FORWARD_PATH))?;
    // Keys before any rule goes in: a bad key must not leave rules behind.
    let private_key = keys::read_private_key_file(&args.private_key_file)?;
    let peer_public = keys::parse_public_key(&args.peer_public_key).context("--peer-public-key")?;

    let fw = detect_firewall(&args).await?;
    tracing::info!(backend = %fw.backend(), reason = fw.reason(), "iptables variant");
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
    let result = match install_rules(&fw).await {
        Ok(()) => {
            serve(
                &args,
                &fw,
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
    let removal = fw.remove().await;
    match &removal {
        Ok(removed) => {
            for r in removed {
                tracing::info!(rule = %r.rule, copies = r.copies, "removed firewall rule");
            }
        }
        Err(e) => tracing::error!(error = %e, "removing firewall rules failed"),
    }
    result?;
    removal.context("removing firewall rules")?;
    tracing::info!("stopped");
    Ok(())
}

async fn install_rules(fw: &Firewall) -> Result<()> {
    let report = fw.ensure().await.context("installing firewall rules")?;
    log_report(&report, false);
    let missing = fw.verify().await.context("verifying firewall rules")?;
    if !missing.is_empty() {
        for m in &missing {
            tracing::error!(rule = %m.rule, reason = ?m.reason, "rule not in effect after install");
        }
        bail!(
            "{} firewall rule(s) not in effect right after installing them",
            missing.len()
        );
    }
    let spec = fw.spec();
    tracing::info!(nat = spec.nat.as_str(), tag = %spec.tag,
                   allow_container_connections = spec.allow_container_connections,
                   "firewall rules in place");
    Ok(())
}

fn log_report(report: &firewall::EnsureReport, reassert: bool) {
    if !report.changed() {
        tracing::debug!("firewall rules already in place");
        return;
    }
    for r in &report.removed_stale {
        tracing::info!(rule = %r.rule, copies = r.copies, "removed stale tagged rule");
    }
    if report.removed_duplicates > 0 {
        tracing::info!(count = report.removed_duplicates, "removed duplicate rules");
    }
    for r in &report.reordered {
        tracing::warn!(rule = %r, "rule was behind a DROP; moved back to the top");
    }
    for r in &report.inserted {
        if reassert {
            tracing::warn!(rule = %r, "rule had disappeared; re-inserted");
        } else {
            tracing::info!(rule = %r, "inserted rule");
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

async fn serve(
    args: &RunArgs,
    fw: &Firewall,
    routes: Arc<RouteTable>,
    private_key: keys::StaticSecret,
    peer_public: keys::PublicKey,
    shutdown: &mut Shutdown,
) -> Result<()> {
    let device = connector_tunnel::tun::create(&connector_tunnel::tun::TunSpec {
        name: Some(args.tun_name.clone()),
        address: args.address,
        peer: args.peer_address,
        prefix: args.prefix,
        address6: None,
        mtu: args.mtu,
    })
    .with_context(|| {
        format!(
            "creating tun {} (needs --cap-add NET_ADMIN and --device /dev/net/tun)",
            args.tun_name
        )
    })?;
    tracing::info!(tun = %args.tun_name, address = %args.address, peer = %args.peer_address,
                   prefix = args.prefix, mtu = args.mtu, "tun up");
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
            allowed_sources: vec![ipnet::IpNet::V4(args.peer_address.into())],
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
                match fw.ensure().await {
                    Ok(report) => log_report(&report, true),
                    Err(e) => tracing::warn!(error = %e, "re-asserting firewall rules failed"),
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

/// The agent's rules for these arguments, in the iptables variant Docker uses.
async fn detect_firewall(args: &RunArgs) -> Result<Firewall> {
    let spec = FirewallSpec {
        tun: args.tun_name.clone(),
        host_tunnel_ip: args.peer_address,
        nat: args.nat,
        tag: args.tag.clone(),
        allow_container_connections: args.allow_container_connections,
    };
    Firewall::detect(spec, &args.iptables.binaries()?)
        .await
        .context("choosing the iptables variant")
}

/// Used by `connector doctor` through `docker exec`.
async fn verify(args: RunArgs) -> Result<()> {
    let fw = detect_firewall(&args).await?;
    let missing = fw.verify().await.context("listing the firewall rules")?;
    let wanted = firewall::desired_rules(fw.spec()).len();
    if missing.is_empty() {
        println!(
            "ok: all {wanted} rules tagged {:?} are in place ({})",
            args.tag,
            fw.backend()
        );
        return Ok(());
    }
    for m in &missing {
        let why = match m.reason {
            firewall::MissingReason::Absent => "missing",
            firewall::MissingReason::Shadowed => "behind a DROP rule",
        };
        println!("{why}: [{}] {}", fw.backend(), m.rule);
    }
    bail!(
        "{} of {wanted} firewall rules are not in place",
        missing.len()
    )
}

async fn cleanup(args: CleanupArgs) -> Result<()> {
    firewall::validate_tag(&args.tag)?;
    let binaries = args.iptables.binaries()?;
    let mut total = 0;
    let mut listed_any = false;
    for backend in [Backend::Legacy, Backend::Nft] {
        let ipt: &IptablesCmd = binaries.get(backend);
        // Table by table: a variant whose kernel side lacks a table (legacy
        // without its modules) still gets the others cleaned.
        for table in Table::ALL {
            match firewall::remove_tagged(ipt, &args.tag, &[table]).await {
                Ok(removed) => {
                    listed_any = true;
                    for r in removed {
                        total += r.copies;
                        println!(
                            "removed [{backend}] {} ({} cop{})",
                            r.rule,
                            r.copies,
                            if r.copies == 1 { "y" } else { "ies" }
                        );
                    }
                }
                Err(e) if e.is_not_found() => {
                    eprintln!("skipped [{backend}]: {} not found", ipt.program.display());
                    break;
                }
                Err(e) => eprintln!("skipped [{backend}] table {table}: {e}"),
            }
        }
    }
    if !listed_any {
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
        let bins = run.iptables.binaries().unwrap();
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
