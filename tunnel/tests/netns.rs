//! The data path end to end, without Docker: two tunnels in two network
//! namespaces made for the test, joined by a veth pair. TCP payloads (large
//! enough for TSO/GRO super-packets) cross both ways, and a UDP datagram,
//! through the batched path, the per-packet path macOS runs, and the two
//! facing each other (as the daemon with `CONNECTOR_DATA_PATH=per-packet`
//! and the agent do in `scripts/bench`).
//!
//! Linux only, and only as root (namespaces, tun); otherwise it says so and
//! passes. The namespaces are deleted when the test ends, also on failure.
#![cfg(target_os = "linux")]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use connector_tunnel::keys::{self, PublicKey};
use connector_tunnel::tun::{self, TunSpec};
use connector_tunnel::{Tunnel, TunnelConfig};

const VETH_A: Ipv4Addr = Ipv4Addr::new(10, 254, 240, 1);
const VETH_B: Ipv4Addr = Ipv4Addr::new(10, 254, 240, 2);
const TUN_A: Ipv4Addr = Ipv4Addr::new(10, 254, 241, 1);
const TUN_B: Ipv4Addr = Ipv4Addr::new(10, 254, 241, 2);
const PORT_B: u16 = 51_999;
const PAYLOAD: usize = 16 << 20;

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {}", args.join(" "));
}

/// Two namespaces and a veth between them; deleted on drop.
struct Namespaces {
    a: String,
    b: String,
}

