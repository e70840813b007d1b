//! BSD routing-socket messages in the macOS (xnu) layout, without any I/O.
//!
//! `macos.rs` writes the messages built here to a `PF_ROUTE` socket and feeds
//! the bytes of `sysctl(NET_RT_DUMP)` to [`parse_dump`]. Nothing here touches
//! the OS, so the whole format is unit-tested on Linux.
//!
//! Layout reminders (all from xnu's public headers):
//! - a message is a fixed `struct rt_msghdr` (92 bytes) followed by the
//!   sockaddrs named by the `rtm_addrs` bitmask, in bit order;
//! - each sockaddr starts with `sa_len`, `sa_family` and occupies `sa_len`
//!   rounded up to a multiple of `sizeof(uint32_t)`; a zero `sa_len` still
//!   takes 4 bytes (`ROUNDUP32` in `bsd/net/rtsock.c`);
//! - netmasks come back from the kernel in radix form: `sa_len` covers only
//!   up to the last non-zero byte and the family byte is not meaningful;
//! - integers are in host order, and every macOS target is little-endian, so
//!   this module reads and writes little-endian explicitly.

// A transcription of C headers: not every constant has a user, and on Linux
// only the tests use this module.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::types::RouteEntry;

// ---- <net/route.h> ---------------------------------------------------------

/// `RTM_VERSION`: the only message version xnu accepts.
pub const RTM_VERSION: u8 = 5;

/// Message types (`RTM_*`).
pub const RTM_ADD: u8 = 0x1;
pub const RTM_DELETE: u8 = 0x2;
pub const RTM_CHANGE: u8 = 0x3;
pub const RTM_GET: u8 = 0x4;
/// What `NET_RT_DUMP2` entries are tagged with (`struct rt_msghdr2`).
pub const RTM_GET2: u8 = 0x14;

/// Route flags (`RTF_*`).
pub const RTF_UP: i32 = 0x1;
pub const RTF_GATEWAY: i32 = 0x2;
pub const RTF_HOST: i32 = 0x4;
pub const RTF_REJECT: i32 = 0x8;
pub const RTF_DONE: i32 = 0x40;
pub const RTF_CLONING: i32 = 0x100;
pub const RTF_LLINFO: i32 = 0x400;
pub const RTF_STATIC: i32 = 0x800;
pub const RTF_BLACKHOLE: i32 = 0x1000;
pub const RTF_PRCLONING: i32 = 0x10000;
pub const RTF_WASCLONED: i32 = 0x20000;
pub const RTF_LOCAL: i32 = 0x200000;
pub const RTF_BROADCAST: i32 = 0x400000;
pub const RTF_MULTICAST: i32 = 0x800000;
pub const RTF_IFSCOPE: i32 = 0x1000000;
pub const RTF_CONDEMNED: i32 = 0x2000000;
pub const RTF_DEAD: i32 = 0x20000000;

/// Bits of `rtm_addrs` (`RTA_*`); bit n is sockaddr slot n (`RTAX_*`).
pub const RTA_DST: i32 = 0x1;
pub const RTA_GATEWAY: i32 = 0x2;
pub const RTA_NETMASK: i32 = 0x4;
pub const RTA_GENMASK: i32 = 0x8;
pub const RTA_IFP: i32 = 0x10;
pub const RTA_IFA: i32 = 0x20;
pub const RTA_AUTHOR: i32 = 0x40;
pub const RTA_BRD: i32 = 0x80;

/// Sockaddr slots (`RTAX_*`).
pub const RTAX_DST: usize = 0;
pub const RTAX_GATEWAY: usize = 1;
pub const RTAX_NETMASK: usize = 2;
pub const RTAX_GENMASK: usize = 3;
pub const RTAX_IFP: usize = 4;
pub const RTAX_IFA: usize = 5;
pub const RTAX_AUTHOR: usize = 6;
pub const RTAX_BRD: usize = 7;
pub const RTAX_MAX: usize = 8;

/// `sizeof(struct rt_msghdr)` == `sizeof(struct rt_msghdr2)` on macOS:
/// 2+1+1+2 (+2 padding) + 7 * 4 + `struct rt_metrics` (14 * 4).
pub const RT_MSGHDR_LEN: usize = 92;

// ---- <sys/socket.h> --------------------------------------------------------

pub const AF_UNSPEC: u8 = 0;
pub const AF_INET: u8 = 2;
/// `AF_LINK`: `struct sockaddr_dl`, link-level (interface) addresses.
pub const AF_LINK: u8 = 18;
/// macOS value; Linux's `AF_INET6` is 10, so libc's constant must not be used
/// when building messages on a Linux test host.
pub const AF_INET6: u8 = 30;
/// Protocol family of routing sockets, also the second sysctl MIB level.
pub const PF_ROUTE: i32 = 17;
/// `sysctl` operations under `net.route` (`NET_RT_*`).
pub const NET_RT_DUMP: i32 = 1;
pub const NET_RT_DUMP2: i32 = 7;

// ---- <sys/sysctl.h> --------------------------------------------------------

/// Top-level `net` MIB.
pub const CTL_NET: i32 = 4;

// ---- <netinet/in.h>, <netinet6/in6.h>, <net/if_dl.h>, <net/if.h> ------------

/// `sizeof(struct sockaddr_in)`.
pub const SOCKADDR_IN_LEN: usize = 16;
/// `sizeof(struct sockaddr_in6)`.
pub const SOCKADDR_IN6_LEN: usize = 28;
/// `sizeof(struct sockaddr_dl)`: 8 bytes of header and a 12-byte `sdl_data`.
pub const SOCKADDR_DL_LEN: usize = 20;
/// `IFNAMSIZ`, including the terminating NUL.
pub const IFNAMSIZ: usize = 16;

/// The MIB of `sysctl` that dumps every routing table (all address families).
pub fn dump_mib() -> [i32; 6] {
    [CTL_NET, PF_ROUTE, 0, 0, NET_RT_DUMP, 0]
}

/// Space a sockaddr of `sa_len` bytes takes in a message (`ROUNDUP32`).
pub fn sa_space(sa_len: usize) -> usize {
    if sa_len == 0 {
        4
    } else {
        (sa_len + 3) & !3
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("routing message truncated: {what} needs {need} bytes, {have} left")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("routing message length {0} is shorter than its {RT_MSGHDR_LEN}-byte header")]
    ShortMessage(usize),
    #[error("routing message version {0}, expected {RTM_VERSION}")]
    Version(u8),
    #[error("malformed sockaddr (family {family}): {reason}")]
    Sockaddr { family: u8, reason: &'static str },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("interface name {0:?} is empty or longer than {max} bytes", max = IFNAMSIZ - 1)]
    InterfaceName(String),
    #[error("interface {0:?} has index 0, which the kernel treats as no interface")]
    InterfaceIndex(String),
}

/// A link-level address (`struct sockaddr_dl`), as macOS uses it to name an
/// interface: the index is what the kernel matches on, the name is for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAddr {
    pub index: u16,
    /// `sdl_type` (`IFT_*` of `<net/if_types.h>`); 0 when we do not care.
    pub if_type: u8,
    pub name: String,
    /// Hardware address; empty for a utun.
    pub lladdr: Vec<u8>,
}

