//! The TOML configuration. Every key is optional; an empty file (or none)
//! gives the embedded defaults. Unknown keys and bad values are errors that
//! name the key and the value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

pub use connector_protocol::agent_args::NatMode;
use globset::{Glob, GlobSet, GlobSetBuilder};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

pub const DEFAULT_MTU: u16 = 1420;
/// Docker Desktop's user-space relay drops larger UDP payloads; see README.
pub const MAX_MTU: u16 = 1420;
pub const MIN_MTU: u16 = 1280;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetworks {
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
}

/// The file as written; `None` = not set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    docker_host: Option<String>,
    agent_image: Option<String>,
    agent_name: Option<String>,
    host_address: Option<String>,
    listen_address: Option<String>,
    listen_port: Option<i64>,
    tunnel: Option<String>,
    tunnel_v6: Option<String>,
    ipv6: Option<bool>,
    mtu: Option<i64>,
    nat: Option<String>,
    state_dir: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    networks: Option<RawNetworks>,
    kind: Option<RawKind>,
    allow_conflicts: Option<Vec<String>>,
    allow_container_connections: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKind {
    pods: Option<bool>,
    services: Option<bool>,
    clusters: Option<Vec<String>>,
}

/// `[kind]`: what to route for kind clusters (node IPs come with the `kind`
/// Docker network and follow `[networks]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindConfig {
    /// Route pod IPs (each node's podCIDR via that node).
    pub pods: bool,
    /// Route Service ClusterIPs (via a node; kube-proxy translates them).
    pub services: bool,
    /// Clusters to route, in order of preference when their CIDRs overlap;
    /// empty = all (the most recently created wins an overlap).
    pub clusters: Vec<String>,
}

impl Default for KindConfig {
    fn default() -> Self {
        KindConfig {
            pods: true,
            services: true,
            clusters: Vec::new(),
        }
    }
}

/// Which Docker networks to route, by name or glob.
#[derive(Debug, Clone)]
pub struct NetworkFilter {
    include_set: GlobSet,
    exclude_set: GlobSet,
}

