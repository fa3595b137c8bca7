"""One seeder, many connections (goal 2): upload rate and request latency of one pyowtorrent seeding process.

The seeder is ``python -m pyowtorrent seed TORRENT DIR --listen 127.0.0.1 --json``
(or, with ``--upload-slots``, a small ``Session(upload_slots=N)`` process of
this script's own: the CLI has no such option).  A load generator, one or two
processes of this script written on pyowtorrent's sans-IO wire layer
(``PeerConnection``), opens ``--connections`` connections to it, each from its
own loopback address (the seeder takes at most 8 connections per IP): each
handshakes, says it has nothing (BEP 6 have-none) and is interested, and
while unchoked keeps ``--depth`` requests of 16 KiB in flight, runs of blocks
in random pieces (``--pattern piece``) or single blocks anywhere
(``--pattern random``).  Every block that arrives is compared with the payload
file at its offset (a wrong or misplaced byte fails the run).

Reported over a ``--seconds`` window after ``--warmup``: the aggregate upload
rate, how many connections were served (unchoked, and receiving), and per
request the time from its send to its block's arrival, p50/p99/max.  That
latency is measured by the client: it includes loopback, the client's own
event loop and the queue of the connection's other requests in flight (about
``depth x 16 KiB / the connection's rate``, printed beside it); the client's
CPU is printed so that one can tell whether it, not the seeder, was the limit.

    python benchmarks/bench_seed_many.py                              # 4 GiB, 50 connections
    python benchmarks/bench_seed_many.py --size 1GiB --keep --dir /var/tmp   # payload kept for the next run
    python benchmarks/bench_seed_many.py --upload-slots 50            # every connection unchoked
    python benchmarks/bench_seed_many.py --size 16MiB --connections 8 --seconds 2 --json

See ``benchmarks/README.md`` for how to read the figures.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from _common import GiB, KiB, MiB, REPO, child_env, human, log, make_payload, parse_size, read_all

sys.path.insert(0, str(REPO))

from bench_swarm import Child, CaseFailed, proc_cpu, proc_mem  # noqa: E402  (the seeder process, as bench_swarm runs it)

from pyowtorrent.metainfo.layout import BLOCK_SIZE  # noqa: E402
from pyowtorrent.metainfo.torrent_file import Metainfo, load_metainfo  # noqa: E402
from pyowtorrent.wire import PeerConnection  # noqa: E402
from pyowtorrent.wire import events as ev  # noqa: E402
from pyowtorrent.wire.handshake import HANDSHAKE_LENGTH  # noqa: E402

SELF = str(Path(__file__).resolve())
READ_SIZE = 256 * KiB
# The seeder's limits (engine/session.py defaults, which the CLI does not change).
SEEDER_MAX_PER_TORRENT = 50
SEEDER_MAX_PER_IP = 8


def source_ip(k: int) -> str:
    """Connection ``k``'s own loopback address (127.0.0.1 is the seeder's)."""
    return f"127.0.{1 + k // 250}.{2 + k % 250}"


# ---------------------------------------------------------------------------
# the load generator (a child process)


@dataclass
class ConnStats:
    k: int
    connected: bool = False
    error: str = ""
    bytes_in_window: int = 0
    blocks: int = 0  # all blocks received (window or not)
    bad: int = 0  # blocks that differ from the payload
    rejects: int = 0
    unchokes: int = 0
    intervals: list[tuple[float, int]] = field(default_factory=list)  # (time, +1 unchoke / -1 choke)


class LoadConn:
    """One connection to the seeder: handshake, have-none, interested, then requests while unchoked."""

    def __init__(self, k: int, meta: Metainfo, run: LoadRun) -> None:
        self.k = k
        self.meta = meta
        self.run_ = run
        self.stats = ConnStats(k)
        self.conn = PeerConnection(
            meta.info_hash, b"-BM0001-" + os.urandom(12), meta.num_pieces, meta.piece_length, meta.total_length,
            fast=True, extension_protocol=False,
        )  # fmt: skip
        self.sent_at: dict[tuple[int, int, int], float] = {}
        self.unchoked = False
        self.rng = random.Random(k)
        self.piece = -1
        self.begin = 0
        self.writer: asyncio.StreamWriter | None = None

    def next_request(self) -> tuple[int, int, int]:
        meta = self.meta
        if self.run_.pattern == "random":
            while True:
                index = self.rng.randrange(meta.num_pieces)
                size = self.conn.piece_size(index)
                begin = self.rng.randrange(-(-size // BLOCK_SIZE)) * BLOCK_SIZE
                key = (index, begin, min(BLOCK_SIZE, size - begin))
                if key not in self.sent_at:
                    return key
        if self.piece < 0 or self.begin >= self.conn.piece_size(self.piece):
            self.piece, self.begin = self.rng.randrange(meta.num_pieces), 0
        size = self.conn.piece_size(self.piece)
        key = (self.piece, self.begin, min(BLOCK_SIZE, size - self.begin))
        self.begin += BLOCK_SIZE
        return key

    def top_up(self) -> None:
        if not self.unchoked or self.writer is None:
            return
        want = self.run_.depth - len(self.sent_at)
        if want <= 0:
            return
        out = []
        keys = []
        for _ in range(want):
            key = self.next_request()
            keys.append(key)
            out.append(self.conn.send(ev.Request(*key)))
        now = time.monotonic()
        for key in keys:
            self.sent_at[key] = now
        self.writer.write(b"".join(out))

    async def run(self) -> None:
        run = self.run_
        try:
            reader, writer = await asyncio.open_connection(run.host, run.port, local_addr=(source_ip(self.k), 0))
        except OSError as exc:
            self.stats.error = f"connect: {exc}"
            run.settled()
            return
        self.writer = writer
        try:
            writer.write(self.conn.handshake_bytes())
            self.handle(self.conn.receive_data(await reader.readexactly(HANDSHAKE_LENGTH)), time.monotonic())
            writer.write(self.conn.send(ev.HaveNone()) + self.conn.send(ev.Interested()))
            self.stats.connected = True
            run.settled()
            while not run.stopping:
                data = await reader.read(READ_SIZE)
                now = time.monotonic()
                if not data:
                    if not run.stopping:
                        self.stats.error = "the seeder closed the connection"
                    break
                self.handle(self.conn.receive_data(data), now)
                self.top_up()
                if writer.transport.get_write_buffer_size() > 1 * MiB:
                    await writer.drain()
        except (OSError, asyncio.IncompleteReadError) as exc:
            if not run.stopping:
                self.stats.error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a protocol error: the seeder broke a rule, or we did
            self.stats.error = f"{type(exc).__name__}: {exc}"
        finally:
            if not self.stats.connected:
                run.settled()
            if self.unchoked:
                self.stats.intervals.append((time.monotonic(), -1))
            writer.close()

    def handle(self, events: list[ev.Event], now: float) -> None:
        run, st = self.run_, self.stats
        for e in events:
            if type(e) is ev.Piece:
                key = (e.index, e.begin, len(e.block))
                sent = self.sent_at.pop(key, None)
                st.blocks += 1
                if os.pread(run.payload_fd, len(e.block), e.index * self.meta.piece_length + e.begin) != e.block:
                    st.bad += 1
                if sent is not None and run.start <= now < run.end:
                    run.latencies.append(now - sent)
                    st.bytes_in_window += len(e.block)
            elif type(e) is ev.Reject:
                self.sent_at.pop((e.index, e.begin, e.length), None)
                st.rejects += 1
            elif type(e) is ev.Unchoke:
                if not self.unchoked:
                    self.unchoked = True
                    st.unchokes += 1
                    st.intervals.append((now, +1))
            elif type(e) is ev.Choke:
                if self.unchoked:
                    self.unchoked = False
                    st.intervals.append((now, -1))
            # HaveAll, Bitfield, Have, AllowedFast, KeepAlive: nothing to do


class LoadRun:
    def __init__(self, args: argparse.Namespace, meta: Metainfo) -> None:
        self.host = "127.0.0.1"
        self.port: int = args.port
        self.depth: int = args.depth
        self.pattern: str = args.pattern
        self.payload_fd = os.open(args.payload, os.O_RDONLY)
        self.start = float("inf")
        self.end = float("inf")
        self.stopping = False
        self.latencies = array.array("d")
        self.conns = [LoadConn(k, meta, self) for k in range(args.first, args.first + args.count)]
        self._settled = 0
        self.all_settled = asyncio.Event()

    def settled(self) -> None:
        """One connection is up (handshaken, interested) or has failed."""
        self._settled += 1
        if self._settled == len(self.conns):
            self.all_settled.set()


def load_child(args: argparse.Namespace) -> int:
    """Hidden mode: run ``--count`` connections; 'ready' once connected, then the window the parent sends."""
    meta = load_metainfo(args.torrent)

    async def main() -> dict[str, Any]:
        run = LoadRun(args, meta)
        tasks = [asyncio.ensure_future(c.run()) for c in run.conns]
        done_all = asyncio.ensure_future(asyncio.wait(tasks))
        ready = asyncio.ensure_future(run.all_settled.wait())
        await asyncio.wait({ready, done_all}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        print(json.dumps({"event": "ready", "connected": sum(c.stats.connected for c in run.conns)}), flush=True)
        line = await asyncio.to_thread(sys.stdin.readline)  # the window, in time.monotonic() seconds
        run.start, run.end = (float(x) for x in line.split())
        await asyncio.sleep(max(0.0, run.start - time.monotonic()))
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.sleep(max(0.0, run.end - time.monotonic()))
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        run.stopping = True
        for c in run.conns:
            if c.writer is not None:
                c.writer.close()
        await asyncio.wait(tasks, timeout=5)
        for t in tasks:
            t.cancel()
        os.close(run.payload_fd)
        with open(args.out, "wb") as f:
            run.latencies.tofile(f)
        return {
            "event": "result",
            "cpu_user": cpu1.ru_utime - cpu0.ru_utime,
            "cpu_sys": cpu1.ru_stime - cpu0.ru_stime,
            "latencies": len(run.latencies),
            "conns": [c.stats.__dict__ for c in run.conns],
        }

    doc = asyncio.run(main())
    print(json.dumps(doc), flush=True)
    return 0


# ---------------------------------------------------------------------------
# the seeder with more upload slots (the CLI has no option for them)


def seeder_child(args: argparse.Namespace) -> int:
    """Hidden mode: what ``pyowtorrent seed --json`` prints, from a Session with ``--upload-slots``."""
    from pyowtorrent.engine.session import Session

    async def main() -> int:
        meta = load_metainfo(args.seeder_child)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        async with Session(listen="127.0.0.1", port=0, upload_slots=args.upload_slots, upload_rate_limit=0) as session:
            for host, port in session.listen_addresses:
                print(json.dumps({"event": "listening", "host": host, "port": port}), flush=True)
            torrent = await session.add_torrent(meta, args.seed_dir)
            while not stop.is_set():
                st = torrent.status()
                doc = {
                    "event": "status", "state": st.state.value, "progress": round(st.progress, 4),
                    "peers": st.num_peers, "upload_rate": round(st.upload_rate),
                }  # fmt: skip
                print(json.dumps(doc), flush=True)
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass
        return 0

    return asyncio.run(main())


# ---------------------------------------------------------------------------
# the parent


def prepare(args: argparse.Namespace, root: Path) -> tuple[Path, Path, Path]:
    """The payload, its .torrent and the seeder's directory under ``root``: made, or found from a kept run."""
    from pyowtorrent.storage.create import create_torrent

    seed_dir = root / "seed"
    payload = seed_dir / "many_payload.bin"
    torrent = root / "many.torrent"
    ready = root / "ready"
    if ready.is_file() and payload.is_file() and payload.stat().st_size == args.size and torrent.is_file():
        meta = load_metainfo(torrent)
        if args.piece_length is None or meta.piece_length == args.piece_length:
            log(f"reusing the payload in {root}; warming the page cache")
            read_all([payload])
            return torrent, payload, seed_dir
    shutil.rmtree(seed_dir, ignore_errors=True)
    ready.unlink(missing_ok=True)
    seed_dir.mkdir(parents=True)
    log(f"writing {human(args.size)} to {payload}")
    t0 = time.perf_counter()
    make_payload(seed_dir, "many_payload", [args.size])
    os.sync()
    log(f"written and synced in {time.perf_counter() - t0:.1f} s; making the .torrent")
    meta = create_torrent(payload, piece_length=args.piece_length, creation_date=None)
    torrent.write_bytes(meta.to_bytes())
    read_all([payload])
    ready.write_text("payload, .torrent\n")
    return torrent, payload, seed_dir