impl LinkAddr {
    pub fn interface(index: u16, name: &str) -> Self {
        LinkAddr {
            index,
            if_type: 0,
            name: name.to_owned(),
            lladdr: Vec::new(),
        }
    }
}

/// A decoded sockaddr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SockAddr {
    V4(Ipv4Addr),
    V6 {
        addr: Ipv6Addr,
        scope_id: u32,
    },
    Link(LinkAddr),
    /// Any other family: the raw bytes, `sa_len` long.
    Other {
        family: u8,
        bytes: Vec<u8>,
    },
}

impl SockAddr {
    /// The bytes of the sockaddr, exactly `sa_len` long (no padding).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            SockAddr::V4(ip) => {
                let mut b = vec![0u8; SOCKADDR_IN_LEN];
                b[0] = SOCKADDR_IN_LEN as u8;
                b[1] = AF_INET;
                // bytes 2..4: port, 0 for routes; 8..16: sin_zero
                b[4..8].copy_from_slice(&ip.octets());
                b
            }
            SockAddr::V6 { addr, scope_id } => {
                let mut b = vec![0u8; SOCKADDR_IN6_LEN];
                b[0] = SOCKADDR_IN6_LEN as u8;
                b[1] = AF_INET6;
                // 2..4 port, 4..8 flowinfo
                b[8..24].copy_from_slice(&addr.octets());
                b[24..28].copy_from_slice(&scope_id.to_le_bytes());
                b
            }
            SockAddr::Link(link) => {
                let data_len = link.name.len() + link.lladdr.len();
                let len = (8 + data_len).max(SOCKADDR_DL_LEN);
                let mut b = vec![0u8; len];
                b[0] = len as u8;
                b[1] = AF_LINK;
                b[2..4].copy_from_slice(&link.index.to_le_bytes());
                b[4] = link.if_type;
                b[5] = link.name.len() as u8;
                b[6] = link.lladdr.len() as u8;
                b[7] = 0; // sdl_slen
                b[8..8 + link.name.len()].copy_from_slice(link.name.as_bytes());
                b[8 + link.name.len()..8 + data_len].copy_from_slice(&link.lladdr);
                b
            }
            SockAddr::Other { bytes, .. } => bytes.clone(),
        }
    }

    /// Decode one sockaddr from its `sa_len` bytes. Short inet addresses are
    /// zero-filled, as the kernel's radix code treats missing bytes as zero.
    pub fn decode(raw: &[u8]) -> Result<SockAddr, DecodeError> {
        if raw.len() < 2 {
            return Ok(SockAddr::Other {
                family: AF_UNSPEC,
                bytes: raw.to_vec(),
            });
        }
        let family = raw[1];
        match family {
            AF_INET => Ok(SockAddr::V4(Ipv4Addr::from(field::<4>(raw, 4)))),
            AF_INET6 => Ok(SockAddr::V6 {
                addr: Ipv6Addr::from(field::<16>(raw, 8)),
                scope_id: u32::from_le_bytes(field::<4>(raw, 24)),
            }),
            AF_LINK => {
                if raw.len() < 8 {
                    return Err(DecodeError::Sockaddr {
                        family,
                        reason: "sockaddr_dl shorter than its 8-byte header",
                    });
                }
                let nlen = raw[5] as usize;
                let alen = raw[6] as usize;
                if 8 + nlen + alen > raw.len() {
                    return Err(DecodeError::Sockaddr {
                        family,
                        reason: "sockaddr_dl name and address run past sdl_len",
                    });
                }
                let name = std::str::from_utf8(&raw[8..8 + nlen])
                    .map_err(|_| DecodeError::Sockaddr {
                        family,
                        reason: "interface name is not UTF-8",
                    })?
                    .to_owned();
                Ok(SockAddr::Link(LinkAddr {
                    index: u16::from_le_bytes([raw[2], raw[3]]),
                    if_type: raw[4],
                    name,
                    lladdr: raw[8 + nlen..8 + nlen + alen].to_vec(),
                }))
            }
            _ => Ok(SockAddr::Other {
                family,
                bytes: raw.to_vec(),
            }),
        }
    }
}

/// `N` bytes of `raw` from `at`, zero-filled where `raw` is shorter.
fn field<const N: usize>(raw: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        if let Some(b) = raw.get(at + i) {
            *byte = *b;
        }
    }
    out
}

/// Prefix length of a netmask sockaddr for a destination of the given family.
/// The family byte of the mask is ignored (radix masks do not keep it).
/// `None` when the mask is not contiguous, which `IpNet` cannot express.
pub fn netmask_prefix(raw: &[u8], dst_family: u8) -> Option<u8> {
    let bytes: Vec<u8> = match dst_family {
        AF_INET => field::<4>(raw, 4).to_vec(),
        AF_INET6 => field::<16>(raw, 8).to_vec(),
        _ => return None,
    };
    let mut prefix = 0u8;
    let mut seen_zero = false;
    for byte in bytes {
        for bit in (0..8).rev() {
            if byte & (1 << bit) != 0 {
                if seen_zero {
                    return None;
                }
                prefix += 1;
            } else {
                seen_zero = true;
            }
        }
    }
    Some(prefix)
}

/// A netmask sockaddr for `prefix`, in the full-length form `route(8)` sends.
pub fn netmask_sockaddr(net: &IpNet) -> SockAddr {
    match net {
        IpNet::V4(n) => SockAddr::V4(n.netmask()),
        IpNet::V6(n) => SockAddr::V6 {
            addr: n.netmask(),
            scope_id: 0,
        },
    }
}

/// One routing message: the header fields connector cares about and the raw
/// sockaddrs by slot (each exactly `sa_len` bytes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteMessage {
    pub msg_type: u8,
    pub index: u16,
    pub flags: i32,
    /// `rtm_pid` (for `rt_msghdr2` this slot holds `rtm_refcnt`).
    pub pid: i32,
    /// `rtm_seq` (for `rt_msghdr2`: `rtm_parentflags`).
    pub seq: i32,
    /// `rtm_errno` (for `rt_msghdr2`: `rtm_reserved`).
    pub errno: i32,
    pub addrs: [Option<Vec<u8>>; RTAX_MAX],
}

impl RouteMessage {
    pub fn new(msg_type: u8, seq: i32, flags: i32) -> Self {
        RouteMessage {
            msg_type,
            seq,
            flags,
            ..Default::default()
        }
    }

    /// Put `addr` in `slot`.
    pub fn with(mut self, slot: usize, addr: &SockAddr) -> Self {
        self.addrs[slot] = Some(addr.encode());
        self
    }

    /// The `rtm_addrs` bitmask for the present slots.
    pub fn addrs_mask(&self) -> i32 {
        self.addrs
            .iter()
            .enumerate()
            .filter(|(_, a)| a.is_some())
            .fold(0, |m, (i, _)| m | (1 << i))
    }

