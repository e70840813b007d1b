//! The agent container in the Docker VM: created, adopted, replaced and
//! removed by the daemon through the Docker API.
//!
//! A container is adopted after a daemon restart when its recorded spec (the
//! agent's command line and image ID) equals what the daemon would create now;
//! otherwise it is replaced. The agent's private key is generated per container
//! and copied into it as a file, so it never appears in `docker inspect`.

pub mod image;
pub mod link;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, DeviceMapping, HostConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, RemoveContainerOptions,
    StopContainerOptions, UploadToContainerOptions,
};
use bollard::Docker;
use connector_tunnel::keys::{self, PublicKey, StaticSecret};
use futures_util::StreamExt;

use crate::config::Config;
use crate::control::protocol::FirewallStatus;
use crate::engine::ExecOutput;
use crate::progress::{Phase, Progress, PullTally};

pub const LABEL_MANAGED: &str = "io.connector.managed";
pub const LABEL_SPEC: &str = "io.connector.spec";
pub const LABEL_AGENT_KEY: &str = "io.connector.agent-public-key";
pub const LABEL_VERSION: &str = "io.connector.version";
/// The host public key of the daemon that owns the container: several daemons
/// (a test beside a real one) may share one engine and must not touch each
/// other's agents.
pub const LABEL_OWNER: &str = "io.connector.owner";
/// The default agent's tun inside the VM. Distinct from the host's
/// `connector0` so both can coexist when Docker runs natively on the host.
pub const AGENT_TUN: &str = "connector-vm";

/// The agent's tun name: `connector-vm` for the default agent, else derived
/// from the agent's name so two agents (two daemons, a test beside a real
/// one) never fight over one interface. At most 15 bytes (IFNAMSIZ - 1).
pub fn agent_tun_name(agent_name: &str) -> String {
    if agent_name == crate::config::DEFAULT_AGENT_NAME {
        return AGENT_TUN.to_owned();
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = agent_name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("cvm{:08x}", hash as u32)
}

/// The comment on the agent's firewall rules: the agent's name, so one
/// agent's cleanup never removes another's rules.
pub fn rule_tag(agent_name: &str) -> String {
    agent_name.to_owned()
}
pub const AGENT_KEY_PATH: &str = "/etc/connector/agent.key";
/// ≤ 25 s keeps Docker Desktop's ~90 s UDP mapping alive with margin.
pub const KEEPALIVE_SECS: u16 = 20;
/// How long the agent gets to remove its firewall rules on stop.
const STOP_TIMEOUT_SECS: i32 = 10;
/// What the agent needs of the kernel: a tun and firewall rules
/// (`NET_ADMIN`), and iptables-legacy's raw socket (`NET_RAW`). Docker's
/// default set (chown, setuid, mknod, kill, …) is dropped.
pub const AGENT_CAPS: [&str; 2] = ["NET_ADMIN", "NET_RAW"];
/// Part of the spec label: an agent created with another host configuration
/// (an older version with Docker's default capabilities) is replaced.
const HOST_CONFIG_VERSION: &str = "hc2";

/// The container settings every agent container gets (the daemon's agent and
/// `uninstall`'s one-off cleanup): host network, the tun device, only the
/// capabilities it needs, no privilege gain through setuid binaries.
pub fn agent_host_config() -> HostConfig {
    HostConfig {
        network_mode: Some("host".to_owned()),
        cap_drop: Some(vec!["ALL".to_owned()]),
        cap_add: Some(AGENT_CAPS.iter().map(|c| (*c).to_owned()).collect()),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        devices: Some(vec![DeviceMapping {
            path_on_host: Some("/dev/net/tun".to_owned()),
            path_in_container: Some("/dev/net/tun".to_owned()),
            cgroup_permissions: Some("rwm".to_owned()),
        }]),
        init: Some(false),
        ..Default::default()
    }
}

/// The agent the tunnel should talk to.
#[derive(Debug, Clone)]
pub struct Agent {
    pub container_id: String,
    pub public_key: PublicKey,
    pub image: String,
    /// `true` when an existing container was kept (daemon restart).
    pub adopted: bool,
}

/// The agent's command line for this config (no secrets in it).
pub fn agent_command(config: &Config, host_public: &PublicKey) -> Vec<String> {
    let endpoint = match config.host_address.parse::<std::net::Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]:{}", config.listen_port),
        Err(_) => format!("{}:{}", config.host_address, config.listen_port),
    };
    [
        "run",
        "--tun-name",
        &agent_tun_name(&config.agent_name),
        "--address",
        &config.agent_tunnel_ip().to_string(),
        "--peer-address",
        &config.host_tunnel_ip().to_string(),
        "--prefix",
        &config.tunnel.prefix_len().to_string(),
        "--mtu",
        &config.mtu.to_string(),
        "--endpoint",
        &endpoint,
        "--peer-public-key",
        &keys::encode_public(host_public),
        "--private-key-file",
        AGENT_KEY_PATH,
        "--nat",
        config.nat.as_str(),
        "--tag",
        &rule_tag(&config.agent_name),
        "--keepalive",
        &KEEPALIVE_SECS.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(
        config
            .allow_container_connections
            .then(|| "--allow-container-connections".to_owned()),
    )
    .chain(ipv6_args(config))
    .collect()
}

