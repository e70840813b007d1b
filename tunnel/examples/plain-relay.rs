//! The least a user-space tunnel can do: a tun device relayed to a UDP peer
//! and back, one packet per system call, no encryption, no batching, one
//! thread blocked in `poll` (the same wake-up pattern as connector's own
//! loop). `scripts/bench` runs one at each end of the lab's veth to measure
//! the round trip any user-space tunnel adds there — the floor under
//! connector's figure. Not a product: no keys, no handshake, Linux only.
//!
//!   plain-relay NAME ADDRESS PEER LISTEN [ENDPOINT]
//!
//! NAME: tun device to create; ADDRESS/PEER: its point-to-point addresses
//! (/30); LISTEN: UDP address to bind; ENDPOINT: where to send (else the
//! address the first datagram came from). Runs until killed.

#[cfg(target_os = "linux")]
fn main() -> std::io::Result<()> {
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;

    let usage = || std::io::Error::other("usage: plain-relay NAME ADDRESS PEER LISTEN [ENDPOINT]");
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        return Err(usage());
    }
    let address: Ipv4Addr = args[1].parse().map_err(|_| usage())?;
    let peer: Ipv4Addr = args[2].parse().map_err(|_| usage())?;
    let listen: SocketAddr = args[3].parse().map_err(|_| usage())?;
    let mut endpoint: Option<SocketAddr> = match args.get(4) {
        Some(a) => Some(a.parse().map_err(|_| usage())?),
        None => None,
    };

    let tun = tun_rs::DeviceBuilder::new()
        .name(&args[0])
        .ipv4(address, 30, Some(peer))
        .mtu(1420)
        .build_sync()?;
    tun.set_nonblocking(true)?;
    let udp = UdpSocket::bind(listen)?;
    udp.set_nonblocking(true)?;
    let mut fds = [
        libc::pollfd {
            fd: tun.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: udp.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: two valid pollfd entries.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if fds[1].revents != 0 {
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                endpoint.get_or_insert(from);
                let _ = tun.send(&buf[..n]);
            }
        }
        // As connector does: what was just written may have been answered.
        if fds[0].revents != 0 || fds[1].revents != 0 {
            if let (Ok(n), Some(to)) = (tun.recv(&mut buf), endpoint) {
                let _ = udp.send_to(&buf[..n], to);
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("plain-relay: Linux only");
}
