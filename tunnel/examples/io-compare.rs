//! io-compare: the Linux data path's batched I/O (`tunnel/src/linux/`) against
//! well-kept crates doing the same job, on the same traffic, to decide which
//! one connector should run. `scripts/bench-io` builds and runs it.
//!
//!   sudo target/release/examples/io-compare [SECONDS] [RUNS]     (defaults: 3, 3)
//!
//! UDP: a sender and a receiver thread over loopback; 1300-byte datagrams,
//! written in rounds of 100 (two full GSO messages of 50):
//!   ours       linux/udp.rs: sendmmsg + UDP_SEGMENT, recvmmsg + UDP_GRO
//!   quinn-udp  quinn-udp 0.6: sendmsg + UDP_SEGMENT (one message a call),
//!              recvmmsg + UDP_GRO
//!   plain      send_to / recv_from: one datagram a system call (macOS's way)
//! tun: one TCP stream from namespace A to namespace B through a tun in each
//! and a relay thread per direction in this process. The kernel hands the relay
//! TSO super-packets; the relay cuts them into segments, copies each segment
//! once (standing for the cipher, which copies every packet in the tunnel),
//! merges them again and writes them to the other tun:
//!   ours       linux/offload.rs: Segmenter (cuts in place) + Coalescer
//!   tun-rs     tun-rs 2: recv_multiple (cuts into separate buffers) +
//!              send_multiple with its GROTable
//!   plain      tuns without offload: one packet a read and a write
//!
//! Figures, over a window after half a second of warm-up: payload throughput,
//! packets a second and, per packet, the system calls (counted by the kernel:
//! the raw_syscalls:sys_enter tracepoint, per thread; "n/a" without tracefs)
//! and CPU time of the threads doing the contender's work. Each run is a child
//! process in network namespaces of its own (unshare), so it touches nothing
//! else, and what it made (tuns, sockets, namespaces) goes with it even if it
//! crashes. Runs alternate between contenders; the tables show medians.
//! Root and Linux only.

