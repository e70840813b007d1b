//! One ICMP echo, for `connector doctor`'s probe through the tunnel.
//!
//! Uses an unprivileged ICMP datagram socket where the OS allows it (macOS,
//! Linux with `ping_group_range`), else a raw socket (root). Written here
//! rather than shelling out to `ping`, whose flags differ per OS and which
//! minimal Linux images lack.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use connector_tunnel::checksum::checksum;
use socket2::{Domain, Protocol, Socket, Type};

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
const PAYLOAD: &[u8] = b"connector doctor";

/// An echo request with the checksum filled in.
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut packet = vec![ECHO_REQUEST, 0, 0, 0];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(PAYLOAD);
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// Whether `data` (ICMP message, after any IP header) is our echo reply.
/// Datagram sockets rewrite the identifier, so only seq and payload count.
pub fn is_our_reply(data: &[u8], seq: u16) -> bool {
    data.len() >= 8 + PAYLOAD.len()
        && data[0] == ECHO_REPLY
        && u16::from_be_bytes([data[6], data[7]]) == seq
        && &data[8..8 + PAYLOAD.len()] == PAYLOAD
}

/// Sends one echo request and waits for the reply (blocking).
pub fn ping(ip: Ipv4Addr, timeout: Duration) -> io::Result<bool> {
    let (socket, raw) = match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
        Ok(s) => (s, false),
        Err(_) => (
            Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?,
            true,
        ),
    };
    let seq = (std::process::id() as u16) ^ 0x5a5a;
    socket.send_to(
        &echo_request(std::process::id() as u16, seq),
        &SocketAddr::from((ip, 0)).into(),
    )?;
    let deadline = Instant::now() + timeout;
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        socket.set_read_timeout(Some(left))?;
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false)
            }
            Err(e) => return Err(e),
        };
        // SAFETY: recv_from initialised the first n bytes.
        let data: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        let icmp =
            if raw || (cfg!(target_os = "macos") && data.first().is_some_and(|b| b >> 4 == 4)) {
                // Raw sockets (and macOS datagram ones) include the IP header.
                let ihl = usize::from(data.first().copied().unwrap_or(0) & 0x0f) * 4;
                data.get(ihl..).unwrap_or(&[])
            } else {
                &data[..]
            };
        if from.as_socket().map(|a| a.ip()) == Some(ip.into()) && is_our_reply(icmp, seq) {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_checksums_to_zero_and_reply_is_recognised() {
        let req = echo_request(0x1234, 7);
        assert_eq!(req[0], ECHO_REQUEST);
        assert_eq!(checksum(&req), 0, "a packet with its checksum sums to zero");
        let mut reply = req.clone();
        reply[0] = ECHO_REPLY;
        assert!(is_our_reply(&reply, 7));
        assert!(!is_our_reply(&reply, 8));
        assert!(!is_our_reply(&req, 7));
        assert!(!is_our_reply(&reply[..6], 7));
    }
}