/// The agent's IPv6 end of the tunnel; none when IPv6 is off.
fn ipv6_args(config: &Config) -> Vec<String> {
    match (
        config.agent_tunnel_ip6(),
        config.host_tunnel_ip6(),
        config.tunnel_v6,
    ) {
        (Some(address), Some(peer), Some(net)) => vec![
            "--address6".into(),
            address.to_string(),
            "--peer-address6".into(),
            peer.to_string(),
            "--prefix6".into(),
            net.prefix_len().to_string(),
        ],
        _ => Vec::new(),
    }
}

/// `connector-agent verify` takes the same arguments as `run`.
pub fn verify_command(run: &[String]) -> Vec<String> {
    let mut cmd = run.to_vec();
    if let Some(first) = cmd.first_mut() {
        *first = "verify".to_owned();
    }
    cmd
}

/// What identifies an agent container's configuration.
pub fn spec_label(command: &[String], image_id: &str) -> String {
    format!("{image_id} {HOST_CONFIG_VERSION} {}", command.join(" "))
}

/// What to do with the container found under the agent's name.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Create,
    Adopt,
    /// Stopped, but Docker's restart policy is about to start it again.
    Wait,
    Replace(&'static str),
    Foreign,
}

/// The state of a container, as far as [`judge`] cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    Running,
    Restarting,
    Stopped,
}

