//! The daemon's end of the control channel to the agent: JSON lines over TCP
//! to `<agent tunnel ip>:51872`, inside the WireGuard tunnel (which
//! authenticates both ends; the agent only accepts the host's tunnel
//! address as peer).
//!
//! The daemon hands the full set of VM routes it wants to [`AgentLink::push`]
//! after every reconcile; a background task delivers the newest set, retrying
//! with backoff while the tunnel is not up, so the daemon's loop never waits
//! on the network.
//!
//! The messages are [`connector_protocol::vm_routes`].

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use connector_protocol::lines::{self, LineReader};
use connector_protocol::vm_routes::{decode_reply, Reply, Request, CONTROL_PORT, MAX_REPLY};
pub use connector_protocol::vm_routes::{RouteFailure, VmRoute};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::sync::watch;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
const RETRY_MAX: Duration = Duration::from_secs(10);
const RETRY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(500))
    .with_max_delay(RETRY_MAX)
    .without_max_times();
/// Failures for this long are logged as warnings, shorter ones (the tunnel
/// coming up) at debug level.
const WARN_AFTER: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect to the agent at {addr} through the tunnel: {error}")]
    Connect {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("the agent at {addr} did not answer within {secs} s")]
    Timeout { addr: SocketAddr, secs: u64 },
    #[error("talking to the agent at {addr}: {error}")]
    Io {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("the agent sent a reply that is not understood ({error}): {line:?}")]
    BadReply { error: String, line: String },
    #[error("the agent refused the request: {0}")]
    Refused(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkState {
    /// Nothing pushed yet.
    #[default]
    Idle,
    /// The agent holds the last set pushed (minus `errors`).
    Synced,
    /// A newer set is on its way.
    Pending,
    /// The agent cannot be reached; retrying.
    Failing,
}

/// What `status` shows about the VM routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub state: LinkState,
    /// The set the daemon wants in the VM.
    pub wanted: Vec<VmRoute>,
    /// What the agent reported in place after the last successful push.
    pub applied: Vec<VmRoute>,
    /// Routes the agent could not install, with its reason.
    pub errors: Vec<RouteFailure>,
    pub last_sync_secs: Option<u64>,
    pub last_error: Option<String>,
}

impl LinkStatus {
    /// One line for `connector status`.
    pub fn summary(&self) -> String {
        let refused = if self.errors.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|e| format!("{} via {}: {}", e.destination, e.via, e.error))
                .collect();
            format!("; {} refused: {}", self.errors.len(), list.join("; "))
        };
        match self.state {
            LinkState::Idle => "nothing pushed yet".into(),
            LinkState::Synced => format!(
                "{} in place, synced {}s ago{refused}",
                self.applied.len(),
                self.last_sync_secs.unwrap_or(0)
            ),
            LinkState::Pending => format!("{} wanted, being pushed", self.wanted.len()),
            LinkState::Failing => format!(
                "{} wanted, agent unreachable: {}",
                self.wanted.len(),
                self.last_error.as_deref().unwrap_or("?")
            ),
        }
    }
}

#[derive(Default)]
struct Shared {
    status: LinkStatus,
    synced_at: Option<Instant>,
}

pub struct AgentLink {
    tx: watch::Sender<Vec<VmRoute>>,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl AgentLink {
    /// `local`: the host's tunnel address (the source the agent accepts);
    /// `agent`: the agent's tunnel address.
    pub fn spawn(local: Ipv4Addr, agent: Ipv4Addr) -> Self {
        let (tx, rx) = watch::channel(Vec::new());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = tokio::spawn(deliver(
            rx,
            local,
            SocketAddr::from((agent, CONTROL_PORT)),
            shared.clone(),
        ));
        AgentLink { tx, shared, task }
    }

    /// Replaces the wanted set and (re)sends it, even when unchanged: the
    /// agent may have restarted.
    pub fn push(&self, mut routes: Vec<VmRoute>) {
        routes.sort();
        routes.dedup();
        self.mark_pending(&routes);
        self.tx.send_replace(routes);
    }

    /// Sends the wanted set again (the agent restarted or was replaced).
    pub fn resend(&self) {
        self.mark_pending(&self.tx.borrow());
        self.tx.send_modify(|_| {});
    }

    /// Status says "synced" only for the set the agent confirmed.
    fn mark_pending(&self, routes: &[VmRoute]) {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.status.wanted = routes.to_vec();
        if shared.status.state != LinkState::Failing {
            shared.status.state = LinkState::Pending;
        }
    }

    /// The status, readable from any task (`connector status` is answered
    /// without the daemon's loop).
    pub fn status_reader(&self) -> impl Fn() -> LinkStatus + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || read_status(&shared)
    }
}

