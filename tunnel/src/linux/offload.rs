//! Linux tun offload: the virtio-net header, cutting TSO/USO super-packets into
//! wire-sized packets (tun → UDP), and merging consecutive TCP segments into
//! one super-packet for the tun (UDP → tun).
//!
//! With `IFF_VNET_HDR` and `TUNSETOFFLOAD` the kernel hands us up to 64 KiB of
//! one TCP stream in a single read and accepts as much in a single write, so a
//! bulk transfer costs one trip through the network stack per ~45 packets
//! instead of one per packet. The price is doing in user space what a NIC
//! would do: segmentation with checksums on the way out, and (optionally)
//! receive coalescing on the way in.

use std::io;
use std::ops::Range;
use std::os::fd::RawFd;

use crate::checksum;

/// Size of `struct virtio_net_hdr` (no `num_buffers`: tun does not use it).
pub const VNET_HDR_LEN: usize = 10;
/// Largest IP packet: the IPv4 total length and the IPv6 payload length are 16 bits.
pub const MAX_PACKET: usize = 65_535;
/// A read from or a write to the tun: header plus the largest packet.
pub const FRAME_LEN: usize = VNET_HDR_LEN + MAX_PACKET;

const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;

/// `struct virtio_net_hdr`, in the byte order of the host (what tun uses on
/// every little-endian machine, and on big-endian ones unless told otherwise).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn decode(b: &[u8]) -> VnetHdr {
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    pub fn encode(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

/// A tun read the segmenter refuses (the kernel never produces one; a bug or a
/// future GSO type would).
#[derive(Debug)]
pub struct FrameError(pub &'static str);

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Source and destination address bytes of an IPv4 or IPv6 header.
fn addresses(packet: &[u8], v6: bool) -> (&[u8], &[u8]) {
    if v6 {
        (&packet[8..24], &packet[24..40])
    } else {
        (&packet[12..16], &packet[16..20])
    }
}

fn ipv4_header_checksum(header: &mut [u8]) {
    header[10..12].fill(0);
    let sum = checksum::finish(checksum::add(0, header));
    header[10..12].copy_from_slice(&sum);
}

// ------------------------------------------------------------------ tun → UDP

/// Headers longer than this (IPv6 extension chains) are not segmented.
const MAX_HEADERS: usize = 256;

/// Cuts one tun read into the IP packets to encrypt, in place.
///
/// A plain read is one packet. A TSO/USO super-packet is cut into `gso_size`
/// payload pieces: for piece *i* > 0 the headers are written into the bytes just
/// before its payload — the tail of piece *i − 1*, which the caller has already
/// encrypted (copied out) by then. So no packet is copied here; each range
/// returned by [`Segmenter::next`] is valid until the next call.
pub struct Segmenter {
    kind: Kind,
}

enum Kind {
    Single(Option<Range<usize>>),
    Split(Box<Split>),
}

struct Split {
    v6: bool,
    protocol: u8,
    /// Frame offset of the super-packet.
    base: usize,
    /// IP header length (`csum_start`), and IP + TCP/UDP header length.
    iph_len: usize,
    hdr_len: usize,
    gso_size: usize,
    /// Frame offsets: the next piece's payload, and the end of the super-packet.
    next: usize,
    end: usize,
    index: u32,
    first_id: u16,
    first_seq: u32,
    template: [u8; MAX_HEADERS],
}

impl Segmenter {
    /// `frame` is one read from the tun; `vnet` says whether the device was
    /// opened with `IFF_VNET_HDR` (then the frame starts with a [`VnetHdr`]).
    pub fn new(frame: &mut [u8], vnet: bool) -> Result<Segmenter, FrameError> {
        if !vnet {
            return Ok(Segmenter {
                kind: Kind::Single(Some(0..frame.len())),
            });
        }
        if frame.len() <= VNET_HDR_LEN {
            return Err(FrameError("shorter than the virtio-net header"));
        }
        let hdr = VnetHdr::decode(frame);
        let packet = &mut frame[VNET_HDR_LEN..];
        let whole = VNET_HDR_LEN..VNET_HDR_LEN + packet.len();
        let gso_type = hdr.gso_type & !GSO_ECN;
        if gso_type == GSO_NONE {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                complete_checksum(packet, hdr)?;
            }
            return Ok(Segmenter {
                kind: Kind::Single(Some(whole)),
            });
        }
        let v6 = packet[0] >> 4 == 6;
        let (protocol, csum_offset) = match (gso_type, v6) {
            (GSO_TCPV4, false) | (GSO_TCPV6, true) => (PROTO_TCP, 16),
            (GSO_UDP_L4, _) => (PROTO_UDP, 6),
            _ => return Err(FrameError("unsupported GSO type")),
        };
        let iph_len = usize::from(hdr.csum_start);
        let min_iph = if v6 { 40 } else { 20 };
        if iph_len < min_iph
            || usize::from(hdr.csum_offset) != csum_offset
            || packet.len() < iph_len + 8
            || (!v6 && iph_len != usize::from(packet[0] & 0x0f) * 4)
        {
            return Err(FrameError("inconsistent GSO header"));
        }
        // The kernel's hdr_len may cover more than the headers on the forward
        // path; derive it from the transport header instead.
        let hdr_len = if protocol == PROTO_TCP {
            let th_len = usize::from(packet.get(iph_len + 12).copied().unwrap_or(0) >> 4) * 4;
            if th_len < 20 {
                return Err(FrameError("bad TCP header length"));
            }
            iph_len + th_len
        } else {
            iph_len + 8
        };
        if hdr_len > MAX_HEADERS || packet.len() < hdr_len {
            return Err(FrameError("headers too long"));
        }
        if packet.len() == hdr_len || hdr.gso_size == 0 {
            // Nothing to cut: a lone header (e.g. a bare ACK marked GSO).
            complete_checksum(packet, hdr)?;
            return Ok(Segmenter {
                kind: Kind::Single(Some(whole)),
            });
        }
        let mut split = Box::new(Split {
            v6,
            protocol,
            base: VNET_HDR_LEN,
            iph_len,
            hdr_len,
            gso_size: usize::from(hdr.gso_size),
            next: VNET_HDR_LEN + hdr_len,
            end: VNET_HDR_LEN + packet.len(),
            index: 0,
            first_id: be16(packet, 4),
            first_seq: if protocol == PROTO_TCP {
                be32(packet, iph_len + 4)
            } else {
                0
            },
            template: [0; MAX_HEADERS],
        });
        split.template[..hdr_len].copy_from_slice(&packet[..hdr_len]);
        Ok(Segmenter {
            kind: Kind::Split(split),
        })
    }

    /// Prepares the next packet in `frame` (the same frame given to `new`) and
    /// returns where it is. The previous range's bytes may be overwritten.
    pub fn next(&mut self, frame: &mut [u8]) -> Option<Range<usize>> {
        match &mut self.kind {
            Kind::Single(range) => range.take(),
            Kind::Split(split) => split.next(frame),
        }
    }
}

/// Turns the tun's offloads off (`TUNSETOFFLOAD` 0), for a loop that wants
/// one packet per read: the kernel then segments and checksums before it
/// hands packets over, as to a tun opened without offload. The virtio-net
/// header stays on every read and write (`IFF_VNET_HDR` is fixed when the
/// device is made).
pub fn turn_off(tun: RawFd) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    if unsafe { libc::ioctl(tun, libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The packet in `frame`, a read from a tun whose offloads are off (see
/// [`turn_off`]), with its checksum completed if the kernel left that to us.
/// `None` for what only a read from before [`turn_off`] can be: a GSO
/// super-packet, or a frame the segmenter refuses.
pub fn single_packet(frame: &mut [u8]) -> Option<Range<usize>> {
    match Segmenter::new(frame, true).ok()?.kind {
        Kind::Single(range) => range,
        Kind::Split(_) => None,
    }
}

impl Split {
    fn next(&mut self, frame: &mut [u8]) -> Option<Range<usize>> {
        if self.next >= self.end {
            return None;
        }
        let payload = self.gso_size.min(self.end - self.next);
        let start = self.next - self.hdr_len;
        let last = self.next + payload == self.end;
        if self.index > 0 {
            frame[start..self.next].copy_from_slice(&self.template[..self.hdr_len]);
        }
        debug_assert!(start >= self.base);
        let total = self.hdr_len + payload;
        let packet = &mut frame[start..start + total];
        let iph = self.iph_len;

        if self.v6 {
            packet[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        } else {
            packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            let id = self.first_id.wrapping_add(self.index as u16);
            packet[4..6].copy_from_slice(&id.to_be_bytes());
            ipv4_header_checksum(&mut packet[..iph]);
        }

        let l4_len = total - iph;
        let csum_at = if self.protocol == PROTO_TCP {
            let seq = self
                .first_seq
                .wrapping_add((self.gso_size as u32).wrapping_mul(self.index));
            packet[iph + 4..iph + 8].copy_from_slice(&seq.to_be_bytes());
            let flags = &mut packet[iph + 13];
            if self.index > 0 {
                *flags &= !TCP_CWR;
            }
            if !last {
                *flags &= !(TCP_FIN | TCP_PSH);
            }
            iph + 16
        } else {
            packet[iph + 4..iph + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            iph + 6
        };
        packet[csum_at..csum_at + 2].fill(0);
        let (src, dst) = addresses(packet, self.v6);
        let pseudo = checksum::pseudo_header(src, dst, self.protocol, l4_len as u32);
        let mut sum = checksum::finish(checksum::add(pseudo, &packet[iph..]));
        if self.protocol == PROTO_UDP && sum == [0, 0] {
            sum = [0xff, 0xff]; // zero means "no checksum" in UDP
        }
        packet[csum_at..csum_at + 2].copy_from_slice(&sum);

        self.next += payload;
        self.index += 1;
        Some(start..start + total)
    }
}

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM` without GSO: the checksum field holds the
/// pseudo-header sum and the rest is ours to add (CHECKSUM_PARTIAL).
fn complete_checksum(packet: &mut [u8], hdr: VnetHdr) -> Result<(), FrameError> {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > packet.len() {
        return Err(FrameError("checksum offset beyond the packet"));
    }
    // The field's current content (the pseudo-header sum) is part of the sum.
    let sum = checksum::finish(checksum::add(0, &packet[start..]));
    packet[at..at + 2].copy_from_slice(&sum);
    Ok(())
}

// ------------------------------------------------------------------ UDP → tun

/// TCP flows merged at once; more interleaved flows are written unmerged.
const MAX_FLOWS: usize = 8;

/// Writes decrypted packets to the tun, merging consecutive segments of a TCP
/// stream into one super-packet (what GRO does for a NIC).
///
/// Packets are decrypted straight into a slot of this structure
/// ([`Coalescer::scratch`]); a packet that starts a flow keeps its slot, later
/// segments have their payload appended to it. Order within a flow is kept: a
/// packet that cannot be appended first flushes the flow it belongs to.
pub struct Coalescer {
    vnet: bool,
    slots: Vec<Box<[u8]>>,
    scratch: usize,
    spare: Vec<usize>,
    flows: Vec<Flow>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    v6: bool,
    /// Source and destination addresses (IPv4 uses the first 8 bytes).
    addrs: [u8; 32],
    ports: [u8; 4],
}

struct Flow {
    key: FlowKey,
    slot: usize,
    /// Length of the merged IP packet so far.
    len: usize,
    iph_len: usize,
    hdr_len: usize,
    gso_size: usize,
    next_seq: u32,
    next_id: u16,
    segments: u32,
    /// A short segment or PSH ended the super-packet.
    closed: bool,
    /// The first segment's checksum was verified (done on first merge only).
    verified: bool,
}

/// What matters about a decrypted TCP packet for merging.
struct Tcp {
    key: FlowKey,
    iph_len: usize,
    hdr_len: usize,
    seq: u32,
    flags: u8,
    payload: usize,
    /// Whether it may be merged at all (ACK or ACK|PSH with data, plain headers).
    mergeable: bool,
}

fn parse_tcp(packet: &[u8]) -> Option<Tcp> {
    let v6 = match packet.first()? >> 4 {
        4 => false,
        6 => true,
        _ => return None,
    };
    let (iph_len, plain_ip) = if v6 {
        if packet.len() < 40 || packet[6] != PROTO_TCP {
            return None;
        }
        if usize::from(be16(packet, 4)) + 40 != packet.len() {
            return None;
        }
        (40, true)
    } else {
        if packet.len() < 20 || packet[9] != PROTO_TCP {
            return None;
        }
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        let fragment = be16(packet, 6) & 0x3fff != 0;
        if ihl < 20 || fragment || usize::from(be16(packet, 2)) != packet.len() {
            return None;
        }
        (ihl, ihl == 20)
    };
    if packet.len() < iph_len + 20 {
        return None;
    }
    let th_len = usize::from(packet[iph_len + 12] >> 4) * 4;
    if th_len < 20 || packet.len() < iph_len + th_len {
        return None;
    }
    let mut key = FlowKey {
        v6,
        addrs: [0; 32],
        ports: [0; 4],
    };
    let (src, dst) = addresses(packet, v6);
    key.addrs[..src.len()].copy_from_slice(src);
    key.addrs[src.len()..src.len() + dst.len()].copy_from_slice(dst);
    key.ports.copy_from_slice(&packet[iph_len..iph_len + 4]);
    let flags = packet[iph_len + 13];
    let payload = packet.len() - iph_len - th_len;
    Some(Tcp {
        key,
        iph_len,
        hdr_len: iph_len + th_len,
        seq: be32(packet, iph_len + 4),
        flags,
        payload,
        mergeable: plain_ip && payload > 0 && flags & !TCP_PSH == TCP_ACK,
    })
}

/// IP and TCP header fields that must be equal for two segments to merge
/// (everything but lengths, IDs, checksums, sequence numbers and PSH).
fn same_headers(head: &[u8], packet: &[u8], iph_len: usize, hdr_len: usize, v6: bool) -> bool {
    let ip_same = if v6 {
        head[..4] == packet[..4] && head[6..8] == packet[6..8]
    } else {
        // version/IHL/TOS; flags+fragment offset, TTL, protocol
        head[..2] == packet[..2] && head[6..10] == packet[6..10]
    };
    let t = iph_len;
    ip_same
        // ack number, data offset, window, urgent pointer, options
        && head[t + 8..t + 13] == packet[t + 8..t + 13]
        && head[t + 14..t + 16] == packet[t + 14..t + 16]
        && head[t + 18..hdr_len] == packet[t + 18..hdr_len]
}

fn tcp_checksum_ok(packet: &[u8], iph_len: usize, v6: bool) -> bool {
    let (src, dst) = addresses(packet, v6);
    let pseudo = checksum::pseudo_header(src, dst, PROTO_TCP, (packet.len() - iph_len) as u32);
    checksum::verifies(checksum::add(pseudo, &packet[iph_len..]))
}

/// Where [`Coalescer`] sends finished frames (header included when `vnet`).
pub trait TunWrite {
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;
}

impl<F: FnMut(&[u8]) -> io::Result<()>> TunWrite for F {
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self(frame)
    }
}

impl Coalescer {
    pub fn new(vnet: bool) -> Coalescer {
        Coalescer {
            vnet,
            slots: vec![new_slot()],
            scratch: 0,
            spare: Vec::with_capacity(MAX_FLOWS + 1),
            flows: Vec::with_capacity(MAX_FLOWS),
        }
    }

    /// Where to decrypt the next packet (at most [`MAX_PACKET`] bytes).
    pub fn scratch(&mut self) -> &mut [u8] {
        &mut self.slots[self.scratch][VNET_HDR_LEN..]
    }

    /// Takes the `len`-byte packet just written to [`Coalescer::scratch`].
    /// Writes whatever has to leave now; the rest waits for [`Coalescer::flush`].
    pub fn push(&mut self, len: usize, out: &mut impl TunWrite) -> io::Result<()> {
        if !self.vnet {
            return out.write_frame(&self.slots[self.scratch][VNET_HDR_LEN..VNET_HDR_LEN + len]);
        }
        let frame = &self.slots[self.scratch][..VNET_HDR_LEN + len];
        let Some(tcp) = parse_tcp(&frame[VNET_HDR_LEN..]) else {
            return self.write_scratch(len, out);
        };
        let found = self.flows.iter().position(|f| f.key == tcp.key);
        if let Some(i) = found {
            if tcp.mergeable && self.try_append(i, &tcp, len) {
                return Ok(());
            }
            // Keep the stream's order: what was merged goes out first.
            self.finish_flow(i, out)?;
        }
        if !tcp.mergeable {
            return self.write_scratch(len, out);
        }
        if self.flows.len() == MAX_FLOWS {
            self.finish_flow(0, out)?;
        }
        self.start_flow(&tcp, len);
        Ok(())
    }

    /// Writes every merged packet still held.
    pub fn flush(&mut self, out: &mut impl TunWrite) -> io::Result<()> {
        let mut result = Ok(());
        while !self.flows.is_empty() {
            // Keep going after an error so that every slot is released.
            if let Err(e) = self.finish_flow(0, out) {
                result = Err(e);
            }
        }
        result
    }

    fn write_scratch(&mut self, len: usize, out: &mut impl TunWrite) -> io::Result<()> {
        let frame = &mut self.slots[self.scratch][..VNET_HDR_LEN + len];
        VnetHdr::default().encode(frame);
        out.write_frame(frame)
    }

    fn start_flow(&mut self, tcp: &Tcp, len: usize) {
        let slot = self.scratch;
        let packet = &self.slots[slot][VNET_HDR_LEN..VNET_HDR_LEN + len];
        self.flows.push(Flow {
            key: tcp.key,
            slot,
            len,
            iph_len: tcp.iph_len,
            hdr_len: tcp.hdr_len,
            gso_size: tcp.payload,
            next_seq: tcp.seq.wrapping_add(tcp.payload as u32),
            next_id: be16(packet, 4).wrapping_add(1),
            segments: 1,
            closed: tcp.flags & TCP_PSH != 0,
            verified: false,
        });
        // The packet keeps its slot; decrypt the next one elsewhere.
        self.scratch = match self.spare.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(new_slot());
                self.slots.len() - 1
            }
        };
    }

    /// Appends the scratch packet's payload to flow `i` if it continues it.
    fn try_append(&mut self, i: usize, tcp: &Tcp, len: usize) -> bool {
        let flow = &self.flows[i];
        if flow.closed
            || tcp.seq != flow.next_seq
            || tcp.hdr_len != flow.hdr_len
            || tcp.iph_len != flow.iph_len
            || tcp.payload > flow.gso_size
            || flow.len + tcp.payload > MAX_PACKET
        {
            return false;
        }
        let (head_slot, packet_slot) = (flow.slot, self.scratch);
        let (head, packet) = two_slots(&mut self.slots, head_slot, packet_slot);
        let head_packet = &head[VNET_HDR_LEN..VNET_HDR_LEN + flow.len];
        let packet = &packet[VNET_HDR_LEN..VNET_HDR_LEN + len];
        let v6 = flow.key.v6;
        if !same_headers(head_packet, packet, flow.iph_len, flow.hdr_len, v6) {
            return false;
        }
        // Without DF, Linux expects IPv4 IDs to count up within a super-packet.
        if !v6 && packet[6] & 0x40 == 0 && be16(packet, 4) != flow.next_id {
            return false;
        }
        // A merged packet gets a fresh checksum from the kernel: check first.
        if !flow.verified && !tcp_checksum_ok(head_packet, flow.iph_len, v6) {
            return false;
        }
        if !tcp_checksum_ok(packet, flow.iph_len, v6) {
            return false;
        }
        let at = VNET_HDR_LEN + flow.len;
        head[at..at + tcp.payload].copy_from_slice(&packet[flow.hdr_len..]);
        if tcp.flags & TCP_PSH != 0 {
            head[VNET_HDR_LEN + flow.iph_len + 13] |= TCP_PSH;
        }
        let flow = &mut self.flows[i];
        flow.verified = true;
        flow.len += tcp.payload;
        flow.segments += 1;
        flow.next_seq = flow.next_seq.wrapping_add(tcp.payload as u32);
        flow.next_id = flow.next_id.wrapping_add(1);
        flow.closed = tcp.flags & TCP_PSH != 0 || tcp.payload < flow.gso_size;
        true
    }

    /// Writes flow `i` (as a GSO super-packet if anything was merged) and
    /// releases its slot.
    fn finish_flow(&mut self, i: usize, out: &mut impl TunWrite) -> io::Result<()> {
        let flow = self.flows.remove(i);
        self.spare.push(flow.slot);
        let frame = &mut self.slots[flow.slot][..VNET_HDR_LEN + flow.len];
        if flow.segments == 1 {
            VnetHdr::default().encode(frame);
            return out.write_frame(frame);
        }
        let v6 = flow.key.v6;
        let iph = flow.iph_len;
        let packet = &mut frame[VNET_HDR_LEN..];
        if v6 {
            packet[4..6].copy_from_slice(&((flow.len - 40) as u16).to_be_bytes());
        } else {
            packet[2..4].copy_from_slice(&(flow.len as u16).to_be_bytes());
            ipv4_header_checksum(&mut packet[..iph]);
        }
        // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, the kernel
        // (or nobody, for local delivery) adds the rest.
        let (src, dst) = addresses(packet, v6);
        let pseudo = checksum::pseudo_header(src, dst, PROTO_TCP, (flow.len - iph) as u32);
        let partial = checksum::fold(pseudo).to_be_bytes();
        packet[iph + 16..iph + 18].copy_from_slice(&partial);
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: flow.hdr_len as u16,
            gso_size: flow.gso_size as u16,
            csum_start: iph as u16,
            csum_offset: 16,
        }
        .encode(frame);
        out.write_frame(frame)
    }
}

fn new_slot() -> Box<[u8]> {
    vec![0u8; FRAME_LEN].into_boxed_slice()
}

fn two_slots(slots: &mut [Box<[u8]>], a: usize, b: usize) -> (&mut [u8], &mut [u8]) {
    assert_ne!(a, b);
    if a < b {
        let (low, high) = slots.split_at_mut(b);
        (&mut low[a], &mut high[0])
    } else {
        let (low, high) = slots.split_at_mut(a);
        (&mut high[0], &mut low[b])
    }
}

#[cfg(test)]
mod tests;