/// Pure decision, unit-tested: `found` is (labels, state) of the container
/// named like our agent, if any; `owner` is this daemon's host public key.
pub fn judge(
    found: Option<(&HashMap<String, String>, Run)>,
    wanted_spec: &str,
    owner: &str,
) -> Verdict {
    match found {
        None => Verdict::Create,
        Some((labels, _)) if labels.get(LABEL_MANAGED).map(String::as_str) != Some("true") => {
            Verdict::Foreign
        }
        Some((labels, running)) => {
            if labels.get(LABEL_OWNER).map(String::as_str) != Some(owner) {
                // Its recorded key was not given to it by us: never trusted.
                Verdict::Replace("it was made by another daemon (owner label)")
            } else if labels.get(LABEL_SPEC).map(String::as_str) != Some(wanted_spec) {
                Verdict::Replace("its configuration differs")
            } else if labels.get(LABEL_AGENT_KEY).is_none() {
                Verdict::Replace("it has no recorded key")
            } else {
                match running {
                    Run::Running => Verdict::Adopt,
                    Run::Restarting => Verdict::Wait,
                    Run::Stopped => Verdict::Replace("it is not running"),
                }
            }
        }
    }
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

#[derive(Clone)]
pub struct AgentManager {
    docker: Docker,
    image: String,
    name: String,
    command: Vec<String>,
    owner: String,
    /// Where pulls and builds of the image report how far they are.
    progress: Arc<Progress>,
}

impl AgentManager {
    pub fn new(
        docker: Docker,
        config: &Config,
        host_public: &PublicKey,
        progress: Arc<Progress>,
    ) -> Self {
        AgentManager {
            docker,
            image: config.agent_image.clone(),
            name: config.agent_name.clone(),
            command: agent_command(config, host_public),
            owner: keys::encode_public(host_public),
            progress,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Asks the agent (read-only) whether every firewall rule is in place.
    pub async fn verify_rules(&self) -> Result<ExecOutput> {
        verify(&self.docker, &self.name, &self.command).await
    }

    /// The image's ID, pulling it if it is missing.
    pub async fn image_id(&self) -> Result<String> {
        match self.docker.inspect_image(&self.image).await {
            Ok(image) => {
                return image
                    .id
                    .ok_or_else(|| anyhow!("image {} has no ID", self.image))
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot inspect agent image {}", self.image))
            }
        }
        tracing::info!(image = %self.image, "agent image missing; pulling");
        self.progress.set(Phase::Pulling { done: 0, total: 0 });
        let mut pull = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(self.image.clone()),
                ..Default::default()
            }),
            None,
            None,
        );
        let mut pull_error = None;
        let mut tally = PullTally::default();
        while let Some(step) = pull.next().await {
            match step {
                Ok(info) => {
                    let detail = info.progress_detail.unwrap_or_default();
                    tally.update(
                        info.id.as_deref().unwrap_or_default(),
                        info.status.as_deref().unwrap_or_default(),
                        detail.current,
                        detail.total,
                    );
                    self.progress.set(tally.phase());
                }
                Err(e) => {
                    pull_error = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = pull_error {
            match crate::agent::image::source_dir() {
                Some(dir) => {
                    crate::agent::image::build(&self.docker, &self.image, &dir, &self.progress)
                        .await
                        .with_context(|| {
                            format!(
                                "agent image {} cannot be pulled ({e}) nor built",
                                self.image
                            )
                        })?
                }
                None => bail!(
                    "agent image {} is not present and cannot be pulled ({e}); build it with \
                     `scripts/agent-image --local` or set agent_image",
                    self.image
                ),
            }
        }
        let image = self
            .docker
            .inspect_image(&self.image)
            .await
            .with_context(|| format!("agent image {} missing after pull", self.image))?;
        image
            .id
            .ok_or_else(|| anyhow!("image {} has no ID", self.image))
    }

    /// Makes sure exactly one agent container of ours runs with the current
    /// configuration; returns its public key. A new agent's key is handed to
    /// `install_key` before the container starts, so its first handshake
    /// never meets a tunnel that still expects the old key.
    pub async fn ensure(&self, install_key: &(dyn Fn(&PublicKey) + Sync)) -> Result<Agent> {
        let image_id = self.image_id().await?;
        let spec = spec_label(&self.command, &image_id);
        self.remove_strays().await?;

        let found = match self.docker.inspect_container(&self.name, None).await {
            Ok(c) => Some(c),
            Err(e) if is_not_found(&e) => None,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot inspect container {}", self.name))
            }
        };
        let labels = found
            .as_ref()
            .and_then(|c| c.config.as_ref())
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let state = found.as_ref().and_then(|c| c.state.as_ref());
        let running = match state {
            Some(s) if s.running == Some(true) && s.restarting != Some(true) => Run::Running,
            Some(s) if s.restarting == Some(true) => Run::Restarting,
            _ => Run::Stopped,
        };
        match judge(found.as_ref().map(|_| (&labels, running)), &spec, &self.owner) {
            Verdict::Foreign => bail!(
                "a container named {:?} exists and was not created by connector; remove it or set agent_name",
                self.name
            ),
            verdict @ (Verdict::Adopt | Verdict::Wait) => {
                let key = keys::parse_public_key(&labels[LABEL_AGENT_KEY])
                    .context("agent container has a bad public key label")?;
                let id = found.and_then(|c| c.id).unwrap_or_default();
                tracing::debug!(container = %self.name, ?verdict, "keeping the agent container");
                return Ok(Agent {
                    container_id: id,
                    public_key: key,
                    image: self.image.clone(),
                    adopted: true,
                });
            }
            Verdict::Replace(why) => {
                tracing::info!(container = %self.name, reason = why, "replacing agent container");
                self.remove_container(&self.name).await?;
            }
            Verdict::Create => {}
        }
        self.create(&spec, install_key).await
    }

    async fn create(&self, spec: &str, install_key: &(dyn Fn(&PublicKey) + Sync)) -> Result<Agent> {
        let private: StaticSecret = keys::generate();
        let public = PublicKey::from(&private);
        let labels = HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_SPEC.to_owned(), spec.to_owned()),
            (LABEL_AGENT_KEY.to_owned(), keys::encode_public(&public)),
            (
                LABEL_VERSION.to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
            (LABEL_OWNER.to_owned(), self.owner.clone()),
        ]);
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(self.command.clone()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                ..agent_host_config()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(self.name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .with_context(|| format!("cannot create agent container {}", self.name))?;
        let result = async {
            self.docker
                .upload_to_container(
                    &created.id,
                    Some(UploadToContainerOptions {
                        path: "/".to_owned(),
                        ..Default::default()
                    }),
                    bollard::body_full(key_archive(&private)?.into()),
                )
                .await
                .context("cannot copy the agent key into the container")?;
            install_key(&public);
            self.docker
                .start_container(&created.id, None)
                .await
                .context("cannot start the agent container")
        }
        .await;
        if let Err(e) = result {
            // Leave nothing half-made behind.
            let _ = self.remove_container(&created.id).await;
            return Err(e);
        }
        tracing::info!(container = %self.name, image = %self.image, "agent container started");
        Ok(Agent {
            container_id: created.id,
            public_key: public,
            image: self.image.clone(),
            adopted: false,
        })
    }

    /// Asks a running agent to start a new handshake (after a daemon restart
    /// the host side has lost the session).
    pub async fn nudge(&self) -> Result<()> {
        self.docker
            .kill_container(
                &self.name,
                Some(KillContainerOptions {
                    signal: connector_protocol::signals::NUDGE.to_owned(),
                }),
            )
            .await
            .context("cannot signal the agent container")
    }

    /// This daemon's agents under another name (an older `agent_name`).
    async fn remove_strays(&self) -> Result<()> {
        let labels = [
            format!("{LABEL_MANAGED}=true"),
            format!("{LABEL_OWNER}={}", self.owner),
        ];
        let ours = crate::engine::containers_labelled(&self.docker, &labels, true).await?;
        for c in ours {
            let names = c.names.unwrap_or_default();
            if names.iter().any(|n| n.trim_start_matches('/') == self.name) {
                continue;
            }
            let id = c.id.unwrap_or_default();
            tracing::info!(container = ?names, "removing stray agent container");
            self.remove_container(&id).await?;
        }
        Ok(())
    }

    /// Stops the agent gracefully (it removes its firewall rules on SIGTERM),
    /// then removes the container — only if it is ours: a container someone
    /// else made under the agent's name is never touched.
    pub async fn remove(&self) -> Result<()> {
        let labels = match self.docker.inspect_container(&self.name, None).await {
            Ok(c) => c.config.and_then(|c| c.labels).unwrap_or_default(),
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot inspect container {}", self.name))
            }
        };
        if labels.get(LABEL_MANAGED).map(String::as_str) != Some("true")
            || labels.get(LABEL_OWNER) != Some(&self.owner)
        {
            tracing::warn!(container = %self.name, "not removing a container that is not this daemon's agent");
            return Ok(());
        }
        self.remove_container(&self.name).await
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        match self
            .docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(STOP_TIMEOUT_SECS),
                    signal: None,
                }),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            // 304: already stopped.
            Err(DockerError::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(e) => tracing::warn!(container = id, error = %e, "stop failed; forcing removal"),
        }
        match self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove container {id}")),
        }
    }
}

