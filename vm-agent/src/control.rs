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
/// Longest request line, newline included: far more than any VM route set
/// (a few per kind node).
const MAX_LINE: usize = 1 << 20;
const MAX_ROUTES: usize = 4096;
/// Longest error text in a reply: serde's messages quote the offending
/// input, which must not make a reply as long as the request.
const MAX_ERROR: usize = 300;
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
        let mut message = message.into();
        if let Some((cut, _)) = message.char_indices().nth(MAX_ERROR) {
            message.truncate(cut);
            message.push('…');
        }
        Reply {
            ok: false,
            error: Some(message),
            ..Default::default()
        }
    }

    fn too_long() -> Reply {
        Reply::error(format!("request line of {MAX_LINE} bytes or more"))
    }

    /// The reply as sent: one line of JSON.
    fn line(&self) -> String {
        // serde_json escapes control characters, so the text holds no newline.
        let mut text = serde_json::to_string(self).unwrap_or_else(|_| r#"{"ok":false}"#.to_owned());
        text.push('\n');
        text
    }
}

/// A request line as read (at most MAX_LINE bytes) that is not all there:
/// the rest of it is still unread.
fn cut_short(line: &[u8]) -> bool {
    line.strip_suffix(b"\n").unwrap_or(line).len() >= MAX_LINE
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
    if line.len() >= MAX_LINE {
        return Reply::too_long();
    }
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

/// One request line as read from the wire (bytes, newline included if any)
/// to its reply line.
pub async fn respond<S: RouteService>(line: &[u8], service: &S) -> String {
    let reply = if cut_short(line) {
        Reply::too_long()
    } else {
        match std::str::from_utf8(line) {
            Ok(text) => handle(text.trim(), service).await,
            Err(e) => Reply::error(format!("bad request: not UTF-8: {e}")),
        }
    };
    reply.line()
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
        let mut line = Vec::new();
        let mut limited = (&mut reader).take(MAX_LINE as u64);
        match tokio::time::timeout(IDLE, limited.read_until(b'\n', &mut line)).await {
            Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return,
            Ok(Ok(_)) => {}
        }
        let reply = respond(&line, &*service).await;
        // A line cut at MAX_LINE leaves the rest unread: answer, then close.
        if write.write_all(reply.as_bytes()).await.is_err() || cut_short(&line) {
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

    #[cfg(target_os = "linux")]
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

    #[tokio::test]
    async fn over_long_and_non_utf8_lines_get_a_reason() {
        let fake = Fake::default();
        let reply = respond(&vec![b' '; MAX_LINE], &fake).await;
        assert!(
            reply.contains("request line of 1048576 bytes or more"),
            "{reply}"
        );
        let mut fits = vec![b' '; MAX_LINE - 1];
        fits.push(b'\n');
        let reply = respond(&fits, &fake).await;
        assert!(reply.contains("bad request: EOF"), "{reply}");
        let reply = respond(b"{\"op\":\"get-routes\xff\"}\n", &fake).await;
        assert!(reply.contains("not UTF-8"), "{reply}");
        // serde quotes what it did not expect; the reply quotes a bounded part.
        let op = "x".repeat(100_000);
        let reply = respond(format!(r#"{{"op":"{op}"}}"#).as_bytes(), &fake).await;
        assert!(
            reply.len() < 1000 && reply.contains("unknown variant"),
            "{reply}"
        );
    }

    mod props {
        use super::*;
        use ipnet::Ipv4Net;
        use proptest::prelude::*;
        use serde_json::Value;

        fn block_on<F: Future>(f: F) -> F::Output {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(f)
        }

        fn route() -> impl Strategy<Value = Route> {
            (any::<u32>(), 0u8..=32, any::<u32>()).prop_map(|(addr, prefix, via)| Route {
                destination: Ipv4Net::new(addr.into(), prefix).unwrap(),
                via: via.into(),
            })
        }

        /// Strings a peer might put where the protocol expects a word.
        fn word() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("set-routes".to_owned()),
                Just("get-routes".to_owned()),
                route().prop_map(|r| r.destination.to_string()),
                route().prop_map(|r| r.via.to_string()),
                "[0-9./:a-f-]{0,20}",
                "\\PC{0,16}",
            ]
        }

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                word().prop_map(Value::String),
            ];
            let key = prop_oneof![
                Just("op".to_owned()),
                Just("routes".to_owned()),
                Just("destination".to_owned()),
                Just("via".to_owned()),
                word(),
            ];
            leaf.prop_recursive(4, 48, 6, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::vec((key.clone(), inner), 0..6)
                        .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            })
        }

        /// Request-shaped JSON whose fields may hold anything.
        fn request() -> impl Strategy<Value = Value> {
            let field = prop_oneof![word().prop_map(Value::String), json()];
            let entry = (field.clone(), field.clone())
                .prop_map(|(d, v)| serde_json::json!({"destination": d, "via": v}));
            (
                prop_oneof![word().prop_map(Value::String), json()],
                prop::collection::vec(entry, 0..5),
            )
                .prop_map(|(op, routes)| serde_json::json!({"op": op, "routes": routes}))
        }

        fn line() -> impl Strategy<Value = Vec<u8>> {
            let valid = prop::collection::vec(route(), 0..4).prop_map(|routes| {
                serde_json::json!({"op": "set-routes", "routes": routes}).to_string()
            });
            // Long strings where serde quotes what it did not expect.
            let long = (0usize..10_000, any::<bool>()).prop_map(|(n, in_route)| {
                let s = "x".repeat(n);
                match in_route {
                    false => serde_json::json!({"op": s}),
                    true => serde_json::json!({"op": "set-routes", "routes": [{"destination": s}]}),
                }
                .to_string()
                .into_bytes()
            });
            prop_oneof![
                long,
                prop::collection::vec(any::<u8>(), 0..300),
                "\\PC{0,200}".prop_map(String::into_bytes),
                json().prop_map(|v| v.to_string().into_bytes()),
                request().prop_map(|v| v.to_string().into_bytes()),
                // A valid request with one byte changed.
                (valid, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(text, i, b)| {
                    let mut bytes = text.into_bytes();
                    let i = i.index(bytes.len());
                    bytes[i] = b;
                    bytes
                }),
            ]
        }

        proptest! {
            #![proptest_config(crate::proptest_config(2000))]

            #[test]
            fn any_line_gets_one_bounded_json_reply(line in line()) {
                let out = block_on(respond(&line, &Fake::default()));
                prop_assert!(out.ends_with('\n'));
                prop_assert_eq!(out.matches('\n').count(), 1);
                let reply: Value = serde_json::from_str(&out).unwrap();
                if reply["ok"] == Value::Bool(true) {
                    // Only a valid request succeeds; it echoes its routes at most.
                    prop_assert!(out.len() <= line.len() + 128, "{} for {}", out.len(), line.len());
                } else {
                    prop_assert_eq!(&reply["ok"], &Value::Bool(false));
                    prop_assert!(reply["error"].is_string());
                    prop_assert!(out.len() <= 2048, "{}", out.len());
                }
            }
        }

        proptest! {
            #![proptest_config(crate::proptest_config(1000))]

            #[test]
            fn valid_set_routes_round_trip(routes in prop::collection::vec(route(), 0..16)) {
                let fake = Fake::default();
                let request = serde_json::json!({"op": "set-routes", "routes": routes}).to_string();
                let out = block_on(respond(format!("{request}\n").as_bytes(), &fake));
                let reply: Value = serde_json::from_str(&out).unwrap();
                prop_assert_eq!(&reply["ok"], &Value::Bool(true), "{}", out);
                let applied: Vec<Route> = serde_json::from_value(reply["applied"].clone()).unwrap();
                prop_assert_eq!(&applied, &routes);
                prop_assert_eq!(&reply["errors"], &serde_json::json!([]));

                let out = block_on(respond(b"{\"op\":\"get-routes\"}\n", &fake));
                let reply: Value = serde_json::from_str(&out).unwrap();
                let listed: Vec<Route> = serde_json::from_value(reply["routes"].clone()).unwrap();
                prop_assert_eq!(listed, routes);
                prop_assert_eq!(&reply["protocol"], &serde_json::json!(222));
            }
        }
    }
}
