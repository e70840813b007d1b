//! The Linux data path: tun offload plus UDP GSO/GRO, in batches.
//!
//! tun → UDP: one read returns a TCP super-packet of up to 64 KiB (TSO), or a
//! single packet; it is cut into MTU-sized packets in place, each encrypted
//! into a send buffer, and the buffer leaves in one `sendmmsg` with UDP GSO.
//! Further reads that are already queued join the same send.
//!
//! UDP → tun: one `recvmsg` with UDP GRO returns up to 64 KiB of datagrams;
//! each is decrypted straight into the [`offload::Coalescer`], which writes a
//! TCP stream's consecutive segments to the tun as one super-packet.
//!
//! Either way a bulk transfer costs a few system calls and one trip through
//! the kernel's network stack per ~45 packets instead of two per packet, which
//! is what the profile of the one-packet-at-a-time loop was dominated by.
//! Each feature degrades on its own: a tun without `IFF_VNET_HDR` gives one
//! packet per read and takes one per write, a kernel without UDP GSO gets
//! one message per datagram (still one `sendmmsg` per batch), without GRO one
//! datagram per receive.

mod checksum;
mod offload;
mod udp;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::worker::{is_fatal, report, FailSender, Shared, Step, HANDSHAKE_BUF};
use offload::{Coalescer, FrameError, Segmenter, FRAME_LEN};
use udp::{RxBatch, TxBatch};

/// WireGuard's per-packet overhead: 16-byte header, 16-byte tag.
const DATA_OVERHEAD: usize = 32;
/// Reads from the tun gathered into one send, at most.
const MAX_TUN_READS: usize = 8;
/// Receives decrypted before the merged packets are written, at most.
const MAX_UDP_RECVS: usize = 8;

pub(crate) fn spawn_loops(shared: &Arc<Shared>, fail: &FailSender) -> Vec<JoinHandle<()>> {
    let caps = udp::configure(&shared.socket);
    let vnet = shared.device.tcp_gso();
    tracing::debug!(udp_gso = caps.gso, udp_gro = caps.gro, tun_offload = vnet, "data path");
    vec![
        tokio::spawn(outbound(shared.clone(), fail.clone(), vnet, caps.gso)),
        tokio::spawn(inbound(shared.clone(), fail.clone(), vnet)),
    ]
}

async fn outbound(shared: Arc<Shared>, fail: FailSender, vnet: bool, gso: bool) {
    let mut frame = vec![0u8; FRAME_LEN].into_boxed_slice();
    let mut tx = TxBatch::new(gso);
    loop {
        let n = match shared.device.recv(&mut frame).await {
            Ok(n) => n,
            Err(error) if is_fatal(&error) => return report(&fail, "tun read", &error),
            Err(_) => continue,
        };
        encrypt_frame(&shared, &mut frame[..n], vnet, &mut tx).await;
        // Whatever else is already queued goes in the same send.
        for _ in 1..MAX_TUN_READS {
            match shared.device.try_recv(&mut frame) {
                Ok(n) => encrypt_frame(&shared, &mut frame[..n], vnet, &mut tx).await,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if is_fatal(&error) => return report(&fail, "tun read", &error),
                Err(_) => break,
            }
        }
        flush(&shared, &mut tx).await;
    }
}

/// Encrypts every packet of one tun read into `tx` (sending when it is full).
async fn encrypt_frame(shared: &Shared, frame: &mut [u8], vnet: bool, tx: &mut TxBatch) {
    let mut packets = match Segmenter::new(frame, vnet) {
        Ok(s) => s,
        Err(FrameError(why)) => {
            tracing::debug!(why, len = frame.len(), "tun read dropped");
            return;
        }
    };
    let (mut bytes, mut count) = (0, 0);
    while let Some(range) = packets.next(frame) {
        if tx.room() < (range.len() + DATA_OVERHEAD).max(HANDSHAKE_BUF) {
            flush(shared, tx).await;
        }
        if let Some(len) = shared.encapsulate(&frame[range.clone()], tx.slot()) {
            tx.commit(len);
            bytes += range.len();
            count += 1;
        }
    }
    shared.stats.add_tx(bytes, count);
}

async fn flush(shared: &Shared, tx: &mut TxBatch) {
    if tx.is_empty() {
        return;
    }
    match shared.endpoint() {
        Some(endpoint) => tx.flush(&shared.socket, endpoint).await,
        // Nobody to send to yet (the responder before the first handshake).
        None => tx.clear(),
    }
}

async fn inbound(shared: Arc<Shared>, fail: FailSender, vnet: bool) {
    let mut rx = RxBatch::new();
    let mut merge = Coalescer::new(vnet);
    let fd = shared.device.as_raw_fd();
    let mut write = move |frame: &[u8]| write_tun(fd, frame);
    loop {
        if let Err(error) = rx.recv(&shared.socket).await {
            if is_fatal(&error) {
                return report(&fail, "udp receive", &error);
            }
            continue;
        }
        let mut result = decrypt_batch(&shared, &rx, &mut merge, &mut write).await;
        for _ in 1..MAX_UDP_RECVS {
            if result.is_err() {
                break;
            }
            match rx.try_recv(&shared.socket) {
                Ok(()) => result = decrypt_batch(&shared, &rx, &mut merge, &mut write).await,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if is_fatal(&error) => return report(&fail, "udp receive", &error),
                Err(_) => break,
            }
        }
        let flushed = merge.flush(&mut write);
        if let Err(error) = result.and(flushed) {
            return report(&fail, "tun write", &error);
        }
    }
}

/// Decrypts the datagrams of one receive into `merge`.
async fn decrypt_batch(
    shared: &Shared,
    rx: &RxBatch,
    merge: &mut Coalescer,
    write: &mut impl offload::TunWrite,
) -> io::Result<()> {
    let Some(from) = rx.from() else {
        return Ok(());
    };
    let (mut bytes, mut count, mut authentic) = (0, 0, false);
    for datagram in rx.datagrams() {
        match shared.decapsulate(from, datagram, merge.scratch()) {
            Step::Tunnel(len) => {
                authentic = true;
                bytes += len;
                count += 1;
                merge.push(len, write)?;
            }
            Step::Network(mut len) => {
                // A handshake reply, then the packets boringtun queued while
                // it waited for the session; it wants calls until Done.
                authentic = true;
                loop {
                    shared.send_to(&merge.scratch()[..len], from).await;
                    match shared.decapsulate(from, &[], merge.scratch()) {
                        Step::Network(next) => len = next,
                        _ => break,
                    }
                }
            }
            Step::Done => authentic = true,
            Step::Rejected(error) => tracing::debug!(?error, %from, "datagram rejected"),
        }
    }
    shared.stats.add_rx(bytes, count);
    if authentic {
        // Only authenticated datagrams move the endpoint (roaming).
        shared.heard_from(from);
    }
    Ok(())
}

/// One write to the tun. Only a vanished device is an error; anything else
/// (a packet the kernel refuses) drops that packet, as a router would.
fn write_tun(fd: RawFd, frame: &[u8]) -> io::Result<()> {
    // Straight to the descriptor: a tun write never blocks, so tokio's
    // readiness tracking has nothing to add here.
    // SAFETY: a valid buffer; `fd` stays open as long as `Shared` lives.
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