/// Runs `connector-agent verify` in the agent container `name`, with the
/// arguments of its `run` command line.
pub async fn verify(docker: &Docker, name: &str, run: &[String]) -> Result<ExecOutput> {
    let args = verify_command(run);
    let mut cmd: Vec<&str> = vec!["/usr/local/bin/connector-agent"];
    cmd.extend(args.iter().map(String::as_str));
    let limits = crate::engine::ExecLimits {
        timeout: std::time::Duration::from_secs(10),
        max_output: 1 << 20,
    };
    crate::engine::exec(docker, name, &cmd, limits).await
}

/// Turns `connector-agent verify` output into the status section. Lines
/// about IPv6 (`ipv6: …`, or naming an `… ipv6]` rule) go apart: IPv4 works
/// whatever they say.
pub fn firewall_status(result: Result<ExecOutput>) -> FirewallStatus {
    match result {
        Err(e) => FirewallStatus {
            backend: None,
            all_present: false,
            detail: vec![format!("{e:#}")],
            ipv6: Vec::new(),
            checked_secs: None,
        },
        Ok(out) => {
            let backend = ["nft", "legacy"]
                .into_iter()
                .find(|b| {
                    out.stdout.contains(&format!("({b})")) || out.stdout.contains(&format!("[{b}]"))
                })
                .map(str::to_owned);
            let (ipv6, mut detail): (Vec<String>, Vec<String>) = out
                .stdout
                .lines()
                .filter(|l| !l.starts_with("ok:"))
                .map(str::to_owned)
                .partition(|l| l.starts_with("ipv6:") || l.contains(" ipv6]"));
            if out.exit_code != 0 && detail.is_empty() && ipv6.is_empty() {
                detail.push(
                    out.stderr
                        .lines()
                        .last()
                        .unwrap_or("verify failed")
                        .to_owned(),
                );
            }
            FirewallStatus {
                backend,
                all_present: out.exit_code == 0 || detail.is_empty(),
                detail,
                ipv6,
                checked_secs: None,
            }
        }
    }
}

