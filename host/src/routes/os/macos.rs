//! macOS: the utun through tun-rs, routes through a `PF_ROUTE` socket.
//!
//! The message format lives in `route_socket.rs` (tested on Linux); this file
//! only moves bytes: `write(2)` a request, read the kernel's echo of it
//! (matched by pid and sequence number), and `sysctl(NET_RT_DUMP)` to list.
//! No `/sbin/route` fallback: the routing socket is the interface route(8)
//! itself uses, and a second path would only be another thing to test.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::route_socket::{self as rs, LinkAddr, RouteMessage};
use super::types::{OsError, RouteEntry, TunConfig};

// route_socket.rs transcribes the headers by hand so Linux can test it; on the
// Apple targets, hold the transcription against libc's at compile time.
macro_rules! same_as_libc {
    ($($name:ident),* $(,)?) => {
        $(const _: () = assert!(rs::$name as i64 == libc::$name as i64, stringify!($name));)*
    };
}
same_as_libc!(
    RTM_VERSION,
    RTM_ADD,
    RTM_DELETE,
    RTM_CHANGE,
    RTM_GET,
    RTM_GET2,
    RTF_UP,
    RTF_GATEWAY,
    RTF_HOST,
    RTF_REJECT,
    RTF_DONE,
    RTF_CLONING,
    RTF_LLINFO,
    RTF_STATIC,
    RTF_BLACKHOLE,
    RTF_PRCLONING,
    RTF_WASCLONED,
    RTF_LOCAL,
    RTF_BROADCAST,
    RTF_MULTICAST,
    RTF_IFSCOPE,
    RTF_CONDEMNED,
    RTF_DEAD,
    RTA_DST,
    RTA_GATEWAY,
    RTA_NETMASK,
    RTA_GENMASK,
    RTA_IFP,
    RTA_IFA,
    RTA_AUTHOR,
    RTA_BRD,
    RTAX_DST,
    RTAX_GATEWAY,
    RTAX_NETMASK,
    RTAX_GENMASK,
    RTAX_IFP,
    RTAX_IFA,
    RTAX_AUTHOR,
    RTAX_BRD,
    RTAX_MAX,
    AF_UNSPEC,
    AF_INET,
    AF_LINK,
    AF_INET6,
    PF_ROUTE,
    NET_RT_DUMP,
    NET_RT_DUMP2,
    CTL_NET,
    IFNAMSIZ,
);
const _: () = {
    use std::mem::size_of;
    assert!(size_of::<libc::rt_msghdr>() == rs::RT_MSGHDR_LEN);
    assert!(size_of::<libc::rt_msghdr2>() == rs::RT_MSGHDR_LEN);
    assert!(size_of::<libc::sockaddr_in>() == rs::SOCKADDR_IN_LEN);
    assert!(size_of::<libc::sockaddr_in6>() == rs::SOCKADDR_IN6_LEN);
    assert!(size_of::<libc::sockaddr_dl>() == rs::SOCKADDR_DL_LEN);
};

/// How long to wait for the kernel's echo of a request. The echo is queued
/// before `write` returns, so this only matters if the socket buffer overflowed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn create_tun(config: &TunConfig) -> Result<connector_tunnel::tun::AsyncDevice, OsError> {
    super::tun::create_tun_with_tun_rs(config)
}

/// The main (unscoped) routing table. Each operation opens its own routing
/// socket, so no socket accumulates the system's routing chatter between calls.
pub struct RouteTable {
    seq: AtomicI32,
}

impl RouteTable {
    pub async fn new() -> Result<Self, OsError> {
        // Fail early, with a clear error, if routing sockets are unavailable.
        drop(open_route_socket().map_err(OsError::Socket)?);
        Ok(RouteTable {
            seq: AtomicI32::new(1),
        })
    }

    fn next_seq(&self) -> i32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    pub async fn list(&self) -> Result<Vec<RouteEntry>, OsError> {
        blocking(|| {
            let dump = dump_routing_table()?;
            let names = RefCell::new(HashMap::new());
            let ifname = |index: u16| {
                names
                    .borrow_mut()
                    .entry(index)
                    .or_insert_with(|| index_to_name(index))
                    .clone()
            };
            rs::parse_dump(&dump, &ifname)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        })
        .await
        .map_err(OsError::ListRoutes)
    }