impl Namespaces {
    /// `tag` tells apart the namespaces (and veths) of tests running at once.
    fn create(tag: char) -> Namespaces {
        let id = std::process::id();
        let ns = Namespaces {
            a: format!("ctun{id}{tag}a"),
            b: format!("ctun{id}{tag}b"),
        };
        let (va, vb) = (format!("ctv{id}{tag}a"), format!("ctv{id}{tag}b"));
        for name in [&ns.a, &ns.b] {
            ip(&["netns", "add", name]);
        }
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        for (name, veth, addr) in [(&ns.a, &va, VETH_A), (&ns.b, &vb, VETH_B)] {
            ip(&["link", "set", veth, "netns", name]);
            ip(&[
                "-n",
                name,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                veth,
            ]);
            ip(&["-n", name, "link", "set", veth, "up"]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
        }
        ns
    }

    /// Interfaces made from now on get no IPv6: their link-local router
    /// solicitations would cross the tunnel from a source no filter allows.
    fn without_ipv6(&self) {
        for name in [&self.a, &self.b] {
            let args = ["netns", "exec", name, "sysctl", "-qw"];
            ip(&[&args[..], &["net.ipv6.conf.default.disable_ipv6=1"]].concat());
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // The veth pair and the tuns go with their namespaces.
        for name in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`: sockets and
/// tun devices it creates belong there, and keep working from any thread.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).expect("open the namespace");
        // SAFETY: setns on this thread only, with a namespace file descriptor.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (network namespaces, tun devices)");
        return false;
    }
    if !std::path::Path::new("/dev/net/tun").exists()
        || Command::new("ip").arg("-V").output().is_err()
    {
        eprintln!("skipped: needs /dev/net/tun and iproute2");
        return false;
    }
    true
}

/// Median round trip of `count` UDP echoes to `to` (which must echo them);
/// informational, so a lost datagram is just not counted.
fn udp_rtt(socket: &UdpSocket, to: SocketAddr, count: usize) -> Option<Duration> {
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut times = Vec::with_capacity(count);
    let mut buf = [0u8; 64];
    for i in 0..count as u32 {
        let started = Instant::now();
        socket.send_to(&i.to_be_bytes(), to).unwrap();
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            if buf[..n] == i.to_be_bytes() {
                times.push(started.elapsed());
                break;
            }
        }
        thread::sleep(Duration::from_millis(2));
    }
    times.sort();
    times.get(times.len() / 2).copied()
}

/// A UDP echo on B's tunnel address and a client on A's, once an echo has
/// come back through the tunnel (within 20 s).
fn echo_through_tunnel(ns: &Namespaces) -> (UdpSocket, thread::JoinHandle<()>) {
    let echo = spawn_udp_echo(
        in_netns(&ns.b, || UdpSocket::bind((TUN_B, 7001)).unwrap())
            .join()
            .unwrap(),
    );
    let client = in_netns(&ns.a, || UdpSocket::bind((TUN_A, 0)).unwrap())
        .join()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !echoed(&client, b"up?", Duration::from_millis(500)) {
        assert!(Instant::now() < deadline, "no echo through the tunnel");
    }
    (client, echo)
}

/// Echoes every datagram back to its sender until one says "done" (or 30 s
/// pass without any).
fn spawn_udp_echo(socket: UdpSocket) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            socket.send_to(&buf[..n], from).unwrap();
            if &buf[..n] == b"done" {
                break;
            }
        }
    })
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

/// One end: tun and UDP socket created inside `ns`, tunnel running on `rt`.
fn start_end(
    rt: &tokio::runtime::Handle,
    ns: &str,
    name: String,
    (address, peer): (Ipv4Addr, Ipv4Addr),
    bind: SocketAddr,
    config: TunnelConfig,
) -> Tunnel {
    let handle = rt.clone();
    let (device, socket) = in_netns(ns, move || {
        let _runtime = handle.enter();
        let device = tun::create(&TunSpec {
            name: Some(name),
            address,
            peer,
            prefix: 30,
            address6: None,
            mtu: 1420,
        })
        .expect("create the tun");
        let socket = UdpSocket::bind(bind).expect("bind UDP");
        socket.set_nonblocking(true).unwrap();
        (device, socket)
    })
    .join()
    .expect("namespace thread");
    let _runtime = rt.enter();
    let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
    Tunnel::spawn(device, socket, config)
}

/// Initiator A (keepalive, knows B's address, as the agent) and responder B
/// (learns A's address, as the daemon), each on the per-packet path if
/// `per_packet` says so; also returns B's public key.
fn start_pair(
    rt: &tokio::runtime::Handle,
    ns: &Namespaces,
    tag: char,
    per_packet: Ends,
) -> (Tunnel, Tunnel, PublicKey) {
    let (key_a, key_b) = (keys::generate(), keys::generate());
    let (pub_a, pub_b) = (PublicKey::from(&key_a), PublicKey::from(&key_b));
    let id = std::process::id();
    let tunnel_b = start_end(
        rt,
        &ns.b,
        format!("ctt{id}{tag}b"),
        (TUN_B, TUN_A),
        SocketAddr::from((VETH_B, PORT_B)),
        TunnelConfig {
            private_key: key_b,
            peer_public: pub_a,
            keepalive: None,
            endpoint: None,
            allowed_sources: vec![ipnet::IpNet::V4(TUN_A.into())],
            per_packet: per_packet.b,
        },
    );
    let tunnel_a = start_end(
        rt,
        &ns.a,
        format!("ctt{id}{tag}a"),
        (TUN_A, TUN_B),
        SocketAddr::from((VETH_A, 0)),
        TunnelConfig {
            private_key: key_a,
            peer_public: pub_b,
            keepalive: Some(20),
            endpoint: Some(SocketAddr::from((VETH_B, PORT_B))),
            allowed_sources: vec![ipnet::IpNet::V4(TUN_B.into())],
            per_packet: per_packet.a,
        },
    );
    (tunnel_a, tunnel_b, pub_b)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Which ends run the per-packet path (A: the initiator, B: the responder).
#[derive(Clone, Copy, Debug)]
struct Ends {
    a: bool,
    b: bool,
}

const BATCHED: Ends = Ends { a: false, b: false };

/// Whether `interface` in namespace `ns` has TCP segmentation offload on
/// (`ethtool -k`, through the ioctl: ethtool itself may be missing).
fn tso_on(ns: &str, interface: String) -> bool {
    in_netns(ns, move || {
        const ETHTOOL_GTSO: u32 = 0x1e;
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        let mut value = EthtoolValue {
            cmd: ETHTOOL_GTSO,
            data: 0,
        };
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        // SAFETY: all-zero is a valid ifreq.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(interface.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        // SAFETY: ifreq names the device and points at a live ethtool_value.
        let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
        assert_eq!(
            rc,
            0,
            "ETHTOOL_GTSO {interface}: {}",
            std::io::Error::last_os_error()
        );
        value.data != 0
    })
    .join()
    .unwrap()
}

#[test]
fn tcp_and_udp_cross_the_tunnel_between_two_namespaces() {
    cross_the_tunnel('t', BATCHED);
}

#[test]
fn tcp_and_udp_cross_the_per_packet_path() {
    cross_the_tunnel('p', Ends { a: true, b: true });
}

/// The daemon on the path macOS runs, the agent batched, as in `scripts/bench`.
#[test]
fn tcp_and_udp_cross_between_the_per_packet_and_the_batched_path() {
    cross_the_tunnel('m', Ends { a: false, b: true });
}

fn cross_the_tunnel(tag: char, per_packet: Ends) {
    if !can_run() {
        return;
    }
    let ns = Namespaces::create(tag);
    let rt = runtime();
    let (tunnel_a, tunnel_b, _) = start_pair(rt.handle(), &ns, tag, per_packet);
    // The per-packet path turns the tun's offloads off; the batched one
    // keeps them: which path runs shows there.
    for (name, tunnel, per_packet) in [
        (&ns.a, &tunnel_a, per_packet.a),
        (&ns.b, &tunnel_b, per_packet.b),
    ] {
        let interface = tunnel.interface_name().unwrap();
        assert_eq!(tso_on(name, interface), !per_packet, "{per_packet:?}");
    }

    // Server in B: echoes every TCP byte, and UDP datagrams until "done".
    let listener = in_netns(&ns.b, || TcpListener::bind((TUN_B, 7000)).unwrap())
        .join()
        .unwrap();
    let udp_b = in_netns(&ns.b, || UdpSocket::bind((TUN_B, 7001)).unwrap())
        .join()
        .unwrap();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = conn.read(&mut buf).expect("server read");
            if n == 0 {
                break;
            }
            conn.write_all(&buf[..n]).expect("server write");
        }
    });
    // UDP echo in B on the tunnel and on the veth address (the latter for a
    // round-trip reference without the tunnel).
    let udp_server = spawn_udp_echo(udp_b);
    let udp_veth = in_netns(&ns.b, || UdpSocket::bind((VETH_B, 7002)).unwrap())
        .join()
        .unwrap();
    let veth_server = spawn_udp_echo(udp_veth);

    // Client in A. The first SYN waits for the handshake (boringtun queues it).
    let client = in_netns(&ns.a, || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let udp = UdpSocket::bind((TUN_A, 0)).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut echoed = [0u8; 2048];
        let udp_reply = loop {
            udp.send_to(b"over the tunnel", (TUN_B, 7001)).unwrap();
            if let Ok((n, _)) = udp.recv_from(&mut echoed) {
                break echoed[..n].to_vec();
            }
            assert!(Instant::now() < deadline, "no UDP echo through the tunnel");
        };
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::from((TUN_B, 7000)), Duration::from_secs(10))
                .expect("TCP connect through the tunnel");
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let sent = pattern(PAYLOAD, 7);
        let mut writer = conn.try_clone().unwrap();
        let to_send = sent.clone();
        let started = Instant::now();
        let writing = thread::spawn(move || {
            writer.write_all(&to_send).expect("client write");
            writer.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut received = Vec::with_capacity(PAYLOAD);
        conn.read_to_end(&mut received).expect("client read");
        writing.join().unwrap();
        let elapsed = started.elapsed();
        udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let rtt = udp_rtt(&udp, SocketAddr::from((TUN_B, 7001)), 300);
        let plain = UdpSocket::bind((VETH_A, 0)).unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let rtt_veth = udp_rtt(&plain, SocketAddr::from((VETH_B, 7002)), 300);
        udp.send_to(b"done", (TUN_B, 7001)).unwrap();
        plain.send_to(b"done", (VETH_B, 7002)).unwrap();
        (
            udp_reply,
            sent == received,
            received.len(),
            elapsed,
            rtt,
            rtt_veth,
        )
    });
    let (udp_reply, same, len, elapsed, rtt, rtt_veth) = client.join().expect("client");
    server.join().expect("server");
    udp_server.join().expect("UDP server");
    veth_server.join().expect("UDP server on the veth");
    let show = |d: Option<Duration>| d.map_or("n/a".to_owned(), |d| format!("{d:.1?}"));
    eprintln!(
        "UDP echo round trip, median: {} through the tunnel, {} over the bare veth",
        show(rtt),
        show(rtt_veth)
    );

    assert_eq!(udp_reply, b"over the tunnel");
    assert_eq!(len, PAYLOAD, "every byte came back");
    assert!(same, "the echoed bytes are the ones sent");
    let mbit = (2 * PAYLOAD) as f64 * 8.0 / elapsed.as_secs_f64() / 1e6;
    eprintln!(
        "{per_packet:?}: {} MiB each way in {elapsed:.2?} ({mbit:.0} Mbit/s in all)",
        PAYLOAD >> 20
    );

    let (a, b) = (tunnel_a.stats().snapshot(), tunnel_b.stats().snapshot());
    assert!(
        a.tx_bytes >= PAYLOAD as u64 && b.rx_bytes >= PAYLOAD as u64,
        "{a:?} {b:?}"
    );
    assert!(a.last_handshake.is_some() && b.endpoint.is_some());
    rt.block_on(async {
        tunnel_a.shutdown().await;
        tunnel_b.shutdown().await;
    });
    drop(ns);
}

/// Sends `message` through the tunnel to the echo server and waits up to
/// `wait` for it to come back.
fn echoed(socket: &UdpSocket, message: &[u8], wait: Duration) -> bool {
    socket.set_read_timeout(Some(wait)).unwrap();
    socket.send_to(message, (TUN_B, 7001)).unwrap();
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + wait;
    while let Ok((n, _)) = socket.recv_from(&mut buf) {
        if buf[..n] == *message {
            return true;
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    false
}

/// Anyone who knows B's public key can send handshake initiations with a
/// valid mac1; past boringtun's rate limit B answers them with cookie
/// replies. Neither may move B's endpoint away from A (it once did: pings
/// then went to the attacker).
#[test]
fn forged_initiations_do_not_move_the_endpoint() {
    if !can_run() {
        return;
    }
    let ns = Namespaces::create('f');
    let rt = runtime();
    let (tunnel_a, tunnel_b, pub_b) = start_pair(rt.handle(), &ns, 'f', BATCHED);
    let (client, echo) = echo_through_tunnel(&ns);
    let endpoint = tunnel_b.stats().snapshot().endpoint.expect("B knows A");

    // The attacker: on A's side of the veth, another port, its own key.
    let attacker = in_netns(&ns.a, || UdpSocket::bind((VETH_A, 0)).unwrap())
        .join()
        .unwrap();
    let attacker_addr = attacker.local_addr().unwrap();
    let mut forger = boringtun::noise::Tunn::new(keys::generate(), pub_b, None, None, 1, None);
    let flooding = thread::spawn(move || {
        let mut buf = [0u8; 256];
        let until = Instant::now() + Duration::from_secs(2);
        let mut sent = 0u32;
        while Instant::now() < until {
            if let boringtun::noise::TunnResult::WriteToNetwork(init) =
                forger.format_handshake_initiation(&mut buf, true)
            {
                attacker.send_to(init, (VETH_B, PORT_B)).unwrap();
                sent += 1;
            }
            thread::sleep(Duration::from_micros(1000));
        }
        // What B answered: cookie replies (type 3) once over its rate limit.
        attacker.set_nonblocking(true).unwrap();
        let mut cookies = 0u32;
        while let Ok((n, _)) = attacker.recv_from(&mut buf) {
            if n > 0 && buf[0] == 3 {
                cookies += 1;
            }
        }
        (sent, cookies)
    });
    let (mut asked, mut answered) = (0u32, 0u32);
    while !flooding.is_finished() {
        asked += 1;
        if echoed(&client, &asked.to_be_bytes(), Duration::from_millis(200)) {
            answered += 1;
        }
        let now = tunnel_b.stats().snapshot().endpoint;
        assert_eq!(
            now,
            Some(endpoint),
            "B's endpoint moved to {now:?} (attacker {attacker_addr})"
        );
        thread::sleep(Duration::from_millis(5));
    }
    let (sent, cookies) = flooding.join().unwrap();
    eprintln!("{sent} forged initiations, {cookies} cookie replies; {answered}/{asked} echoes");
    assert!(cookies > 0, "the flood got B over its rate limit");
    assert!(
        answered * 10 >= asked * 9,
        "echoes lost under the flood: {answered}/{asked}"
    );
    assert_eq!(tunnel_b.stats().snapshot().endpoint, Some(endpoint));

    client.send_to(b"done", (TUN_B, 7001)).unwrap();
    echo.join().unwrap();
    rt.block_on(async {
        tunnel_a.shutdown().await;
        tunnel_b.shutdown().await;
    });
    drop(ns);
}

/// A decrypted packet reaches the tun only if its source is one the peer may
/// use (WireGuard's allowed IPs); the set can change while the tunnel runs.
#[test]
fn packets_from_sources_outside_the_allowed_set_are_dropped() {
    if !can_run() {
        return;
    }
    let ns = Namespaces::create('s');
    ns.without_ipv6();
    let rt = runtime();
    let (tunnel_a, tunnel_b, _) = start_pair(rt.handle(), &ns, 's', BATCHED);
    let (client, echo) = echo_through_tunnel(&ns);
    let wait = Duration::from_millis(300);
    let dropped = |t: &Tunnel| t.stats().snapshot().rx_dropped_source;
    assert_eq!((dropped(&tunnel_a), dropped(&tunnel_b)), (0, 0));

    // B no longer accepts A's address: the request dies at B.
    tunnel_b.set_allowed_sources(vec!["10.254.250.0/24".parse().unwrap()]);
    assert!(!echoed(&client, b"to B", wait));
    assert!(dropped(&tunnel_b) >= 1);
    // A's own packets still count as A's: the endpoint stays.
    assert!(tunnel_b.stats().snapshot().endpoint.is_some());

    // A accepts nothing: the answer dies at A.
    tunnel_b.set_allowed_sources(vec!["0.0.0.0/0".parse().unwrap()]);
    tunnel_a.set_allowed_sources(Vec::new());
    assert!(!echoed(&client, b"back to A", wait));
    assert!(dropped(&tunnel_a) >= 1);

    tunnel_a.set_allowed_sources(vec![ipnet::IpNet::V4(TUN_B.into())]);
    assert!(echoed(&client, b"again", Duration::from_secs(2)));

    client.send_to(b"done", (TUN_B, 7001)).unwrap();
    echo.join().unwrap();
    rt.block_on(async {
        tunnel_a.shutdown().await;
        tunnel_b.shutdown().await;
    });
    drop(ns);
}
