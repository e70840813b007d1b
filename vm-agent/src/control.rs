//! The agent's control channel: JSON lines over TCP on
//! `<agent tunnel address>:51872`, bound to that address and to the tun
//! device so only traffic that came through the tun (which WireGuard
//! authenticated) can reach it, and answering only the host's tunnel address.
//!
//! The messages are [`connector_protocol::vm_routes`]; this module serves them.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use connector_protocol::lines::{self, LineError, LineReader};
use connector_protocol::vm_routes::{decode_request, Reply, Request, VmRoute, MAX_REQUEST};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::routes::{ApplyReport, RouteTable};

/// A connection with no request for this long is closed.
const IDLE: Duration = Duration::from_secs(30);

/// What the channel drives; the netlink [`RouteTable`] in the agent, a fake
/// in tests.
pub trait RouteService: Send + Sync + 'static {
    fn set(&self, routes: Vec<VmRoute>)
        -> impl Future<Output = Result<ApplyReport, String>> + Send;
    fn get(&self) -> impl Future<Output = Result<Vec<VmRoute>, String>> + Send;
    fn protocol(&self) -> u8;
}

impl RouteService for RouteTable {
    async fn set(&self, routes: Vec<VmRoute>) -> Result<ApplyReport, String> {
        self.apply(&routes).await.map_err(|e| e.to_string())
    }
    async fn get(&self) -> Result<Vec<VmRoute>, String> {
        self.ours().await.map_err(|e| e.to_string())
    }
    fn protocol(&self) -> u8 {
        RouteTable::protocol(self)
    }
}

/// Pure request handling, one line in, one reply out.
pub async fn handle<S: RouteService>(line: &str, service: &S) -> Reply {
    match decode_request(line) {
        Err(e) => Reply::error(e),
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

/// The reply to one line as it was read.
async fn answer<S: RouteService>(line: Result<String, LineError>, service: &S) -> Reply {
    match line {
        Ok(text) => handle(&text, service).await,
        Err(LineError::TooLong { .. }) => Reply::too_long(),
        Err(e) => Reply::error(format!("bad request: {e}")),
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
    let (read, write) = stream.into_split();
    converse(read, write, &*service).await;
}

/// Answers the requests of one connection in order, until it ends, idles
/// for [`IDLE`], or sends a line that cannot be read (answered, then closed:
/// the rest of it is never read).
async fn converse<R, W, S>(read: R, mut write: W, service: &S)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    S: RouteService,
{
    let mut lines = LineReader::new(read, MAX_REQUEST);
    loop {
        let line = match tokio::time::timeout(IDLE, lines.next_line()).await {
            Err(_) | Ok(Ok(None)) | Ok(Err(LineError::Io(_))) => return,
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Err(e)) => Err(e),
        };
        let last = line.is_err();
        let reply = answer(line, service).await;
        if lines::write(&mut write, &reply).await.is_err() || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    /// The reply line to the first line of `bytes` (an empty input is an
    /// empty line).
    async fn respond<S: RouteService>(bytes: &[u8], service: &S) -> String {
        let line = LineReader::new(bytes, MAX_REQUEST).next_line().await;
        let line = line.map(Option::unwrap_or_default);
        lines::encode(&answer(line, service).await).unwrap()
    }
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake {
        routes: Mutex<Vec<VmRoute>>,
    }

    impl RouteService for Fake {
        async fn set(&self, routes: Vec<VmRoute>) -> Result<ApplyReport, String> {
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
        async fn get(&self) -> Result<Vec<VmRoute>, String> {
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
        let many: Vec<String> = (0..=connector_protocol::vm_routes::MAX_ROUTES)
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
        let reply = respond(&vec![b' '; MAX_REQUEST + 1], &fake).await;
        assert!(
            reply.contains("request line of more than 1048576 bytes"),
            "{reply}"
        );
        let mut fits = vec![b' '; MAX_REQUEST];
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

        fn route() -> impl Strategy<Value = VmRoute> {
            (any::<u32>(), 0u8..=32, any::<u32>()).prop_map(|(addr, prefix, via)| VmRoute {
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
                let applied: Vec<VmRoute> = serde_json::from_value(reply["applied"].clone()).unwrap();
                prop_assert_eq!(&applied, &routes);
                prop_assert_eq!(&reply["errors"], &serde_json::json!([]));

                let out = block_on(respond(b"{\"op\":\"get-routes\"}\n", &fake));
                let reply: Value = serde_json::from_str(&out).unwrap();
                let listed: Vec<VmRoute> = serde_json::from_value(reply["routes"].clone()).unwrap();
                prop_assert_eq!(listed, routes);
                prop_assert_eq!(&reply["protocol"], &serde_json::json!(222));
            }
        }
    }
}