#[cfg(target_os = "linux")]
fn main() {
    if let Err(error) = compare::main() {
        eprintln!("io-compare: {error}");
        std::process::exit(1);
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("io-compare: Linux only");
}

#[cfg(target_os = "linux")]
mod compare {
    use std::io::{self, IoSliceMut, Read, Write};
    use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::{mpsc, Arc};
    use std::thread;
    use std::time::Duration;

    use connector_tunnel::linux_io::{
        configure, Coalescer, RxBatch, Segmenter, TxBatch, FRAME_LEN, RX_MESSAGES,
    };
    use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
    use tun_rs::{GROTable, SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

    const DATAGRAM: usize = 1300;
    /// Datagrams written per round: two GSO messages' worth.
    const ROUND: usize = 100;
    /// One GSO message stays under 64 KiB, as in linux/udp.rs.
    const MAX_GSO_BYTES: usize = 65_000;
    const WARM_UP: Duration = Duration::from_millis(500);
    const TUN_MTU: u16 = 1420;
    const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
    const TCP_PORT: u16 = 5201;

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Contender {
        Ours,
        /// quinn-udp for UDP, tun-rs for the tun.
        Crate,
        Plain,
    }

    const CONTENDERS: [Contender; 3] = [Contender::Ours, Contender::Crate, Contender::Plain];

    impl Contender {
        fn arg(self) -> &'static str {
            match self {
                Contender::Ours => "ours",
                Contender::Crate => "crate",
                Contender::Plain => "plain",
            }
        }

        fn parse(arg: &str) -> io::Result<Contender> {
            CONTENDERS
                .into_iter()
                .find(|c| c.arg() == arg)
                .ok_or_else(|| io::Error::other(format!("unknown contender {arg}")))
        }

        fn label(self, kind: &str) -> String {
            match (self, kind) {
                (Contender::Ours, "udp") => "ours (linux/udp.rs)".into(),
                (Contender::Ours, _) => "ours (linux/offload.rs)".into(),
                (Contender::Crate, "udp") => "quinn-udp 0.6".into(),
                (Contender::Crate, _) => "tun-rs 2 offload (GROTable)".into(),
                (Contender::Plain, "udp") => "plain send_to/recv_from".into(),
                (Contender::Plain, _) => "plain tun, no offload".into(),
            }
        }
    }

    pub fn main() -> io::Result<()> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.first().map(String::as_str) == Some("--child") {
            let (kind, contender, seconds) = match &args[1..] {
                [kind, contender, seconds] => (kind, contender, seconds),
                _ => return Err(io::Error::other("--child KIND CONTENDER SECONDS")),
            };
            let contender = Contender::parse(contender)?;
            let window = Duration::from_secs_f64(seconds.parse().map_err(io::Error::other)?);
            let figures = match kind.as_str() {
                "udp" => udp(contender, window)?,
                "tun" => tun(contender, window)?,
                _ => return Err(io::Error::other(format!("unknown kind {kind}"))),
            };
            let line: Vec<String> = figures
                .iter()
                .map(|f| f.map_or("n/a".into(), |v| v.to_string()))
                .collect();
            println!("{}", line.join(" "));
            // The worker threads block in their loops; the process ends them.
            std::process::exit(0);
        }
        let seconds: f64 = args
            .first()
            .map_or(Ok(3.0), |s| s.parse())
            .map_err(io::Error::other)?;
        let runs: usize = args
            .get(1)
            .map_or(Ok(3), |s| s.parse())
            .map_err(io::Error::other)?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(io::Error::other(
                "run as root (network namespaces, tun devices)",
            ));
        }
        for kind in ["udp", "tun"] {
            let mut results: Vec<Vec<Vec<Option<f64>>>> = vec![Vec::new(); CONTENDERS.len()];
            for run in 1..=runs {
                for (i, contender) in CONTENDERS.into_iter().enumerate() {
                    let figures = child(kind, contender, seconds)?;
                    eprintln!("{kind} run {run}/{runs} {}: {figures:?}", contender.arg());
                    results[i].push(figures);
                }
            }
            print_table(kind, seconds, runs, &results);
        }
        Ok(())
    }

    /// Runs one measurement in a child process; its figures.
    fn child(kind: &str, contender: Contender, seconds: f64) -> io::Result<Vec<Option<f64>>> {
        let out = Command::new(std::env::current_exe()?)
            .args(["--child", kind, contender.arg(), &seconds.to_string()])
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "{kind} {} failed: {}",
                contender.arg(),
                out.status
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|f| f.parse().ok())
            .collect())
    }

    fn median(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
        let mut v: Vec<f64> = values.flatten().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }

    fn print_table(kind: &str, seconds: f64, runs: usize, results: &[Vec<Vec<Option<f64>>>]) {
        let udp = kind == "udp";
        println!();
        if udp {
            println!("UDP over loopback, {DATAGRAM}-byte datagrams in rounds of {ROUND}; {seconds} s, median of {runs} runs");
            println!("| contender | sent Gbit/s | sent kdatagrams/s | sender syscalls/datagram | sender CPU ns/datagram (user space) | received Gbit/s | received kdatagrams/s | receiver syscalls/datagram | receiver CPU ns/datagram (user space) |");
            println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        } else {
            println!("tun: one TCP stream through two tuns and a relay (cut, copy once, merge); MTU {TUN_MTU}; {seconds} s, median of {runs} runs");
            println!("| contender | TCP Gbit/s | relayed kpackets/s | relay syscalls/packet | relay CPU ns/packet (user space) |");
            println!("| --- | --- | --- | --- | --- |");
        }
        let fmt =
            |v: Option<f64>, digits: usize| v.map_or("n/a".into(), |v| format!("{v:.digits$}"));
        for (i, contender) in CONTENDERS.into_iter().enumerate() {
            let m = |at: usize| median(results[i].iter().map(|r| r.get(at).copied().flatten()));
            let mut cells = vec![contender.label(kind)];
            // UDP: the sender's and the receiver's figures; tun: the data
            // direction's relay, with the rate the TCP server received.
            let threads = if udp { 2 } else { 1 };
            for t in 0..threads {
                let at = t * PER_PROBE;
                cells.push(fmt(m(at), 2));
                cells.push(fmt(m(at + 1), 0));
                cells.push(fmt(m(at + 2), 3));
                cells.push(format!("{} ({})", fmt(m(at + 3), 0), fmt(m(at + 4), 0)));
            }
            if !udp {
                cells[1] = fmt(m(PER_PROBE), 2);
            }
            println!("| {} |", cells.join(" | "));
        }
    }

    // ------------------------------------------------------------ measuring

    /// What a worker thread has done, readable from another thread: it counts
    /// its packets and bytes, the kernel its system calls and CPU time.
    struct Probe {
        packets: AtomicU64,
        bytes: AtomicU64,
        syscalls: Option<OwnedFd>,
        cpu_clock: libc::clockid_t,
        tid: libc::pid_t,
    }

    #[derive(Clone, Copy)]
    struct Sample {
        packets: u64,
        bytes: u64,
        syscalls: Option<u64>,
        cpu_ns: u64,
        /// User-space CPU time (the contender's own code, not the kernel's).
        user_ns: Option<u64>,
    }

    /// Figures per probe in a child's output: Gbit/s, kpackets/s, system
    /// calls, CPU ns and user-space CPU ns per packet.
    const PER_PROBE: usize = 5;

    /// `struct perf_event_attr` up to its first published size (64 bytes).
    #[repr(C)]
    struct PerfEventAttr {
        kind: u32,
        size: u32,
        config: u64,
        rest: [u64; 6],
    }

    impl Probe {
        /// A probe for the calling thread.
        fn here() -> Arc<Probe> {
            let mut cpu_clock = 0;
            // SAFETY: a valid out pointer, for the calling thread.
            unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut cpu_clock) };
            Arc::new(Probe {
                packets: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                syscalls: syscall_counter(),
                cpu_clock,
                // SAFETY: gettid has no preconditions.
                tid: unsafe { libc::gettid() },
            })
        }

        fn add(&self, packets: usize, bytes: usize) {
            self.packets.fetch_add(packets as u64, Relaxed);
            self.bytes.fetch_add(bytes as u64, Relaxed);
        }

        fn sample(&self) -> Sample {
            let syscalls = self.syscalls.as_ref().and_then(|fd| {
                let mut count = 0u64;
                // SAFETY: reads 8 bytes into a u64.
                let n = unsafe { libc::read(fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
                (n == 8).then_some(count)
            });
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a valid clock id of a live thread and a valid timespec.
            unsafe { libc::clock_gettime(self.cpu_clock, &mut ts) };
            Sample {
                packets: self.packets.load(Relaxed),
                bytes: self.bytes.load(Relaxed),
                syscalls,
                cpu_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
                user_ns: self.user_ns(),
            }
        }

        /// The thread's utime, from /proc (in clock ticks: 10 ms here).
        fn user_ns(&self) -> Option<u64> {
            let stat =
                std::fs::read_to_string(format!("/proc/self/task/{}/stat", self.tid)).ok()?;
            // Fields after the command name, which may hold spaces: utime is the 14th field.
            let utime: u64 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(11)?
                .parse()
                .ok()?;
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            Some(utime * 1_000_000_000 / hz)
        }
    }

    /// A counter of the calling thread's system calls (the
    /// raw_syscalls:sys_enter tracepoint), if tracefs is mounted.
    fn syscall_counter() -> Option<OwnedFd> {
        let id = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .find_map(|root| {
                std::fs::read_to_string(format!("{root}/events/raw_syscalls/sys_enter/id")).ok()
            })?
            .trim()
            .parse()
            .ok()?;
        let attr = PerfEventAttr {
            kind: 2, // PERF_TYPE_TRACEPOINT
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: id,
            rest: [0; 6],
        };
        // SAFETY: perf_event_open(attr, this thread, any CPU, no group, FD_CLOEXEC).
        let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, &attr, 0, -1, -1, 8) };
        // SAFETY: a fresh descriptor we own.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    /// Samples each probe after the warm-up and again `window` later; per
    /// probe the [`PER_PROBE`] figures.
    fn measure(probes: &[Arc<Probe>], window: Duration) -> Vec<Option<f64>> {
        thread::sleep(WARM_UP);
        let before: Vec<Sample> = probes.iter().map(|p| p.sample()).collect();
        thread::sleep(window);
        let after: Vec<Sample> = probes.iter().map(|p| p.sample()).collect();
        let secs = window.as_secs_f64();
        let mut figures = Vec::new();
        for (b, a) in before.iter().zip(&after) {
            let packets = (a.packets - b.packets) as f64;
            let per_packet = |v: f64| (packets > 0.0).then(|| v / packets);
            figures.push(Some((a.bytes - b.bytes) as f64 * 8.0 / secs / 1e9));
            figures.push(Some(packets / secs / 1e3));
            figures.push(
                a.syscalls
                    .zip(b.syscalls)
                    .and_then(|(a, b)| per_packet((a - b) as f64)),
            );
            figures.push(per_packet((a.cpu_ns - b.cpu_ns) as f64));
            figures.push(
                a.user_ns
                    .zip(b.user_ns)
                    .and_then(|(a, b)| per_packet((a - b) as f64)),
            );
        }
        figures
    }

    /// Starts `work` on a thread of its own with a probe made there.
    fn spawn_probed(work: impl FnOnce(&Probe) + Send + 'static) -> Arc<Probe> {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let probe = Probe::here();
            let _ = tx.send(probe.clone());
            work(&probe);
        });
        rx.recv().expect("probe")
    }

    /// Moves the calling thread (and the threads it starts from now on) to a
    /// new network namespace, with its loopback up.
    fn private_namespace() -> io::Result<()> {
        // SAFETY: unshare has no memory-safety preconditions.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        // SAFETY: all-zero is a valid ifreq; "lo" fits its name.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: ifreq-sized requests on a socket.
        unsafe {
            if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
                return Err(io::Error::last_os_error());
            }
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Blocks until `fd` is ready for `events`.
    fn wait(fd: RawFd, events: libc::c_short) {
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, -1) };
    }

    // ------------------------------------------------------------------ UDP

    fn udp(contender: Contender, window: Duration) -> io::Result<Vec<Option<f64>>> {
        private_namespace()?;
        let receiver = UdpSocket::bind("127.0.0.1:0")?;
        let sender = UdpSocket::bind("127.0.0.1:0")?;
        let to = receiver.local_addr()?;
        // The same socket buffers (4 MiB) for every contender.
        receiver.set_nonblocking(true)?;
        sender.set_nonblocking(true)?;
        configure(&receiver);
        let gso = configure(&sender).gso;
        if contender == Contender::Plain {
            // One datagram per receive: no GRO trains.
            set_udp_gro(&receiver, false)?;
        }
        let rx = spawn_probed(move |probe| receive(contender, &receiver, probe));
        let tx = spawn_probed(move |probe| send(contender, &sender, to, gso, probe));
        Ok(measure(&[tx, rx], window))
    }

    fn set_udp_gro(socket: &UdpSocket, on: bool) -> io::Result<()> {
        let value = libc::c_int::from(on);
        // SAFETY: a valid pointer to a c_int and its size (UDP_GRO is 104).
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_UDP,
                104,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Sends rounds of datagrams forever. Writing each datagram into the send
    /// buffer stands for the cipher, which writes it there in the tunnel.
    fn send(contender: Contender, socket: &UdpSocket, to: SocketAddr, gso: bool, probe: &Probe) {
        let payload: Vec<u8> = (0..DATAGRAM).map(|i| i as u8).collect();
        let fd = socket.as_raw_fd();
        match contender {
            Contender::Ours => {
                let mut tx = TxBatch::new(gso);
                loop {
                    for _ in 0..ROUND {
                        tx.slot()[..DATAGRAM].copy_from_slice(&payload);
                        tx.commit(DATAGRAM);
                    }
                    tx.flush(fd, to, || {
                        wait(fd, libc::POLLOUT);
                        true
                    });
                    probe.add(ROUND, ROUND * DATAGRAM);
                }
            }
            Contender::Crate => {
                let state = UdpSocketState::new(socket.into()).expect("quinn-udp socket");
                let per_message = state.max_gso_segments().clamp(1, MAX_GSO_BYTES / DATAGRAM);
                let mut buf = vec![0u8; ROUND * DATAGRAM];
                loop {
                    for d in buf.chunks_mut(DATAGRAM) {
                        d.copy_from_slice(&payload);
                    }
                    for message in buf.chunks(per_message * DATAGRAM) {
                        let transmit = Transmit {
                            destination: to,
                            ecn: None,
                            contents: message,
                            segment_size: Some(DATAGRAM),
                            src_ip: None,
                        };
                        loop {
                            match state.try_send(socket.into(), &transmit) {
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                    wait(fd, libc::POLLOUT)
                                }
                                _ => break,
                            }
                        }
                    }
                    probe.add(ROUND, ROUND * DATAGRAM);
                }
            }
            Contender::Plain => {
                let mut buf = [0u8; DATAGRAM];
                loop {
                    for _ in 0..ROUND {
                        buf.copy_from_slice(&payload);
                        loop {
                            match socket.send_to(&buf, to) {
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                    wait(fd, libc::POLLOUT)
                                }
                                _ => break,
                            }
                        }
                    }
                    probe.add(ROUND, ROUND * DATAGRAM);
                }
            }
        }
    }

    /// Receives forever: waits in poll, then drains the socket. Each datagram
    /// is copied once, standing for the cipher.
    fn receive(contender: Contender, socket: &UdpSocket, probe: &Probe) {
        let fd = socket.as_raw_fd();
        let mut scratch = vec![0u8; 65_536];
        let mut take = |d: &[u8]| {
            scratch[..d.len()].copy_from_slice(d);
            d.len()
        };
        match contender {
            Contender::Ours => {
                let mut rx = RxBatch::default();
                loop {
                    wait(fd, libc::POLLIN);
                    while rx.recv(fd, RX_MESSAGES).is_ok() {
                        let (mut packets, mut bytes) = (0, 0);
                        for m in 0..rx.messages() {
                            for d in rx.datagrams(m) {
                                bytes += take(d);
                                packets += 1;
                            }
                        }
                        probe.add(packets, bytes);
                    }
                }
            }
            Contender::Crate => {
                let state = UdpSocketState::new(socket.into()).expect("quinn-udp socket");
                let mut storage = vec![0u8; RX_MESSAGES * 65_535];
                let mut bufs: Vec<IoSliceMut> =
                    storage.chunks_mut(65_535).map(IoSliceMut::new).collect();
                let mut meta = [RecvMeta::default(); RX_MESSAGES];
                loop {
                    wait(fd, libc::POLLIN);
                    while let Ok(n) = state.recv(socket.into(), &mut bufs, &mut meta) {
                        let (mut packets, mut bytes) = (0, 0);
                        for (buf, meta) in bufs.iter().zip(&meta).take(n) {
                            for d in buf[..meta.len].chunks(meta.stride.max(1)) {
                                bytes += take(d);
                                packets += 1;
                            }
                        }
                        probe.add(packets, bytes);
                    }
                }
            }
            Contender::Plain => {
                let mut buf = vec![0u8; 65_536];
                loop {
                    wait(fd, libc::POLLIN);
                    while let Ok((n, _)) = socket.recv_from(&mut buf) {
                        probe.add(1, take(&buf[..n]));
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------------ tun

    fn tun(contender: Contender, window: Duration) -> io::Result<Vec<Option<f64>>> {
        let offload = contender != Contender::Plain;
        private_namespace()?;
        let a = Arc::new(make_tun(ADDR_A, ADDR_B, offload)?);
        let (b, listener) = thread::spawn(move || -> io::Result<_> {
            private_namespace()?;
            let b = make_tun(ADDR_B, ADDR_A, offload)?;
            let listener = TcpListener::bind((ADDR_B, TCP_PORT))?;
            Ok((b, listener))
        })
        .join()
        .expect("namespace B")?;
        let b = Arc::new(b);
        let there = spawn_probed({
            let (a, b) = (a.clone(), b.clone());
            move |probe| relay(contender, &a, &b, probe)
        });
        let _back = spawn_probed({
            let (a, b) = (a.clone(), b.clone());
            move |probe| relay(contender, &b, &a, probe)
        });
        let server = spawn_probed(move |probe| {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n @ 1..) = conn.read(&mut buf) {
                probe.add(0, n);
            }
        });
        // The client is in namespace A, as this thread is.
        thread::spawn(|| {
            let mut conn =
                TcpStream::connect((ADDR_B, TCP_PORT)).expect("connect through the tuns");
            let buf = vec![0x5a; 256 * 1024];
            while conn.write_all(&buf).is_ok() {}
        });
        Ok(measure(&[there, server], window))
    }

    fn make_tun(address: Ipv4Addr, peer: Ipv4Addr, offload: bool) -> io::Result<SyncDevice> {
        let device = tun_rs::DeviceBuilder::new()
            .name("ioc0")
            .ipv4(address, 30, Some(peer))
            .mtu(TUN_MTU)
            .offload(offload)
            .build_sync()?;
        if offload && !device.tcp_gso() {
            return Err(io::Error::other("the kernel refused tun offload"));
        }
        Ok(device)
    }

    /// Moves packets from tun `from` to tun `to` forever, as the contender does.
    fn relay(contender: Contender, from: &SyncDevice, to: &SyncDevice, probe: &Probe) {
        let (rfd, wfd) = (from.as_raw_fd(), to.as_raw_fd());
        match contender {
            Contender::Ours => {
                let mut frame = vec![0u8; FRAME_LEN].into_boxed_slice();
                let mut merge = Coalescer::new(true);
                let mut write = |f: &[u8]| {
                    write_fd(wfd, f);
                    Ok(())
                };
                loop {
                    let Some(n) = read_fd(rfd, &mut frame) else {
                        continue;
                    };
                    let frame = &mut frame[..n];
                    let Ok(mut segments) = Segmenter::new(frame, true) else {
                        continue;
                    };
                    let (mut packets, mut bytes) = (0, 0);
                    while let Some(range) = segments.next(frame) {
                        let len = range.len();
                        merge.scratch()[..len].copy_from_slice(&frame[range]);
                        let _ = merge.push(len, &mut write);
                        packets += 1;
                        bytes += len;
                    }
                    let _ = merge.flush(&mut write);
                    probe.add(packets, bytes);
                }
            }
            Contender::Crate => {
                let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
                let mut bufs = vec![vec![0u8; 2048]; IDEAL_BATCH_SIZE];
                let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
                let mut out: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE)
                    .map(|_| Vec::with_capacity(VIRTIO_NET_HDR_LEN + 65_535))
                    .collect();
                let mut gro = GROTable::default();
                loop {
                    let Ok(n) = from.recv_multiple(&mut original, &mut bufs, &mut sizes, 0) else {
                        continue;
                    };
                    for (o, (buf, &size)) in out.iter_mut().zip(bufs.iter().zip(&sizes)).take(n) {
                        o.clear();
                        o.resize(VIRTIO_NET_HDR_LEN, 0);
                        o.extend_from_slice(&buf[..size]);
                    }
                    let _ = to.send_multiple(&mut gro, &mut out[..n], VIRTIO_NET_HDR_LEN);
                    probe.add(n, sizes[..n].iter().sum());
                }
            }
            Contender::Plain => {
                let mut frame = vec![0u8; 65_536];
                let mut copy = vec![0u8; 65_536];
                loop {
                    let Some(n) = read_fd(rfd, &mut frame) else {
                        continue;
                    };
                    copy[..n].copy_from_slice(&frame[..n]);
                    write_fd(wfd, &copy[..n]);
                    probe.add(1, n);
                }
            }
        }
    }

    fn read_fd(fd: RawFd, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: a valid buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        (n > 0).then_some(n as usize)
    }

    /// One write; a packet the kernel refuses is dropped, as the tunnel does.
    fn write_fd(fd: RawFd, buf: &[u8]) {
        // SAFETY: a valid buffer.
        unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    }
}
