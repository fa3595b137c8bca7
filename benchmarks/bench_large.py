"""Large torrents (goal 4): a 100 000-piece torrent, 16 KiB pieces of about 1.6 GiB.

Three parts, each figure the best of ``--repeat`` runs:

* ``a`` start-up: ``Session.add_torrent`` of the complete payload until it is
  SEEDING, with valid resume data (no piece read) and without (every piece
  hashed, from a warm page cache), with a breakdown of the resume path; and a
  resume-data save (snapshot, JSON, atomic write with fsync) for every piece;
* ``b`` memory: a fresh process per case holds the torrent seeding, or leeching
  before any data arrives, then with 200 simulated peers' bitfields; VmRSS /
  VmHWM of one run, Python heap (tracemalloc) of another;
* ``c`` scaling: what one message costs at ``--small-pieces`` (1 000) and at
  ``--pieces`` (100 000), and the ratio: the piece picker driven directly
  (reusing ``bench_picker.py``'s bitfields and baselines) under 200 peers, and
  the engine's handlers (``Swarm``/``Torrent``, with stand-in peers that encode
  every message they are sent) for bitfields, haves, completions.  A ratio near
  1 is O(1) per message; near 100 (the piece-count ratio) is linear in pieces.

The payload is real bytes (a random 16 MiB block repeated, stamped every 16 KiB
with its offset, as the other benchmarks write it), so every piece differs and
the full check hashes what a real one would.

    python benchmarks/bench_large.py                       # 100 000 pieces of 16 KiB
    python benchmarks/bench_large.py --pieces 2000 --repeat 1 --json
    python benchmarks/bench_large.py --parts c             # scaling only (no payload)

See ``benchmarks/README.md`` for how to read the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import KiB, REPO, child_env, file_sizes, human, log, make_payload, parse_size, read_all

sys.path.insert(0, str(REPO))

import bench_picker  # noqa: E402  (beside this script: its bitfields and baselines)

from pyowtorrent.metainfo.layout import BLOCK_SIZE, FileEntry  # noqa: E402
from pyowtorrent.metainfo.torrent_file import Metainfo, load_metainfo  # noqa: E402
from pyowtorrent.strategy.picker import Block, PiecePicker  # noqa: E402
from pyowtorrent.wire import PeerConnection  # noqa: E402
from pyowtorrent.wire import events as ev  # noqa: E402
from pyowtorrent.wire.bitfield import bitfield_bytes, bitfield_flags  # noqa: E402

SELF = str(Path(__file__).resolve())

# Below this ratio (large/small µs per operation) an operation counts as not
# growing with the number of pieces; from LINEAR_SHARE of the piece-count ratio
# up it is linear.  In between: it grows, but slower than the piece count
# (bigger arrays miss the CPU caches more often).
FLAT_RATIO = 2.5
LINEAR_SHARE = 0.25
# An operation that slows down no more than this many times the random-access baseline does is
# flat too: bigger lists miss the CPU caches more often, whatever the algorithm.
MEMORY_SLACK = 1.5
# Blocks a stand-in peer asks for when a have finds its queue empty.
REFILL = 4


# ---------------------------------------------------------------------------
# small helpers


def proc_status() -> dict[str, int]:
    """This process's VmRSS and VmHWM in bytes."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * KiB
    return out


def best(values: Sequence[float]) -> float:
    return min(values) if values else 0.0


def fake_meta(num_pieces: int, piece_length: int) -> Metainfo:
    """A single-file torrent of ``num_pieces`` pieces (the last one half a piece) with random hashes:
    for the engine's handlers, which never read a piece."""
    from pyowtorrent.storage.create import build_metainfo

    total = num_pieces * piece_length - piece_length // 2
    entry = FileEntry(("fake.bin",), total, 0)
    rng = random.Random(num_pieces)
    return build_metainfo("fake.bin", [entry], piece_length, rng.randbytes(20 * num_pieces), multi_file=False, creation_date=None)


# ---------------------------------------------------------------------------
# a: start-up check and resume saves


@dataclass
class Startup:
    with_resume: list[float] = field(default_factory=list)  # add_torrent → SEEDING, seconds
    without_resume: list[float] = field(default_factory=list)
    # the resume path's steps, each timed on its own
    trusted_pieces: list[float] = field(default_factory=list)  # read + parse + file stamps + per-piece check
    storage_check: list[float] = field(default_factory=list)  # Storage.check(trusted): nothing to hash
    picker_setup: list[float] = field(default_factory=list)  # PiecePicker + priorities
    we_have_all: list[float] = field(default_factory=list)  # picker.we_have for every piece
    save_total: list[float] = field(default_factory=list)  # ResumeKeeper.save() → on disk
    have_flags: list[float] = field(default_factory=list)  # the snapshot (on the event loop)
    to_json: list[float] = field(default_factory=list)
    write: list[float] = field(default_factory=list)  # write_atomically (fsync, rename, fsync dir)
    resume_bytes: int = 0


