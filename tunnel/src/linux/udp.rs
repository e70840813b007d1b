//! Batched UDP on Linux.
//!
//! Sending: encrypted datagrams are laid out back to back in one buffer and
//! handed to the kernel with one `sendmmsg`; runs of equal-sized datagrams go
//! as one UDP GSO message (`UDP_SEGMENT`), which crosses the stack once and is
//! cut (or, over veth and loopback, not even cut) below it.
//! Receiving: one `recvmmsg` returns several messages; with `UDP_GRO` each
//! holds up to 64 KiB of datagrams from one sender, all `segment` bytes long
//! but the last.

use std::io;
use std::mem::{size_of, zeroed, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use libc::c_int;

// From <linux/udp.h>; stable ABI, not exported by every libc flavour.
const UDP_SEGMENT: c_int = 103;
const UDP_GRO: c_int = 104;

/// Segments per GSO send: the kernel's `UDP_MAX_SEGMENTS` (newer kernels
/// allow more).
const MAX_GSO_SEGMENTS: usize = 64;
/// A GSO send is one UDP datagram as far as the IP layer is concerned: keep
/// it below 64 KiB including the IPv6 and UDP headers.
const MAX_GSO_BYTES: usize = 65_000;
/// Bytes of datagrams gathered before a send: two TSO reads' worth.
const TX_CAPACITY: usize = 160 * 1024;
/// Messages per `sendmmsg`.
const MAX_MESSAGES: usize = 64;
/// Socket buffers: room for bursts of a few hundred full-size datagrams.
const SOCKET_BUFFER: c_int = 4 << 20;
/// Largest UDP payload; a GRO read never returns more.
pub const MAX_DATAGRAM: usize = 65_535;

/// What the socket supports after [`configure`].
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub gso: bool,
    pub gro: bool,
}

fn setsockopt_int(fd: c_int, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: a valid pointer to a c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const c_int).cast(),
            size_of::<c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sizes the socket buffers, turns on GRO and checks for GSO.
pub fn configure(socket: &UdpSocket) -> Caps {
    let fd = socket.as_raw_fd();
    for (force, plain) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        // The FORCE variants ignore net.core.*mem_max but need CAP_NET_ADMIN,
        // which both the daemon (root) and the agent have.
        if setsockopt_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
        }
    }
    let gro = setsockopt_int(fd, libc::SOL_UDP, UDP_GRO, 1).is_ok();
    let mut value: c_int = 0;
    let mut len = size_of::<c_int>() as libc::socklen_t;
    // SAFETY: valid pointers to a c_int and its length.
    let gso = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&mut value as *mut c_int).cast(),
            &mut len,
        )
    } == 0;
    Caps { gso, gro }
}

