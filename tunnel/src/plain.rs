//! The portable packet loops: one packet per system call. The only path on
//! macOS; on Linux chosen with [`crate::TunnelConfig::per_packet`], to
//! measure what macOS runs.
//!
//! macOS has neither tun offload (utun) nor UDP GSO/GRO, so there is nothing
//! to batch; each packet is read straight into the buffer boringtun encrypts
//! from and each datagram is sent from the buffer boringtun encrypted into —
//! no copy beyond the one the cipher makes.
//!
//! On Linux the tun may have been opened with offload (`tun::create` does):
//! its offloads are turned off, so the kernel hands over one packet per read
//! as utun does, and the virtio-net header that still comes with every read
//! and write is stepped over in place (decrypted packets land after a zeroed
//! header), which keeps one system call and no extra copy per packet.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tun_rs::AsyncDevice;

use crate::failure::{is_fatal, report, FailSender};
#[cfg(target_os = "linux")]
use crate::linux::offload;
use crate::peer::{from_peer, Peer, Step};

/// Largest datagram or IP packet a loop handles; buffers are this size once.
const BUF_SIZE: usize = 65_536 + 256;

/// The tun and the socket, driven by tokio.
pub(crate) struct Io {
    device: AsyncDevice,
    socket: UdpSocket,
    /// The tun reads and takes a virtio-net header with each packet.
    #[cfg(target_os = "linux")]
    vnet: bool,
}

impl Io {
    pub(crate) fn new(device: AsyncDevice, socket: UdpSocket) -> Io {
        #[cfg(target_os = "linux")]
        let vnet = device.tcp_gso();
        #[cfg(target_os = "linux")]
        if vnet {
            use std::os::fd::AsRawFd;
            if let Err(error) = offload::turn_off(device.as_raw_fd()) {
                tracing::error!(%error, "cannot turn the tun's offloads off; TCP super-packets will be dropped");
            }
        }
        Io {
            device,
            socket,
            #[cfg(target_os = "linux")]
            vnet,
        }
    }

    /// Bytes before each packet in a tun read or write.
    fn header_len(&self) -> usize {
        #[cfg(target_os = "linux")]
        if self.vnet {
            return offload::VNET_HDR_LEN;
        }
        0
    }

    /// Where the packet is in `frame`, one read from the tun.
    fn packet(&self, frame: &mut [u8]) -> Option<Range<usize>> {
        #[cfg(target_os = "linux")]
        if self.vnet {
            return offload::single_packet(frame);
        }
        Some(0..frame.len())
    }

    pub(crate) fn name(&self) -> io::Result<String> {
        self.device.name()
    }

    pub(crate) async fn send_to(&self, datagram: &[u8], to: SocketAddr) {
        if let Err(error) = self.socket.send_to(datagram, to).await {
            tracing::debug!(endpoint = %to, %error, "udp send failed");
        }
    }

    /// Sends `datagram` to the peer, if we know where it is.
    pub(crate) async fn send_to_peer(&self, peer: &Peer, datagram: &[u8]) {
        if let Some(endpoint) = peer.endpoint() {
            self.send_to(datagram, endpoint).await;
        }
    }
}

/// The running loops: two tokio tasks.
pub(crate) struct Loops(Vec<JoinHandle<()>>);

pub(crate) fn start(peer: &Arc<Peer>, io: &Arc<Io>, fail: &FailSender) -> Loops {
    Loops(vec![
        tokio::spawn(outbound(peer.clone(), io.clone(), fail.clone())),
        tokio::spawn(inbound(peer.clone(), io.clone(), fail.clone())),
    ])
}

impl Loops {
    pub(crate) fn stop(&self) {
        for task in &self.0 {
            task.abort();
        }
    }

    pub(crate) async fn join(self) {
        self.stop();
        for task in self.0 {
            let _ = task.await;
        }
    }
}

async fn outbound(peer: Arc<Peer>, io: Arc<Io>, fail: FailSender) {
    let mut frame = vec![0u8; BUF_SIZE].into_boxed_slice();
    let mut datagram = vec![0u8; BUF_SIZE].into_boxed_slice();
    loop {
        let n = match io.device.recv(&mut frame).await {
            Ok(n) => n,
            Err(error) if is_fatal(&error) => return report(&fail, "tun read", &error),
            Err(_) => continue,
        };
        let Some(packet) = io.packet(&mut frame[..n]) else {
            tracing::debug!(len = n, "tun read dropped");
            continue;
        };
        let packet = &frame[packet];
        if let Some(len) = peer.encapsulate(packet, &mut datagram) {
            peer.stats.add_tx(packet.len(), 1);
            io.send_to_peer(&peer, &datagram[..len]).await;
        }
    }
}

async fn inbound(peer: Arc<Peer>, io: Arc<Io>, fail: FailSender) {
    let mut datagram = vec![0u8; BUF_SIZE].into_boxed_slice();
    // Packets are decrypted after room for the tun's header, which stays zero
    // (a plain packet: no offload asked of the kernel).
    let header = io.header_len();
    let mut frame = vec![0u8; BUF_SIZE].into_boxed_slice();
    loop {
        let (n, from) = match io.socket.recv_from(&mut datagram).await {
            Ok(r) => r,
            Err(error) if is_fatal(&error) => return report(&fail, "udp receive", &error),
            Err(_) => continue,
        };
        let mut input: &[u8] = &datagram[..n];
        loop {
            let packet = &mut frame[header..];
            let step = peer.decapsulate(from, input, packet);
            if from_peer(input, &step, packet) {
                peer.heard_from(from);
            }
            match step {
                Step::Network(len) => {
                    // Handshake replies and packets queued during the
                    // handshake; boringtun wants to be called again until Done.
                    io.send_to(&packet[..len], from).await;
                    input = &[];
                }
                Step::Tunnel(len) => {
                    if !peer.sources().allows(&packet[..len]) {
                        peer.drop_for_source(from, &packet[..len]);
                        break;
                    }
                    if let Err(error) = io.device.send(&frame[..header + len]).await {
                        if is_fatal(&error) {
                            return report(&fail, "tun write", &error);
                        }
                    }
                    peer.stats.add_rx(len, 1);
                    break;
                }
                Step::Done => break,
                Step::Rejected(error) => {
                    tracing::debug!(?error, %from, "datagram rejected");
                    break;
                }
            }
        }
    }
}
