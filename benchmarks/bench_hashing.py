"""Throughput and memory benchmark for pyowtorrent's SHA-1 piece hashing.

One run generates a payload, then measures, on a warm page cache:

* ``sha1 cache-resident, 1 thread``: ``hashlib.sha1`` over a 256 KiB buffer
  (it stays in the core's L2 cache) hashed again and again on one core: the
  fastest single-thread SHA-1 this machine allows, the baseline every other
  figure is divided by; ``openssl speed -evp sha1`` is measured beside it as a
  check that it is;
* ``sha1 cache-resident, N threads``: the same on N threads at once, each
  with its own buffer: the measured ceiling for any threaded hasher here;
* ``sha1 in memory, 256 MiB streamed``: ``hashlib.sha1`` over 1 MiB slices of
  a 256 MiB buffer, i.e. hashing data that has to come from memory;
* ``naive read+sha1, 1 thread``: a plain read-then-hash loop over the files,
  which also gives the reference digests the library's output must match;
* ``create_torrent`` and ``verify_payload``, in process;
* ``python -m pyowtorrent.verify``: the whole process, interpreter start-up
  included, with its peak RSS.

Run ``python benchmarks/bench_hashing.py --help`` for the options; see
``benchmarks/README.md`` for how to read the table.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _common import (  # noqa: E402  (benchmarks/, beside this script)
    BLOCK,
    GiB,
    KiB,
    MiB,
    REPO,
    child_env,
    file_sizes,
    human,
    log,
    make_payload,
    parse_size,
    read_all,
)

# Run against this checkout whether or not pyowtorrent is installed.
sys.path.insert(0, str(REPO))

from pyowtorrent.storage.create import auto_piece_length, create_torrent  # noqa: E402
from pyowtorrent.storage.hasher import default_threads  # noqa: E402
from pyowtorrent.storage.verifier import verify_payload  # noqa: E402
from pyowtorrent.metainfo.torrent_file import Metainfo  # noqa: E402

# The baseline hashes one small buffer over and over: small enough to stay in
# a core's L2 cache (so memory bandwidth plays no part), big enough that the
# per-call overhead (~1 µs against ~130 µs of hashing) does not show.
RESIDENT_BUFFER = 256 * KiB
# How much the baseline hashes per run, unless --baseline-bytes says: 4× the
# payload, between these bounds (~0.5 s per run at 2 GB/s for the top one).
RESIDENT_TOTAL_MIN = 32 * MiB
RESIDENT_TOTAL_MAX = 1 * GiB
# The streamed row: 1 MiB slices of a buffer this big (smaller for a smaller payload).
STREAMED_BUFFER = 256 * MiB
STREAMED_SLICE = 1 * MiB
# openssl speed's block size for the check: the largest it measures by default.
OPENSSL_BLOCK = 16 * KiB
CLEARED = "DATA INTEGRITY CLEARED!"
# The goal for the whole verify process on a 2 GiB warm-cache file.
TARGET_RATIO = 1.6
TARGET_RSS_MIB = 100

# The verify child is started by this wrapper so that RUSAGE_CHILDREN covers
# the verify process alone, not the benchmark (whose 256 MiB streamed buffer
# would otherwise dominate) nor earlier children.
_RSS_WRAPPER = textwrap.dedent(
    """
    import json, resource, subprocess, sys, time
    t0 = time.perf_counter()
    p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ru.ru_utime + ru.ru_stime
    res = {"rc": p.returncode, "wall": wall, "cpu": cpu, "maxrss": ru.ru_maxrss}
    print(json.dumps({**res, "out": p.stdout, "err": p.stderr}))
    """
)


# ---------------------------------------------------------------------------
# Measurements


@dataclass
class Row:
    name: str
    seconds: float  # the best run's wall time
    cpu: float  # CPU seconds (user + system, all threads) of that run
    nbytes: int
    runs: list[float] = field(default_factory=list)
    note: str = ""
    rss_mib: float | None = None

    @property
    def mb_s(self) -> float:
        return self.nbytes / self.seconds / 1e6


def cpu_time() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def best_of(name: str, nbytes: int, repeat: int, func: Callable[[], object], note: str = "") -> Row:
    walls, cpus = [], []
    for _ in range(repeat):
        c0, t0 = cpu_time(), time.perf_counter()
        func()
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_time() - c0)
    best = walls.index(min(walls))
    return Row(name, walls[best], cpus[best], nbytes, walls, note)


def merge(a: Row, b: Row) -> Row:
    """``a`` with ``b``'s runs added: the same measurement taken twice."""
    best = a if a.seconds <= b.seconds else b
    return Row(a.name, best.seconds, best.cpu, a.nbytes, a.runs + b.runs, a.note, a.rss_mib)