impl NetworkFilter {
    pub fn new(include: Vec<String>, exclude: Vec<String>) -> Result<Self, ConfigError> {
        let build = |key: &'static str, patterns: &[String]| {
            let mut set = GlobSetBuilder::new();
            for p in patterns {
                let glob = Glob::new(p).map_err(|e| ConfigError::Invalid {
                    key,
                    value: p.clone(),
                    reason: e.kind().to_string(),
                })?;
                set.add(glob);
            }
            set.build().map_err(|e| ConfigError::Invalid {
                key,
                value: patterns.join(","),
                reason: e.to_string(),
            })
        };
        Ok(NetworkFilter {
            include_set: build("networks.include", &include)?,
            exclude_set: build("networks.exclude", &exclude)?,
        })
    }

    /// `None` if the network should be routed, else why not.
    pub fn rejects(&self, name: &str) -> Option<&'static str> {
        if !self.include_set.is_match(name) {
            Some("not in networks.include")
        } else if self.exclude_set.is_match(name) {
            Some("in networks.exclude")
        } else {
            None
        }
    }
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub docker_host: Option<String>,
    pub agent_image: String,
    pub agent_name: String,
    pub host_address: String,
    pub listen_address: IpAddr,
    pub listen_port: u16,
    pub tunnel: Ipv4Net,
    /// The tunnel's IPv6 network (host = ::1, agent = ::2 of it); `None`
    /// when `ipv6 = false`: no IPv6 address, route or rule anywhere.
    pub tunnel_v6: Option<Ipv6Net>,
    pub mtu: u16,
    pub nat: NatMode,
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
    pub networks: NetworkFilter,
    pub kind: KindConfig,
    /// Foreign routes inside these CIDRs are not conflicts (a corporate VPN's
    /// `10.0.0.0/8`): the more specific Docker subnet is routed anyway.
    pub allow_conflicts: Vec<IpNet>,
    /// Let containers open connections to the host through the tunnel
    /// (default: only replies to connections the host opened).
    pub allow_container_connections: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} cannot be read: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}` has a bad value {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

pub const DEFAULT_AGENT_IMAGE: &str = concat!("connector-agent:", env!("CARGO_PKG_VERSION"));
pub const DEFAULT_AGENT_NAME: &str = "connector-agent";
pub const DEFAULT_HOST_ADDRESS: &str = "host.docker.internal";
pub const DEFAULT_LISTEN_PORT: u16 = 51871;
/// A /30 from a corner of 10/8 that home routers, VPNs and Docker's own
/// address pools rarely use.
pub const DEFAULT_TUNNEL: &str = "10.254.253.0/30";
/// A ULA /126 whose global ID is random (RFC 4193), so it collides with
/// nothing a user or a VPN is likely to have.
pub const DEFAULT_TUNNEL_V6: &str = "fd5c:9a2e:83b1:fe53::/126";

pub fn default_state_dir() -> PathBuf {
    if cfg!(target_os = "macos") {
        PathBuf::from("/Library/Application Support/connector")
    } else {
        PathBuf::from("/var/lib/connector")
    }
}

pub fn default_control_socket() -> PathBuf {
    PathBuf::from("/var/run/connector.sock")
}

impl Config {
    /// Reads `path`, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::from_toml("", Path::new("<defaults>")),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                    path: path.to_owned(),
                    error,
                })?;
                Config::from_toml(&text, path)
            }
        }
    }

    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: match e.span() {
                Some(span) => {
                    let line = text[..span.start].matches('\n').count() + 1;
                    let shown = text.lines().nth(line - 1).unwrap_or("").trim();
                    format!("line {line} `{shown}`: {}", e.message().trim())
                }
                None => e.message().trim().to_owned(),
            },
        })?;
        Config::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let non_empty = |key: &'static str, value: Option<String>, default: &str| {
            let value = value.unwrap_or_else(|| default.to_owned());
            if value.trim().is_empty() {
                Err(invalid(key, &value, "must not be empty"))
            } else {
                Ok(value)
            }
        };

        let docker_host = match raw.docker_host {
            Some(h)
                if !(h.starts_with("unix://") || h.starts_with("tcp://") || h.starts_with('/')) =>
            {
                return Err(invalid(
                    "docker_host",
                    &h,
                    "expected unix:///path, tcp://host:port or an absolute socket path",
                ))
            }
            other => other,
        };
        let agent_image = non_empty("agent_image", raw.agent_image, DEFAULT_AGENT_IMAGE)?;
        let agent_name = non_empty("agent_name", raw.agent_name, DEFAULT_AGENT_NAME)?;
        if agent_name.len() > 64
            || !agent_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            || !agent_name.starts_with(|c: char| c.is_ascii_alphanumeric())
        {
            return Err(invalid(
                "agent_name",
                &agent_name,
                "a container name of at most 64 letters, digits, '_', '.', '-', starting with a letter or digit",
            ));
        }
        let host_address = non_empty("host_address", raw.host_address, DEFAULT_HOST_ADDRESS)?;
        if host_address.contains(char::is_whitespace)
            || host_address.contains(':') && host_address.parse::<IpAddr>().is_err()
        {
            return Err(invalid(
                "host_address",
                &host_address,
                "expected a host name or an IP address (no port)",
            ));
        }
        let listen_address = match raw.listen_address {
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(a) => a
                .parse()
                .map_err(|_| invalid("listen_address", &a, "expected an IP address"))?,
        };
        let listen_port = raw.listen_port.unwrap_or(DEFAULT_LISTEN_PORT.into());
        let listen_port = u16::try_from(listen_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                invalid(
                    "listen_port",
                    &listen_port,
                    "must be 1-65535 (the agent must know the port)",
                )
            })?;
        let tunnel_text = raw.tunnel.unwrap_or_else(|| DEFAULT_TUNNEL.to_owned());
        let tunnel: Ipv4Net = tunnel_text.parse().map_err(|_| {
            invalid(
                "tunnel",
                &tunnel_text,
                "expected an IPv4 CIDR such as 10.254.253.0/30",
            )
        })?;
        check_tunnel("tunnel", &tunnel_text, tunnel.into())?;
        let tunnel_v6_text = raw
            .tunnel_v6
            .unwrap_or_else(|| DEFAULT_TUNNEL_V6.to_owned());
        let tunnel_v6: Ipv6Net = tunnel_v6_text.parse().map_err(|_| {
            invalid(
                "tunnel_v6",
                &tunnel_v6_text,
                &format!("expected an IPv6 CIDR such as {DEFAULT_TUNNEL_V6}"),
            )
        })?;
        check_tunnel("tunnel_v6", &tunnel_v6_text, tunnel_v6.into())?;
        let first = tunnel_v6.network().segments()[0];
        if first & 0xffc0 == 0xfe80 || first & 0xff00 == 0xff00 || tunnel_v6.network().is_loopback()
        {
            return Err(invalid(
                "tunnel_v6",
                &tunnel_v6_text,
                "must be a unicast range (a ULA under fd00::/8 is best), not link-local, multicast or loopback",
            ));
        }
        let tunnel_v6 = raw.ipv6.unwrap_or(true).then_some(tunnel_v6);
        let mtu = raw.mtu.unwrap_or(DEFAULT_MTU.into());
        let mtu = u16::try_from(mtu)
            .ok()
            .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
            .ok_or_else(|| {
                invalid(
                    "mtu",
                    &mtu,
                    &format!("must be between {MIN_MTU} and {MAX_MTU} (Docker Desktop's UDP relay drops larger datagrams)"),
                )
            })?;
        let nat = match raw.nat.as_deref() {
            None => NatMode::Masquerade,
            Some(text) => text
                .parse()
                .map_err(|_| invalid("nat", &text, "expected \"masquerade\" or \"routed\""))?,
        };
        let state_dir = raw.state_dir.unwrap_or_else(default_state_dir);
        if !state_dir.is_absolute() {
            return Err(invalid(
                "state_dir",
                &state_dir.display(),
                "must be an absolute path",
            ));
        }
        let control_socket = raw.control_socket.unwrap_or_else(default_control_socket);
        if !control_socket.is_absolute() {
            return Err(invalid(
                "control_socket",
                &control_socket.display(),
                "must be an absolute path",
            ));
        }
        let networks = raw.networks.unwrap_or_default();
        let networks = NetworkFilter::new(
            networks.include.unwrap_or_else(|| vec!["*".to_owned()]),
            networks.exclude.unwrap_or_default(),
        )?;
        let raw_kind = raw.kind.unwrap_or_default();
        let clusters = raw_kind.clusters.unwrap_or_default();
        for (i, name) in clusters.iter().enumerate() {
            // kind's own rule for cluster names (they become container names).
            let valid = !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c));
            if !valid {
                return Err(invalid(
                    "kind.clusters",
                    name,
                    "a kind cluster name: lowercase letters, digits, '.' and '-'",
                ));
            }
            if clusters[..i].contains(name) {
                return Err(invalid("kind.clusters", name, "listed twice"));
            }
        }
        let kind = KindConfig {
            pods: raw_kind.pods.unwrap_or(true),
            services: raw_kind.services.unwrap_or(true),
            clusters,
        };
        let allow_conflicts = raw
            .allow_conflicts
            .unwrap_or_default()
            .iter()
            .map(|text| {
                let net: IpNet = text.parse().map_err(|_| {
                    invalid(
                        "allow_conflicts",
                        text,
                        "expected a CIDR such as 10.0.0.0/8 or fd00::/8",
                    )
                })?;
                if net.trunc() != net {
                    return Err(invalid(
                        "allow_conflicts",
                        text,
                        &format!("has host bits set; did you mean {}?", net.trunc()),
                    ));
                }
                Ok(net)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            docker_host,
            agent_image,
            agent_name,
            host_address,
            listen_address,
            listen_port,
            tunnel,
            tunnel_v6,
            mtu,
            nat,
            state_dir,
            control_socket,
            networks,
            kind,
            allow_conflicts,
            allow_container_connections: raw.allow_container_connections.unwrap_or(false),
        })
    }

    /// The host's address inside the tunnel (first usable).
    pub fn host_tunnel_ip(&self) -> Ipv4Addr {
        self.tunnel.hosts().next().expect("validated: prefix <= 30")
    }

    /// The agent's address inside the tunnel (second usable).
    pub fn agent_tunnel_ip(&self) -> Ipv4Addr {
        self.tunnel.hosts().nth(1).expect("validated: prefix <= 30")
    }

    /// The host's IPv6 address inside the tunnel (`::1` of `tunnel_v6`), when
    /// IPv6 is on.
    pub fn host_tunnel_ip6(&self) -> Option<Ipv6Addr> {
        self.tunnel_v6.map(|net| nth_v6(net, 1))
    }

    /// The agent's IPv6 address inside the tunnel (`::2` of `tunnel_v6`).
    pub fn agent_tunnel_ip6(&self) -> Option<Ipv6Addr> {
        self.tunnel_v6.map(|net| nth_v6(net, 2))
    }

    /// The agent's own tunnel addresses (both families), as host routes: what
    /// it may send from besides the routed subnets.
    pub fn agent_tunnel_nets(&self) -> Vec<IpNet> {
        std::iter::once(IpNet::from(IpAddr::V4(self.agent_tunnel_ip())))
            .chain(self.agent_tunnel_ip6().map(|a| IpNet::from(IpAddr::V6(a))))
            .collect()
    }

    pub fn host_key_path(&self) -> PathBuf {
        self.state_dir.join("host.key")
    }
}

fn invalid(key: &'static str, value: &dyn std::fmt::Display, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason: reason.to_owned(),
    }
}

/// What both tunnel networks need: room for the host's and the agent's
/// address, and no host bits.
fn check_tunnel(key: &'static str, text: &str, net: IpNet) -> Result<(), ConfigError> {
    let max = net.max_prefix_len() - 2;
    if net.prefix_len() > max {
        return Err(invalid(
            key,
            &text,
            &format!("needs room for two addresses: use a prefix of /{max} or shorter"),
        ));
    }
    if net.trunc() != net {
        return Err(invalid(
            key,
            &text,
            &format!("has host bits set; did you mean {}?", net.trunc()),
        ));
    }
    Ok(())
}

fn nth_v6(net: Ipv6Net, n: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()) + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.agent_name, "connector-agent");
        assert_eq!(c.host_address, "host.docker.internal");
        assert_eq!(c.listen_address, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(c.mtu, 1420);
        assert_eq!(c.nat, NatMode::Masquerade);
        assert_eq!(c.host_tunnel_ip(), Ipv4Addr::new(10, 254, 253, 1));
        assert_eq!(c.agent_tunnel_ip(), Ipv4Addr::new(10, 254, 253, 2));
        assert!(c.networks.rejects("bridge").is_none());
    }

    #[test]
    fn every_key_is_accepted() {
        let c = parse(
            r#"
            docker_host = "unix:///var/run/docker.sock"
            agent_image = "img:1"
            agent_name = "agent-x"
            host_address = "10.0.0.2"
            listen_address = "0.0.0.0"
            listen_port = 4000
            tunnel = "10.9.8.0/29"
            mtu = 1380
            nat = "routed"
            state_dir = "/tmp/s"
            control_socket = "/tmp/c.sock"
            [networks]
            include = ["kind", "app-*"]
            exclude = ["app-secret"]
            "#,
        )
        .unwrap();
        assert_eq!(c.nat, NatMode::Routed);
        assert_eq!(c.mtu, 1380);
        assert_eq!(c.agent_tunnel_ip(), Ipv4Addr::new(10, 9, 8, 2));
        assert!(c.networks.rejects("kind").is_none());
        assert!(c.networks.rejects("app-web").is_none());
        assert_eq!(
            c.networks.rejects("app-secret"),
            Some("in networks.exclude")
        );
        assert_eq!(
            c.networks.rejects("bridge"),
            Some("not in networks.include")
        );
    }

    #[test]
    fn kind_table_defaults_and_values() {
        assert_eq!(parse("").unwrap().kind, KindConfig::default());
        let d = KindConfig::default();
        assert!(d.pods && d.services && d.clusters.is_empty());
        let c = parse("[kind]\npods = false\nservices = true\nclusters = [\"dev\", \"ci-2.x\"]\n")
            .unwrap();
        assert_eq!(
            c.kind,
            KindConfig {
                pods: false,
                services: true,
                clusters: vec!["dev".into(), "ci-2.x".into()],
            }
        );
    }

    #[test]
    fn kind_table_rejects_bad_keys_and_values_by_name() {
        for (text, key, value) in [
            ("[kind]\npodz = true", "podz", "podz"),
            ("[kind]\npods = \"yes\"", "pods", "yes"),
            ("[kind]\nservices = 1", "services", "1"),
            ("[kind]\nclusters = \"dev\"", "clusters", "dev"),
            ("[kind]\nclusters = [\"Dev\"]", "kind.clusters", "Dev"),
            ("[kind]\nclusters = [\"\"]", "kind.clusters", "\"\""),
            (
                "[kind]\nclusters = [\"a\", \"a\"]",
                "kind.clusters",
                "listed twice",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
            assert!(err.contains(value), "{text}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("mtux = 1400").unwrap_err().to_string();
        assert!(err.contains("mtux"), "{err}");
    }

    #[test]
    fn conflict_and_container_keys() {
        let c = parse("").unwrap();
        assert!(c.allow_conflicts.is_empty() && !c.allow_container_connections);
        let c = parse(
            "allow_conflicts = [\"10.0.0.0/8\", \"fd00::/8\"]\nallow_container_connections = true",
        )
        .unwrap();
        assert_eq!(
            c.allow_conflicts,
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "fd00::/8".parse().unwrap()
            ]
        );
        assert!(c.allow_container_connections);
        let err = parse("allow_conflicts = [\"10.1.2.3/8\"]")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("allow_conflicts") && err.contains("10.0.0.0/8"),
            "{err}"
        );
        let err = parse("allow_conflicts = [\"corp\"]")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("allow_conflicts") && err.contains("corp"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_key_and_value() {
        for (text, key, value) in [
            ("mtu = 99999", "mtu", "99999"),
            ("mtu = 9000", "mtu", "9000"),
            ("nat = \"bridge\"", "nat", "bridge"),
            ("tunnel = \"10.0.0.0/31\"", "tunnel", "10.0.0.0/31"),
            ("tunnel = \"10.0.0.1/30\"", "tunnel", "10.0.0.1/30"),
            ("tunnel = \"banana\"", "tunnel", "banana"),
            ("tunnel_v6 = \"fd00::/127\"", "tunnel_v6", "/126 or shorter"),
            ("tunnel_v6 = \"fd00::1/64\"", "tunnel_v6", "did you mean fd00::/64"),
            ("tunnel_v6 = \"fe80::/64\"", "tunnel_v6", "link-local"),
            ("tunnel_v6 = \"10.0.0.0/30\"", "tunnel_v6", "IPv6 CIDR"),
            (
                "listen_address = \"localhost:1\"",
                "listen_address",
                "localhost:1",
            ),
            ("agent_name = \"bad name\"", "agent_name", "bad name"),
            ("docker_host = \"ssh://x\"", "docker_host", "ssh://x"),
            ("state_dir = \"relative\"", "state_dir", "relative"),
            ("listen_port = 0", "listen_port", "0"),
            ("[networks]\ninclude = [\"[\"]", "networks.include", "["),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
            assert!(err.contains(value), "{text}: {err}");
        }
    }

    #[test]
    fn missing_file_is_named() {
        let err = Config::load(Some(Path::new("/nonexistent/connector.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/connector.toml"), "{err}");
    }

    use proptest::prelude::*;

    /// Every key of the file, with its table.
    const KEYS: &[&str] = &[
        "docker_host",
        "agent_image",
        "agent_name",
        "host_address",
        "listen_address",
        "listen_port",
        "tunnel",
        "mtu",
        "nat",
        "state_dir",
        "control_socket",
        "networks.include",
        "networks.exclude",
        "kind.pods",
        "kind.services",
        "kind.clusters",
    ];

    /// A config error must point at the problem: a key, or a line.
    fn points_somewhere(err: &ConfigError) -> bool {
        match err {
            ConfigError::Invalid { key, .. } => KEYS.contains(key),
            ConfigError::Parse { message, .. } => message.starts_with("line "),
            ConfigError::Read { .. } => false,
        }
    }

    /// Text made of TOML's syntax and this file's keys.
    fn tomlish() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "docker_host",
            "agent_name",
            "listen_port",
            "mtu",
            "tunnel",
            "nat",
            "state_dir",
            "networks",
            "include",
            "kind",
            "pods",
            "clusters",
            "x",
            " = ",
            "=",
            " ",
            "\n",
            "\r\n",
            "[",
            "]",
            "[[",
            "]]",
            "{",
            "}",
            ",",
            ".",
            "\"",
            "'",
            "\"\"\"",
            "'''",
            "\\",
            "#",
            "1",
            "-1",
            "1420",
            "99999999999999999999",
            "1e3",
            "true",
            "\"routed\"",
            "\"/tmp\"",
            "\"10.0.0.0/30\"",
            "\"*\"",
            "\"[\"",
            "1979-05-27",
            "inf",
            "nan",
            "é",
            "\t",
            "\0",
        ]);
        prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
    }

    /// A valid value of every key, each set or not.
    #[derive(Debug, Clone)]
    struct Keys {
        docker_host: Option<String>,
        agent_image: Option<String>,
        agent_name: Option<String>,
        host_address: Option<String>,
        listen_address: Option<IpAddr>,
        listen_port: Option<u16>,
        tunnel: Option<Ipv4Net>,
        mtu: Option<u16>,
        nat: Option<NatMode>,
        state_dir: Option<String>,
        control_socket: Option<String>,
        include: Option<Vec<String>>,
        exclude: Option<Vec<String>>,
        pods: Option<bool>,
        services: Option<bool>,
        clusters: Option<Vec<String>>,
    }

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    fn keys() -> impl Strategy<Value = Keys> {
        let path = || "(/[a-zA-Z0-9 ._-]{1,12}){1,4}";
        let names = || prop::collection::vec("[a-z][a-z0-9-]{0,10}", 0..4);
        let servers = (
            prop::option::of(prop_oneof![
                path().prop_map(|p| format!("unix://{p}")),
                (ip(), any::<u16>()).prop_map(|(ip, port)| format!(
                    "tcp://{}",
                    std::net::SocketAddr::new(ip, port)
                )),
                path(),
            ]),
            prop::option::of("[a-z0-9./:@_-]{1,40}"),
            prop::option::of("[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}"),
            prop::option::of(prop_oneof![
                "[a-z][a-z0-9-]{0,20}(\\.[a-z][a-z0-9-]{0,20}){0,3}",
                ip().prop_map(|ip| ip.to_string()),
            ]),
            prop::option::of(ip()),
            prop::option::of(1u16..),
        );
        let tunnel = (
            prop::option::of(
                (any::<[u8; 4]>(), 0u8..=30)
                    .prop_map(|(a, p)| Ipv4Net::new(Ipv4Addr::from(a), p).unwrap().trunc()),
            ),
            prop::option::of(MIN_MTU..=MAX_MTU),
            prop::option::of(prop_oneof![
                Just(NatMode::Masquerade),
                Just(NatMode::Routed)
            ]),
            prop::option::of(path()),
            prop::option::of(path()),
        );
        let rest = (
            prop::option::of(names()),
            prop::option::of(names()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::option::of(
                prop::collection::hash_set("[a-z0-9][a-z0-9.-]{0,62}", 0..4)
                    .prop_map(|s| s.into_iter().collect::<Vec<_>>()),
            ),
        );
        (servers, tunnel, rest).prop_map(
            |(
                (docker_host, agent_image, agent_name, host_address, listen_address, listen_port),
                (tunnel, mtu, nat, state_dir, control_socket),
                (include, exclude, pods, services, clusters),
            )| Keys {
                docker_host,
                agent_image,
                agent_name,
                host_address,
                listen_address,
                listen_port,
                tunnel,
                mtu,
                nat,
                state_dir,
                control_socket,
                include,
                exclude,
                pods,
                services,
                clusters,
            },
        )
    }

    impl Keys {
        /// The file, written by the toml crate so every string is escaped right.
        fn to_toml(&self) -> String {
            use toml::{Table, Value};
            fn put<T: Clone + Into<Value>>(t: &mut Table, key: &str, v: &Option<T>) {
                if let Some(v) = v {
                    t.insert(key.into(), v.clone().into());
                }
            }
            let mut top = Table::new();
            put(&mut top, "docker_host", &self.docker_host);
            put(&mut top, "agent_image", &self.agent_image);
            put(&mut top, "agent_name", &self.agent_name);
            put(&mut top, "host_address", &self.host_address);
            put(
                &mut top,
                "listen_address",
                &self.listen_address.map(|a| a.to_string()),
            );
            put(&mut top, "listen_port", &self.listen_port.map(i64::from));
            put(&mut top, "tunnel", &self.tunnel.map(|t| t.to_string()));
            put(&mut top, "mtu", &self.mtu.map(i64::from));
            put(&mut top, "nat", &self.nat.map(|n| n.as_str().to_owned()));
            put(&mut top, "state_dir", &self.state_dir);
            put(&mut top, "control_socket", &self.control_socket);
            let mut networks = Table::new();
            put(&mut networks, "include", &self.include);
            put(&mut networks, "exclude", &self.exclude);
            if !networks.is_empty() {
                top.insert("networks".into(), networks.into());
            }
            let mut kind = Table::new();
            put(&mut kind, "pods", &self.pods);
            put(&mut kind, "services", &self.services);
            put(&mut kind, "clusters", &self.clusters);
            if !kind.is_empty() {
                top.insert("kind".into(), kind.into());
            }
            toml::to_string(&top).unwrap()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics_and_errors_point_somewhere(
            text in prop_oneof![
                prop::collection::vec(any::<char>(), 0..256).prop_map(String::from_iter),
                tomlish(),
            ]
        ) {
            if let Err(err) = parse(&text) {
                prop_assert!(points_somewhere(&err), "{err} for {text:?}");
            }
        }

        #[test]
        fn any_value_of_a_known_key_is_accepted_or_named(
            key in prop::sample::select(KEYS),
            value in prop_oneof![
                tomlish(),
                prop::collection::vec(any::<char>(), 0..40)
                    .prop_map(|c| toml::Value::String(String::from_iter(c)).to_string()),
                any::<i64>().prop_map(|i| i.to_string()),
            ],
        ) {
            let text = match key.split_once('.') {
                Some((table, key)) => format!("[{table}]\n{key} = {value}\n"),
                None => format!("{key} = {value}\n"),
            };
            if let Err(err) = parse(&text) {
                prop_assert!(points_somewhere(&err), "{err} for {text:?}");
            }
        }

    }

    proptest! {
        // Fewer: every case compiles the network globs, slow in a debug build.
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn generated_key_sets_parse_to_their_values(keys in keys()) {
            let text = keys.to_toml();
            let c = parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(c.docker_host, keys.docker_host.clone());
            prop_assert_eq!(c.agent_image, keys.agent_image.clone().unwrap_or(DEFAULT_AGENT_IMAGE.into()));
            prop_assert_eq!(c.agent_name, keys.agent_name.clone().unwrap_or(DEFAULT_AGENT_NAME.into()));
            prop_assert_eq!(c.host_address, keys.host_address.clone().unwrap_or(DEFAULT_HOST_ADDRESS.into()));
            prop_assert_eq!(c.listen_address, keys.listen_address.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            prop_assert_eq!(c.listen_port, keys.listen_port.unwrap_or(DEFAULT_LISTEN_PORT));
            prop_assert_eq!(c.tunnel, keys.tunnel.unwrap_or(DEFAULT_TUNNEL.parse().unwrap()));
            prop_assert_eq!(c.mtu, keys.mtu.unwrap_or(DEFAULT_MTU));
            prop_assert_eq!(c.nat, keys.nat.unwrap_or(NatMode::Masquerade));
            prop_assert_eq!(c.state_dir, keys.state_dir.clone().map(PathBuf::from).unwrap_or_else(default_state_dir));
            prop_assert_eq!(c.control_socket, keys.control_socket.clone().map(PathBuf::from).unwrap_or_else(default_control_socket));
            prop_assert_eq!(
                c.kind,
                KindConfig {
                    pods: keys.pods.unwrap_or(true),
                    services: keys.services.unwrap_or(true),
                    clusters: keys.clusters.clone().unwrap_or_default(),
                }
            );
            // The filter, by what it does to the names it was given.
            let include = keys.include.clone();
            let exclude = keys.exclude.clone().unwrap_or_default();
            for name in include.iter().flatten().chain(&exclude) {
                let expected = if include.as_ref().is_some_and(|i| !i.contains(name)) {
                    Some("not in networks.include")
                } else if exclude.contains(name) {
                    Some("in networks.exclude")
                } else {
                    None
                };
                prop_assert_eq!(c.networks.rejects(name), expected, "{}", name);
            }
            prop_assert_eq!(
                c.networks.rejects("Not_Listed"),
                include.map(|_| "not in networks.include")
            );
        }
    }
}
