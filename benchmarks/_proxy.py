"""A TCP proxy that behaves like a slow, distant link: one-way delay and a rate cap per direction.

No network emulator (netem) is available on the development machines, so the
swarm benchmark puts this between two peers on loopback instead.  Every
connection accepted on ``--listen`` is forwarded to ``--upstream``; each of its
two directions is modelled as a link of its own:

* **rate** (``--rate-mbit``): a chunk read from one side is *serialised* at the
  cap after the chunks before it (the link is busy until ``free_at``; a chunk
  of ``n`` bytes read at ``t`` leaves at ``max(t, free_at) + n / rate``), so a
  direction never carries more than the cap, averaged over a chunk;
* **delay** (``--delay-ms``): the chunk is written to the other side ``delay``
  after it left, so the round trip between the peers is twice the delay plus
  the serialisation;
* **order**: one FIFO per direction, released in order;
* **buffer**: a direction holds at most its bandwidth × delay product (what
  is "on the wire") plus ``--queue-kib`` (a bottleneck router's queue, 1 MiB
  by default) before it stops reading, so a sender feels back-pressure as it
  would from a congested link instead of filling an unbounded buffer.  The
  proxy's own sockets get small receive buffers (``SOCKET_BUFFER``) for the
  same reason: the kernel's auto-tuned loopback buffers would otherwise hide
  megabytes of extra queue.

With no ``--rate-mbit`` only the delay applies (the buffer is then 64 MiB).

It is a process of its own (``python benchmarks/_proxy.py``, stdlib only,
one asyncio loop), so its CPU time is measured apart from the peers' and it
holds no GIL they need; the benchmark reports its CPU seconds.  It prints
pyowtorrent-style JSON lines on stdout: ``listening`` (with the port it got),
and on SIGTERM or SIGINT a ``stats`` line (connections, bytes each way, the
largest queue it held, and how late chunks were released on average and at
worst, which says whether the proxy kept up).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import socket
import sys
from typing import Any

CHUNK_MAX = 64 << 10
CHUNK_MIN = 4 << 10
# Release granularity: a chunk is at most about this long on the link at the cap,
# so the released stream is smooth on the scale of the delay.
CHUNK_SECONDS = 0.002
SOCKET_BUFFER = 128 << 10
UNCAPPED_BUFFER = 64 << 20


class Stats:
    def __init__(self) -> None:
        self.connections = 0
        self.open = 0
        self.bytes = {"to_upstream": 0, "to_client": 0}
        self.max_queued = 0
        self.lateness_sum = 0.0
        self.lateness_max = 0.0
        self.releases = 0
        self.errors = 0

    def doc(self) -> dict[str, Any]:
        return {
            "event": "stats",
            "connections": self.connections,
            "open": self.open,
            "bytes_to_upstream": self.bytes["to_upstream"],
            "bytes_to_client": self.bytes["to_client"],
            "max_queued": self.max_queued,
            "releases": self.releases,
            "mean_late_ms": round(1000 * self.lateness_sum / self.releases, 3) if self.releases else 0.0,
            "max_late_ms": round(1000 * self.lateness_max, 3),
            "errors": self.errors,
        }


class Direction:
    """One direction of one connection: read, stamp with a release time, release in order."""

    def __init__(
        self,
        name: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        delay: float,
        rate: float | None,
        queue_bytes: int,
        stats: Stats,
    ) -> None:
        self.name = name
        self.reader, self.writer = reader, writer
        self.delay, self.rate = delay, rate
        self.limit = (int(rate * delay) + queue_bytes) if rate else UNCAPPED_BUFFER
        self.chunk = max(CHUNK_MIN, min(CHUNK_MAX, int(rate * CHUNK_SECONDS))) if rate else CHUNK_MAX
        self.stats = stats
        self.fifo: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.queued = 0
        self.free_at = 0.0
        self.ready = asyncio.Event()
        self.space = asyncio.Event()

    async def pull(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                while self.queued >= self.limit:
                    self.space.clear()
                    await self.space.wait()
                data = await self.reader.read(self.chunk)
                now = loop.time()
                if not data:
                    self.fifo.append((max(now, self.free_at) + self.delay, None))
                    self.ready.set()
                    return
                if self.rate:
                    self.free_at = max(now, self.free_at) + len(data) / self.rate
                    leaves = self.free_at
                else:
                    leaves = now
                self.fifo.append((leaves + self.delay, data))
                self.queued += len(data)
                self.stats.max_queued = max(self.stats.max_queued, self.queued)
                self.ready.set()
        except (ConnectionError, OSError):
            self.fifo.append((loop.time(), None))
            self.ready.set()

    async def push(self) -> None:
        loop = asyncio.get_running_loop()
        stats = self.stats
        while True:
            if not self.fifo:
                self.ready.clear()
                await self.ready.wait()
                continue
            due, data = self.fifo[0]
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            # Everything that is due goes out in one go, then one drain.
            wrote = False
            while self.fifo and self.fifo[0][0] <= loop.time():
                due, data = self.fifo.popleft()
                if data is None:
                    if wrote:
                        await self.writer.drain()
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                    return
                late = loop.time() - due
                stats.releases += 1
                stats.lateness_sum += late
                stats.lateness_max = max(stats.lateness_max, late)
                self.writer.write(data)
                self.queued -= len(data)
                stats.bytes[self.name] += len(data)
                wrote = True
            self.space.set()
            await self.writer.drain()


def _small_buffers(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    up_host, _, up_port = args.upstream.rpartition(":")
    delay = args.delay_ms / 1000.0
    rate = args.rate_mbit * 1e6 / 8 if args.rate_mbit else None
    queue_bytes = args.queue_kib << 10
    stats = Stats()
    tasks: set[asyncio.Task[Any]] = set()

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        stats.connections += 1
        stats.open += 1
        u_writer = None
        try:
            u_reader, u_writer = await asyncio.open_connection(up_host, int(up_port))
            for w in (c_writer, u_writer):
                _small_buffers(w)
            ways = [
                Direction("to_upstream", c_reader, u_writer, delay, rate, queue_bytes, stats),
                Direction("to_client", u_reader, c_writer, delay, rate, queue_bytes, stats),
            ]
            jobs = [asyncio.ensure_future(f) for d in ways for f in (d.pull(), d.push())]
            try:
                await asyncio.gather(*jobs)
            finally:
                for j in jobs:
                    j.cancel()
        except (ConnectionError, OSError):
            stats.errors += 1
        finally:
            stats.open -= 1
            for w in (c_writer, u_writer):
                if w is not None:
                    w.close()

    def spawn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        t = asyncio.ensure_future(handle(r, w))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)  # inherited by accepted sockets
    listener.bind((args.listen, args.port))
    server = await asyncio.start_server(spawn, sock=listener)
    port = listener.getsockname()[1]
    print(json.dumps({"event": "listening", "host": args.listen, "port": port, "upstream": args.upstream}), flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        print(json.dumps(stats.doc()), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="HOST:PORT every connection is forwarded to")
    p.add_argument("--listen", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to listen on (default: any free one, printed)")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay added to each direction")
    p.add_argument("--rate-mbit", type=float, default=0.0, help="cap of each direction of each connection (0: none)")
    p.add_argument(
        "--queue-kib", type=int, default=1024, help="bottleneck queue beyond the bandwidth-delay product (default 1024)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.delay_ms < 0 or args.rate_mbit < 0 or args.queue_kib < 0:
        raise SystemExit("--delay-ms, --rate-mbit and --queue-kib must not be negative")
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