    /// Decoded sockaddr of a slot.
    pub fn sockaddr(&self, slot: usize) -> Result<Option<SockAddr>, DecodeError> {
        self.addrs[slot]
            .as_deref()
            .map(SockAddr::decode)
            .transpose()
    }

    /// Serialize to what `write(2)` on a routing socket expects:
    /// `rtm_msglen` must equal the byte count written.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; RT_MSGHDR_LEN];
        out[2] = RTM_VERSION;
        out[3] = self.msg_type;
        out[4..6].copy_from_slice(&self.index.to_le_bytes());
        // 6..8: padding before the ints
        out[8..12].copy_from_slice(&self.flags.to_le_bytes());
        out[12..16].copy_from_slice(&self.addrs_mask().to_le_bytes());
        out[16..20].copy_from_slice(&self.pid.to_le_bytes());
        out[20..24].copy_from_slice(&self.seq.to_le_bytes());
        out[24..28].copy_from_slice(&self.errno.to_le_bytes());
        // 28..32 rtm_use, 32..36 rtm_inits, 36..92 rtm_rmx: all zero
        for sa in self.addrs.iter().flatten() {
            let start = out.len();
            out.extend_from_slice(sa);
            out.resize(start + sa_space(sa.len()), 0);
        }
        let len = out.len() as u16;
        out[0..2].copy_from_slice(&len.to_le_bytes());
        out
    }

    /// Decode the first message of `buf`; returns it and its `rtm_msglen`.
    pub fn decode(buf: &[u8]) -> Result<(RouteMessage, usize), DecodeError> {
        if buf.len() < 4 {
            return Err(DecodeError::Truncated {
                what: "message header",
                need: 4,
                have: buf.len(),
            });
        }
        let msglen = u16::from_le_bytes([buf[0], buf[1]]) as usize;
        if msglen < RT_MSGHDR_LEN {
            return Err(DecodeError::ShortMessage(msglen));
        }
        if msglen > buf.len() {
            return Err(DecodeError::Truncated {
                what: "message",
                need: msglen,
                have: buf.len(),
            });
        }
        if buf[2] != RTM_VERSION {
            return Err(DecodeError::Version(buf[2]));
        }
        let int = |at: usize| i32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let mut msg = RouteMessage {
            msg_type: buf[3],
            index: u16::from_le_bytes([buf[4], buf[5]]),
            flags: int(8),
            pid: int(16),
            seq: int(20),
            errno: int(24),
            addrs: Default::default(),
        };
        let mask = int(12);
        let body = &buf[RT_MSGHDR_LEN..msglen];
        let mut at = 0usize;
        for (slot, entry) in msg.addrs.iter_mut().enumerate() {
            if mask & (1 << slot) == 0 {
                continue;
            }
            let Some(&sa_len) = body.get(at) else {
                return Err(DecodeError::Truncated {
                    what: "sockaddr",
                    need: 1,
                    have: 0,
                });
            };
            let sa_len = sa_len as usize;
            let have = body.len() - at;
            if sa_len > have {
                return Err(DecodeError::Truncated {
                    what: "sockaddr",
                    need: sa_len,
                    have,
                });
            }
            *entry = Some(body[at..at + sa_len].to_vec());
            // The last sockaddr's padding may be cut off by msglen; tolerate it.
            at = (at + sa_space(sa_len)).min(body.len());
        }
        Ok((msg, msglen))
    }

    /// Is this the kernel's answer to the request we sent with `seq`?
    pub fn answers(&self, pid: i32, seq: i32, msg_type: u8) -> bool {
        self.pid == pid && self.seq == seq && self.msg_type == msg_type
    }
}

/// The messages of a buffer of back-to-back messages (a sysctl dump, or one
/// `read(2)` from a routing socket), decoded one at a time; ends after the
/// first error.
fn messages(buf: &[u8]) -> impl Iterator<Item = Result<RouteMessage, DecodeError>> + '_ {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let decoded = RouteMessage::decode(rest);
        rest = match &decoded {
            Ok((_, len)) => &rest[*len..],
            Err(_) => &[],
        };
        Some(decoded.map(|(msg, _)| msg))
    })
}

/// Every message of a buffer of back-to-back messages.
pub fn parse_messages(buf: &[u8]) -> Result<Vec<RouteMessage>, DecodeError> {
    messages(buf).collect()
}

/// Flags of dump entries that are not routes of the main table as packets
/// see it: per-interface scoped duplicates, host routes cloned on use (ARP/NDP
/// entries and the like), and entries being torn down.
const NOT_LISTED: i32 = RTF_IFSCOPE | RTF_WASCLONED | RTF_CONDEMNED | RTF_DEAD;

/// Turn one dump entry into a [`RouteEntry`]. `ifname` maps an interface index
/// to its name (`if_indextoname` on macOS). Entries that are not IP routes of
/// the unscoped table, or whose mask is not a prefix, give `Ok(None)`.
pub fn route_entry(
    msg: &RouteMessage,
    ifname: &dyn Fn(u16) -> Option<String>,
) -> Result<Option<RouteEntry>, DecodeError> {
    if !matches!(msg.msg_type, RTM_GET | RTM_GET2 | RTM_ADD) || msg.flags & NOT_LISTED != 0 {
        return Ok(None);
    }
    let (dst, family) = match msg.sockaddr(RTAX_DST)? {
        Some(SockAddr::V4(ip)) => (IpAddr::V4(ip), AF_INET),
        Some(SockAddr::V6 { addr, .. }) => (IpAddr::V6(clear_embedded_scope(addr)), AF_INET6),
        _ => return Ok(None),
    };
    let full = if family == AF_INET { 32 } else { 128 };
    let prefix = match &msg.addrs[RTAX_NETMASK] {
        _ if msg.flags & RTF_HOST != 0 => full,
        Some(raw) => match netmask_prefix(raw, family) {
            Some(p) => p,
            None => return Ok(None),
        },
        None => full,
    };
    let destination = match dst {
        IpAddr::V4(ip) => IpNet::V4(Ipv4Net::new(ip, prefix).expect("prefix <= 32").trunc()),
        IpAddr::V6(ip) => IpNet::V6(Ipv6Net::new(ip, prefix).expect("prefix <= 128").trunc()),
    };
    let gateway_sa = msg.sockaddr(RTAX_GATEWAY)?;
    let gateway = match (&gateway_sa, msg.flags & RTF_GATEWAY != 0) {
        (Some(SockAddr::V4(ip)), true) => Some(IpAddr::V4(*ip)),
        (Some(SockAddr::V6 { addr, .. }), true) => Some(IpAddr::V6(clear_embedded_scope(*addr))),
        _ => None,
    };
    let link_name = |sa: Option<SockAddr>| match sa {
        Some(SockAddr::Link(l)) if !l.name.is_empty() => Some(l.name),
        _ => None,
    };
    let interface = link_name(msg.sockaddr(RTAX_IFP)?)
        .or_else(|| (msg.index != 0).then(|| ifname(msg.index)).flatten())
        .or_else(|| link_name(gateway_sa.clone()))
        .or_else(|| match gateway_sa {
            Some(SockAddr::Link(l)) if l.index != 0 => ifname(l.index),
            _ => None,
        });
    Ok(Some(RouteEntry {
        destination,
        interface,
        gateway,
    }))
}

