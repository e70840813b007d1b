//! The portable packet loops (macOS): one packet per system call.
//!
//! macOS has neither tun offload (utun) nor UDP GSO/GRO, so there is nothing
//! to batch; each packet is read straight into the buffer boringtun encrypts
//! from and each datagram is sent from the buffer boringtun encrypted into —
//! no copy beyond the one the cipher makes.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tun_rs::AsyncDevice;

use crate::failure::{is_fatal, report, FailSender};
use crate::peer::{from_peer, Peer, Step};

/// Largest datagram or IP packet a loop handles; buffers are this size once.
const BUF_SIZE: usize = 65_536 + 256;

/// The tun and the socket, driven by tokio.
pub(crate) struct Io {
    device: AsyncDevice,
    socket: UdpSocket,
}

impl Io {
    pub(crate) fn new(device: AsyncDevice, socket: UdpSocket) -> Io {
        Io { device, socket }
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
    let mut packet = vec![0u8; BUF_SIZE].into_boxed_slice();
    let mut datagram = vec![0u8; BUF_SIZE].into_boxed_slice();
    loop {
        let n = match io.device.recv(&mut packet).await {
            Ok(n) => n,
            Err(error) if is_fatal(&error) => return report(&fail, "tun read", &error),
            Err(_) => continue,
        };
        if let Some(len) = peer.encapsulate(&packet[..n], &mut datagram) {
            peer.stats.add_tx(n, 1);
            io.send_to_peer(&peer, &datagram[..len]).await;
        }
    }
}

async fn inbound(peer: Arc<Peer>, io: Arc<Io>, fail: FailSender) {
    let mut datagram = vec![0u8; BUF_SIZE].into_boxed_slice();
    let mut packet = vec![0u8; BUF_SIZE].into_boxed_slice();
    loop {
        let (n, from) = match io.socket.recv_from(&mut datagram).await {
            Ok(r) => r,
            Err(error) if is_fatal(&error) => return report(&fail, "udp receive", &error),
            Err(_) => continue,
        };
        let mut input: &[u8] = &datagram[..n];
        loop {
            let step = peer.decapsulate(from, input, &mut packet);
            if from_peer(input, &step, &packet) {
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
                    if let Err(error) = io.device.send(&packet[..len]).await {
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
