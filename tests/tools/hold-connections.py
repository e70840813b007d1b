#!/usr/bin/env python3
"""Opens many idle connections to a Unix socket and holds them (a hostile local user).

    hold-connections.py SOCKET COUNT SECONDS

Connects COUNT times without sending anything, keeps every connection that
stays open for SECONDS, then prints how many connected, how many the server
closed or answered at once (refused), and how many were still open at the end.
"""
import select
import socket
import sys
import time


def main() -> int:
    path, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    conns, failed = [], 0
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
            conns.append(s)
        except (BlockingIOError, InterruptedError):
            conns.append(s)
        except OSError:
            failed += 1
            s.close()
    print(f"connected {len(conns)}, connect failed {failed}", flush=True)
    deadline = time.monotonic() + seconds
    open_ = list(conns)
    closed_early = 0
    while time.monotonic() < deadline and open_:
        r, _, _ = select.select(open_, [], [], 0.2)
        for s in r:
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                closed_early += 1
                open_.remove(s)
                s.close()
            # data: the server answered without a request (refused); it closes next.
    print(f"closed by the server {closed_early}, still open {len(open_)}", flush=True)
    for s in open_:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