/// A `sockaddr_in`/`sockaddr_in6` for the kernel.
struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    fn new(addr: SocketAddr) -> RawAddr {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin)
                };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                // SAFETY: all-zero is a valid sockaddr_in6.
                let mut sin6: libc::sockaddr_in6 = unsafe { zeroed() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                sin6.sin6_scope_id = a.scope_id();
                // SAFETY: as above, for sockaddr_in6.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6)
                };
                size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    fn to_socket_addr(&self) -> Option<SocketAddr> {
        match c_int::from(self.storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in for AF_INET.
                let sin: libc::sockaddr_in = unsafe {
                    std::ptr::read((&self.storage as *const libc::sockaddr_storage).cast())
                };
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the kernel wrote a sockaddr_in6 for AF_INET6.
                let sin6: libc::sockaddr_in6 = unsafe {
                    std::ptr::read((&self.storage as *const libc::sockaddr_storage).cast())
                };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// `sendmmsg(2)` itself. 64-bit musl (the agent's libc) emulates `sendmmsg`
/// with one `sendmsg` per message, because its `msghdr` and `cmsghdr` have
/// 32-bit fields plus padding where the kernel's are 64-bit and it cannot
/// trust callers to zero the padding. Ours are zero-initialised, which makes
/// the layouts the kernel's (on either byte order), so the system call is made
/// directly; with glibc the layouts are the kernel's anyway.
fn sendmmsg(fd: c_int, msgs: &mut [libc::mmsghdr]) -> isize {
    // SAFETY: the headers point at live buffers and are laid out as the
    // kernel expects (see above).
    unsafe {
        libc::syscall(
            libc::SYS_sendmmsg,
            fd,
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            0 as c_int,
        ) as isize
    }
}

/// Control-message buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Cmsg([u8; 32]);

/// Datagrams waiting to be sent, grouped for GSO.
pub struct TxBatch {
    buf: Box<[u8]>,
    len: usize,
    groups: Vec<Group>,
    gso: bool,
}

/// Consecutive datagrams of `segment` bytes (the last may be shorter) sent as
/// one message.
#[derive(Debug, Clone, Copy)]
struct Group {
    start: usize,
    len: usize,
    segment: usize,
    count: usize,
    /// A shorter datagram ended the run.
    closed: bool,
}

impl TxBatch {
    pub fn new(gso: bool) -> TxBatch {
        TxBatch {
            buf: vec![0u8; TX_CAPACITY].into_boxed_slice(),
            len: 0,
            groups: Vec::with_capacity(MAX_MESSAGES),
            gso,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Room for the next datagram (0 when the message list is full).
    pub fn room(&self) -> usize {
        if self.groups.len() == MAX_MESSAGES {
            0
        } else {
            self.buf.len() - self.len
        }
    }

    /// Where the next datagram is written; then call [`TxBatch::commit`].
    pub fn slot(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// Adds the `n`-byte datagram just written to [`TxBatch::slot`].
    pub fn commit(&mut self, n: usize) {
        let start = self.len;
        self.len += n;
        if let Some(g) = self.groups.last_mut() {
            let fits = self.gso
                && !g.closed
                && g.count < MAX_GSO_SEGMENTS
                && g.len + n <= MAX_GSO_BYTES
                && n <= g.segment;
            if fits {
                g.len += n;
                g.count += 1;
                g.closed = n < g.segment;
                return;
            }
        }
        self.groups.push(Group {
            start,
            len: n,
            segment: n,
            count: 1,
            closed: false,
        });
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.groups.clear();
    }

    /// Sends everything to `to` through the non-blocking socket `fd`; when
    /// the socket buffer is full, `wait_writable` blocks until it is not (or
    /// returns false: give up). Send errors drop the datagrams concerned, as
    /// UDP does, except that a GSO message that may have failed for being
    /// one is resent one datagram at a time (see [`GsoFailure`]).
    pub fn flush(&mut self, fd: c_int, to: SocketAddr, wait_writable: impl FnMut() -> bool) {
        let addr = RawAddr::new(to);
        self.send_all(
            |buf, groups| send_groups(fd, &addr, buf, groups),
            wait_writable,
            to,
        );
    }

    /// [`TxBatch::flush`] with the system call as `send` (as `sendmmsg`:
    /// sends a prefix of the messages it is given and says how many, or
    /// fails on the first).
    fn send_all(
        &mut self,
        mut send: impl FnMut(&[u8], &[Group]) -> io::Result<usize>,
        mut wait_writable: impl FnMut() -> bool,
        to: SocketAddr,
    ) {
        let mut next = 0;
        // Set while the datagrams of a GSO message that failed in a way GSO
        // may be to blame for are resent one by one; only they go in those
        // calls, so that what happens to them is the verdict on GSO.
        let mut probe: Option<Probe> = None;
        while next < self.groups.len() {
            let end = probe.map_or(self.groups.len(), |p| p.end);
            match send(&self.buf, &self.groups[next..end.min(next + MAX_MESSAGES)]) {
                Ok(sent) => next += sent,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if !wait_writable() {
                        break;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if self.groups[next].count > 1 => match gso_failure(&error) {
                    GsoFailure::Suspect => {
                        tracing::debug!(%error, endpoint = %to, "UDP GSO send failed; resending its datagrams one by one");
                        let count = self.ungroup_one(next);
                        probe = Some(Probe {
                            end: next + count,
                            all_sent: true,
                        });
                    }
                    GsoFailure::Path => {
                        tracing::debug!(%error, endpoint = %to, "udp send failed");
                        next += 1;
                    }
                },
                Err(error) => {
                    tracing::debug!(%error, endpoint = %to, "udp send failed");
                    if let Some(p) = &mut probe {
                        p.all_sent = false;
                    }
                    next += 1;
                }
            }
            if let Some(p) = probe.filter(|p| next >= p.end) {
                if p.all_sent {
                    tracing::info!(
                        "UDP GSO does not work on this path; sending datagrams one by one"
                    );
                    self.gso = false;
                    self.ungroup(next);
                }
                probe = None;
            }
        }
        self.clear();
    }

    /// Replaces the groups from `from` on by single datagrams.
    fn ungroup(&mut self, from: usize) {
        let rest: Vec<Group> = self.groups.drain(from..).collect();
        for g in rest {
            self.groups.extend(g.singles());
        }
    }

    /// Replaces group `i` by its single datagrams; returns how many.
    fn ungroup_one(&mut self, i: usize) -> usize {
        let g = self.groups[i];
        self.groups.splice(i..=i, g.singles());
        g.count
    }
}

impl Group {
    /// Its datagrams, each a group of its own.
    fn singles(self) -> impl Iterator<Item = Group> {
        let end = self.start + self.len;
        (self.start..end)
            .step_by(self.segment.max(1))
            .map(move |at| {
                let len = self.segment.min(end - at);
                Group {
                    start: at,
                    len,
                    segment: len,
                    count: 1,
                    closed: true,
                }
            })
    }
}

/// A GSO message that failed, resent one datagram at a time.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// Index of the first group after its datagrams.
    end: usize,
    all_sent: bool,
}

/// What the failed send of a GSO message says about GSO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GsoFailure {
    /// Perhaps GSO does not work on this path: EIO (the route's device
    /// cannot checksum a GSO send, or IPsec), EINVAL (a segment is larger
    /// than the path MTU). If the same datagrams then go one by one, it was
    /// GSO: it is turned off for good.
    Suspect,
    /// The path failed (unreachable, refused, no buffer space, …) and would
    /// have for single datagrams too: they are dropped, as UDP does, and GSO
    /// stays.
    Path,
}

fn gso_failure(error: &io::Error) -> GsoFailure {
    match error.raw_os_error() {
        Some(libc::EIO | libc::EINVAL) => GsoFailure::Suspect,
        _ => GsoFailure::Path,
    }
}

/// One `sendmmsg` of (up to [`MAX_MESSAGES`] of) `groups`, laid out in
/// `buf`, to `addr`; returns how many went.
fn send_groups(fd: c_int, addr: &RawAddr, buf: &[u8], groups: &[Group]) -> io::Result<usize> {
    let groups = &groups[..groups.len().min(MAX_MESSAGES)];
    // Only the entries used are initialised: zeroing all of them was a
    // visible share of a one-packet send.
    let mut iovs = [MaybeUninit::<libc::iovec>::uninit(); MAX_MESSAGES];
    let mut msgs = [MaybeUninit::<libc::mmsghdr>::uninit(); MAX_MESSAGES];
    let mut cmsgs = [MaybeUninit::<Cmsg>::uninit(); MAX_MESSAGES];
    for (i, g) in groups.iter().enumerate() {
        let iov: *mut libc::iovec = iovs[i].write(libc::iovec {
            iov_base: buf[g.start..].as_ptr() as *mut libc::c_void,
            iov_len: g.len,
        });
        // SAFETY: all-zero is valid for this plain C struct, and zeroes
        // musl's padding (see `sendmmsg`).
        let hdr = &mut msgs[i].write(unsafe { zeroed() }).msg_hdr;
        hdr.msg_name = (&addr.storage as *const libc::sockaddr_storage) as *mut libc::c_void;
        hdr.msg_namelen = addr.len;
        hdr.msg_iov = iov;
        hdr.msg_iovlen = 1;
        if g.count > 1 {
            hdr.msg_control = cmsgs[i].write(Cmsg([0; 32])).0.as_mut_ptr().cast();
            // SAFETY: CMSG_* only compute sizes and offsets within the
            // 32-byte buffer, which holds CMSG_SPACE(2) = 24 bytes.
            unsafe {
                hdr.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
                let c = libc::CMSG_FIRSTHDR(hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), g.segment as u16);
            }
        }
    }
    // SAFETY: the first `groups.len()` entries were initialised above.
    let msgs = unsafe { initialised(&mut msgs, groups.len()) };
    let sent = sendmmsg(fd, msgs);
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// The first `n` entries of `array`.
///
/// # Safety
/// Those entries must have been initialised.
unsafe fn initialised<T>(array: &mut [MaybeUninit<T>], n: usize) -> &mut [T] {
    // SAFETY: MaybeUninit<T> has T's layout; the caller vouches for the contents.
    unsafe { std::slice::from_raw_parts_mut(array.as_mut_ptr().cast::<T>(), n) }
}

/// Messages per `recvmmsg`; each may hold a GRO train of up to 64 KiB.
pub const RX_MESSAGES: usize = 8;

/// What one `recvmmsg` returned: up to [`RX_MESSAGES`] messages, each either
/// one datagram or (with GRO) a train of datagrams of one sender, all
/// `segment` bytes long but the last.
pub struct RxBatch {
    buf: Box<[u8]>,
    messages: [Message; RX_MESSAGES],
    count: usize,
    asked: usize,
}

#[derive(Clone, Copy, Default)]
struct Message {
    len: usize,
    segment: usize,
    from: Option<SocketAddr>,
}

impl Default for RxBatch {
    fn default() -> RxBatch {
        RxBatch {
            buf: vec![0u8; RX_MESSAGES * MAX_DATAGRAM].into_boxed_slice(),
            messages: [Message::default(); RX_MESSAGES],
            count: 0,
            asked: 0,
        }
    }
}

impl RxBatch {
    /// Number of messages of the last receive.
    pub fn messages(&self) -> usize {
        self.count
    }

    /// True when the last receive filled every slot it was given (more may
    /// be queued).
    pub fn is_full(&self) -> bool {
        self.count == self.asked
    }

    /// Sender of message `i` (`None` for an address family we do not know).
    pub fn from(&self, i: usize) -> Option<SocketAddr> {
        self.messages[i].from
    }

    /// The datagrams of message `i`.
    pub fn datagrams(&self, i: usize) -> impl Iterator<Item = &[u8]> {
        let m = &self.messages[i];
        let start = i * MAX_DATAGRAM;
        self.buf[start..start + m.len].chunks(m.segment.max(1))
    }

    /// Receives what is queued on the non-blocking socket `fd`, up to
    /// `max` (at most [`RX_MESSAGES`]) messages, in one call (`WouldBlock`
    /// when nothing is). Asking for one message costs the least when one is
    /// all there is; asking for more tells, by getting fewer, that the
    /// socket has been drained.
    pub fn recv(&mut self, fd: c_int, max: usize) -> io::Result<()> {
        let max = max.clamp(1, RX_MESSAGES);
        self.asked = max;
        let mut names = [MaybeUninit::<libc::sockaddr_storage>::uninit(); RX_MESSAGES];
        let mut iovs = [MaybeUninit::<libc::iovec>::uninit(); RX_MESSAGES];
        let mut msgs = [MaybeUninit::<libc::mmsghdr>::uninit(); RX_MESSAGES];
        let mut controls = [Cmsg([0; 32]); RX_MESSAGES];
        let base = self.buf.as_mut_ptr();
        for i in 0..max {
            let iov: *mut libc::iovec = iovs[i].write(libc::iovec {
                // SAFETY: i * MAX_DATAGRAM + MAX_DATAGRAM <= buf.len().
                iov_base: unsafe { base.add(i * MAX_DATAGRAM) }.cast(),
                iov_len: MAX_DATAGRAM,
            });
            // SAFETY: all-zero is valid for this plain C struct.
            let hdr = &mut msgs[i].write(unsafe { zeroed() }).msg_hdr;
            // SAFETY: as above; the kernel writes the sender's address here.
            hdr.msg_name =
                (names[i].write(unsafe { zeroed() }) as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            hdr.msg_control = controls[i].0.as_mut_ptr().cast();
            hdr.msg_controllen = controls[i].0.len() as _;
        }
        // SAFETY: the first `max` headers were initialised above.
        let msgs = unsafe { initialised(&mut msgs, max) };
        // SAFETY: every header points at live buffers for the duration of the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                max as _,
                0 as _,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = n as usize;
        for i in 0..self.count {
            let len = msgs[i].msg_len as usize;
            let mut segment = len;
            let hdr = &msgs[i].msg_hdr;
            // SAFETY: walking the control messages the kernel wrote for message i.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<c_int>());
                        if size > 0 {
                            segment = size as usize;
                        }
                    }
                    c = libc::CMSG_NXTHDR(hdr, c);
                }
            }
            // SAFETY: initialised for every message asked for (i < n <= max).
            let from = RawAddr {
                storage: unsafe { names[i].assume_init() },
                len: hdr.msg_namelen,
            }
            .to_socket_addr();
            self.messages[i] = Message { len, segment, from };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(batch: &TxBatch) -> Vec<(usize, usize, usize)> {
        batch
            .groups
            .iter()
            .map(|g| (g.len, g.segment, g.count))
            .collect()
    }

    fn add(batch: &mut TxBatch, n: usize) {
        batch.slot()[..n].fill(n as u8);
        batch.commit(n);
    }

    #[test]
    fn equal_datagrams_share_a_gso_message_and_a_short_one_ends_it() {
        let mut b = TxBatch::new(true);
        for n in [1452, 1452, 1452, 600, 1452, 148, 1452] {
            add(&mut b, n);
        }
        assert_eq!(
            groups(&b),
            vec![
                (1452 * 3 + 600, 1452, 4),
                (1452 + 148, 1452, 2),
                (1452, 1452, 1)
            ]
        );
    }

    #[test]
    fn gso_messages_stay_under_64_kib_and_64_segments() {
        let mut b = TxBatch::new(true);
        for _ in 0..100 {
            add(&mut b, 1452);
        }
        let g = groups(&b);
        assert!(g
            .iter()
            .all(|&(len, _, count)| len <= MAX_GSO_BYTES && count <= MAX_GSO_SEGMENTS));
        assert_eq!(g.iter().map(|&(_, _, c)| c).sum::<usize>(), 100);
        let mut small = TxBatch::new(true);
        for _ in 0..100 {
            add(&mut small, 100);
        }
        assert!(groups(&small)
            .iter()
            .all(|&(_, _, count)| count <= MAX_GSO_SEGMENTS));
    }

    #[test]
    fn without_gso_every_datagram_is_its_own_message_and_ungroup_splits() {
        let mut b = TxBatch::new(false);
        add(&mut b, 1000);
        add(&mut b, 1000);
        assert_eq!(groups(&b), vec![(1000, 1000, 1), (1000, 1000, 1)]);

        let mut g = TxBatch::new(true);
        for n in [1000, 1000, 1000, 500] {
            add(&mut g, n);
        }
        g.ungroup(0);
        assert_eq!(
            groups(&g),
            vec![
                (1000, 1000, 1),
                (1000, 1000, 1),
                (1000, 1000, 1),
                (500, 500, 1)
            ]
        );
        assert_eq!(g.groups[3].start, 3000);
    }

    /// A stand-in for `sendmmsg`: `fails` says which message fails with
    /// which errno; messages before the first failure go (and are recorded
    /// as (length, datagrams)), as the system call does.
    fn fake_send<'a>(
        sent: &'a mut Vec<(usize, usize)>,
        mut fails: impl FnMut(&Group) -> Option<i32> + 'a,
    ) -> impl FnMut(&[u8], &[Group]) -> io::Result<usize> + 'a {
        move |_, groups| {
            for (i, g) in groups.iter().enumerate() {
                if let Some(errno) = fails(g) {
                    return if i == 0 {
                        Err(io::Error::from_raw_os_error(errno))
                    } else {
                        Ok(i)
                    };
                }
                sent.push((g.len, g.count));
            }
            Ok(groups.len())
        }
    }

    const TO: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9));

    fn gso_batch() -> TxBatch {
        let mut b = TxBatch::new(true);
        for n in [1000, 1000, 1000, 400, 1000, 1000] {
            add(&mut b, n);
        }
        assert_eq!(groups(&b), vec![(3400, 1000, 4), (2000, 1000, 2)]);
        b
    }

    #[test]
    fn only_eio_and_einval_suspect_gso() {
        let failure = |errno| gso_failure(&io::Error::from_raw_os_error(errno));
        assert_eq!(failure(libc::EIO), GsoFailure::Suspect);
        assert_eq!(failure(libc::EINVAL), GsoFailure::Suspect);
        for errno in [
            libc::ENETUNREACH,
            libc::EHOSTUNREACH,
            libc::EPERM,
            libc::ECONNREFUSED,
            libc::ENOBUFS,
            libc::EMSGSIZE,
        ] {
            assert_eq!(failure(errno), GsoFailure::Path, "errno {errno}");
        }
    }

    #[test]
    fn gso_goes_off_when_the_datagrams_then_go_one_by_one() {
        for errno in [libc::EIO, libc::EINVAL] {
            let mut b = gso_batch();
            let mut sent = Vec::new();
            let send = fake_send(&mut sent, |g| (g.count > 1).then_some(errno));
            b.send_all(send, || true, TO);
            // Every datagram went, singly, the second group's as well.
            assert_eq!(
                sent,
                [1000, 1000, 1000, 400, 1000, 1000].map(|n| (n, 1)).to_vec()
            );
            assert!(!b.gso && b.is_empty());
            add(&mut b, 1000);
            add(&mut b, 1000);
            assert_eq!(groups(&b), vec![(1000, 1000, 1), (1000, 1000, 1)]);
        }
    }

    #[test]
    fn gso_stays_when_single_datagrams_fail_as_well() {
        let mut b = gso_batch();
        let mut sent = Vec::new();
        // The path refuses the first group's datagrams whichever way they go.
        let send = fake_send(&mut sent, |g| (g.start < 3400).then_some(libc::EIO));
        b.send_all(send, || true, TO);
        assert_eq!(sent, vec![(2000, 2)], "the second group still as GSO");
        assert!(b.gso);

        // One datagram of four failing is no proof either.
        let mut b = gso_batch();
        let mut sent = Vec::new();
        let send = fake_send(&mut sent, |g| {
            (g.start == 0 && g.count > 1 || g.start == 1000).then_some(libc::EINVAL)
        });
        b.send_all(send, || true, TO);
        assert!(b.gso);
        assert_eq!(sent, vec![(1000, 1), (1000, 1), (400, 1), (2000, 2)]);
    }

    #[test]
    fn other_errors_drop_the_message_and_keep_gso() {
        for errno in [
            libc::ENETUNREACH,
            libc::EPERM,
            libc::ECONNREFUSED,
            libc::ENOBUFS,
        ] {
            let mut b = gso_batch();
            let mut sent = Vec::new();
            let send = fake_send(&mut sent, |g| (g.start == 0).then_some(errno));
            b.send_all(send, || true, TO);
            assert_eq!(sent, vec![(2000, 2)], "errno {errno}: no retry");
            assert!(b.gso && b.is_empty());
        }
    }

    #[test]
    fn a_full_socket_is_waited_for_and_a_refused_wait_gives_up() {
        let mut b = gso_batch();
        let mut sent = Vec::new();
        let mut full = 2;
        let send = fake_send(&mut sent, |_| {
            full -= 1;
            (full >= 0).then_some(libc::EAGAIN)
        });
        let mut waits = 0;
        b.send_all(
            send,
            || {
                waits += 1;
                true
            },
            TO,
        );
        assert_eq!(waits, 2);
        assert_eq!(sent, vec![(3400, 4), (2000, 2)]);

        let mut b = gso_batch();
        let mut sent = Vec::new();
        let send = fake_send(&mut sent, |_| Some(libc::EAGAIN));
        b.send_all(send, || false, TO);
        assert!(sent.is_empty() && b.is_empty() && b.gso);
    }

    #[test]
    fn addresses_round_trip_through_sockaddr() {
        for a in ["192.0.2.7:51871", "[2001:db8::1]:443"] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(RawAddr::new(addr).to_socket_addr(), Some(addr));
        }
    }

    /// Over loopback: GSO on send, GRO on receive, datagram boundaries kept.
    #[test]
    fn gso_send_and_gro_receive_keep_datagram_boundaries() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        tx.set_nonblocking(true).unwrap();
        let rx_caps = configure(&rx);
        let tx_caps = configure(&tx);
        let mut batch = TxBatch::new(tx_caps.gso);
        let sizes = [1400usize, 1400, 1400, 1400, 700, 300, 1400];
        for (i, &n) in sizes.iter().enumerate() {
            batch.slot()[..n].fill(i as u8 + 1);
            batch.commit(n);
        }
        batch.flush(tx.as_raw_fd(), rx.local_addr().unwrap(), || true);

        let mut got = Vec::new();
        let mut rb = RxBatch::default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < sizes.len() {
            match rb.recv(rx.as_raw_fd(), RX_MESSAGES) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "datagrams arrive");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                Err(e) => panic!("{e}"),
            }
            for m in 0..rb.messages() {
                assert_eq!(rb.from(m), Some(tx.local_addr().unwrap()));
                for d in rb.datagrams(m) {
                    got.push((d.len(), d[0]));
                }
            }
        }
        let want: Vec<(usize, u8)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (n, i as u8 + 1))
            .collect();
        assert_eq!(got, want, "caps: {rx_caps:?} {tx_caps:?}");
    }
}
