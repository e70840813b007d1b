use super::*;

const SRC4: [u8; 4] = [10, 0, 0, 1];
const DST4: [u8; 4] = [10, 0, 0, 2];
const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// An IPv4 or IPv6 TCP packet with valid checksums (timestamps option: 12 bytes).
fn tcp_packet(v6: bool, seq: u32, flags: u8, data: &[u8], id: u16) -> Vec<u8> {
    let iph = if v6 { 40 } else { 20 };
    let th = 32;
    let total = iph + th + data.len();
    let mut p = vec![0u8; total];
    if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        p[6] = PROTO_TCP;
        p[7] = 64;
        p[8..24].copy_from_slice(&SRC6);
        p[24..40].copy_from_slice(&DST6);
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&SRC4);
        p[16..20].copy_from_slice(&DST4);
        ipv4_header_checksum(&mut p[..20]);
    }
    let t = iph;
    p[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
    p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    p[t + 8..t + 12].copy_from_slice(&777u32.to_be_bytes());
    p[t + 12] = ((th / 4) as u8) << 4;
    p[t + 13] = flags;
    p[t + 14..t + 16].copy_from_slice(&512u16.to_be_bytes());
    p[t + 20..t + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 5]);
    p[t + th..].copy_from_slice(data);
    let (src, dst): (&[u8], &[u8]) = if v6 { (&SRC6, &DST6) } else { (&SRC4, &DST4) };
    let pseudo = checksum::pseudo_header(src, dst, PROTO_TCP, (total - iph) as u32);
    let sum = checksum::finish(checksum::add(pseudo, &p[iph..]));
    p[t + 16..t + 18].copy_from_slice(&sum);
    p
}

/// What the kernel hands us for a TSO write: headers of the first segment,
/// the whole payload, a partial (pseudo-header) checksum and a GSO header.
fn tso_frame(v6: bool, seq: u32, data: &[u8], gso_size: u16, flags: u8) -> Vec<u8> {
    let mut p = tcp_packet(v6, seq, flags, data, 100);
    let iph = if v6 { 40 } else { 20 };
    let (src, dst): (&[u8], &[u8]) = if v6 { (&SRC6, &DST6) } else { (&SRC4, &DST4) };
    let pseudo = checksum::pseudo_header(src, dst, PROTO_TCP, (p.len() - iph) as u32);
    p[iph + 16..iph + 18].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    let mut frame = vec![0u8; VNET_HDR_LEN];
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
        hdr_len: (iph + 32) as u16,
        gso_size,
        csum_start: iph as u16,
        csum_offset: 16,
    }
    .encode(&mut frame);
    frame.extend_from_slice(&p);
    frame
}

fn segments(frame: &mut [u8], vnet: bool) -> Vec<Vec<u8>> {
    let mut seg = Segmenter::new(frame, vnet).expect("segmenter");
    let mut out = Vec::new();
    while let Some(r) = seg.next(frame) {
        out.push(frame[r].to_vec());
    }
    out
}

fn assert_valid_tcp(p: &[u8], v6: bool) {
    let iph = if v6 { 40 } else { 20 };
    if v6 {
        assert_eq!(usize::from(be16(p, 4)) + 40, p.len());
    } else {
        assert_eq!(usize::from(be16(p, 2)), p.len());
        assert!(
            checksum::verifies(checksum::add(0, &p[..20])),
            "IPv4 header checksum"
        );
    }
    assert!(tcp_checksum_ok(p, iph, v6), "TCP checksum");
}

#[test]
fn tso_frame_is_cut_into_valid_segments() {
    for v6 in [false, true] {
        let data = payload(5500);
        let mut frame = tso_frame(v6, 1000, &data, 1000, TCP_ACK | TCP_PSH);
        let segs = segments(&mut frame, true);
        assert_eq!(segs.len(), 6, "v6={v6}");
        let iph = if v6 { 40 } else { 20 };
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert_valid_tcp(s, v6);
            assert_eq!(be32(s, iph + 4), 1000 + 1000 * i as u32, "sequence number");
            let last = i == segs.len() - 1;
            assert_eq!(
                s[iph + 13] & TCP_PSH != 0,
                last,
                "PSH only on the last segment"
            );
            if !v6 {
                assert_eq!(be16(s, 4), 100 + i as u16, "IPv4 ID counts up");
            }
            joined.extend_from_slice(&s[iph + 32..]);
        }
        assert_eq!(segs[5].len(), iph + 32 + 500);
        assert_eq!(joined, data);
    }
}

#[test]
fn plain_frames_pass_through_and_partial_checksums_are_completed() {
    let packet = tcp_packet(false, 1, TCP_ACK, &payload(100), 1);
    let mut frame = packet.clone();
    assert_eq!(segments(&mut frame, false), vec![packet.clone()]);

    // Same packet, checksum left partial by the kernel (CHECKSUM_PARTIAL).
    let mut partial = packet.clone();
    let pseudo = checksum::pseudo_header(&SRC4, &DST4, PROTO_TCP, (packet.len() - 20) as u32);
    partial[36..38].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    let mut frame = vec![0u8; VNET_HDR_LEN];
    VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 16,
        ..Default::default()
    }
    .encode(&mut frame);
    frame.extend_from_slice(&partial);
    assert_eq!(segments(&mut frame, true), vec![packet]);
}