fn read_status(shared: &Mutex<Shared>) -> LinkStatus {
    let shared = shared.lock().unwrap_or_else(|p| p.into_inner());
    let mut status = shared.status.clone();
    status.last_sync_secs = shared.synced_at.map(|t| t.elapsed().as_secs());
    status
}

impl Drop for AgentLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn deliver(
    mut rx: watch::Receiver<Vec<VmRoute>>,
    local: Ipv4Addr,
    agent: SocketAddr,
    shared: Arc<Mutex<Shared>>,
) {
    let update = |f: &dyn Fn(&mut Shared)| f(&mut shared.lock().unwrap_or_else(|p| p.into_inner()));
    while rx.changed().await.is_ok() {
        let mut delays = RETRY.build();
        let mut failing_since: Option<Instant> = None;
        let mut warned = false;
        loop {
            let routes = rx.borrow_and_update().clone();
            update(&|s| {
                s.status.wanted = routes.clone();
                if s.status.state != LinkState::Failing {
                    s.status.state = LinkState::Pending;
                }
            });
            match set_routes(local, agent, &routes).await {
                Ok(reply) => {
                    if !reply.applied.is_empty()
                        || !reply.removed.is_empty()
                        || !reply.errors.is_empty()
                    {
                        tracing::debug!(
                            applied = reply.applied.len(),
                            removed = reply.removed.len(),
                            "VM routes pushed"
                        );
                    }
                    for r in &reply.removed {
                        tracing::info!(destination = %r.destination, via = %r.via, "VM route removed");
                    }
                    let before = shared
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .status
                        .clone();
                    for r in reply.applied.iter().filter(|r| !before.applied.contains(r)) {
                        tracing::info!(destination = %r.destination, via = %r.via, "VM route in place");
                    }
                    for e in reply.errors.iter().filter(|e| !before.errors.contains(e)) {
                        tracing::warn!(destination = %e.destination, via = %e.via, error = %e.error, "the agent could not install a VM route");
                    }
                    if warned {
                        tracing::info!("agent reachable again; VM routes synced");
                    }
                    // A newer set may be waiting already: then still pending.
                    let newer = rx.has_changed().unwrap_or(false);
                    update(&|s| {
                        s.status.state = if newer {
                            LinkState::Pending
                        } else {
                            LinkState::Synced
                        };
                        s.status.applied = reply.applied.clone();
                        s.status.errors = reply.errors.clone();
                        s.status.last_error = None;
                        s.synced_at = Some(Instant::now());
                    });
                    break;
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(RETRY_MAX);
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= WARN_AFTER && !warned {
                        tracing::warn!(error = %e, "cannot push VM routes to the agent; retrying");
                        warned = true;
                    } else {
                        tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "VM route push failed");
                    }
                    let text = e.to_string();
                    update(&|s| {
                        s.status.state = LinkState::Failing;
                        s.status.last_error = Some(text.clone());
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        changed = rx.changed() => if changed.is_err() { return },
                    }
                }
            }
        }
    }
}

/// What the agent did with a `set-routes`.
struct Applied {
    applied: Vec<VmRoute>,
    removed: Vec<VmRoute>,
    errors: Vec<RouteFailure>,
}

async fn set_routes(
    local: Ipv4Addr,
    agent: SocketAddr,
    routes: &[VmRoute],
) -> Result<Applied, LinkError> {
    let request = Request::SetRoutes {
        routes: routes.to_vec(),
    };
    let line = lines::encode(&request).expect("routes serialise");
    let reply = exchange(local, agent, &line).await?;
    let reply: Reply = decode_reply(&reply).map_err(|e| LinkError::BadReply {
        error: e.to_string(),
        line: reply.chars().take(200).collect(),
    })?;
    if !reply.ok {
        return Err(LinkError::Refused(
            reply.error.unwrap_or_else(|| "no reason given".into()),
        ));
    }
    Ok(Applied {
        applied: reply.applied.unwrap_or_default(),
        removed: reply.removed.unwrap_or_default(),
        errors: reply.errors.unwrap_or_default(),
    })
}