/// A tar archive holding the agent key at [`AGENT_KEY_PATH`], mode 0600.
fn key_archive(private: &StaticSecret) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o700);
    dir.set_size(0);
    builder.append_data(&mut dir, "etc/connector/", std::io::empty())?;
    let text = keys::encode_private(private);
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o600);
    file.set_size(text.len() as u64);
    builder.append_data(
        &mut file,
        AGENT_KEY_PATH.trim_start_matches('/'),
        text.as_bytes(),
    )?;
    Ok(builder.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(stdout: &str, exit_code: i64) -> FirewallStatus {
        firewall_status(Ok(ExecOutput {
            stdout: stdout.into(),
            stderr: String::new(),
            exit_code,
        }))
    }

    #[test]
    fn ipv6_problems_are_reported_apart_and_do_not_fail_ipv4() {
        let s = verified(
            "ok: all 5 rules tagged \"c\" are in place (nft)\n\
             ipv6: forwarding is off in the Docker VM (net.ipv6.conf.all.forwarding=0): IPv6 subnets are unreachable\n",
            1,
        );
        assert!(s.all_present);
        assert_eq!(s.backend.as_deref(), Some("nft"));
        assert!(s.detail.is_empty());
        assert_eq!(s.ipv6.len(), 1);
        let s = verified(
            "missing: [nft] -t raw -A PREROUTING -i t -j ACCEPT\nmissing: [nft ipv6] -t raw -A PREROUTING -i t -j ACCEPT\n",
            1,
        );
        assert!(!s.all_present);
        assert_eq!(
            s.detail,
            vec!["missing: [nft] -t raw -A PREROUTING -i t -j ACCEPT"]
        );
        assert_eq!(s.ipv6.len(), 1);
        let s = verified("", 1);
        assert!(!s.all_present && s.detail == vec!["verify failed"]);
    }
    use std::path::Path;

    fn config(extra: &str) -> Config {
        Config::from_toml(extra, Path::new("t")).unwrap()
    }

    #[test]
    fn command_carries_the_config_and_no_secret() {
        let host = PublicKey::from(&keys::generate());
        let cmd = agent_command(
            &config("host_address = \"10.0.0.2\"\nlisten_port = 4000\nnat = \"routed\""),
            &host,
        );
        let joined = cmd.join(" ");
        assert!(joined.contains("--endpoint 10.0.0.2:4000"), "{joined}");
        assert!(joined.contains("--address 10.254.253.2 --peer-address 10.254.253.1 --prefix 30"));
        assert!(joined.contains("--nat routed"));
        assert!(joined.contains(&keys::encode_public(&host)));
        assert!(joined.contains("--keepalive 20"));
        assert!(!joined.contains("--allow-container-connections"));
        assert!(joined.ends_with(
            "--address6 fd5c:9a2e:83b1:fe53::2 --peer-address6 fd5c:9a2e:83b1:fe53::1 --prefix6 126"
        ));
        let cmd = agent_command(&config("allow_container_connections = true"), &host);
        assert!(cmd.contains(&"--allow-container-connections".to_owned()));
        let joined = agent_command(&config("ipv6 = false"), &host).join(" ");
        assert!(!joined.contains("--address6"), "{joined}");
    }

    #[test]
    fn the_agent_keeps_only_the_capabilities_it_needs() {
        let hc = agent_host_config();
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            hc.cap_add,
            Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()])
        );
        assert_eq!(hc.security_opt, Some(vec!["no-new-privileges".to_owned()]));
        assert_eq!(hc.privileged, None);
        assert!(spec_label(&["run".into()], "sha256:x").contains(HOST_CONFIG_VERSION));
    }

    #[test]
    fn tun_name_and_tag_follow_the_agent_name() {
        assert_eq!(agent_tun_name("connector-agent"), "connector-vm");
        let a = agent_tun_name("connector-agent-lab");
        let b = agent_tun_name("connector-agent-bench");
        assert_ne!(a, b);
        assert!(a.len() <= 15 && b.len() <= 15);
        assert_eq!(a, agent_tun_name("connector-agent-lab"));
        assert_eq!(rule_tag("connector-agent-lab"), "connector-agent-lab");
    }

    #[test]
    fn ipv6_host_address_is_bracketed() {
        let host = PublicKey::from(&keys::generate());
        let cmd = agent_command(&config("host_address = \"fd00::1\""), &host);
        assert!(cmd.join(" ").contains("--endpoint [fd00::1]:51871"));
    }

    #[test]
    fn verdicts() {
        let mut labels = HashMap::new();
        assert_eq!(judge(None, "s", "me"), Verdict::Create);
        assert_eq!(
            judge(Some((&labels, Run::Running)), "s", "me"),
            Verdict::Foreign
        );
        labels.insert(LABEL_MANAGED.into(), "true".into());
        labels.insert(LABEL_OWNER.into(), "me".into());
        labels.insert(LABEL_SPEC.into(), "old".into());
        assert!(matches!(
            judge(Some((&labels, Run::Running)), "s", "me"),
            Verdict::Replace(_)
        ));
        labels.insert(LABEL_SPEC.into(), "s".into());
        labels.insert(LABEL_AGENT_KEY.into(), "k".into());
        assert!(matches!(
            judge(Some((&labels, Run::Stopped)), "s", "me"),
            Verdict::Replace(_)
        ));
        assert_eq!(
            judge(Some((&labels, Run::Restarting)), "s", "me"),
            Verdict::Wait
        );
        assert_eq!(
            judge(Some((&labels, Run::Running)), "s", "me"),
            Verdict::Adopt
        );
        // Same spec, key label present, but made by someone else: its key
        // was not ours to trust.
        assert_eq!(
            judge(Some((&labels, Run::Running)), "s", "another"),
            Verdict::Replace("it was made by another daemon (owner label)")
        );
    }

    #[test]
    fn key_archive_holds_the_key_file_with_mode_0600() {
        let key = keys::generate();
        let bytes = key_archive(&key).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut found = false;
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap() == Path::new("etc/connector/agent.key") {
                assert_eq!(entry.header().mode().unwrap(), 0o600);
                let mut text = String::new();
                std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
                assert_eq!(text, keys::encode_private(&key));
                found = true;
            }
        }
        assert!(found);
    }
}
