//! The Linux data path: tun offload plus UDP GSO/GRO, in batches, on one
//! dedicated thread per tunnel.
//!
//! tun → UDP: one read returns a TCP super-packet of up to 64 KiB (TSO), or a
//! single packet; it is cut into MTU-sized packets in place, each encrypted
//! into a send buffer, and the buffer leaves in one `sendmmsg` with UDP GSO.
//! Further reads that are already queued join the same send.
//!
//! UDP → tun: one `recvmmsg` with UDP GRO returns trains of datagrams; each
//! is decrypted straight into the [`offload::Coalescer`], which writes a TCP
//! stream's consecutive segments to the tun as one super-packet.
//!
//! Either way a bulk transfer costs a few system calls and one trip through
//! the kernel's network stack per ~45 packets instead of two per packet, which
//! is what the profile of the one-packet-at-a-time loop was dominated by.
//! Each feature degrades on its own: a tun without `IFF_VNET_HDR` gives one
//! packet per read and takes one per write, a kernel without UDP GSO gets
//! one message per datagram (still one `sendmmsg` per batch), without GRO one
//! datagram per message.
//!
//! One thread runs both directions, blocked in `poll` on the tun and the
//! socket when idle (no polling, no timer). For latency, wake-ups are what a
//! round trip costs (every ping is handled by the two ends twice, and on the
//! lab VM a context switch costs tens of microseconds): a thread woken by the
//! kernel for its own descriptors does better than a task behind tokio's
//! shared reactor and work-stealing workers, and one thread does better than
//! one per direction, because the answer to what was just written to the tun
//! (a container's reply, the ACKs of a stream being received) is usually
//! queued on the tun by the time the write returns: the same thread sends it
//! on without waking anyone. A one-way bulk stream needs about one core per
//! end either way. The descriptors are taken out of tokio's reactor so that
//! it is not woken for them as well.

pub(crate) mod offload;
pub(crate) mod udp;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tun_rs::AsyncDevice;

use crate::failure::{is_fatal, report, FailSender};
use crate::peer::{from_peer, Peer, Step, HANDSHAKE_BUF};
use crate::sources::SourceFilter;
use offload::{Coalescer, FrameError, Segmenter, FRAME_LEN};
use udp::{Caps, RxBatch, TxBatch};

/// WireGuard's per-packet overhead: 16-byte header, 16-byte tag.
const DATA_OVERHEAD: usize = 32;
/// Reads from the tun per round, at most (the other direction's turn comes
/// after each round).
const MAX_TUN_READS: usize = 8;
/// `recvmmsg` calls per round, at most.
const MAX_UDP_RECVS: usize = 4;
/// Packets less than this apart are a stream, worth batching reads for.
const STREAM_GAP: Duration = Duration::from_micros(200);
/// The loops keep their buffers on the heap; this is plenty.
const THREAD_STACK: usize = 256 * 1024;

/// The tun and the socket, out of tokio's hands.
pub(crate) struct Io {
    /// `None` if tokio would not release a descriptor (it closes it then) or
    /// no eventfd could be made; the loop reports that through
    /// [`crate::Tunnel::failed`] instead of starting.
    tun: Option<OwnedFd>,
    udp: Option<std::net::UdpSocket>,
    /// Readable once the loop is to stop.
    stop: Option<OwnedFd>,
    name: io::Result<String>,
    vnet: bool,
    caps: Caps,
}