/// The routes of a `sysctl(NET_RT_DUMP)` or `NET_RT_DUMP2` buffer. Messages
/// are decoded one at a time, so only the routes are held, not the dump twice.
pub fn parse_dump(
    buf: &[u8],
    ifname: &dyn Fn(u16) -> Option<String>,
) -> Result<Vec<RouteEntry>, DecodeError> {
    let mut out = Vec::new();
    for msg in messages(buf) {
        if let Some(entry) = route_entry(&msg?, ifname)? {
            out.push(entry);
        }
    }
    Ok(out)
}

/// The kernel keeps the scope of link-local IPv6 addresses in bytes 2..4 of
/// the address (KAME convention); show the address as users know it.
fn clear_embedded_scope(addr: Ipv6Addr) -> Ipv6Addr {
    let s = addr.segments();
    let link_local = s[0] & 0xffc0 == 0xfe80;
    let scoped_multicast = s[0] & 0xff00 == 0xff00 && matches!(s[0] & 0x000f, 0x1 | 0x2);
    if link_local || scoped_multicast {
        let mut o = addr.octets();
        o[2] = 0;
        o[3] = 0;
        Ipv6Addr::from(o)
    } else {
        addr
    }
}

fn destination_sockaddr(dst: &IpNet) -> SockAddr {
    match dst.trunc() {
        IpNet::V4(n) => SockAddr::V4(n.network()),
        IpNet::V6(n) => SockAddr::V6 {
            addr: n.network(),
            scope_id: 0,
        },
    }
}

/// Host routes carry `RTF_HOST` and no netmask, like `route add -host`.
fn is_host(dst: &IpNet) -> bool {
    dst.prefix_len() == dst.max_prefix_len()
}

fn with_destination(mut msg: RouteMessage, dst: &IpNet) -> RouteMessage {
    msg = msg.with(RTAX_DST, &destination_sockaddr(dst));
    if is_host(dst) {
        msg.flags |= RTF_HOST;
    } else {
        msg = msg.with(RTAX_NETMASK, &netmask_sockaddr(dst));
    }
    msg
}

fn check_link(link: &LinkAddr) -> Result<(), EncodeError> {
    if link.name.is_empty() || link.name.len() >= IFNAMSIZ {
        return Err(EncodeError::InterfaceName(link.name.clone()));
    }
    if link.index == 0 {
        return Err(EncodeError::InterfaceIndex(link.name.clone()));
    }
    Ok(())
}

/// `RTM_ADD` of an interface route, the equivalent of
/// `route add -net <dst> -interface <name>`: the gateway is the interface's
/// link address and `RTF_GATEWAY` is absent, so packets go straight out of the
/// interface. `RTA_IFP` names the interface again so the kernel cannot pick
/// another one for the route.
pub fn add_interface_route(seq: i32, dst: &IpNet, link: &LinkAddr) -> Result<Vec<u8>, EncodeError> {
    check_link(link)?;
    let link_sa = SockAddr::Link(link.clone());
    let msg = RouteMessage::new(RTM_ADD, seq, RTF_UP | RTF_STATIC)
        .with(RTAX_GATEWAY, &link_sa)
        .with(RTAX_IFP, &link_sa);
    Ok(with_destination(msg, dst).encode())
}

/// `RTM_DELETE` of the unscoped route `dst`. The kernel matches destination and
/// mask only; the caller checks beforehand that the route is its own.
pub fn delete_route(seq: i32, dst: &IpNet) -> Vec<u8> {
    with_destination(RouteMessage::new(RTM_DELETE, seq, RTF_UP | RTF_STATIC), dst).encode()
}