def seeder_cmd(args: argparse.Namespace, torrent: Path, seed_dir: Path) -> list[str]:
    if args.upload_slots is not None:
        return [
            sys.executable, SELF, "--seeder-child", str(torrent), "--seed-dir", str(seed_dir),
            "--upload-slots", str(args.upload_slots),
        ]  # fmt: skip
    return [
        sys.executable, "-m", "pyowtorrent", "seed", str(torrent), str(seed_dir),
        "--listen", "127.0.0.1", "--json", "--upload-limit", "0",
    ]  # fmt: skip


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def concurrency(intervals: list[tuple[float, int]], start: float, end: float) -> tuple[int, float]:
    """Most connections unchoked at once, and the time-weighted mean, within [start, end)."""
    events = sorted(intervals)
    level = sum(d for t, d in events if t < start)  # unchoked as the window opens
    peak, area, last = level, 0.0, start
    for t, d in events:
        if start <= t < end:
            area += level * (t - last)
            level += d
            peak = max(peak, level)
            last = t
    area += level * (end - last)
    return peak, area / (end - start) if end > start else 0.0


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    torrent, payload, seed_dir = prepare(args, root)
    meta = load_metainfo(torrent)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    seeder = Child("seeder", "pyowtorrent", seeder_cmd(args, torrent, seed_dir), logs)
    clients: list[subprocess.Popen[str]] = []
    try:
        t0 = time.perf_counter()
        check_deadline = t0 + 120 + args.size / (30 * MiB)  # the first start hashes every piece
        listening = seeder.wait_for(lambda d: d.get("event") == "listening", t0 + 60, "listening line")
        port = int(listening["port"])
        seeder.wait_for(lambda d: d.get("event") == "status" and d.get("state") == "seeding", check_deadline, "seeding")
        ready_s = time.perf_counter() - t0
        log(f"seeder on port {port}, seeding after {ready_s:.1f} s; opening {args.connections} connections")

        per = -(-args.connections // args.client_procs)
        for i in range(args.client_procs):
            first, count = i * per, min(per, args.connections - i * per)
            if count <= 0:
                break
            cmd = [
                sys.executable, SELF, "--load-child", "--torrent", str(torrent), "--payload", str(payload),
                "--port", str(port), "--first", str(first), "--count", str(count), "--depth", str(args.depth),
                "--pattern", args.pattern, "--out", str(root / f"latencies-{i}.bin"),
            ]  # fmt: skip
            clients.append(
                subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(logs / f"client-{i}.stderr", "w"),
                    text=True, env=child_env(), cwd=REPO,
                )
            )  # fmt: skip
        connected = 0
        for c in clients:
            connected += int(_read_doc(c, "ready")["connected"])
        start = time.monotonic() + args.warmup
        end = start + args.seconds
        for c in clients:
            assert c.stdin is not None
            c.stdin.write(f"{start!r} {end!r}\n")
            c.stdin.flush()
        time.sleep(max(0.0, start - time.monotonic()))
        cpu0 = proc_cpu(seeder.pid)
        pc_start = time.perf_counter()
        while time.monotonic() < end:
            seeder.sample()
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))
        cpu1 = proc_cpu(seeder.pid)
        pc_end = time.perf_counter()
        mem = proc_mem(seeder.pid)
        results = [_read_doc(c, "result", timeout=60) for c in clients]
        for c in clients:
            c.wait(10)
    except CaseFailed as exc:
        raise SystemExit(f"seeder: {exc}") from None
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()
        seeder.stop()
    status_lines = [d for t, d in seeder.events if d.get("event") == "status" and pc_start <= t <= pc_end]

    lat = array.array("d")
    for i in range(len(results)):
        with open(root / f"latencies-{i}.bin", "rb") as f:
            lat.frombytes(f.read())
    lat_sorted = sorted(lat)
    conns = [c for r in results for c in r["conns"]]
    intervals = [tuple(iv) for c in conns for iv in c["intervals"]]
    peak_unchoked, mean_unchoked = concurrency([(float(t), int(d)) for t, d in intervals], start, end)
    window_bytes = sum(c["bytes_in_window"] for c in conns)
    served = [c for c in conns if c["bytes_in_window"]]
    per_conn_rates = sorted(c["bytes_in_window"] / args.seconds for c in served)
    mean_conn_rate = sum(per_conn_rates) / len(per_conn_rates) if per_conn_rates else 0.0
    client_cpu = sum(r["cpu_user"] + r["cpu_sys"] for r in results)
    seeder_cpu = (cpu1[0] + cpu1[1] - cpu0[0] - cpu0[1]) if cpu0 and cpu1 else None
    doc: dict[str, Any] = {
        "setup": {
            "size": args.size, "piece_length": meta.piece_length, "num_pieces": meta.num_pieces,
            "connections": args.connections, "depth": args.depth, "pattern": args.pattern,
            "seconds": args.seconds, "warmup": args.warmup, "client_procs": len(clients),
            "seeder": "session" if args.upload_slots is not None else "cli",
            "upload_slots": args.upload_slots if args.upload_slots is not None else default_upload_slots(),
            "python": platform.python_version(), "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
        },
        "seeder": {
            "ready_s": ready_s, "cpu_s": seeder_cpu,
            "cpu_share": seeder_cpu / args.seconds if seeder_cpu is not None else None,
            "vm_hwm": max(mem.get("VmHWM", 0), seeder.peak_rss), "rss_anon": mem.get("RssAnon", 0),
            "reported_upload_rate": [d.get("upload_rate") for d in status_lines],
        },
        "client": {"cpu_s": client_cpu, "cpu_share": client_cpu / args.seconds},
        "connections": {
            "asked": args.connections, "handshaken": connected,
            "served_in_window": len(served), "peak_unchoked": peak_unchoked, "mean_unchoked": mean_unchoked,
            "errors": sorted({c["error"] for c in conns if c["error"]}),
        },
        "window_s": args.seconds,
        "bytes": window_bytes,
        "mb_s": window_bytes / args.seconds / 1e6,
        "per_connection_mb_s": {
            "min": per_conn_rates[0] / 1e6 if per_conn_rates else 0.0,
            "median": percentile(per_conn_rates, 0.5) / 1e6,
            "max": per_conn_rates[-1] / 1e6 if per_conn_rates else 0.0,
        },
        "latency_ms": {
            "count": len(lat_sorted),
            "p50": percentile(lat_sorted, 0.5) * 1e3,
            "p99": percentile(lat_sorted, 0.99) * 1e3,
            "max": (lat_sorted[-1] if lat_sorted else 0.0) * 1e3,
            "mean": (sum(lat_sorted) / len(lat_sorted) if lat_sorted else 0.0) * 1e3,
            # Little's law: what the connection's own queue accounts for (the mean, when the pipe stays full)
            "depth_queue": args.depth * BLOCK_SIZE / mean_conn_rate * 1e3 if mean_conn_rate else None,
        },
        "verify": {
            "blocks": sum(c["blocks"] for c in conns),
            "bad": sum(c["bad"] for c in conns),
            "rejects": sum(c["rejects"] for c in conns),
        },
    }  # fmt: skip
    doc["ok"] = doc["verify"]["bad"] == 0 and window_bytes > 0
    return doc


