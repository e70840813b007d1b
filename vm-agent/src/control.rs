//! The agent's control channel: JSON lines over TCP on
//! `<agent tunnel address>:51872`, bound to that address and to the tun
//! device so only traffic that came through the tun (which WireGuard
//! authenticated) can reach it, and answering only the host's tunnel address.
//!
//! Requests, one per line:
//! - `{"op":"set-routes","routes":[{"destination":"10.244.1.0/24","via":"172.18.0.3"}]}`:
//!   make the agent's routes exactly this set.
//!   Reply: `{"ok":true,"applied":[…],"removed":[…],"errors":[{"destination","via","error"}]}`
//!   (`applied`: requested routes now in place; `errors`: those refused).
//! - `{"op":"get-routes"}` → `{"ok":true,"routes":[…],"protocol":N}`.
//!
//! A request that cannot be carried out at all gets `{"ok":false,"error":"…"}`.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::routes::{ApplyReport, Failure, Route, RouteTable};

pub const CONTROL_PORT: u16 = 51872;
/// Far more than any VM route set (a few per kind node).
const MAX_LINE: u64 = 1 << 20;
const MAX_ROUTES: usize = 4096;
/// A connection with no request for this long is closed.
const IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    SetRoutes { routes: Vec<Route> },
    GetRoutes,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<Vec<Route>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<Vec<Route>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<Failure>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<Route>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    fn error(message: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(message.into()),
            ..Default::default()
        }
    }
}

/// What the channel drives; the netlink [`RouteTable`] in the agent, a fake
/// in tests.
pub trait RouteService: Send + Sync + 'static {
    fn set(&self, routes: Vec<Route>) -> impl Future<Output = Result<ApplyReport, String>> + Send;
    fn get(&self) -> impl Future<Output = Result<Vec<Route>, String>> + Send;
    fn protocol(&self) -> u8;
}

impl RouteService for RouteTable {
    async fn set(&self, routes: Vec<Route>) -> Result<ApplyReport, String> {
        self.apply(&routes).await.map_err(|e| e.to_string())
    }
    async fn get(&self) -> Result<Vec<Route>, String> {
        self.ours().await.map_err(|e| e.to_string())
    }
    fn protocol(&self) -> u8 {
        RouteTable::protocol(self)
    }
}

/// Pure request handling, one line in, one reply out.
pub async fn handle<S: RouteService>(line: &str, service: &S) -> Reply {
    match serde_json::from_str::<Request>(line) {
        Err(e) => Reply::error(format!("bad request: {e}")),
        Ok(Request::SetRoutes { routes }) if routes.len() > MAX_ROUTES => Reply::error(format!(
            "{} routes in one request; at most {MAX_ROUTES}",
            routes.len()
        )),
        Ok(Request::SetRoutes { routes }) => match service.set(routes).await {
            Ok(report) => Reply {
                ok: true,
                applied: Some(report.applied),
                removed: Some(report.removed),
                errors: Some(report.errors),
                ..Default::default()
            },
            Err(e) => Reply::error(e),
        },
        Ok(Request::GetRoutes) => match service.get().await {
            Ok(routes) => Reply {
                ok: true,
                routes: Some(routes),
                protocol: Some(service.protocol()),
                ..Default::default()
            },
            Err(e) => Reply::error(e),
        },
    }
}

/// The control listener on `address`, also bound to `device`: bound to an
/// address alone, Linux (weak host model) accepts connections to it arriving
/// on any interface, from a container or the VM's own network.
pub fn listen(address: SocketAddrV4, device: &str) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's own bind does: a restarted agent need not wait out TIME_WAIT.
    socket.set_reuse_address(true)?;
    bind_device(&socket, device)
        .map_err(|e| io::Error::new(e.kind(), format!("binding to device {device}: {e}")))?;
    socket.bind(&SocketAddr::V4(address).into())?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

#[cfg(target_os = "linux")]
fn bind_device(socket: &socket2::Socket, device: &str) -> io::Result<()> {
    socket.bind_device(Some(device.as_bytes()))
}

/// Elsewhere the agent is only type-checked; refusing beats listening unbound.
#[cfg(not(target_os = "linux"))]
fn bind_device(_socket: &socket2::Socket, _device: &str) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SO_BINDTODEVICE needs Linux",
    ))
}

/// Only the host end of the tunnel may talk to the agent.
pub fn peer_allowed(peer: SocketAddr, host: Ipv4Addr) -> bool {
    match peer.ip() {
        IpAddr::V4(a) => a == host,
        IpAddr::V6(a) => a.to_ipv4_mapped() == Some(host),
    }
}

/// Accepts connections until the task is aborted.
pub async fn serve<S: RouteService>(listener: TcpListener, host: Ipv4Addr, service: Arc<S>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "control accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !peer_allowed(peer, host) {
            tracing::warn!(%peer, expected = %host, "control connection refused: not the host's tunnel address");
            continue;
        }
        tokio::spawn(connection(stream, service.clone()));
    }
}