#[test]
fn udp_gso_frame_is_cut_with_udp_lengths_and_checksums() {
    let data = payload(3000);
    let total = 20 + 8 + data.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = PROTO_UDP;
    p[12..16].copy_from_slice(&SRC4);
    p[16..20].copy_from_slice(&DST4);
    p[20..22].copy_from_slice(&9999u16.to_be_bytes());
    p[22..24].copy_from_slice(&7u16.to_be_bytes());
    p[28..].copy_from_slice(&data);
    let mut frame = vec![0u8; VNET_HDR_LEN];
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_UDP_L4,
        hdr_len: 28,
        gso_size: 1200,
        csum_start: 20,
        csum_offset: 6,
    }
    .encode(&mut frame);
    frame.extend_from_slice(&p);
    let segs = segments(&mut frame, true);
    assert_eq!(
        segs.iter().map(|s| s.len() - 28).collect::<Vec<_>>(),
        vec![1200, 1200, 600]
    );
    let mut joined = Vec::new();
    for s in &segs {
        assert_eq!(usize::from(be16(s, 24)), s.len() - 20, "UDP length");
        let pseudo = checksum::pseudo_header(&SRC4, &DST4, PROTO_UDP, (s.len() - 20) as u32);
        assert!(
            checksum::verifies(checksum::add(pseudo, &s[20..])),
            "UDP checksum"
        );
        joined.extend_from_slice(&s[28..]);
    }
    assert_eq!(joined, data);
}

#[test]
fn malformed_gso_frames_are_refused() {
    let mut frame = tso_frame(false, 1, &payload(3000), 1000, TCP_ACK);
    frame[VNET_HDR_LEN + 20 + 12] = 0x10; // TCP data offset 4 bytes
    assert!(Segmenter::new(&mut frame, true).is_err());
    let mut frame = tso_frame(false, 1, &payload(3000), 1000, TCP_ACK);
    frame[1] = 9; // unknown GSO type
    assert!(Segmenter::new(&mut frame, true).is_err());
    assert!(Segmenter::new(&mut [0u8; 4], true).is_err());
}

/// Collects what the coalescer writes.
#[derive(Default)]
struct Frames(Vec<Vec<u8>>);

impl TunWrite for Frames {
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0.push(frame.to_vec());
        Ok(())
    }
}

fn push(co: &mut Coalescer, packet: &[u8], out: &mut Frames) {
    co.scratch()[..packet.len()].copy_from_slice(packet);
    co.push(packet.len(), out).unwrap();
}

/// Emulates the kernel: completes the checksum of a merged frame, then cuts it
/// again with our own segmenter.
fn resegment(frame: &[u8]) -> Vec<Vec<u8>> {
    let mut frame = frame.to_vec();
    segments(&mut frame, true)
}