impl Io {
    pub(crate) fn new(device: AsyncDevice, socket: tokio::net::UdpSocket) -> Io {
        let name = device.name();
        let vnet = device.tcp_gso();
        let tun = match device.into_fd() {
            // SAFETY: into_fd hands over ownership of an open descriptor.
            Ok(fd) => Some(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(error) => {
                tracing::error!(%error, "cannot take the tun out of the async runtime");
                None
            }
        };
        let udp = match socket.into_std() {
            Ok(socket) => Some(socket),
            Err(error) => {
                tracing::error!(%error, "cannot take the UDP socket out of the async runtime");
                None
            }
        };
        let caps = udp.as_ref().map(udp::configure).unwrap_or(Caps {
            gso: false,
            gro: false,
        });
        tracing::debug!(
            udp_gso = caps.gso,
            udp_gro = caps.gro,
            tun_offload = vnet,
            "data path"
        );
        // SAFETY: eventfd has no memory-safety preconditions.
        let stop = match unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) } {
            // SAFETY: a fresh descriptor we own.
            fd if fd >= 0 => Some(unsafe { OwnedFd::from_raw_fd(fd) }),
            _ => {
                tracing::error!(error = %io::Error::last_os_error(), "cannot create an eventfd");
                None
            }
        };
        Io {
            tun,
            udp,
            stop,
            name,
            vnet,
            caps,
        }
    }

    pub(crate) fn name(&self) -> io::Result<String> {
        match &self.name {
            Ok(name) => Ok(name.clone()),
            Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
        }
    }

    /// Sends one datagram now; UDP semantics (a full buffer drops it).
    pub(crate) fn send_to(&self, datagram: &[u8], to: SocketAddr) {
        if let Some(socket) = &self.udp {
            if let Err(error) = socket.send_to(datagram, to) {
                tracing::debug!(endpoint = %to, %error, "udp send failed");
            }
        }
    }

    /// Sends `datagram` to the peer, if we know where it is.
    pub(crate) fn send_to_peer(&self, peer: &Peer, datagram: &[u8]) {
        if let Some(endpoint) = peer.endpoint() {
            self.send_to(datagram, endpoint);
        }
    }

    fn stop(&self) {
        if let Some(stop) = &self.stop {
            let one = 1u64.to_ne_bytes();
            // SAFETY: an 8-byte buffer, as eventfd requires.
            unsafe { libc::write(stop.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }
}

/// The descriptors the loop works on.
#[derive(Clone, Copy)]
struct Fds {
    tun: RawFd,
    udp: RawFd,
    stop: RawFd,
}

impl Fds {
    /// Blocks until the tun or the socket is readable (or in error), or the
    /// loop is to stop (`None`). Returns which of the two is ready.
    fn wait(self) -> Option<(bool, bool)> {
        let mut fds = [
            libc::pollfd {
                fd: self.tun,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.udp,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        poll(&mut fds)?;
        Some((fds[0].revents != 0, fds[1].revents != 0))
    }

    /// Blocks until the socket has room again; false if the loop is to stop.
    fn wait_writable(self) -> bool {
        let mut fds = [
            libc::pollfd {
                fd: self.udp,
                events: libc::POLLOUT,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        poll(&mut fds).is_some()
    }
}

/// `poll` without a timeout; `None` when the stop descriptor (the last
/// entry) fired or poll itself failed.
fn poll(fds: &mut [libc::pollfd]) -> Option<()> {
    loop {
        // SAFETY: valid pollfd entries.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc >= 0 {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            tracing::warn!(%error, "poll failed; stopping the tunnel");
            return None;
        }
    }
    (fds[fds.len() - 1].revents == 0).then_some(())
}

/// The running loop.
pub(crate) struct Loops {
    io: Arc<Io>,
    thread: Option<JoinHandle<()>>,
}

pub(crate) fn start(peer: &Arc<Peer>, io: &Arc<Io>, fail: &FailSender) -> Loops {
    let (peer_, io_, fail_) = (peer.clone(), io.clone(), fail.clone());
    let spawned = std::thread::Builder::new()
        .name("connector-data".into())
        .stack_size(THREAD_STACK)
        .spawn(move || run(&peer_, &io_, &fail_));
    let thread = match spawned {
        Ok(thread) => Some(thread),
        Err(error) => {
            report(fail, "starting the packet loop", &error);
            None
        }
    };
    Loops {
        io: io.clone(),
        thread,
    }
}

impl Loops {
    /// Asks the thread to stop; it does within one poll.
    pub(crate) fn stop(&self) {
        self.io.stop();
    }

    /// Stops the thread and waits for it (and so for the descriptors it holds
    /// to be released).
    pub(crate) async fn join(self) {
        self.stop();
        if let Some(thread) = self.thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Buffers and state of the loop.
struct Data<'a> {
    peer: &'a Peer,
    io: &'a Io,
    fds: Fds,
    frame: Box<[u8]>,
    tx: TxBatch,
    rx: RxBatch,
    merge: Coalescer,
    /// When the tun last had something to read, the socket to receive.
    last_read: Option<Instant>,
    last_recv: Option<Instant>,
}

fn run(peer: &Peer, io: &Io, fail: &FailSender) {
    let (Some(tun), Some(udp), Some(stop)) = (&io.tun, &io.udp, &io.stop) else {
        let error = io::Error::other("a descriptor is missing (see the log)");
        return report(fail, "tunnel setup", &error);
    };
    let fds = Fds {
        tun: tun.as_raw_fd(),
        udp: udp.as_raw_fd(),
        stop: stop.as_raw_fd(),
    };
    let mut data = Data {
        peer,
        io,
        fds,
        frame: vec![0u8; FRAME_LEN].into_boxed_slice(),
        tx: TxBatch::new(io.caps.gso),
        rx: RxBatch::default(),
        merge: Coalescer::new(io.vnet),
        last_read: None,
        last_recv: None,
    };
    loop {
        let Some((tun_ready, udp_ready)) = fds.wait() else {
            return;
        };
        if udp_ready {
            if let Err((what, error)) = data.inbound() {
                return report(fail, what, &error);
            }
        }
        // After an inbound round too: what was written to the tun has
        // usually been answered already.
        if tun_ready || udp_ready {
            if let Err(error) = data.outbound() {
                return report(fail, "tun read", &error);
            }
        }
    }
}

impl Data<'_> {
    /// Reads what the tun has queued (a bounded amount), encrypts and sends it.
    ///
    /// A packet after a quiet spell (a ping, a request) is sent on its own
    /// and the thread goes straight back to `poll`: asking the tun for more
    /// first would only cost a system call, and on a machine where the next
    /// hop is woken on this very CPU it would also make that hop wait. While
    /// packets keep coming, reads are gathered into batches.
    fn outbound(&mut self) -> io::Result<()> {
        let streaming = self.last_read.is_some_and(|t| t.elapsed() < STREAM_GAP);
        let reads = if streaming { MAX_TUN_READS } else { 1 };
        for read in 0..reads {
            // SAFETY: a valid buffer for the read.
            let n = unsafe {
                libc::read(
                    self.fds.tun,
                    self.frame.as_mut_ptr().cast(),
                    self.frame.len(),
                )
            };
            if n < 0 {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::WouldBlock && is_fatal(&error) {
                    return Err(error);
                }
                break;
            }
            self.last_read = Some(Instant::now());
            self.encrypt_frame(n as usize);
            // The first read of a round goes out at once (it may be all
            // there is); what follows is batched.
            if read == 0 {
                self.flush();
            }
        }
        self.flush();
        Ok(())
    }

    /// Encrypts every packet of the tun read in `frame[..len]` into `tx`.
    fn encrypt_frame(&mut self, len: usize) {
        let frame = &mut self.frame[..len];
        let mut packets = match Segmenter::new(frame, self.io.vnet) {
            Ok(s) => s,
            Err(FrameError(why)) => {
                tracing::debug!(why, len, "tun read dropped");
                return;
            }
        };
        let (mut bytes, mut count) = (0, 0);
        while let Some(range) = packets.next(frame) {
            if self.tx.room() < (range.len() + DATA_OVERHEAD).max(HANDSHAKE_BUF) {
                flush(self.peer, self.fds, &mut self.tx);
            }
            if let Some(n) = self.peer.encapsulate(&frame[range.clone()], self.tx.slot()) {
                self.tx.commit(n);
                bytes += range.len();
                count += 1;
            }
        }
        self.peer.stats.add_tx(bytes, count);
    }

    fn flush(&mut self) {
        flush(self.peer, self.fds, &mut self.tx);
    }

    /// Receives what the socket has queued (a bounded amount), decrypts it
    /// and writes it to the tun.
    ///
    /// As for the tun: after a quiet spell one message is asked for, and
    /// `poll` says whether more came; while datagrams keep coming, up to
    /// [`udp::RX_MESSAGES`] per call.
    fn inbound(&mut self) -> Result<(), (&'static str, io::Error)> {
        let tun = self.fds.tun;
        let mut write = |frame: &[u8]| write_tun(tun, frame);
        let sources = self.peer.sources();
        let mut result = Ok(());
        let streaming = self.last_recv.is_some_and(|t| t.elapsed() < STREAM_GAP);
        let (calls, messages) = if streaming {
            (MAX_UDP_RECVS, udp::RX_MESSAGES)
        } else {
            (1, 1)
        };
        for _ in 0..calls {
            match self.rx.recv(self.fds.udp, messages) {
                Ok(()) => self.last_recv = Some(Instant::now()),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if is_fatal(&error) => return Err(("udp receive", error)),
                Err(_) => break,
            }
            for m in 0..self.rx.messages() {
                if let Err(error) = decrypt_message(
                    self.peer,
                    self.io,
                    &sources,
                    &self.rx,
                    m,
                    &mut self.merge,
                    &mut write,
                ) {
                    result = Err(("tun write", error));
                }
            }
            // A receive that did not fill every slot drained the socket:
            // no need to ask again before writing.
            if result.is_err() || !self.rx.is_full() {
                break;
            }
        }
        let flushed = self.merge.flush(&mut write).map_err(|e| ("tun write", e));
        result.and(flushed)
    }
}

fn flush(peer: &Peer, fds: Fds, tx: &mut TxBatch) {
    if tx.is_empty() {
        return;
    }
    match peer.endpoint() {
        Some(endpoint) => tx.flush(fds.udp, endpoint, || fds.wait_writable()),
        // Nobody to send to yet (the responder before the first handshake).
        None => tx.clear(),
    }
}

/// Decrypts the datagrams of message `m` into `merge`, the packets from
/// allowed `sources` only.
fn decrypt_message(
    peer: &Peer,
    io: &Io,
    sources: &SourceFilter,
    rx: &RxBatch,
    m: usize,
    merge: &mut Coalescer,
    write: &mut impl offload::TunWrite,
) -> io::Result<()> {
    let Some(from) = rx.from(m) else {
        return Ok(());
    };
    let (mut bytes, mut count, mut heard) = (0, 0, false);
    let mut result = Ok(());
    for datagram in rx.datagrams(m) {
        let step = peer.decapsulate(from, datagram, merge.scratch());
        heard |= from_peer(datagram, &step, merge.scratch());
        match step {
            Step::Tunnel(len) => {
                if !sources.allows(&merge.scratch()[..len]) {
                    peer.drop_for_source(from, &merge.scratch()[..len]);
                    continue;
                }
                bytes += len;
                count += 1;
                if let Err(error) = merge.push(len, write) {
                    result = Err(error);
                    break;
                }
            }
            Step::Network(mut len) => {
                // A handshake reply, then the packets boringtun queued while
                // it waited for the session; it wants calls until Done.
                loop {
                    io.send_to(&merge.scratch()[..len], from);
                    match peer.decapsulate(from, &[], merge.scratch()) {
                        Step::Network(next) => len = next,
                        _ => break,
                    }
                }
            }
            Step::Done => {}
            Step::Rejected(error) => tracing::debug!(?error, %from, "datagram rejected"),
        }
    }
    peer.stats.add_rx(bytes, count);
    if heard {
        peer.heard_from(from);
    }
    result
}

/// One write to the tun. Only a vanished device is an error; anything else
/// (a packet the kernel refuses) drops that packet, as a router would.
fn write_tun(fd: RawFd, frame: &[u8]) -> io::Result<()> {
    // SAFETY: a valid buffer; `fd` stays open as long as the `Io` lives (the loop holds it).
    let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
    if n >= 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EBADFD | libc::EBADF | libc::ENODEV | libc::ENXIO) => Err(error),
        _ => {
            tracing::debug!(%error, len = frame.len(), "tun write failed; packet dropped");
            Ok(())
        }
    }
}