async def _add_and_time(meta: Metainfo, save: Path) -> tuple[float, Any, Any]:
    from pyowtorrent.engine.events import TorrentState
    from pyowtorrent.engine.session import Session

    session = Session(listen="127.0.0.1", port=0)
    await session.start()
    t0 = time.perf_counter()
    torrent = await session.add_torrent(meta, save)
    elapsed = time.perf_counter() - t0
    if torrent.state is not TorrentState.SEEDING:
        await session.close()
        raise SystemExit(f"the payload did not check complete: {torrent.state.value} {torrent.error or ''}")
    return elapsed, session, torrent


async def measure_startup(meta: Metainfo, save: Path, repeat: int) -> Startup:
    from pyowtorrent.engine.session import resume_file
    from pyowtorrent.storage.resume import ResumeData, write_atomically

    out = Startup()
    resume = resume_file(meta, save)
    for run in range(repeat):
        # without resume data: every piece hashed (the file is in the page cache)
        resume.unlink(missing_ok=True)
        elapsed, session, torrent = await _add_and_time(meta, save)
        out.without_resume.append(elapsed)
        log(f"start-up without resume data: {elapsed:.3f} s (run {run + 1})")
        await session.close()  # saves the resume data the next start uses
        if not resume.is_file():
            raise SystemExit(f"no resume data at {resume} after a clean close")

        elapsed, session, torrent = await _add_and_time(meta, save)
        out.with_resume.append(elapsed)
        log(f"start-up with resume data: {elapsed:.3f} s (run {run + 1})")
        await torrent.resume_data.wait()  # the save start() asked for
        try:
            t0 = time.perf_counter()
            trusted = torrent.resume_data.trusted_pieces()
            out.trusted_pieces.append(time.perf_counter() - t0)
            if len(trusted) != meta.num_pieces:
                raise SystemExit(f"resume data vouches for {len(trusted)} of {meta.num_pieces} pieces")
            t0 = time.perf_counter()
            have = torrent.storage.check(trusted)
            out.storage_check.append(time.perf_counter() - t0)
            assert sum(have) == meta.num_pieces
            t0 = time.perf_counter()
            picker = PiecePicker(meta.num_pieces, meta.piece_length, meta.total_length, seed=1)
            picker.set_piece_priorities([1] * meta.num_pieces)
            out.picker_setup.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for i in range(meta.num_pieces):
                picker.we_have(i)
            out.we_have_all.append(time.perf_counter() - t0)

            # a save: the whole path, then its steps
            keeper = torrent.resume_data
            keeper.dirty = True
            t0 = time.perf_counter()
            keeper.save()
            await keeper.wait()
            out.save_total.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            flags = torrent._have_flags()
            out.have_flags.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            text = ResumeData(meta.info_hash, flags, torrent.storage.file_stamps()).to_json()
            out.to_json.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            write_atomically(resume, text)
            out.write.append(time.perf_counter() - t0)
            out.resume_bytes = len(text.encode())
        finally:
            await session.close()
    return out


# ---------------------------------------------------------------------------
# b: memory, each case in a fresh process