#[test]
fn consecutive_segments_merge_into_one_gso_frame_and_split_back() {
    for v6 in [false, true] {
        let data = payload(4 * 1200 + 300);
        let originals: Vec<Vec<u8>> = data
            .chunks(1200)
            .enumerate()
            .map(|(i, c)| {
                let flags = if i == 4 { TCP_ACK | TCP_PSH } else { TCP_ACK };
                tcp_packet(v6, 5000 + 1200 * i as u32, flags, c, 7 + i as u16)
            })
            .collect();
        let mut co = Coalescer::new(true);
        let mut out = Frames::default();
        for p in &originals {
            push(&mut co, p, &mut out);
        }
        assert!(out.0.is_empty(), "nothing written before flush");
        co.flush(&mut out).unwrap();
        assert_eq!(out.0.len(), 1);
        let hdr = VnetHdr::decode(&out.0[0]);
        assert_eq!(hdr.gso_type, if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
        assert_eq!(hdr.gso_size, 1200);
        assert_eq!(hdr.flags, F_NEEDS_CSUM);
        let again = resegment(&out.0[0]);
        assert_eq!(again.len(), originals.len());
        for (a, b) in again.iter().zip(&originals) {
            let iph = if v6 { 40 } else { 20 };
            // Payload, sequence numbers, flags and checksums survive the round trip.
            assert_eq!(a[iph..], b[iph..], "v6={v6}");
            assert_valid_tcp(a, v6);
        }
    }
}

#[test]
fn order_is_kept_within_a_flow_and_other_packets_pass_through() {
    let d = payload(1000);
    let a0 = tcp_packet(false, 0, TCP_ACK, &d, 1);
    let a1 = tcp_packet(false, 1000, TCP_ACK, &d, 2);
    let fin = tcp_packet(false, 2000, TCP_ACK | TCP_FIN, &[], 3);
    let a_late = tcp_packet(false, 9000, TCP_ACK, &d, 4);
    let mut other = tcp_packet(false, 0, TCP_ACK, &d, 1);
    other[20..22].copy_from_slice(&40001u16.to_be_bytes()); // another source port
    let other = {
        let mut o = other;
        let pseudo = checksum::pseudo_header(&SRC4, &DST4, PROTO_TCP, (o.len() - 20) as u32);
        o[36..38].fill(0);
        let s = checksum::finish(checksum::add(pseudo, &o[20..]));
        o[36..38].copy_from_slice(&s);
        o
    };
    let icmp = {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[9] = 1;
        p
    };

    let mut co = Coalescer::new(true);
    let mut out = Frames::default();
    push(&mut co, &a0, &mut out);
    push(&mut co, &other, &mut out);
    push(&mut co, &a1, &mut out);
    push(&mut co, &icmp, &mut out); // not TCP: straight through
    push(&mut co, &fin, &mut out); // flushes a0+a1 first, then itself
    push(&mut co, &a_late, &mut out); // a new flow head
    co.flush(&mut out).unwrap();

    let packets: Vec<&[u8]> = out.0.iter().map(|f| &f[VNET_HDR_LEN..]).collect();
    assert_eq!(packets.len(), 5);
    assert_eq!(packets[0], &icmp[..]);
    assert_eq!(be32(packets[1], 24), 0, "merged a0+a1");
    assert_eq!(packets[1].len(), 20 + 32 + 2000);
    assert_eq!(packets[2], &fin[..]);
    // Flush writes the remaining flows oldest first.
    assert_eq!(packets[3], &other[..]);
    assert_eq!(packets[4], &a_late[..]);
    // Unmerged packets carry an empty header.
    assert_eq!(VnetHdr::decode(&out.0[0]), VnetHdr::default());
}

#[test]
fn corrupt_or_non_consecutive_segments_are_not_merged() {
    let d = payload(800);
    let a0 = tcp_packet(false, 0, TCP_ACK, &d, 1);
    let mut bad = tcp_packet(false, 800, TCP_ACK, &d, 2);
    bad[100] ^= 0xff;
    let mut co = Coalescer::new(true);
    let mut out = Frames::default();
    push(&mut co, &a0, &mut out);
    push(&mut co, &bad, &mut out);
    co.flush(&mut out).unwrap();
    assert_eq!(out.0.len(), 2, "bad checksum: written as they came");
    assert_eq!(&out.0[1][VNET_HDR_LEN..], &bad[..]);

    let gap = tcp_packet(false, 5000, TCP_ACK, &d, 2);
    let mut out = Frames::default();
    push(&mut co, &a0, &mut out);
    push(&mut co, &gap, &mut out);
    co.flush(&mut out).unwrap();
    assert_eq!(out.0.len(), 2, "sequence gap: not merged");
}

#[test]
fn without_vnet_every_packet_is_written_as_is() {
    let p = tcp_packet(false, 0, TCP_ACK, &payload(500), 1);
    let mut co = Coalescer::new(false);
    let mut out = Frames::default();
    push(&mut co, &p, &mut out);
    push(&mut co, &p, &mut out);
    co.flush(&mut out).unwrap();
    assert_eq!(out.0, vec![p.clone(), p]);
}

#[test]
fn many_flows_use_a_bounded_number_of_slots() {
    let d = payload(100);
    let mut co = Coalescer::new(true);
    let mut out = Frames::default();
    for round in 0..3u32 {
        for port in 0..20u16 {
            let mut p = tcp_packet(false, round * 100, TCP_ACK, &d, 1);
            p[20..22].copy_from_slice(&(1000 + port).to_be_bytes());
            p[36..38].fill(0);
            let pseudo = checksum::pseudo_header(&SRC4, &DST4, PROTO_TCP, (p.len() - 20) as u32);
            let s = checksum::finish(checksum::add(pseudo, &p[20..]));
            p[36..38].copy_from_slice(&s);
            push(&mut co, &p, &mut out);
        }
    }
    co.flush(&mut out).unwrap();
    assert!(co.slots.len() <= MAX_FLOWS + 1);
    let total: usize = out.0.iter().map(|f| f.len() - VNET_HDR_LEN - 52).sum();
    assert_eq!(total, 60 * 100, "every byte written exactly once");
}

#[test]
fn a_single_packet_is_found_after_the_header_and_a_super_packet_is_not() {
    let packet = tcp_packet(false, 1, TCP_ACK, &payload(100), 1);
    let mut frame = vec![0u8; VNET_HDR_LEN];
    frame.extend_from_slice(&packet);
    assert_eq!(single_packet(&mut frame), Some(VNET_HDR_LEN..frame.len()));

    // A checksum left partial is completed in place.
    let mut partial = frame.clone();
    let pseudo = checksum::pseudo_header(&SRC4, &DST4, PROTO_TCP, (packet.len() - 20) as u32);
    partial[VNET_HDR_LEN + 36..VNET_HDR_LEN + 38]
        .copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 16,
        ..VnetHdr::default()
    }
    .encode(&mut partial);
    let range = single_packet(&mut partial).expect("a single packet");
    assert_eq!(partial[range], packet[..]);

    let mut tso = tso_frame(false, 1000, &payload(3000), 1000, TCP_ACK);
    assert_eq!(single_packet(&mut tso), None);
    assert_eq!(single_packet(&mut [0u8; VNET_HDR_LEN]), None);
}