async fn connection<S: RouteService>(stream: TcpStream, service: Arc<S>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = String::new();
        let read =
            tokio::time::timeout(IDLE, (&mut reader).take(MAX_LINE).read_line(&mut line)).await;
        // A line cut at MAX_LINE leaves the rest unread: answer, then close.
        let truncated = !line.ends_with('\n') && line.len() as u64 >= MAX_LINE;
        let reply = match read {
            Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return,
            Ok(Ok(_)) if truncated => Reply::error(format!("request longer than {MAX_LINE} bytes")),
            Ok(Ok(_)) => handle(line.trim(), &*service).await,
        };
        let mut text =
            serde_json::to_string(&reply).unwrap_or_else(|_| r#"{"ok":false}"#.to_owned());
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() || truncated {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake {
        routes: Mutex<Vec<Route>>,
    }

    impl RouteService for Fake {
        async fn set(&self, routes: Vec<Route>) -> Result<ApplyReport, String> {
            let mut held = self.routes.lock().unwrap();
            let removed = held
                .iter()
                .filter(|r| !routes.contains(r))
                .cloned()
                .collect();
            *held = routes.clone();
            Ok(ApplyReport {
                applied: routes,
                removed,
                errors: vec![],
            })
        }
        async fn get(&self) -> Result<Vec<Route>, String> {
            Ok(self.routes.lock().unwrap().clone())
        }
        fn protocol(&self) -> u8 {
            222
        }
    }

    const SET: &str =
        r#"{"op":"set-routes","routes":[{"destination":"10.244.1.0/24","via":"172.18.0.3"}]}"#;

    #[tokio::test]
    async fn set_then_get_speaks_the_documented_json() {
        let fake = Fake::default();
        let reply = serde_json::to_string(&handle(SET, &fake).await).unwrap();
        assert_eq!(
            reply,
            r#"{"ok":true,"applied":[{"destination":"10.244.1.0/24","via":"172.18.0.3"}],"removed":[],"errors":[]}"#
        );
        let reply = serde_json::to_string(&handle(r#"{"op":"get-routes"}"#, &fake).await).unwrap();
        assert_eq!(
            reply,
            r#"{"ok":true,"routes":[{"destination":"10.244.1.0/24","via":"172.18.0.3"}],"protocol":222}"#
        );
        let reply = handle(r#"{"op":"set-routes","routes":[]}"#, &fake).await;
        assert_eq!(reply.removed.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn bad_requests_get_ok_false_and_a_reason() {
        let fake = Fake::default();
        for (line, want) in [
            ("not json", "bad request"),
            (r#"{"op":"reboot"}"#, "unknown variant `reboot`"),
            (
                r#"{"op":"set-routes","routes":[{"destination":"banana","via":"1.2.3.4"}]}"#,
                "bad request",
            ),
        ] {
            let reply = handle(line, &fake).await;
            assert!(!reply.ok, "{line}");
            assert!(
                reply.error.as_deref().unwrap().contains(want),
                "{line}: {:?}",
                reply.error
            );
        }
        let many: Vec<String> = (0..=MAX_ROUTES)
            .map(|i| {
                format!(
                    r#"{{"destination":"10.{}.{}.0/24","via":"172.18.0.3"}}"#,
                    i / 256,
                    i % 256
                )
            })
            .collect();
        let line = format!(r#"{{"op":"set-routes","routes":[{}]}}"#, many.join(","));
        assert!(handle(&line, &fake)
            .await
            .error
            .unwrap()
            .contains("at most 4096"));
    }

    #[tokio::test]
    async fn the_listener_is_bound_to_its_device() {
        let any_port = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let listener = listen(any_port, "lo").unwrap();
        let sock = socket2::SockRef::from(&listener);
        assert_eq!(sock.device().unwrap().as_deref(), Some(&b"lo"[..]));
        // Loopback traffic arrives on lo: still accepted.
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        client.unwrap();
        accepted.unwrap();

        let err = listen(any_port, "no-such-tun").unwrap_err().to_string();
        assert!(err.contains("binding to device no-such-tun"), "{err}");
    }

    #[test]
    fn only_the_hosts_tunnel_address_may_connect() {
        let host: Ipv4Addr = "10.254.253.1".parse().unwrap();
        assert!(peer_allowed("10.254.253.1:40000".parse().unwrap(), host));
        assert!(peer_allowed(
            "[::ffff:10.254.253.1]:40000".parse().unwrap(),
            host
        ));
        assert!(!peer_allowed("172.17.0.5:40000".parse().unwrap(), host));
        assert!(!peer_allowed("10.254.253.2:40000".parse().unwrap(), host));
    }

    #[tokio::test]
    async fn a_connection_from_another_address_gets_nothing_and_the_host_gets_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Host = some other address: the connection is dropped unanswered.
        let server = tokio::spawn(serve(
            listener,
            "10.254.253.1".parse().unwrap(),
            Arc::new(Fake::default()),
        ));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("{SET}\n").as_bytes()).await.unwrap();
        let mut buf = String::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "got {buf:?}");
        server.abort();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            listener,
            Ipv4Addr::LOCALHOST,
            Arc::new(Fake::default()),
        ));
        let s = TcpStream::connect(addr).await.unwrap();
        let (read, mut write) = s.into_split();
        let mut lines = BufReader::new(read).lines();
        write
            .write_all(format!("{SET}\n{{\"op\":\"get-routes\"}}\n").as_bytes())
            .await
            .unwrap();
        let first = lines.next_line().await.unwrap().unwrap();
        let second = lines.next_line().await.unwrap().unwrap();
        assert!(first.starts_with(r#"{"ok":true,"applied":"#), "{first}");
        assert!(
            second.contains(r#""routes":[{"destination":"10.244.1.0/24""#),
            "{second}"
        );
        server.abort();
    }
}
