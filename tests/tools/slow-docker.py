#!/usr/bin/env python3
"""A Docker API socket that answers slowly where the lab wants a slow start.

    slow-docker.py LISTEN_SOCKET UPSTREAM_SOCKET DELAY_SECONDS PATH_REGEX

Relays every connection to the real engine's socket; a request whose request
line matches PATH_REGEX (e.g. `/images/` — the agent image being looked up,
pulled or built) is held for DELAY_SECONDS before it is forwarded. Models an
agent image that must be pulled or built on first start (minutes on a Mac).
"""
import asyncio
import re
import sys


async def pipe(reader, writer, hold=None):
    try:
        while data := await reader.read(65536):
            if hold and hold(data):
                await asyncio.sleep(DELAY)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(creader, cwriter):
    try:
        ureader, uwriter = await asyncio.open_unix_connection(UPSTREAM)
    except OSError:
        cwriter.close()
        return
    slow = lambda data: PATTERN.search(data.split(b"\r\n", 1)[0]) is not None
    await asyncio.gather(pipe(creader, uwriter, slow), pipe(ureader, cwriter))


async def main():
    server = await asyncio.start_unix_server(handle, path=LISTEN)
    print(f"slow-docker: {LISTEN} -> {UPSTREAM}, requests matching {PATTERN.pattern!r} wait {DELAY} s", flush=True)
    async with server:
        await server.serve_forever()


LISTEN, UPSTREAM = sys.argv[1], sys.argv[2]
DELAY = float(sys.argv[3])
PATTERN = re.compile(sys.argv[4].encode())
asyncio.run(main())