/// `RTM_GET` for the exact route `dst`, asking for the interface in the reply.
pub fn get_route(seq: i32, dst: &IpNet) -> Vec<u8> {
    let mut msg = with_destination(RouteMessage::new(RTM_GET, seq, RTF_UP), dst);
    // An empty IFP slot asks the kernel to report the route's interface.
    msg.addrs[RTAX_IFP] = Some(SockAddr::Link(LinkAddr::interface(0, "")).encode());
    msg.encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le16(v: u16) -> [u8; 2] {
        v.to_le_bytes()
    }
    fn le32(v: i32) -> [u8; 4] {
        v.to_le_bytes()
    }

    /// A header as xnu writes it, built field by field.
    fn header(
        msglen: u16,
        msg_type: u8,
        index: u16,
        flags: i32,
        addrs: i32,
        pid: i32,
        seq: i32,
    ) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend(le16(msglen));
        h.push(RTM_VERSION);
        h.push(msg_type);
        h.extend(le16(index));
        h.extend([0, 0]);
        h.extend(le32(flags));
        h.extend(le32(addrs));
        h.extend(le32(pid));
        h.extend(le32(seq));
        h.extend(le32(0)); // errno
        h.extend(le32(0)); // use
        h.extend(le32(0)); // inits
        h.extend([0u8; 56]); // rt_metrics
        assert_eq!(h.len(), RT_MSGHDR_LEN);
        h
    }

    fn sin(a: [u8; 4]) -> Vec<u8> {
        let mut v = vec![16, AF_INET, 0, 0];
        v.extend(a);
        v.extend([0u8; 8]);
        v
    }

    fn sin6(a: Ipv6Addr) -> Vec<u8> {
        let mut v = vec![28, AF_INET6, 0, 0, 0, 0, 0, 0];
        v.extend(a.octets());
        v.extend([0u8; 4]);
        v
    }

    /// sockaddr_dl for `link#index` as the kernel reports interface routes'
    /// gateways: no name, 20 bytes.
    fn sdl_index(index: u16, if_type: u8) -> Vec<u8> {
        let mut v = vec![20, AF_LINK];
        v.extend(le16(index));
        v.extend([if_type, 0, 0, 0]);
        v.extend([0u8; 12]);
        v
    }

    fn names(i: u16) -> Option<String> {
        match i {
            1 => Some("lo0".into()),
            4 => Some("en0".into()),
            15 => Some("utun4".into()),
            _ => None,
        }
    }

    fn msg(body: &[&[u8]], msg_type: u8, index: u16, flags: i32, addrs: i32) -> Vec<u8> {
        let mut b = Vec::new();
        for sa in body {
            b.extend_from_slice(sa);
            b.resize(b.len() + sa_space(sa.len()) - sa.len(), 0);
        }
        let mut m = header(
            (RT_MSGHDR_LEN + b.len()) as u16,
            msg_type,
            index,
            flags,
            addrs,
            0,
            0,
        );
        m.extend(b);
        m
    }

    #[test]
    fn roundup_rule() {
        assert_eq!(sa_space(0), 4);
        assert_eq!(sa_space(1), 4);
        assert_eq!(sa_space(4), 4);
        assert_eq!(sa_space(5), 8);
        assert_eq!(sa_space(16), 16);
        assert_eq!(sa_space(20), 20);
        assert_eq!(sa_space(28), 28);
        assert_eq!(sa_space(13), 16);
    }

    #[test]
    fn add_interface_route_layout() {
        let dst: IpNet = "172.18.0.0/16".parse().unwrap();
        let bytes = add_interface_route(7, &dst, &LinkAddr::interface(15, "utun4")).unwrap();
        // header + dst(16) + gateway dl(20) + netmask(16) + ifp dl(20)
        assert_eq!(bytes.len(), 92 + 16 + 20 + 16 + 20);
        assert_eq!(&bytes[0..2], &le16(bytes.len() as u16));
        assert_eq!(bytes[2], 5);
        assert_eq!(bytes[3], RTM_ADD);
        assert_eq!(&bytes[4..8], &[0, 0, 0, 0]);
        assert_eq!(&bytes[8..12], &le32(RTF_UP | RTF_STATIC));
        assert_eq!(
            &bytes[12..16],
            &le32(RTA_DST | RTA_GATEWAY | RTA_NETMASK | RTA_IFP)
        );
        assert_eq!(&bytes[16..20], &le32(0), "the kernel fills in rtm_pid");
        assert_eq!(&bytes[20..24], &le32(7));
        assert!(bytes[24..92].iter().all(|b| *b == 0));
        let body = &bytes[92..];
        assert_eq!(&body[0..16], sin([172, 18, 0, 0]).as_slice());
        let dl: [u8; 20] = [
            20, AF_LINK, 15, 0, 0, 5, 0, 0, b'u', b't', b'u', b'n', b'4', 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(&body[16..36], &dl);
        assert_eq!(&body[36..52], sin([255, 255, 0, 0]).as_slice());
        assert_eq!(&body[52..72], &dl);
        assert_eq!(
            bytes[8] & RTF_GATEWAY as u8,
            0,
            "an interface route has no RTF_GATEWAY"
        );
    }

    #[test]
    fn add_host_route_has_no_netmask() {
        let dst: IpNet = "10.1.2.3/32".parse().unwrap();
        let bytes = add_interface_route(1, &dst, &LinkAddr::interface(15, "utun4")).unwrap();
        let (m, _) = RouteMessage::decode(&bytes).unwrap();
        assert_eq!(m.flags, RTF_UP | RTF_STATIC | RTF_HOST);
        assert!(m.addrs[RTAX_NETMASK].is_none());
        assert_eq!(m.addrs_mask(), RTA_DST | RTA_GATEWAY | RTA_IFP);
    }

    #[test]
    fn add_ipv6_route_layout() {
        let dst: IpNet = "fd00:10:244::/56".parse().unwrap();
        let bytes = add_interface_route(3, &dst, &LinkAddr::interface(15, "utun4")).unwrap();
        assert_eq!(bytes.len(), 92 + 28 + 20 + 28 + 20);
        let body = &bytes[92..];
        assert_eq!(
            &body[0..28],
            sin6("fd00:10:244::".parse().unwrap()).as_slice()
        );
        assert_eq!(
            &body[48..76],
            sin6("ffff:ffff:ffff:ff00::".parse().unwrap()).as_slice()
        );
    }

    #[test]
    fn destination_is_truncated_to_the_network() {
        let dst: IpNet = "172.18.3.4/16".parse().unwrap();
        let bytes = delete_route(1, &dst);
        let (m, _) = RouteMessage::decode(&bytes).unwrap();
        assert_eq!(
            m.sockaddr(RTAX_DST).unwrap(),
            Some(SockAddr::V4(Ipv4Addr::new(172, 18, 0, 0)))
        );
    }

    #[test]
    fn delete_and_get_layout() {
        let dst: IpNet = "10.96.0.0/12".parse().unwrap();
        let del = delete_route(9, &dst);
        assert_eq!(del.len(), 92 + 16 + 16);
        assert_eq!(del[3], RTM_DELETE);
        assert_eq!(&del[12..16], &le32(RTA_DST | RTA_NETMASK));
        assert_eq!(&del[92 + 16..], sin([255, 240, 0, 0]).as_slice());

        let get = get_route(10, &dst);
        assert_eq!(get[3], RTM_GET);
        assert_eq!(&get[12..16], &le32(RTA_DST | RTA_NETMASK | RTA_IFP));
        assert_eq!(get.len(), 92 + 16 + 16 + 20);
    }

    #[test]
    fn bad_interface_names_are_refused() {
        let dst: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(matches!(
            add_interface_route(1, &dst, &LinkAddr::interface(3, "")),
            Err(EncodeError::InterfaceName(_))
        ));
        assert!(matches!(
            add_interface_route(1, &dst, &LinkAddr::interface(3, "a-very-long-name")),
            Err(EncodeError::InterfaceName(_))
        ));
        assert!(matches!(
            add_interface_route(1, &dst, &LinkAddr::interface(0, "utun3")),
            Err(EncodeError::InterfaceIndex(_))
        ));
    }

    #[test]
    fn message_round_trip() {
        let dst: IpNet = "192.168.215.0/24".parse().unwrap();
        let link = LinkAddr {
            index: 300,
            if_type: 0x06,
            name: "en10".into(),
            lladdr: vec![0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff],
        };
        let bytes = add_interface_route(-5, &dst, &link).unwrap();
        let (m, len) = RouteMessage::decode(&bytes).unwrap();
        assert_eq!(len, bytes.len());
        assert_eq!(m.msg_type, RTM_ADD);
        assert_eq!(m.seq, -5);
        assert_eq!(
            m.sockaddr(RTAX_GATEWAY).unwrap(),
            Some(SockAddr::Link(link.clone()))
        );
        assert_eq!(m.sockaddr(RTAX_IFP).unwrap(), Some(SockAddr::Link(link)));
        assert_eq!(
            netmask_prefix(m.addrs[RTAX_NETMASK].as_ref().unwrap(), AF_INET),
            Some(24)
        );
        assert_eq!(m.encode(), bytes);
    }

    #[test]
    fn sockaddr_round_trips() {
        let cases = [
            SockAddr::V4(Ipv4Addr::new(1, 2, 3, 4)),
            SockAddr::V6 {
                addr: "2001:db8::1".parse().unwrap(),
                scope_id: 7,
            },
            SockAddr::Link(LinkAddr::interface(2, "bridge100")),
            SockAddr::Other {
                family: 99,
                bytes: vec![5, 99, 1, 2, 3],
            },
        ];
        for sa in cases {
            assert_eq!(SockAddr::decode(&sa.encode()).unwrap(), sa);
        }
    }

    #[test]
    fn netmask_forms() {
        // Full sockaddr_in, as route(8) sends.
        assert_eq!(netmask_prefix(&sin([255, 255, 255, 0]), AF_INET), Some(24));
        // Radix form from the kernel: sa_len 6, family byte meaningless.
        assert_eq!(
            netmask_prefix(&[6, 0xff, 0, 0, 255, 255], AF_INET),
            Some(16)
        );
        assert_eq!(
            netmask_prefix(&[7, 0, 0, 0, 255, 255, 240], AF_INET),
            Some(20)
        );
        // Default route: sa_len 0.
        assert_eq!(netmask_prefix(&[], AF_INET), Some(0));
        assert_eq!(netmask_prefix(&[0], AF_INET6), Some(0));
        // IPv6 /64 in radix form: 8 + 8 bytes.
        let mut m6 = vec![16, AF_INET6, 0, 0, 0, 0, 0, 0];
        m6.extend([0xff; 8]);
        assert_eq!(netmask_prefix(&m6, AF_INET6), Some(64));
        // Not contiguous.
        assert_eq!(netmask_prefix(&sin([255, 0, 255, 0]), AF_INET), None);
        assert_eq!(netmask_prefix(&sin([255, 0, 0, 0]), AF_LINK), None);
    }

    /// A small dump shaped like `netstat -rn` on a Mac with Docker's utun:
    /// default via the LAN router, the LAN, a scoped duplicate, an ARP entry,
    /// loopback, connector's route and an IPv6 default through a link-local
    /// router with its scope embedded.
    fn sample_dump() -> Vec<u8> {
        let mut d = Vec::new();
        // default 192.168.1.1 UGScg en0 (netmask sa_len 0)
        d.extend(msg(
            &[&sin([0, 0, 0, 0]), &sin([192, 168, 1, 1]), &[0]],
            RTM_GET,
            4,
            RTF_UP | RTF_GATEWAY | RTF_STATIC | RTF_PRCLONING,
            RTA_DST | RTA_GATEWAY | RTA_NETMASK,
        ));
        // default 192.168.1.1 UGScIg en0 (scoped duplicate)
        d.extend(msg(
            &[&sin([0, 0, 0, 0]), &sin([192, 168, 1, 1]), &[0]],
            RTM_GET,
            4,
            RTF_UP | RTF_GATEWAY | RTF_STATIC | RTF_IFSCOPE,
            RTA_DST | RTA_GATEWAY | RTA_NETMASK,
        ));
        // 127/8 127.0.0.1 UCS lo0 (netmask radix form, sa_len 5)
        d.extend(msg(
            &[
                &sin([127, 0, 0, 0]),
                &sin([127, 0, 0, 1]),
                &[5, 0xff, 0, 0, 255],
            ],
            RTM_GET,
            1,
            RTF_UP | RTF_STATIC | RTF_CLONING,
            RTA_DST | RTA_GATEWAY | RTA_NETMASK,
        ));
        // 192.168.1/24 link#4 UCS en0
        d.extend(msg(
            &[
                &sin([192, 168, 1, 0]),
                &sdl_index(4, 6),
                &[7, 0, 0, 0, 255, 255, 255],
            ],
            RTM_GET,
            4,
            RTF_UP | RTF_STATIC | RTF_CLONING,
            RTA_DST | RTA_GATEWAY | RTA_NETMASK,
        ));
        // 192.168.1.23 aa:bb:.. UHLWIi en0 (ARP entry, cloned)
        let mut arp = sdl_index(4, 6);
        arp[6] = 6;
        arp[8..14].copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]);
        d.extend(msg(
            &[&sin([192, 168, 1, 23]), &arp],
            RTM_GET,
            4,
            RTF_UP | RTF_HOST | RTF_LLINFO | RTF_WASCLONED,
            RTA_DST | RTA_GATEWAY,
        ));
        // 172.18/16 utun4 USc utun4 (connector's, gateway names the interface)
        let mut named = vec![20, AF_LINK, 15, 0, 0, 5, 0, 0];
        named.extend(b"utun4");
        named.extend([0u8; 7]);
        d.extend(msg(
            &[&sin([172, 18, 0, 0]), &named, &[6, 0xff, 0, 0, 255, 255]],
            RTM_GET,
            15,
            RTF_UP | RTF_STATIC,
            RTA_DST | RTA_GATEWAY | RTA_NETMASK,
        ));
        // default fe80::1%en0 UGcg en0 (IPv6, scope 4 embedded in bytes 2..4)
        d.extend(msg(
            &[
                &sin6(Ipv6Addr::UNSPECIFIED),
                &sin6("fe80:4::1".parse().unwrap()),
                &[0],
            ],
            RTM_GET,
            4,
            RTF_UP | RTF_GATEWAY,
            RTA_DST | RTA_GATEWAY | RTA_NETMASK,
        ));
        // fd00:10:244::/56 on an interface whose index has no name any more
        let mut m56 = vec![15, AF_INET6, 0, 0, 0, 0, 0, 0];
        m56.extend([0xff; 7]);
        d.extend(msg(
            &[
                &sin6("fd00:10:244::".parse().unwrap()),
                &sdl_index(99, 0),
                &m56,
            ],
            RTM_GET,
            99,
            RTF_UP | RTF_STATIC,
            RTA_DST | RTA_GATEWAY | RTA_NETMASK,
        ));
        d
    }

    #[test]
    fn parses_a_dump() {
        let routes = parse_dump(&sample_dump(), &names).unwrap();
        let show: Vec<String> = routes
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    r.destination,
                    r.interface.as_deref().unwrap_or("-"),
                    r.gateway
                        .map(|g| g.to_string())
                        .unwrap_or_else(|| "-".into())
                )
            })
            .collect();
        assert_eq!(
            show,
            [
                "0.0.0.0/0 en0 192.168.1.1",
                "127.0.0.0/8 lo0 -",
                "192.168.1.0/24 en0 -",
                "172.18.0.0/16 utun4 -",
                "::/0 en0 fe80::1",
                "fd00:10:244::/56 - -",
            ]
        );
    }

    #[test]
    fn dump2_entries_parse_too() {
        // NET_RT_DUMP2: same header size, type RTM_GET2, refcnt in the pid slot.
        let mut m = msg(
            &[&sin([10, 0, 0, 0]), &sdl_index(15, 0), &[5, 0, 0, 0, 255]],
            RTM_GET2,
            15,
            RTF_UP | RTF_STATIC,
            RTA_DST | RTA_GATEWAY | RTA_NETMASK,
        );
        m[16..20].copy_from_slice(&le32(3));
        let routes = parse_dump(&m, &names).unwrap();
        assert_eq!(
            routes,
            [RouteEntry {
                destination: "10.0.0.0/8".parse().unwrap(),
                interface: Some("utun4".into()),
                gateway: None,
            }]
        );
    }

    #[test]
    fn reply_matching() {
        let dst: IpNet = "172.18.0.0/16".parse().unwrap();
        let mut reply = add_interface_route(42, &dst, &LinkAddr::interface(15, "utun4")).unwrap();
        reply[16..20].copy_from_slice(&le32(1234)); // kernel sets the pid
        let (m, _) = RouteMessage::decode(&reply).unwrap();
        assert!(m.answers(1234, 42, RTM_ADD));
        assert!(!m.answers(1234, 43, RTM_ADD));
        assert!(!m.answers(999, 42, RTM_ADD));
        assert!(!m.answers(1234, 42, RTM_DELETE));
    }

    #[test]
    fn reply_errno_is_decoded() {
        let dst: IpNet = "172.18.0.0/16".parse().unwrap();
        let mut reply = delete_route(1, &dst);
        reply[24..28].copy_from_slice(&le32(3)); // ESRCH
        let (m, _) = RouteMessage::decode(&reply).unwrap();
        assert_eq!(m.errno, 3);
    }

    #[test]
    fn empty_dump_is_empty() {
        assert_eq!(parse_dump(&[], &names).unwrap(), []);
    }

    #[test]
    fn truncated_input_is_an_error() {
        let dump = sample_dump();
        for cut in 1..dump.len() {
            // Must never panic; cuts inside a message are errors.
            let r = parse_dump(&dump[..cut], &names);
            let at_boundary = parse_messages(&dump[..cut]).is_ok();
            assert_eq!(r.is_ok(), at_boundary, "cut at {cut}");
        }
        assert!(matches!(
            parse_dump(&dump[..50], &names),
            Err(DecodeError::Truncated {
                what: "message",
                ..
            })
        ));
        assert!(matches!(
            parse_dump(&dump[..3], &names),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn sockaddr_past_message_end_is_an_error() {
        // msglen covers the header and 4 bytes, but the sockaddr claims 16.
        let mut m = header(96, RTM_GET, 1, RTF_UP, RTA_DST, 0, 0);
        m.extend([16, AF_INET, 0, 0]);
        assert!(matches!(
            RouteMessage::decode(&m),
            Err(DecodeError::Truncated {
                what: "sockaddr",
                ..
            })
        ));
        // Bits for sockaddrs that are not there at all.
        let m = header(92, RTM_GET, 1, RTF_UP, RTA_DST | RTA_GATEWAY, 0, 0);
        assert!(matches!(
            RouteMessage::decode(&m),
            Err(DecodeError::Truncated {
                what: "sockaddr",
                ..
            })
        ));
    }

    #[test]
    fn bad_headers_are_errors() {
        let mut m = header(92, RTM_GET, 1, RTF_UP, 0, 0, 0);
        m[2] = 4;
        assert_eq!(RouteMessage::decode(&m), Err(DecodeError::Version(4)));
        let m = header(10, RTM_GET, 1, RTF_UP, 0, 0, 0);
        assert_eq!(RouteMessage::decode(&m), Err(DecodeError::ShortMessage(10)));
        // msglen 0 would loop forever if accepted.
        let m = header(0, RTM_GET, 1, RTF_UP, 0, 0, 0);
        assert_eq!(parse_messages(&m), Err(DecodeError::ShortMessage(0)));
    }

    #[test]
    fn malformed_link_address_is_an_error() {
        // nlen says 30 bytes of name in a 20-byte sockaddr_dl.
        let mut dl = sdl_index(4, 6);
        dl[5] = 30;
        let m = msg(
            &[&sin([10, 0, 0, 0]), &dl],
            RTM_GET,
            4,
            RTF_UP | RTF_HOST,
            RTA_DST | RTA_GATEWAY,
        );
        assert!(matches!(
            parse_dump(&m, &names),
            Err(DecodeError::Sockaddr {
                family: AF_LINK,
                ..
            })
        ));
        let short = [4u8, AF_LINK, 0, 0];
        assert!(SockAddr::decode(&short).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: xorshift bytes, with and without a
        // plausible header in front.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..2000 {
            let len = (next() % 300) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 && buf.len() >= 4 {
                let msglen = buf.len().min(u16::MAX as usize) as u16;
                buf[0..2].copy_from_slice(&msglen.to_le_bytes());
                buf[2] = RTM_VERSION;
                buf[3] = RTM_GET;
            }
            let _ = parse_dump(&buf, &names);
        }
    }

    #[test]
    fn non_ip_and_noncontiguous_entries_are_skipped() {
        // An AF_LINK destination (interface entry) and a 255.0.255.0 mask.
        let link_dst = msg(
            &[&sdl_index(4, 6), &sdl_index(4, 6)],
            RTM_GET,
            4,
            RTF_UP,
            RTA_DST | RTA_GATEWAY,
        );
        let odd = msg(
            &[
                &sin([10, 0, 0, 0]),
                &sdl_index(4, 6),
                &sin([255, 0, 255, 0]),
            ],
            RTM_GET,
            4,
            RTF_UP,
            RTA_DST | RTA_GATEWAY | RTA_NETMASK,
        );
        let mut both = link_dst;
        both.extend(odd);
        assert_eq!(parse_dump(&both, &names).unwrap(), []);
    }

    #[test]
    fn interface_name_sources() {
        // IFP name wins over the index; the gateway's name is the last resort.
        let mut ifp = vec![20, AF_LINK, 15, 0, 0, 5, 0, 0];
        ifp.extend(b"utun9");
        ifp.extend([0u8; 7]);
        let m = msg(
            &[
                &sin([10, 0, 0, 0]),
                &sdl_index(15, 0),
                &[5, 0, 0, 0, 255],
                &ifp,
            ],
            RTM_GET,
            4,
            RTF_UP,
            RTA_DST | RTA_GATEWAY | RTA_NETMASK | RTA_IFP,
        );
        let (parsed, _) = RouteMessage::decode(&m).unwrap();
        let e = route_entry(&parsed, &names).unwrap().unwrap();
        assert_eq!(e.interface.as_deref(), Some("utun9"));

        // No index, gateway sockaddr_dl with only an index.
        let m = msg(
            &[&sin([10, 0, 0, 0]), &sdl_index(15, 0), &[5, 0, 0, 0, 255]],
            RTM_GET,
            0,
            RTF_UP,
            RTA_DST | RTA_GATEWAY | RTA_NETMASK,
        );
        let (parsed, _) = RouteMessage::decode(&m).unwrap();
        let e = route_entry(&parsed, &names).unwrap().unwrap();
        assert_eq!(e.interface.as_deref(), Some("utun4"));
    }

    #[test]
    fn embedded_scope_is_cleared() {
        assert_eq!(
            clear_embedded_scope("fe80:4::1".parse().unwrap()),
            "fe80::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            clear_embedded_scope("ff02:4::fb".parse().unwrap()),
            "ff02::fb".parse::<Ipv6Addr>().unwrap()
        );
        let global: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(clear_embedded_scope(global), global);
    }

    #[test]
    fn dump_mib_is_net_route_dump() {
        assert_eq!(dump_mib(), [4, 17, 0, 0, 1, 0]);
    }

    use crate::testing::alloc_meter::measure;
    use proptest::prelude::*;

    fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
        any::<[u8; 4]>().prop_map(Ipv4Addr::from)
    }

    fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
        any::<[u8; 16]>().prop_map(Ipv6Addr::from)
    }

    /// Destinations connector may route. Link-local and scoped multicast
    /// prefixes are left out: the kernel keeps their scope in bytes 2..4 and
    /// decoding clears those bytes, so they do not read back as written.
    fn destination() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (ipv4(), 0u8..=32).prop_map(|(a, p)| IpNet::V4(Ipv4Net::new(a, p).unwrap())),
            (ipv6(), 0u8..=128).prop_map(|(a, p)| IpNet::V6(Ipv6Net::new(a, p).unwrap())),
        ]
        .prop_filter("scoped IPv6", |net| match net.trunc() {
            IpNet::V6(n) => clear_embedded_scope(n.network()) == n.network(),
            IpNet::V4(_) => true,
        })
    }

    /// An interface connector can route through (see `check_link`).
    fn link() -> impl Strategy<Value = LinkAddr> {
        (1u16.., "[a-z][a-z0-9]{0,14}").prop_map(|(index, name)| LinkAddr::interface(index, &name))
    }

    fn sockaddr() -> impl Strategy<Value = SockAddr> {
        prop_oneof![
            ipv4().prop_map(SockAddr::V4),
            (ipv6(), any::<u32>()).prop_map(|(addr, scope_id)| SockAddr::V6 { addr, scope_id }),
            (
                any::<u16>(),
                any::<u8>(),
                "[a-z0-9]{0,15}",
                prop::collection::vec(any::<u8>(), 0..=8)
            )
                .prop_map(|(index, if_type, name, lladdr)| SockAddr::Link(LinkAddr {
                    index,
                    if_type,
                    name,
                    lladdr
                })),
            (
                any::<u8>().prop_filter("decoded as such", |f| ![AF_INET, AF_INET6, AF_LINK]
                    .contains(f)),
                prop::collection::vec(any::<u8>(), 0..=60)
            )
                .prop_map(|(family, mut bytes)| {
                    bytes.splice(0..0, [bytes.len() as u8 + 2, family]);
                    SockAddr::Other { family, bytes }
                }),
        ]
    }

    /// Raw sockaddr bytes as the kernel lays them out: `sa_len` first.
    fn raw_sockaddr() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            sockaddr().prop_map(|sa| sa.encode()),
            prop::collection::vec(any::<u8>(), 1..=32).prop_map(|mut b| {
                b[0] = b.len() as u8;
                b
            }),
            Just(Vec::new()),
        ]
    }

    /// A message with any header fields and well-formed sockaddr slots.
    fn message() -> impl Strategy<Value = RouteMessage> {
        (
            any::<(u8, u16, i32, i32, i32, i32)>(),
            prop::array::uniform8(prop::option::of(raw_sockaddr())),
        )
            .prop_map(
                |((msg_type, index, flags, pid, seq, errno), addrs)| RouteMessage {
                    msg_type,
                    index,
                    flags,
                    pid,
                    seq,
                    errno,
                    addrs,
                },
            )
    }

    /// Messages back to back, then perhaps cut or with a byte changed.
    fn damaged_dump() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec(message(), 0..4),
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
            any::<u8>(),
            0u8..3,
        )
            .prop_map(|(msgs, cut, at, byte, how)| {
                let mut buf: Vec<u8> = msgs.iter().flat_map(RouteMessage::encode).collect();
                if !buf.is_empty() {
                    match how {
                        0 => buf.truncate(cut.index(buf.len())),
                        1 => {
                            let i = at.index(buf.len());
                            buf[i] = byte;
                        }
                        _ => {}
                    }
                }
                buf
            })
    }

    /// Peak memory allowed for decoding `len` bytes: the decoded messages
    /// (a fixed-size struct per message of at least 92 bytes, in a `Vec`
    /// that may have doubled) and copies of their sockaddrs.
    fn bound(len: usize) -> usize {
        8 * len + 1024
    }

    /// Every decoder, on the same bytes.
    fn decode_everything(buf: &[u8]) {
        let _ = SockAddr::decode(buf);
        let _ = netmask_prefix(buf, AF_INET);
        let _ = netmask_prefix(buf, AF_INET6);
        let _ = RouteMessage::decode(buf);
        let _ = parse_messages(buf);
        let _ = parse_dump(buf, &names);
        if let Ok((msg, _)) = RouteMessage::decode(buf) {
            let _ = route_entry(&msg, &names);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            buf in prop::collection::vec(any::<u8>(), 0..1024),
        ) {
            let ((), peak) = measure(|| decode_everything(&buf));
            prop_assert!(peak <= bound(buf.len()), "{peak} for {}", buf.len());
        }

        #[test]
        fn damaged_dumps_never_panic_and_stay_bounded(buf in damaged_dump()) {
            let ((), peak) = measure(|| decode_everything(&buf));
            prop_assert!(peak <= bound(buf.len()), "{peak} for {}", buf.len());
        }

    }

    proptest! {
        // Round trips of generated values: fewer cases than arbitrary input.
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn sockaddrs_round_trip(sa in sockaddr()) {
            prop_assert_eq!(SockAddr::decode(&sa.encode()).unwrap(), sa);
        }

        #[test]
        fn messages_round_trip(msg in message()) {
            let bytes = msg.encode();
            prop_assert_eq!(RouteMessage::decode(&bytes).unwrap(), (msg, bytes.len()));
        }

        #[test]
        fn netmasks_round_trip(dst in destination()) {
            let family = if dst.addr().is_ipv4() { AF_INET } else { AF_INET6 };
            let mask = netmask_sockaddr(&dst).encode();
            prop_assert_eq!(netmask_prefix(&mask, family), Some(dst.prefix_len()));
        }

        #[test]
        fn routes_read_back_as_written(dst in destination(), link in link(), seq in any::<i32>()) {
            let added = add_interface_route(seq, &dst, &link).unwrap();
            prop_assert_eq!(
                parse_dump(&added, &names).unwrap(),
                [RouteEntry { destination: dst.trunc(), interface: Some(link.name.clone()), gateway: None }]
            );
            let asked = get_route(seq, &dst);
            prop_assert_eq!(
                parse_dump(&asked, &names).unwrap(),
                [RouteEntry { destination: dst.trunc(), interface: None, gateway: None }]
            );
            let (deleted, _) = RouteMessage::decode(&delete_route(seq, &dst)).unwrap();
            prop_assert_eq!(deleted.msg_type, RTM_DELETE);
            prop_assert_eq!(deleted.seq, seq);
            prop_assert_eq!(
                deleted.sockaddr(RTAX_DST).unwrap().unwrap(),
                destination_sockaddr(&dst)
            );
            let prefix = match &deleted.addrs[RTAX_NETMASK] {
                None => dst.max_prefix_len(),
                Some(mask) => netmask_prefix(mask, if dst.addr().is_ipv4() { AF_INET } else { AF_INET6 }).unwrap(),
            };
            prop_assert_eq!(prefix, dst.prefix_len());
        }
    }
}