def _read_doc(proc: subprocess.Popen[str], event: str, timeout: float = 60) -> dict[str, Any]:
    """The next JSON line of a load child with this ``event`` (its stdout is line-buffered JSON)."""
    assert proc.stdout is not None
    out: IO[str] = proc.stdout
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = out.readline()
        if not line:
            raise SystemExit(f"a load-generator process ended before '{event}' (exit {proc.poll()}); see its stderr log")
        try:
            doc: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        if doc.get("event") == event:
            return doc
    raise SystemExit(f"no '{event}' from a load-generator process within {timeout} s")


def default_upload_slots() -> int:
    """The session's default upload slots (what the CLI seeder runs with)."""
    import inspect

    from pyowtorrent.engine.session import Session

    default = inspect.signature(Session).parameters["upload_slots"].default
    return int(default)


def report(doc: dict[str, Any]) -> str:
    s, sd, cl, cn, lat, v = doc["setup"], doc["seeder"], doc["client"], doc["connections"], doc["latency_ms"], doc["verify"]
    who = (
        f"Session(upload_slots={s['upload_slots']}) child (the CLI has no upload-slots option)"
        if s["seeder"] == "session"
        else f"python -m pyowtorrent seed ({s['upload_slots']} upload slots, one of them optimistic: the default)"
    )
    pc = doc["per_connection_mb_s"]
    rates = [r for r in sd["reported_upload_rate"] if r is not None]
    reported = f"{sum(rates) / len(rates) / 1e6:.1f} MB/s" if rates else "n/a"
    lines = [
        f"pyowtorrent seeder, {cn['asked']} connections: {human(s['size'])} in {s['num_pieces']:,} pieces of "
        f"{human(s['piece_length'])}, depth {s['depth']} x 16 KiB, pattern {s['pattern']}, "
        f"{s['seconds']:g} s window after {s['warmup']:g} s warm-up",
        f"seeder: {who}; ready (check) {sd['ready_s']:.1f} s",
        f"Python {s['python']}, {s['cpus']} CPUs, load average {' '.join(f'{x:.2f}' for x in s['loadavg'])}",
        "",
        f"  {'upload rate (client-side bytes / window)':46} {doc['mb_s']:>10.1f} MB/s",
        f"  {'per served connection min / median / max':46} {pc['min']:.1f} / {pc['median']:.1f} / {pc['max']:.1f} MB/s",
        f"  {'connections handshaken':46} {cn['handshaken']:>10} of {cn['asked']}",
        f"  {'served in window (got blocks)':46} {cn['served_in_window']:>10}",
        f"  {'unchoked at once: most / mean':46} {cn['peak_unchoked']:>10} / {cn['mean_unchoked']:.1f}",
        f"  {'request -> block latency p50':46} {lat['p50']:>10.2f} ms",
        f"  {'request -> block latency p99':46} {lat['p99']:>10.2f} ms",
        f"  {'request -> block latency max':46} {lat['max']:>10.2f} ms   ({lat['count']:,} requests)",
        f"  {'request -> block latency mean':46} {lat['mean']:>10.2f} ms",
        f"  {'seeder-reported upload rate (mean in window)':46} {reported:>10}",
        f"  {'seeder CPU in window':46} {sd['cpu_s'] or 0:>10.2f} s  ({(sd['cpu_share'] or 0):.0%} of a core)",
        f"  {'seeder peak RSS':46} {human(sd['vm_hwm']):>10}",
        f"  {'client CPU in window (' + str(s['client_procs']) + ' process' + 'es' * (s['client_procs'] > 1) + ')':46} "
        f"{cl['cpu_s']:>10.2f} s  ({cl['cpu_share']:.0%} of a core)",
        f"  {'blocks verified against the payload':46} {v['blocks']:>10,}  bad: {v['bad']}  rejects: {v['rejects']}",
        "",
        "Latency is measured in the client: it includes loopback, the client's own event loop and the",
        "requests queued ahead on the same connection (with the pipe full, the mean is depth x 16 KiB /",
        "the connection's rate: compare with --depth 1); a client near 100% of a core inflates it.",
    ]
    if cn["errors"]:
        lines.append("connection errors: " + "; ".join(cn["errors"][:5]))
    if cn["asked"] > SEEDER_MAX_PER_TORRENT:
        lines.append(f"note: the seeder holds at most {SEEDER_MAX_PER_TORRENT} connections per torrent")
    lines.append("verified: every block matched the payload" if doc["ok"] else "FAILED: bad blocks or no data")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=4 * GiB, help="payload size (default 4GiB)")
    p.add_argument("--piece-length", type=parse_size, help="default: what create_torrent picks for the size")
    p.add_argument("--connections", type=int, default=50, help="connections to the seeder (default 50)")
    p.add_argument("--depth", type=int, default=32, help="requests in flight per unchoked connection (default 32)")
    p.add_argument("--pattern", choices=("piece", "random"), default="piece",
                   help="piece: runs of blocks in random pieces (as a leecher asks); random: any block (default piece)")  # fmt: skip
    p.add_argument("--seconds", type=float, default=20.0, help="measurement window (default 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds between connecting and the window (default 3)")
    p.add_argument("--client-procs", type=int, default=1, choices=(1, 2), help="load-generator processes (default 1)")
    p.add_argument("--upload-slots", type=int, help="run the seeder as a Session with this many upload slots instead of the CLI")
    p.add_argument("--dir", help="where the payload goes (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true",
                   help="keep the payload in DIR/pyow-seed-many-SIZE and reuse it in the next run with the same --dir")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    # hidden modes
    p.add_argument("--load-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seeder-child", help=argparse.SUPPRESS)
    p.add_argument("--seed-dir", help=argparse.SUPPRESS)
    p.add_argument("--torrent", help=argparse.SUPPRESS)
    p.add_argument("--payload", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.load_child:
        return load_child(args)
    if args.seeder_child:
        return seeder_child(args)
    if args.connections < 1 or args.depth < 1 or args.seconds <= 0:
        raise SystemExit("--connections, --depth and --seconds must be positive")
    if args.upload_slots is not None and args.upload_slots < 1:
        raise SystemExit("--upload-slots must be at least 1")
    base = Path(args.dir or tempfile.gettempdir()).resolve()
    if args.keep:
        root = base / f"pyow-seed-many-{args.size}"
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="pyow-seed-many-", dir=base))
    try:
        doc = run(args, root)
    finally:
        for p in root.glob("latencies-*.bin"):
            p.unlink()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(doc, indent=1) if args.json else report(doc))
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