def usable_cpus() -> int:
    """The CPUs this process may run on (the affinity mask where there is one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def sha1_resident(buf: bytes, count: int) -> None:
    """Hash ``buf`` ``count`` times, each a whole digest, as a piece is hashed."""
    sha1 = hashlib.sha1
    for _ in range(count):
        sha1(buf).digest()


def sha1_resident_threaded(bufs: Sequence[bytes], count: int) -> None:
    """``sha1_resident`` on one thread per buffer at once: each thread does the whole ``count``."""
    start = threading.Barrier(len(bufs))

    def work(buf: bytes) -> None:
        start.wait()
        sha1_resident(buf, count)

    workers = [threading.Thread(target=work, args=(b,)) for b in bufs]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def sha1_slices(view: memoryview) -> None:
    sha1 = hashlib.sha1
    for off in range(0, len(view), STREAMED_SLICE):
        sha1(view[off : off + STREAMED_SLICE]).digest()


@dataclass
class OpenSSLCheck:
    """``openssl speed -evp sha1`` on one core: what the library under hashlib can do here."""

    mb_s: float | None  # None: not measured
    block: int | None  # the block size the figure is for
    note: str  # the command, or why it was not measured
    version: str | None = None


def parse_openssl_speed(text: str) -> tuple[int, float] | None:
    """The largest block size and its bytes/s from ``openssl speed -mr``'s sha1 lines, if any.

    The machine-readable form is ``+H:16:64:…`` (block sizes) and
    ``+F:n:sha1:v1:v2:…`` (bytes per second for each).
    """
    sizes: list[int] = []
    rates: list[float] = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        try:
            if parts[0] == "+H":
                sizes = [int(x) for x in parts[1:]]
            elif parts[0] == "+F" and len(parts) > 3 and parts[2].lower() == "sha1":
                rates = [float(x) for x in parts[3:]]
        except ValueError:
            return None
    if not sizes or len(sizes) != len(rates):
        return None
    block, rate = max(zip(sizes, rates))
    return (block, rate) if rate > 0 else None


def openssl_sha1(repeat: int) -> OpenSSLCheck:
    """Best of ``repeat`` runs of ``openssl speed`` for SHA-1 (EVP, as hashlib uses); never raises."""
    exe = shutil.which("openssl")
    if exe is None:
        return OpenSSLCheck(None, None, "not measured: no openssl on PATH")
    try:
        version = subprocess.run(
            [exe, "version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        version = None
    # 1 s per run at one block size; older releases without -bytes measure
    # every block size (about 6 s) and the largest is kept.
    forms = [
        ["speed", "-mr", "-seconds", "1", "-bytes", str(OPENSSL_BLOCK), "-evp", "sha1"],
        ["speed", "-mr", "-seconds", "1", "-evp", "sha1"],
    ]
    why = "openssl speed failed"
    for form in forms:
        best: tuple[int, float] | None = None
        for _ in range(repeat):
            try:
                p = subprocess.run([exe, *form], capture_output=True, text=True, timeout=120, check=False)
            except (OSError, subprocess.SubprocessError) as e:
                why = f"openssl speed failed: {e}"
                break
            got = parse_openssl_speed(p.stdout) if p.returncode == 0 else None
            if got is None:
                last = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
                why = f"openssl speed gave no sha1 figure ({last[:120]})"
                break
            if best is None or got[1] > best[1]:
                best = got
        else:
            assert best is not None
            return OpenSSLCheck(best[1] / 1e6, best[0], "openssl " + " ".join(form), version)
    return OpenSSLCheck(None, None, f"not measured: {why}", version)


def naive_digests(files: Sequence[Path], piece_length: int) -> bytes:
    """Piece digests from the simplest possible loop: the reference for correctness."""
    out = bytearray()
    h = hashlib.sha1()
    filled = 0
    buf = bytearray(min(piece_length, 4 * MiB))
    view = memoryview(buf)
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(view[: min(len(buf), piece_length - filled)]):
                h.update(view[:n])
                filled += n
                if filled == piece_length:
                    out += h.digest()
                    h = hashlib.sha1()
                    filled = 0
    if filled:
        out += h.digest()
    return bytes(out)


@dataclass
class ChildRun:
    rc: int
    wall: float  # seconds, spawn to exit
    cpu: float  # user + system seconds
    maxrss: int  # bytes
    out: str
    err: str


def run_measured(cmd: Sequence[str]) -> ChildRun:
    """Run ``cmd`` under the RSS wrapper."""
    p = subprocess.run(
        [sys.executable, "-c", _RSS_WRAPPER, *cmd], stdout=subprocess.PIPE, text=True, env=child_env(), check=True
    )
    res = json.loads(p.stdout)
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 if platform.system() == "Darwin" else KiB
    return ChildRun(
        int(res["rc"]), float(res["wall"]), float(res["cpu"]), int(res["maxrss"]) * scale, res["out"], res["err"]
    )


# ---------------------------------------------------------------------------
# Output


def table(rows: Sequence[Row], baseline: float) -> str:
    lines = [f"{'measurement':<34} {'MB/s':>6} {'× base':>7} {'best s':>7} {'CPU s':>6} {'peak RSS':>9}  runs (s)"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        rss = f"{r.rss_mib:6.1f} MiB" if r.rss_mib is not None else ""
        runs = " ".join(f"{t:.3f}" for t in r.runs)
        lines.append(
            f"{r.name:<34} {r.mb_s:6.0f} {r.mb_s / baseline:6.2f}× {r.seconds:7.3f} {r.cpu:6.3f} {rss:>9}  {runs}"
            + (f"  {r.note}" if r.note else "")
        )
    return "\n".join(lines)


def contention_warnings(base: Row, parallel: Row | None, threads: int, check: OpenSSLCheck) -> list[str]:
    """Signs in the cache-resident rows that other work took CPU time from this run."""
    out = []
    if base.cpu < 0.95 * base.seconds:
        out.append(f"the baseline's best run got {base.cpu / base.seconds:.0%} of a core; every ratio is inflated")
    cores = min(threads, usable_cpus())
    if parallel is not None and parallel.mb_s < 0.9 * cores * base.mb_s:
        out.append(
            f"cache-resident sha1 on {threads} threads reached {parallel.mb_s / base.mb_s:.2f}×, not ~{cores}×:"
            " the CPUs were not free, so the threaded rows are understated"
        )
    if check.mb_s is not None and base.mb_s < 0.9 * check.mb_s:
        out.append(
            f"the hashlib baseline is {base.mb_s / check.mb_s:.2f}× openssl's own figure: the baseline is low"
            " (a busy CPU, or hashlib built against a slower SHA-1), so every ratio is inflated"
        )
    return out


def resident_total(args: argparse.Namespace) -> int:
    """Bytes the baseline hashes per run: --baseline-bytes, else 4× the payload within bounds."""
    total: int = args.baseline_bytes or min(RESIDENT_TOTAL_MAX, max(RESIDENT_TOTAL_MIN, 4 * args.size))
    return max(1, total // RESIDENT_BUFFER) * RESIDENT_BUFFER


# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=GiB, help="payload size, e.g. 1GiB, 512MiB (default 1GiB)")
    p.add_argument("--files", type=int, default=6, help="files in a multi-file payload (default 6)")
    p.add_argument("--single-file", action="store_true", help="one file instead of a directory")
    p.add_argument("--dir", type=Path, default=None, help="where to make the temporary payload (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="leave the payload and .torrent behind")
    p.add_argument("--piece-length", type=parse_size, default=None, help="default: what create_torrent picks")
    p.add_argument("--threads", type=int, default=None, help="hashing threads (default: the library's default)")
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is kept (default 3)")
    p.add_argument(
        "--baseline-bytes",
        type=parse_size,
        default=None,
        help="bytes the cache-resident baseline hashes per run (default: 4× --size, between 32 MiB and 1 GiB)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.files < 1 or args.repeat < 1 or (args.threads is not None and args.threads < 1):
        raise SystemExit("--files, --repeat and --threads must be at least 1")
    threads = args.threads or default_threads()
    piece_length = args.piece_length or auto_piece_length(args.size)
    root = Path(tempfile.mkdtemp(prefix="pyowtorrent-bench-", dir=args.dir))
    try:
        return run(args, root, threads, piece_length)
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, root: Path, threads: int, piece_length: int) -> int:
    size, repeat = args.size, args.repeat
    log(f"writing {human(size)} ({'one file' if args.single_file else f'{args.files} files'}) to {root}")
    t0 = time.perf_counter()
    sizes = [size] if args.single_file else file_sizes(size, args.files, small=(4_099, 300_007))
    payload, files = make_payload(root, "bench_payload", sizes)
    # Flush the dirty pages now, so write-back does not compete with the timed runs.
    os.sync()
    log(f"written and synced in {time.perf_counter() - t0:.1f} s; warming the page cache")
    if read_all(files) != size:
        raise SystemExit("payload has the wrong size")

    rows: list[Row] = []
    total = resident_total(args)
    count = total // RESIDENT_BUFFER
    buf = os.urandom(RESIDENT_BUFFER)
    baseline = lambda: sha1_resident(buf, count)  # noqa: E731
    log(f"baseline: sha1 of a {human(RESIDENT_BUFFER)} buffer, {human(total)} per run")
    rows.append(best_of("sha1 cache-resident, 1 thread", total, repeat, baseline, "baseline"))
    check = openssl_sha1(repeat)
    parallel: Row | None = None
    if threads > 1:
        bufs = [os.urandom(RESIDENT_BUFFER) for _ in range(threads)]
        name = f"sha1 cache-resident, {threads} threads"
        work = lambda: sha1_resident_threaded(bufs, count)  # noqa: E731
        parallel = best_of(name, threads * total, repeat, work, "ceiling")
        rows.append(parallel)
    streamed = min(STREAMED_BUFFER, max(BLOCK, size // BLOCK * BLOCK))
    view = memoryview(os.urandom(BLOCK) * (streamed // BLOCK))
    rows.append(best_of(f"sha1 in memory, {human(streamed)} streamed", streamed, repeat, lambda: sha1_slices(view)))
    del view  # nothing later uses it; free the memory before the payload is hashed

    log("naive reference hash")
    reference: list[bytes] = []
    naive = lambda: reference.append(naive_digests(files, piece_length))  # noqa: E731
    rows.append(best_of("naive read+sha1, 1 thread", size, repeat, naive))

    log("create_torrent")
    made: list[Metainfo] = []
    create = lambda: made.append(  # noqa: E731
        create_torrent(payload, piece_length=piece_length, creation_date=None, threads=args.threads)
    )
    rows.append(best_of("create_torrent", size, repeat, create))
    meta = made[-1]
    if meta.piece_hashes != reference[-1] or any(m.info_hash != meta.info_hash for m in made):
        raise SystemExit("create_torrent's piece hashes differ from the reference: the results would mean nothing")
    torrent = root / "bench.torrent"
    torrent.write_bytes(meta.to_bytes())

    log("verify_payload")
    oks: list[bool] = []
    verify = lambda: oks.append(verify_payload(meta, payload, threads=args.threads).ok)  # noqa: E731
    rows.append(best_of("verify_payload (in process)", size, repeat, verify))
    if not all(oks):
        raise SystemExit("verify_payload reported failures on an intact payload")

    log("python -m pyowtorrent.verify")
    # Byte-compile the package first, as installing it does: with
    # PYTHONDONTWRITEBYTECODE set (or a read-only checkout) every child would
    # otherwise compile our modules from source, ~15 ms that no install pays.
    compileall.compile_dir(REPO / "pyowtorrent", quiet=1)
    cmd = [sys.executable, "-m", "pyowtorrent.verify", str(torrent), str(payload)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    children = [run_measured(cmd) for _ in range(repeat)]
    for c in children:
        if c.rc != 0 or CLEARED not in c.out:
            raise SystemExit(f"verify child failed: rc={c.rc}\n{c.out}{c.err}")
    walls = [c.wall for c in children]
    best = children[walls.index(min(walls))]
    peak = max(c.maxrss for c in children) / MiB
    rows.append(Row("python -m pyowtorrent.verify", best.wall, best.cpu, size, walls, "whole process", peak))
    startup = min(run_measured([sys.executable, "-c", "import pyowtorrent.cli.verify"]).wall for _ in range(repeat))
    # Measured again at the end: a baseline run slowed by other work would
    # inflate every ratio, and the load may have changed since the start.
    rows[0] = base = merge(rows[0], best_of("", total, repeat, baseline))

    whole = rows[-1]
    cores = min(threads, usable_cpus())
    warnings = contention_warnings(base, parallel, threads, check)
    setup = {
        "payload": f"{human(size)} in {len(files)} file{'s' * (len(files) > 1)}",
        "piece_length": piece_length,
        "num_pieces": meta.num_pieces,
        "threads": threads,
        "cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "python": platform.python_version(),
        "openssl": __import__("ssl").OPENSSL_VERSION,
        "openssl_cli": check.version,
        "baseline_buffer": RESIDENT_BUFFER,
        "baseline_bytes_per_run": total,
        "verify_startup_s": startup,
        # Other work on a shared machine skews every figure; this says how much there was.
        "loadavg_1min": os.getloadavg()[0],
        "target_met": whole.mb_s / base.mb_s >= TARGET_RATIO and (whole.rss_mib or 0) < TARGET_RSS_MIB,
        "warnings": warnings,
    }
    ceiling = {
        "threads": threads,
        "cores": cores,  # threads, but no more than the CPUs this process may use
        "expected_mb_s": cores * base.mb_s,  # cores × the baseline
        "measured_mb_s": parallel.mb_s if parallel else base.mb_s,
        "measured_ratio": parallel.mb_s / base.mb_s if parallel else 1.0,
        "verify_ratio": whole.mb_s / base.mb_s,
        "verify_of_measured": whole.mb_s / (parallel or base).mb_s,
    }
    openssl = {
        "mb_s": check.mb_s,
        "block": check.block,
        "command": check.note if check.mb_s is not None else None,
        "note": None if check.mb_s is not None else check.note,
        "hashlib_vs_openssl": base.mb_s / check.mb_s if check.mb_s else None,
    }
    if args.json:
        doc: dict[str, object] = {"setup": setup, "baseline_mb_s": base.mb_s, "openssl_sha1": openssl}
        doc["ceiling"] = ceiling
        doc["rows"] = [{**asdict(r), "mb_s": r.mb_s, "ratio": r.mb_s / base.mb_s} for r in rows]
        print(json.dumps(doc, indent=2))
        return 0
    print(
        f"payload {setup['payload']}, piece length {human(piece_length)} ({meta.num_pieces} pieces), "
        f"{threads} hashing thread{'s' * (threads > 1)}, {os.cpu_count()} CPUs, "
        f"Python {setup['python']}, {setup['openssl']}"
    )
    print(
        f"MB = 10^6 bytes; × base = throughput / single-core sha1 of a cache-resident {human(RESIDENT_BUFFER)}"
        f" buffer ({human(total)} per run); best of {repeat}"
    )
    print(table(rows, base.mb_s))
    if check.mb_s is not None:
        print(
            f"baseline check: hashlib {base.mb_s:.0f} MB/s, `{check.note}` {check.mb_s:.0f} MB/s"
            f" ({human(check.block or 0)} blocks): hashlib vs openssl {base.mb_s / check.mb_s:.2f}×"
            # Worth saying when the command is not the library hashlib uses.
            + ("" if str(setup["openssl"]) in (check.version or "") else f" (the command is {check.version})")
        )
    else:
        print(f"baseline check: hashlib {base.mb_s:.0f} MB/s, openssl speed {check.note}")
    measured = (
        f"measured on {threads} threads {parallel.mb_s:.0f} MB/s ({parallel.mb_s / base.mb_s:.2f}×)"
        if parallel
        else "one hashing thread, so the ceiling is the baseline"
    )
    print(
        f"ceiling: {cores} core{'s' * (cores > 1)} × baseline = {cores * base.mb_s:.0f} MB/s ({cores:.2f}×), "
        f"{measured}; whole-process verify {whole.mb_s:.0f} MB/s = {whole.mb_s / base.mb_s:.2f}× "
        f"({ceiling['verify_of_measured']:.0%} of the measured ceiling)"
    )
    print(f"verify child start-up (python -c 'import pyowtorrent.cli.verify'): {startup * 1000:.0f} ms")
    print(
        f"target (whole process, 2 GiB single file): ≥ {TARGET_RATIO:.2f}× and < {TARGET_RSS_MIB} MiB; "
        f"this run {whole.mb_s / base.mb_s:.2f}× and {whole.rss_mib:.1f} MiB: "
        f"{'met' if setup['target_met'] else 'NOT met'}"
        + ("" if args.single_file and size == 2 * GiB else " (not the target's payload)")
    )
    print(f"1-minute load average at the end: {setup['loadavg_1min']:.2f} on {os.cpu_count()} CPUs")
    for warning in warnings:
        print(f"WARNING: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