def memory_child(args: argparse.Namespace) -> int:
    """Hidden mode: hold one torrent (seeding or leeching) and print what it costs, as one JSON line."""
    import tracemalloc

    from pyowtorrent.engine.session import Session

    meta_path, save = Path(args.torrent), Path(args.save)
    traced = args.tracemalloc
    gc.collect()
    base = proc_status()
    if traced:
        tracemalloc.start()
    doc: dict[str, Any] = {"mode": args.memory_child, "tracemalloc": traced, "rss_base": base["VmRSS"]}

    def snapshot(tag: str) -> None:
        gc.collect()
        st = proc_status()
        doc[f"rss_{tag}"] = st["VmRSS"]
        doc[f"hwm_{tag}"] = st["VmHWM"]
        if traced:
            current, peak = tracemalloc.get_traced_memory()
            doc[f"traced_{tag}"] = current
            doc[f"traced_peak_{tag}"] = peak

    async def run() -> None:
        meta = load_metainfo(meta_path)
        if traced:
            # load_metainfo reads with f.read(MAX_TORRENT_SIZE + 1): a 32 MiB buffer for an instant
            # (untouched pages, so not in RSS); the peak that matters is holding the torrent.
            doc["traced_peak_load"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
        async with Session(listen="127.0.0.1", port=0) as session:
            torrent = await session.add_torrent(meta, save)
            await torrent.resume_data.wait()
            doc["state"] = torrent.state.value
            doc["pieces_have"] = torrent.picker.num_have()
            snapshot("held")
            if args.memory_child == "leech" and args.sim_peers:
                # What 200 connected peers add: each Peer keeps its pieces as one byte per piece
                # (peer.py), and the picker counts them.  No sockets: the Peer objects themselves
                # (a few KiB each, independent of the piece count) are not made.
                rng = random.Random(7)
                n = meta.num_pieces
                nseeds = round(args.sim_peers * args.seed_fraction)
                kept: list[bytearray] = []
                for _ in range(nseeds):
                    kept.append(bytearray(b"\x01") * n)
                    torrent.picker.peer_have_all()
                for bits in bench_picker.random_bitfields(rng, n, args.sim_peers - nseeds):
                    kept.append(bits)
                    torrent.picker.peer_bitfield(bits)
                torrent.picker.pick("probe", kept[-1], 1)  # the deferred re-sort
                snapshot("peers")
                doc["sim_peers"] = len(kept)

    asyncio.run(run())
    print(json.dumps(doc), flush=True)
    return 0


def run_memory(torrent: Path, seed_dir: Path, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    leech_dir = root / "leech"
    results: dict[str, Any] = {}
    for mode in ("seed", "leech"):
        doc: dict[str, Any] = {}
        for traced in (False, True):
            shutil.rmtree(leech_dir, ignore_errors=True)
            leech_dir.mkdir()
            cmd = [
                sys.executable, SELF, "--memory-child", mode, "--torrent", str(torrent),
                "--save", str(seed_dir if mode == "seed" else leech_dir),
                "--sim-peers", str(args.peers), "--seed-fraction", str(args.seed_fraction),
            ]  # fmt: skip
            if traced:
                cmd.append("--tracemalloc")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=600)
            if proc.returncode != 0:
                raise SystemExit(f"memory child ({mode}) failed:\n{proc.stderr[-3000:]}")
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            # RSS from the plain run (tracemalloc's own bookkeeping inflates it), heap from the traced one
            doc.update({k: v for k, v in got.items() if k.startswith("traced")} if traced else got)
        log(f"memory, {mode}: {human(doc['rss_held'] - doc['rss_base'])} over the interpreter's {human(doc['rss_base'])}")
        results[mode] = doc
    shutil.rmtree(leech_dir, ignore_errors=True)
    return results


# ---------------------------------------------------------------------------
# c: what one message costs, at two sizes


@dataclass
class Op:
    key: str
    layer: str  # picker | engine
    what: str
    unit: str  # what one operation is
    count: int
    seconds: float

    @property
    def us(self) -> float:
        return self.seconds / self.count * 1e6 if self.count else 0.0


class Ops:
    """Timings of one run at one size, by key (a key may be timed in several chunks)."""

    def __init__(self) -> None:
        self.ops: dict[str, Op] = {}

    def add(self, key: str, layer: str, what: str, unit: str, count: int, seconds: float) -> None:
        op = self.ops.get(key)
        if op is None:
            self.ops[key] = Op(key, layer, what, unit, count, seconds)
        else:
            op.count += count
            op.seconds += seconds

    def time(self, key: str, layer: str, what: str, unit: str, fn: Callable[[], int]) -> None:
        t0 = time.perf_counter()
        count = fn()
        self.add(key, layer, what, unit, count, time.perf_counter() - t0)


def _picker_total(n: int, piece_length: int) -> int:
    return n * piece_length - piece_length // 2  # a short last piece, as in real torrents


def _pick_step(picker: PiecePicker, peer: int, has: bytearray, k: int) -> None:
    """One untimed step of the download: ``peer`` asks for ``k`` blocks, they arrive, their pieces pass."""
    for b in picker.pick(peer, has, k):
        complete, _ = picker.on_block_received(peer, b)
        if complete:
            picker.on_piece_passed(b.index)


def picker_run(n: int, args: argparse.Namespace, seed: int) -> Ops:
    """The picker alone under ``args.peers`` peers: joins, haves, picks, completions, leaves."""
    ops = Ops()
    rng = random.Random(seed)
    piece_length: int = args.piece_length
    npeers: int = args.peers
    nseeds: int = round(npeers * args.seed_fraction)
    bitfields = bench_picker.random_bitfields(rng, n, npeers - nseeds)
    full = bytearray(b"\x01") * n
    has: list[bytearray] = [full] * nseeds + bitfields  # peer p's pieces
    picker = PiecePicker(n, piece_length, _picker_total(n, piece_length), seed=seed)
    P = "picker"

    # The yardstick for "flat": two dependent random reads and a write in n-element lists, as
    # a have does; what it loses between the sizes is the memory hierarchy, not an algorithm.
    pos = list(range(n))
    rng.shuffle(pos)
    counts = [0] * n
    where = [rng.randrange(n) for _ in range(100_000)]

    def memory() -> int:
        for i in where:
            counts[pos[i]] += 1
        return len(where)

    ops.time("baseline", "base", "random access: counts[pos[i]] += 1", "access", memory)
    del pos, counts, where

    def seeds() -> int:
        for _ in range(nseeds):
            picker.peer_have_all()
        return nseeds

    ops.time("have_all", P, "peer_have_all (a seed connects)", "message", seeds)

    def bulk() -> int:
        for bits in bitfields:
            picker.peer_bitfield(bits)
        return len(bitfields)

    ops.time("bitfield", P, "peer_bitfield (sort deferred)", "bitfield", bulk)

    def resort() -> int:
        picker._availability.clean()  # what the next pick() does first
        return 1

    ops.time("resort", P, "re-sort at the next pick", "sort", resort)

    # haves of pieces the peers lack, in random order
    pairs: list[tuple[int, int]] = []
    lacking_pairs = sum(n - sum(bits) for bits in bitfields)
    while len(pairs) < min(args.haves, lacking_pairs // 2):
        p = rng.randrange(nseeds, npeers)
        i = rng.randrange(n)
        if not has[p][i]:
            has[p][i] = 1  # taken now: the same pair is never drawn twice
            pairs.append((p, i))

    def haves() -> int:
        for _, i in pairs:
            picker.peer_have(i)
        return len(pairs)

    ops.time("have", P, "peer_have", "message", haves)

    # one peer at a time joins then leaves, each followed by the next pick's re-sort
    extra = bench_picker.random_bitfields(rng, n, args.churn)

    def joins() -> int:
        for bits in extra:
            picker.peer_bitfield(bits)
            picker._availability.clean()
        return len(extra)

    ops.time("join", P, "a peer joins: bitfield + re-sort", "peer", joins)

    def leaves() -> int:
        for k, bits in enumerate(extra):
            picker.peer_lost(bits)
            picker.on_peer_gone(("churn", k))
            picker._availability.clean()
        return len(extra)

    ops.time("leave", P, "a peer leaves: peer_lost + re-sort", "peer", leaves)

    # Picking: each peer in turn asks for --pick blocks, which arrive at once and
    # complete their pieces; timed from 10 % to 30 % of the pieces had, and from 70 % to 90 %,
    # so both sizes are measured at the same stage of the download.
    k: int = args.pick
    clock = time.perf_counter
    peer = 0
    for phase, lo, hi in (("early", 0.1, 0.3), ("late", 0.7, 0.9)):
        while picker.num_have() < lo * n:
            _pick_step(picker, peer, has[peer], k)
            peer = (peer + 1) % npeers
        picks = blocks = passed = 0
        pick_t = recv_t = pass_t = 0.0
        while picker.num_have() < hi * n and not picker.is_finished():
            batch: list[tuple[int, Block]] = []
            t0 = clock()
            for _ in range(10):
                for b in picker.pick(peer, has[peer], k):
                    batch.append((peer, b))
                peer = (peer + 1) % npeers
            pick_t += clock() - t0
            picks += 10
            done: list[int] = []
            t0 = clock()
            for p, b in batch:
                complete, _ = picker.on_block_received(p, b)
                if complete:
                    done.append(b.index)
            recv_t += clock() - t0
            t0 = clock()
            for i in done:
                picker.on_piece_passed(i)
            pass_t += clock() - t0
            blocks += len(batch)
            passed += len(done)
        if not blocks:
            continue
        ops.add(f"pick_{phase}", P, f"pick, {phase} ({lo:.0%}-{hi:.0%} had), per block", "block", blocks, pick_t)
        ops.add(f"pick_call_{phase}", P, f"pick({k}) call, {phase}", "call", picks, pick_t)
        ops.add("received", P, "on_block_received", "block", blocks, recv_t)
        ops.add("passed", P, "on_piece_passed", "piece", passed, pass_t)

    # A peer that has nothing we could start: its first pick scans the whole free list; the
    # picker then remembers that it has nothing until it announces a free piece or one is freed.
    ours = bytearray(n)
    for i in range(n):
        if picker.has(i):
            ours[i] = 1  # only pieces we have: nothing to pick
    calls = 50

    def first_scans() -> int:
        for c in range(calls):
            if picker.pick(("nothing", c), ours, k):
                raise AssertionError("picked a piece the peer does not have")
        for c in range(calls):
            picker.on_peer_gone(("nothing", c))
        return calls

    def fruitless() -> int:
        for _ in range(calls):
            if picker.pick("nothing", ours, k):
                raise AssertionError("picked a piece the peer does not have")
        return calls

    had = [i for i in range(n) if ours[i]][:calls]

    def have_then_pick() -> int:
        for i in had:  # a have of a piece we have (not free): it still has nothing to start
            picker.peer_have(i, "nothing")
            if picker.pick("nothing", ours, k):
                raise AssertionError("picked a piece the peer does not have")
        return len(had)

    ops.time("pick_nothing_first", P, "pick, peer has nothing we can start: first (free-list scan)", "call", first_scans)
    fruitless()  # the scan that makes the picker remember
    ops.time("pick_nothing", P, "pick again, peer has nothing we can start (remembered)", "call", fruitless)
    ops.time("pick_nothing_have", P, "have of a piece not free + pick, peer has nothing to start", "message", have_then_pick)
    return ops


class StandIn:
    """What Swarm and Torrent read and call on a Peer, without a socket: every message it is sent is
    encoded by a real PeerConnection (so that cost is counted), then dropped."""

    def __init__(self, meta: Metainfo, k: int, have: bytearray, *, choking: bool = True) -> None:
        self.address = (f"10.{k // 65536}.{k // 256 % 256}.{k % 256}", 6881)
        self.have = have
        self.num_have = sum(have)
        self.wanted = 0  # the swarm keeps it, from the bitfield it is given (on_peer_pieces)
        self.is_seed = False
        self.am_interested = False
        self.peer_choking = choking
        self.closed = asyncio.Event()
        self.conduct = _Conduct()
        self.queue_target = 0
        self.outstanding: dict[Block, float] = {}
        self.fast = False
        self.offers = None
        self.sent = 0
        shape = (meta.num_pieces, meta.piece_length, meta.total_length)
        self.conn = PeerConnection(meta.info_hash, b"-PW0000-" + bytes(12), *shape, fast=False, extension_protocol=False)
        remote = PeerConnection(meta.info_hash, b"-XX0000-" + bytes(12), *shape, fast=False, extension_protocol=False)
        self.conn.receive_data(remote.handshake_bytes())
        self.conn.handshake_bytes()

    def send(self, event: Any) -> None:
        self.sent += len(self.conn.send(event))

    def send_have(self, index: int) -> None:
        # Peer.send_have batches haves into one write; the encoding is the same
        self.sent += len(self.conn.send(ev.Have(index)))

    def send_interest(self, interested: bool) -> None:
        if interested != self.am_interested:
            self.am_interested = interested
            self.send(ev.Interested() if interested else ev.NotInterested())

    def request(self, blocks: list[Block]) -> None:
        for b in blocks:
            self.outstanding[b] = 0.0
        self.sent += len(b"".join(self.conn.send(ev.Request(b.index, b.begin, b.length)) for b in blocks))


class _Conduct:
    backoff_until = 0.0


async def engine_run(n: int, args: argparse.Namespace, seed: int) -> Ops:
    """The engine's handlers at ``n`` pieces: a leeching Torrent (in-memory storage, nothing on disk)
    and ``args.peers`` stand-in peers."""
    from pyowtorrent.engine.session import Session
    from pyowtorrent.storage.memory import MemoryStorage

    ops = Ops()
    E = "engine"
    rng = random.Random(seed)
    meta = fake_meta(n, args.piece_length)
    npeers: int = args.peers
    nseeds: int = round(npeers * args.seed_fraction)
    partial = bench_picker.random_bitfields(rng, n, npeers - nseeds)
    wire = [bitfield_bytes(b) for b in partial]  # what arrives: packed bits
    async with Session(listen=[], port=0) as session:
        torrent = await session.add_torrent(meta, storage=MemoryStorage(meta))
        await asyncio.sleep(0)  # let the torrent's tick take its first (empty) look at the peers
        swarm, picker = torrent.swarm, torrent.picker
        peers_dict: dict[Any, Any] = swarm.peers
        # From here to the end no await: the tick must not meet the stand-ins.
        try:
            seeds = [StandIn(meta, k, bytearray(b"\x01") * n) for k in range(nseeds)]
            others = [StandIn(meta, nseeds + k, bytearray(n)) for k in range(len(partial))]
            for p in seeds + others:
                peers_dict[p.address] = p

            def have_all() -> int:
                for p in seeds:
                    p.num_have = n
                    swarm.on_peer_pieces(p, None)  # type: ignore[arg-type]
                return len(seeds)

            ops.time("e_have_all", E, "Swarm.on_peer_pieces, HaveAll", "message", have_all)

            def bitfields() -> int:
                # Peer._handle's Bitfield branch, then what the next pick does first
                for p, bits in zip(others, wire):
                    p.have = bitfield_flags(bits, n)
                    p.num_have = sum(p.have)
                    swarm.on_peer_pieces(p, None)  # type: ignore[arg-type]
                    picker._availability.clean()
                return len(others)

            ops.time("e_bitfield", E, "Bitfield: decode + on_peer_pieces + re-sort", "message", bitfields)

            # haves while each peer's request queue is full (the usual case): no pick
            for p in others:
                p.peer_choking = False
            pairs: list[tuple[StandIn, int]] = []
            drawn: set[tuple[int, int]] = set()
            lacking_pairs = sum(n - p.num_have for p in others)
            while len(pairs) < min(args.haves, lacking_pairs // 2):
                k = rng.randrange(len(others))
                i = rng.randrange(n)
                if i < n - 2 and not others[k].have[i] and (k, i) not in drawn:
                    drawn.add((k, i))
                    pairs.append((others[k], i))

            def haves(chunk: list[tuple[StandIn, int]]) -> Callable[[], int]:
                def run() -> int:
                    for p, i in chunk:
                        p.have[i] = 1
                        p.num_have += 1
                        swarm.on_peer_have(p, i)  # type: ignore[arg-type]
                    return len(chunk)

                return run

            refill = min(len(pairs) // 2, max(10, n // 20))
            ops.time("e_have", E, "Swarm.on_peer_have, queue full", "message", haves(pairs[refill:]))
            # haves from peers whose queue is empty: a pick of REFILL blocks per have
            for p in others:
                p.queue_target = REFILL

            def haves_refill() -> int:
                picked = 0
                for p, i in pairs[:refill]:
                    p.have[i] = 1
                    p.num_have += 1
                    p.outstanding.clear()  # answered (the picker still counts them: no matter here)
                    swarm.on_peer_have(p, i)  # type: ignore[arg-type]
                    swarm.fill_requests(p)  # type: ignore[arg-type]  # Peer._handle's, once per read: here a have alone
                    picked += len(p.outstanding)
                if not picked:
                    raise AssertionError("Swarm.on_peer_have picked nothing for an empty queue")
                return refill

            ops.time("e_have_pick", E, f"Swarm.on_peer_have + fill_requests, a pick of {REFILL}", "message", haves_refill)

            # piece completions: a have to every peer (200 messages encoded)
            free = [i for i in range(n - 2) if picker._availability.is_free(i)]
            done = rng.sample(free, min(len(free) // 4, max(10, n // 20)))

            def passed() -> int:
                for i in done:
                    torrent.piece_passed(i)
                return len(done)

            ops.time("e_passed", E, f"Torrent.piece_passed, have to {npeers} peers", "piece", passed)

            # O(pieces) steps, each timed at both sizes for the record
            for p in others:
                picker.on_peer_gone(p)  # their requests back: the last two pieces are free again
                p.outstanding.clear()
            for i in range(n - 2):
                picker.we_have(i)  # nearly done: all but the last two pieces
            newcomer = StandIn(meta, 1 << 20, bytearray(n))

            def greet() -> int:
                swarm._greet(newcomer)  # type: ignore[arg-type]
                return 1

            ops.time("e_greet", E, "Swarm._greet: our bitfield to a new peer", "connection", greet)

            def have_flags() -> int:
                torrent._have_flags()
                return 1

            ops.time("e_have_flags", E, "Torrent._have_flags (resume snapshot, on the loop)", "save", have_flags)

            # The state where a have costs O(pieces): an unchoked peer we are interested in, with
            # nothing to pick (the one piece it has that we lack is out to another peer, and a free
            # piece it lacks keeps us out of end-game), and no request out to it.
            holder = others[0]
            holder.queue_target = len(holder.outstanding) + 1
            picker.on_peer_gone(holder)
            # the last piece, every block of it out to `holder`
            blocks = picker.pick(holder, bytearray(n - 1) + b"\x01", -(-args.piece_length // BLOCK_SIZE))
            assert blocks and {b.index for b in blocks} == {n - 1}, blocks
            stuck = StandIn(meta, 1 << 21, bytearray(b"\x01") * n, choking=False)
            stuck.have[n - 2] = 0  # the free piece: not its
            for i in range(64):
                stuck.have[i] = 0  # pieces it will announce (we have them)
            stuck.num_have = sum(stuck.have)
            stuck.am_interested = True
            stuck.queue_target = 8
            peers_dict[stuck.address] = stuck
            swarm.on_peer_pieces(stuck)  # type: ignore[arg-type]

            def stuck_haves() -> int:
                for i in range(64):
                    stuck.have[i] = 1
                    stuck.num_have += 1
                    swarm.on_peer_have(stuck, i)  # type: ignore[arg-type]
                    swarm.fill_requests(stuck)  # type: ignore[arg-type]
                    assert not stuck.outstanding
                return 64

            ops.time("e_have_stuck", E, "on_peer_have + fill_requests, nothing to pick", "message", stuck_haves)

            def wants() -> int:
                for _ in range(20):
                    if not swarm.wants_from(stuck):  # type: ignore[arg-type]
                        raise AssertionError("it has a piece we lack")
                return 20

            ops.time("e_wants_from", E, "Swarm.wants_from, worst case", "call", wants)
        finally:
            peers_dict.clear()
    return ops


def merge_best(runs: list[Ops]) -> dict[str, Op]:
    """Per key, the run with the lowest time per operation."""
    out: dict[str, Op] = {}
    for ops in runs:
        for key, op in ops.ops.items():
            if key not in out or op.us < out[key].us:
                out[key] = op
    return out


def scaling(args: argparse.Namespace) -> list[dict[str, Any]]:
    small, large = args.small_pieces, args.pieces
    sizes: dict[int, list[Ops]] = {small: [], large: []}
    engine: dict[int, list[Ops]] = {small: [], large: []}
    for run in range(args.repeat):
        for n in (small, large):
            t0 = time.perf_counter()
            sizes[n].append(picker_run(n, args, seed=run + 1))
            engine[n].append(asyncio.run(engine_run(n, args, seed=run + 1)))
            log(f"scaling run {run + 1}, {n:,} pieces: {time.perf_counter() - t0:.1f} s")
    rows = []
    ratio_n = large / small
    base_a, base_b = merge_best(sizes[small])["baseline"], merge_best(sizes[large])["baseline"]
    memory_ratio = base_b.us / base_a.us if base_a.us else 1.0
    for layer_runs in (sizes, engine):
        a, b = merge_best(layer_runs[small]), merge_best(layer_runs[large])
        for key, op_b in b.items():
            op_a = a.get(key)
            if op_a is None:
                continue
            ratio = op_b.us / op_a.us if op_a.us else float("inf")
            if ratio_n < 10:
                verdict = "n/a (sizes too close)"
            elif key == "baseline":
                verdict = "(memory hierarchy)"
            elif ratio < FLAT_RATIO:
                verdict = "flat"
            elif ratio < MEMORY_SLACK * memory_ratio:
                verdict = "flat (as the baseline)"
            elif ratio >= LINEAR_SHARE * ratio_n:
                verdict = "linear"
            else:
                verdict = "grows"
            rows.append(
                {
                    "key": key, "layer": op_b.layer, "what": op_b.what, "unit": op_b.unit,
                    "count_small": op_a.count, "count_large": op_b.count,
                    "us_small": op_a.us, "us_large": op_b.us, "ratio": ratio, "verdict": verdict,
                }
            )  # fmt: skip
    return rows


# ---------------------------------------------------------------------------
# the run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pieces", type=int, default=100_000, help="pieces of the large torrent (default 100 000)")
    p.add_argument("--small-pieces", type=int, default=1000, help="the size the scaling part compares with (default 1 000)")
    p.add_argument("--piece-length", type=parse_size, default=16 * KiB, help="default 16 KiB (one block a piece)")
    p.add_argument("--files", type=int, default=1, help="files in the payload (default 1; more: boundaries inside pieces)")
    p.add_argument("--peers", type=int, default=200)
    p.add_argument("--seed-fraction", type=float, default=0.2, help="share of the peers that are seeds (default 0.2)")
    p.add_argument("--pick", type=int, default=4, help="blocks asked for per pick call (default 4)")
    p.add_argument("--haves", type=int, default=20_000, help="have messages timed (default 20 000)")
    p.add_argument("--churn", type=int, default=10, help="peers joining then leaving one at a time (default 10)")
    p.add_argument("--parts", default="abc", help="a: start-up and resume saves, b: memory, c: scaling (default abc)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each part; the best is kept (default 3)")
    p.add_argument("--dir", help="where the payload goes (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="leave the payload and the .torrent behind")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    # hidden: one memory case, in its own process
    p.add_argument("--memory-child", choices=("seed", "leech"), help=argparse.SUPPRESS)
    p.add_argument("--torrent", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    p.add_argument("--sim-peers", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    if args.piece_length < BLOCK_SIZE or args.piece_length & (args.piece_length - 1):
        raise SystemExit("--piece-length must be a power of two from 16 KiB")
    if not 0 < args.small_pieces <= args.pieces:
        raise SystemExit("--small-pieces must be positive and at most --pieces")
    if not set(args.parts) <= set("abc") or not args.parts:
        raise SystemExit("--parts: letters among abc")
    doc: dict[str, Any] = {
        "setup": {
            "pieces": args.pieces, "small_pieces": args.small_pieces, "piece_length": args.piece_length,
            "size": _picker_total(args.pieces, args.piece_length), "files": args.files, "peers": args.peers,
            "seed_fraction": args.seed_fraction, "pick": args.pick, "repeat": args.repeat,
            "payload": "real bytes (random 16 MiB block repeated, stamped every 16 KiB)",
            "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        }
    }  # fmt: skip
    if "a" in args.parts or "b" in args.parts:
        root = Path(tempfile.mkdtemp(prefix="pyow-large-", dir=args.dir)).resolve()
        try:
            storage_parts(args, root, doc)
        finally:
            if args.keep:
                log(f"kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
    if "c" in args.parts:
        doc["scaling"] = scaling(args)
    doc["setup"]["loadavg"] = os.getloadavg()
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(report(doc))
    return 0


def storage_parts(args: argparse.Namespace, root: Path, doc: dict[str, Any]) -> None:
    from pyowtorrent.storage.create import create_torrent

    size = _picker_total(args.pieces, args.piece_length)
    seed_dir = root / "seed"
    seed_dir.mkdir()
    log(f"writing {human(size)} ({args.pieces:,} pieces of {human(args.piece_length)}) to {root}")
    t0 = time.perf_counter()
    payload, files = make_payload(seed_dir, "large_payload", file_sizes(size, args.files))
    os.sync()
    log(f"written and synced in {time.perf_counter() - t0:.1f} s; making the .torrent")
    t0 = time.perf_counter()
    meta = create_torrent(payload, piece_length=args.piece_length, creation_date=None)
    doc["create_torrent_s"] = time.perf_counter() - t0
    if meta.num_pieces != args.pieces:
        raise SystemExit(f"made {meta.num_pieces} pieces, not {args.pieces}")
    torrent = root / "large.torrent"
    torrent.write_bytes(meta.to_bytes())
    doc["setup"]["torrent_bytes"] = torrent.stat().st_size
    read_all(files)  # warm page cache: the full check hashes from memory, as on a re-start
    if "a" in args.parts:
        st = asyncio.run(measure_startup(meta, seed_dir, args.repeat))
        doc["startup"] = {k: (best(v) if isinstance(v, list) else v) for k, v in asdict(st).items()}
        doc["startup"]["runs"] = {k: v for k, v in asdict(st).items() if isinstance(v, list)}
    if "b" in args.parts:
        if "a" not in args.parts:
            asyncio.run(measure_startup(meta, seed_dir, 1))  # leaves resume data for the seeding case
        doc["memory"] = run_memory(torrent, seed_dir, root, args)


# ---------------------------------------------------------------------------
# the tables


def report(doc: dict[str, Any]) -> str:
    s = doc["setup"]
    lines = [
        f"pyowtorrent, large torrent: {s['pieces']:,} pieces of {human(s['piece_length'])} "
        f"({human(s['size'])}, {s['files']} file{'s' * (s['files'] > 1)}), {s['peers']} peers "
        f"({s['seed_fraction']:.0%} seeds), best of {s['repeat']}",
        f"Python {s['python']} on {s['machine']}, {s['cpus']} CPUs; load average at the end "
        + " ".join(f"{x:.2f}" for x in s["loadavg"]),
    ]
    if "create_torrent_s" in doc:
        lines.append(f"payload: {s['payload']}; create_torrent {doc['create_torrent_s']:.2f} s, .torrent {human(s['torrent_bytes'])}")
    st = doc.get("startup")
    if st:
        lines += [
            "",
            "a. start-up: Session.add_torrent of the complete payload until SEEDING (warm page cache)",
            f"  {'step':64} {'seconds':>9}",
            f"  {'with resume data':64} {st['with_resume']:>9.3f}",
            f"  {'without resume data (every piece hashed)':64} {st['without_resume']:>9.3f}",
            "  steps of the resume path, timed on their own:",
            f"  {'  ResumeKeeper.trusted_pieces (read, parse, stamps, per piece)':64} {st['trusted_pieces']:>9.3f}",
            f"  {'  Storage.check(trusted): nothing to hash':64} {st['storage_check']:>9.3f}",
            f"  {'  PiecePicker + set_piece_priorities':64} {st['picker_setup']:>9.3f}",
            f"  {'  picker.we_have for every piece':64} {st['we_have_all']:>9.3f}",
            f"  resume-data save, {human(st['resume_bytes'])} for {s['pieces']:,} pieces:",
            f"  {'  ResumeKeeper.save() until on disk':64} {st['save_total']:>9.3f}",
            f"  {'  Torrent._have_flags (the snapshot, on the event loop)':64} {st['have_flags']:>9.3f}",
            f"  {'  ResumeData.to_json':64} {st['to_json']:>9.3f}",
            f"  {'  write_atomically (write, fsync, rename, fsync dir)':64} {st['write']:>9.3f}",
        ]
    mem = doc.get("memory")
    if mem:
        lines += [
            "",
            "b. memory of one session holding the torrent (a fresh process each; rss over the interpreter and imports)",
            f"  {'case':50} {'RSS +':>10} {'VmHWM':>10} {'heap (traced)':>14} {'traced peak':>12}",
        ]
        for mode, label in (("seed", "seeding (resume data)"), ("leech", "leeching, no data yet")):
            m = mem[mode]
            lines.append(
                f"  {label:50} {human(m['rss_held'] - m['rss_base']):>10} {human(m['hwm_held']):>10} "
                f"{human(m['traced_held']):>14} {human(m['traced_peak_held']):>12}"
            )
        m = mem["leech"]
        if "rss_peers" in m:
            lines.append(
                f"  {'leeching + ' + str(m['sim_peers']) + ' peers bitfields (simulated)':50} "
                f"{human(m['rss_peers'] - m['rss_base']):>10} {human(m['hwm_peers']):>10} "
                f"{human(m['traced_peers']):>14} {human(m['traced_peak_peers']):>12}"
            )
        lines.append(f"  interpreter + imports: {human(mem['seed']['rss_base'])} RSS")
    rows = doc.get("scaling")
    if rows:
        small, large = s["small_pieces"], s["pieces"]
        lines += [
            "",
            f"c. cost per operation at {small:,} and {large:,} pieces ({s['peers']} peers), and the ratio"
            f" ({large / small:.0f}x: linear in pieces)",
            f"  {'layer':7} {'operation':52} {'per':10} {'us @' + format(small, ','):>12} "
            f"{'us @' + format(large, ','):>13} {'ratio':>8}  verdict",
        ]
        for r in rows:
            lines.append(
                f"  {r['layer']:7} {r['what'][:52]:52} {r['unit']:10} {r['us_small']:>12.2f} {r['us_large']:>13.2f} "
                f"{r['ratio']:>8.1f}  {r['verdict']}"
            )
        lines.append(
            f"  verdict: flat under {FLAT_RATIO}x, or under {MEMORY_SLACK}x the random-access baseline's ratio (the cost of"
            f"\n  bigger lists alone); linear from {LINEAR_SHARE * large / small:.0f}x; grows in between"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