/// One request line out, one reply line back.
async fn exchange(local: Ipv4Addr, agent: SocketAddr, line: &str) -> Result<String, LinkError> {
    let io = |error| LinkError::Io { addr: agent, error };
    let socket = TcpSocket::new_v4().map_err(io)?;
    // From the tunnel address: the agent accepts no other peer.
    socket
        .bind(SocketAddr::from((local, 0)))
        .map_err(|error| LinkError::Connect { addr: agent, error })?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(agent))
        .await
        .map_err(|_| LinkError::Timeout {
            addr: agent,
            secs: CONNECT_TIMEOUT.as_secs(),
        })?
        .map_err(|error| LinkError::Connect { addr: agent, error })?;
    let talk = async {
        let (read, mut write) = stream.into_split();
        write.write_all(line.as_bytes()).await.map_err(io)?;
        match LineReader::new(read, MAX_REPLY).next_line().await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed without a reply",
            ))),
            Err(e) => Err(io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
        }
    };
    tokio::time::timeout(REPLY_TIMEOUT, talk)
        .await
        .map_err(|_| LinkError::Timeout {
            addr: agent,
            secs: REPLY_TIMEOUT.as_secs(),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;

    fn route(d: &str, v: &str) -> VmRoute {
        format!("{d} via {v}").parse().unwrap()
    }

    #[test]
    fn summary_says_what_a_user_needs() {
        let mut s = LinkStatus {
            state: LinkState::Synced,
            applied: vec![route("10.244.1.0/24", "172.18.0.3")],
            last_sync_secs: Some(3),
            ..Default::default()
        };
        assert_eq!(s.summary(), "1 in place, synced 3s ago");
        s.errors.push(RouteFailure {
            destination: "10.96.0.0/16".into(),
            via: "172.18.0.2".into(),
            error: "conflicts with existing route".into(),
        });
        assert!(s
            .summary()
            .ends_with("; 1 refused: 10.96.0.0/16 via 172.18.0.2: conflicts with existing route"));
        s.state = LinkState::Failing;
        s.last_error = Some("timeout".into());
        assert_eq!(s.summary(), "0 wanted, agent unreachable: timeout");
    }

    /// A fake agent on loopback: the link delivers the newest set and
    /// records what the agent answered.
    #[tokio::test]
    async fn pushes_the_newest_set_and_records_the_reply() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                assert_eq!(peer.ip(), std::net::IpAddr::V4(Ipv4Addr::LOCALHOST));
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                BufReader::new(read).read_line(&mut line).await.unwrap();
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                seen2.lock().unwrap().push(line.clone());
                let reply = serde_json::json!({"ok": true, "applied": v["routes"], "removed": [], "errors": []});
                write
                    .write_all(format!("{reply}\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
        let (tx, rx) = watch::channel(Vec::new());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = tokio::spawn(deliver(rx, Ipv4Addr::LOCALHOST, addr, shared.clone()));
        let link = AgentLink { tx, shared, task };
        link.push(vec![
            route("10.244.1.0/24", "172.18.0.3"),
            route("10.244.0.0/24", "172.18.0.2"),
        ]);
        for _ in 0..100 {
            if read_status(&link.shared).state == LinkState::Synced {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = read_status(&link.shared);
        assert_eq!(status.state, LinkState::Synced);
        assert_eq!(
            status.applied,
            vec![
                route("10.244.0.0/24", "172.18.0.2"),
                route("10.244.1.0/24", "172.18.0.3")
            ]
        );
        assert!(seen.lock().unwrap()[0]
            .starts_with(r#"{"op":"set-routes","routes":[{"destination":"10.244.0.0/24""#));
    }

    #[tokio::test]
    async fn an_unreachable_agent_is_reported_and_retried() {
        // Nothing listens on this port of loopback.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (tx, rx) = watch::channel(Vec::new());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = tokio::spawn(deliver(
            rx,
            Ipv4Addr::LOCALHOST,
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            shared.clone(),
        ));
        let link = AgentLink { tx, shared, task };
        link.push(vec![route("10.244.1.0/24", "172.18.0.3")]);
        for _ in 0..100 {
            if read_status(&link.shared).state == LinkState::Failing {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = read_status(&link.shared);
        assert_eq!(status.state, LinkState::Failing);
        assert!(
            status
                .summary()
                .contains("agent unreachable: cannot connect"),
            "{}",
            status.summary()
        );
    }
}