    /// `route add -net <dst> -interface <interface>`. A route that is already
    /// there on the same interface (a restart) is fine; on another interface it
    /// is an error, and that route is left alone.
    pub async fn add(&self, dst: IpNet, interface: &str) -> Result<(), OsError> {
        let dst = dst.trunc();
        let err = |source| OsError::Route {
            op: "add",
            destination: dst,
            interface: interface.to_owned(),
            error: source,
        };
        let index = name_to_index(interface).map_err(err)?;
        let seq = self.next_seq();
        let message = rs::add_interface_route(seq, &dst, &LinkAddr::interface(index, interface))
            .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        match blocking(move || transact(&message, seq, rs::RTM_ADD)).await {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let routes = self.list().await?;
                let existing = routes.iter().find(|r| r.destination == dst);
                match existing.and_then(|r| r.interface.as_deref()) {
                    Some(name) if name == interface => {
                        tracing::debug!(%dst, interface, "route already present");
                        Ok(())
                    }
                    owner => Err(err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "a route for {dst} already exists on {}",
                            owner.unwrap_or("another interface")
                        ),
                    ))),
                }
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Deletes the route only if the table shows it on `interface`: the kernel
    /// matches a delete by destination alone, and the same prefix on another
    /// interface (a VPN's, the LAN's) must survive.
    pub async fn delete(&self, dst: IpNet, interface: &str) -> Result<(), OsError> {
        let dst = dst.trunc();
        let routes = self.list().await?;
        let ours = routes
            .iter()
            .any(|r| r.destination == dst && r.interface.as_deref() == Some(interface));
        if !ours {
            if let Some(other) = routes.iter().find(|r| r.destination == dst) {
                tracing::warn!(
                    %dst,
                    interface,
                    owner = other.interface.as_deref().unwrap_or("?"),
                    "not deleting a route that belongs to another interface"
                );
            }
            return Ok(());
        }
        let seq = self.next_seq();
        let message = rs::delete_route(seq, &dst);
        match blocking(move || transact(&message, seq, rs::RTM_DELETE)).await {
            Ok(()) => Ok(()),
            // Gone between the check and the delete (the utun went away).
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(source) => Err(OsError::Route {
                op: "delete",
                destination: dst,
                interface: interface.to_owned(),
                error: source,
            }),
        }
    }
}

/// Runs blocking socket/sysctl work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io::Error::other(format!("routing task failed: {e}")))?
}

fn open_route_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::PF_ROUTE, libc::SOCK_RAW, libc::AF_UNSPEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: the option value is a valid `timeval` of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sends one request and waits for the kernel's echo of it. A failed request
/// fails the `write` itself (EEXIST, ESRCH, EPERM…); the echo's `rtm_errno`
/// is checked too.
fn transact(message: &[u8], seq: i32, msg_type: u8) -> io::Result<()> {
    let fd = open_route_socket()?;
    // SAFETY: writes `message.len()` bytes from a live slice.
    let n = unsafe { libc::write(fd.as_raw_fd(), message.as_ptr().cast(), message.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != message.len() {
        return Err(io::Error::other(format!(
            "short write to the routing socket ({n} of {} bytes)",
            message.len()
        )));
    }

    let pid = std::process::id() as i32;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        // SAFETY: reads at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => break, // SO_RCVTIMEO expired
                _ => return Err(e),
            }
        }
        let reply = &buf[..n as usize];
        // Other processes' messages arrive too, some with other header
        // layouts (interface and address messages): skip by type first.
        if reply.len() < 4 || reply[3] != msg_type {
            continue;
        }
        let Ok((msg, _)) = RouteMessage::decode(reply) else {
            continue;
        };
        if !msg.answers(pid, seq, msg_type) {
            continue;
        }
        return match msg.errno {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        };
    }
    // The write succeeded, which is the kernel's answer; only the echo is missing.
    tracing::debug!(seq, "no echo from the routing socket; the write succeeded");
    Ok(())
}

/// `sysctl(CTL_NET, PF_ROUTE, 0, 0, NET_RT_DUMP, 0)`: every route of every
/// family, as back-to-back `rt_msghdr` messages.
fn dump_routing_table() -> io::Result<Vec<u8>> {
    let mut mib = rs::dump_mib();
    // The table can grow between sizing and reading; retry a few times.
    for _ in 0..5 {
        let mut len: libc::size_t = 0;
        // SAFETY: size query; `mib` has 6 valid entries.
        let rc = unsafe {
            libc::sysctl(
                mib.as_mut_ptr(),
                mib.len() as libc::c_uint,
                std::ptr::null_mut(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; len + len / 8 + 1024];
        let mut got = buf.len();
        // SAFETY: `buf` has `got` writable bytes; the kernel updates `got`.
        let rc = unsafe {
            libc::sysctl(
                mib.as_mut_ptr(),
                mib.len() as libc::c_uint,
                buf.as_mut_ptr().cast(),
                &mut got,
                std::ptr::null_mut(),
                0,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOMEM) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(got);
        return Ok(buf);
    }
    Err(io::Error::other(
        "the routing table kept growing while being read",
    ))
}

fn name_to_index(name: &str) -> io::Result<u16> {
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name contains NUL"))?;
    // SAFETY: `cname` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {name}"),
        ));
    }
    u16::try_from(index).map_err(|_| {
        io::Error::other(format!(
            "interface index {index} of {name} does not fit a route message"
        ))
    })
}

fn index_to_name(index: u16) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(libc::c_uint::from(index), buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}
