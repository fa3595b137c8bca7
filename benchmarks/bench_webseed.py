"""Web seed (BEP 19) against BitTorrent: the same payload, downloaded both ways in one run.

One run generates a payload and its .torrent, then times, over 127.0.0.1:

* ``a``: libtorrent seeder → pyowtorrent leecher over BitTorrent, **the baseline**
  (``bench_swarm.py``'s case ``b``);
* ``w``: pyowtorrent leecher whose only source is a web seed: a plain HTTP
  server (aiohttp's static files, which answer range requests) serving the
  payload, named by the torrent's ``url-list``; no tracker, no peer;
* ``lw``: libtorrent leecher from the same web seed alone (a reference point:
  what a mature client gets out of the same server);
* ``lt``: libtorrent seeder → libtorrent leecher (``bench_swarm.py``'s ``a``).

Each peer and the HTTP server is its own process (the server is this
script's hidden ``--serve DIR PORT`` mode; libtorrent runs in
``bench_swarm.py``'s ``--lt-seed`` / ``--lt-leech`` modes), so CPU time and
memory are per process.  Spawning, timing, measuring and checking the
download are ``bench_swarm.py``'s (``run_pair``): wall time from the
leecher's spawn to its verified-complete event, MB/s, CPU seconds per GiB of
the leecher and of the seeder or server, peak RSS, and the throughput as a
ratio to case ``a`` measured in the same run.

Run ``python benchmarks/bench_webseed.py --help`` for the options; see
``benchmarks/README.md`` for how to read the table.  Needs the ``libtorrent``
wheel (benchmark-only dependency) and aiohttp (a dependency of pyowtorrent).
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import platform
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from _common import KiB, REPO, human, in_work_dir, log, parse_size, seed_payload  # noqa: E402
from bench_swarm import (  # noqa: E402  (benchmarks/, beside this script)
    Result,
    leecher_cmd,
    profile_paths,
    profile_summary,
    repeat_cases,
    run_pair,
    seeder_cmd,
    table,
)

SELF = str(Path(__file__).resolve())
# Run against this checkout whether or not pyowtorrent is installed.
sys.path.insert(0, str(REPO))

WEB_SEED = "web seed"  # the "seeder" of the web-seed cases: the HTTP server

# In table order; ratios are to "a".
CASES = {
    "a": ("libtorrent", "pyowtorrent"),
    "w": (WEB_SEED, "pyowtorrent"),
    "lw": (WEB_SEED, "libtorrent"),
    "lt": ("libtorrent", "libtorrent"),
}


# ---------------------------------------------------------------------------
# The web seed: a plain HTTP server in its own process


def serve_main(root: str, port: int) -> int:
    """``--serve DIR PORT``: aiohttp's static files of DIR on 127.0.0.1 until SIGTERM.

    It prints the JSON lines ``run_pair`` waits for from a seeder (``listening``,
    then ``status`` ``seeding``), so it takes a seeder's place unchanged.
    """
    from aiohttp import web

    def emit(doc: dict[str, object]) -> None:
        print(json.dumps(doc), flush=True)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        app = web.Application()
        # Static files: Range answered with 206 and sent with sendfile(2), as a
        # stock HTTP server would (nginx, or an object store's front end).
        app.router.add_static("/", root)
        # No access log: a line per request would be this process's cost, not the web seed's.
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        try:
            emit({"event": "listening", "host": "127.0.0.1", "port": runner.addresses[0][1]})
            emit({"event": "status", "state": "seeding", "progress": 1.0})
            await stop.wait()
        finally:
            await runner.cleanup()
        return 0

    return asyncio.run(main())


def serve_cmd(root: Path) -> list[str]:
    # Port 0: the kernel picks a free one, which the server reports; the
    # torrent naming it is written only then (no port guessed ahead, no race).
    return [sys.executable, SELF, "--serve", str(root), "0"]


def web_seed_torrent(base: Path, dest: Path, url: str) -> None:
    """``base`` with ``url-list`` = ``[url]``: the same info-hash, its web seed as its only source."""
    from pyowtorrent.metainfo.bencoding import Bencached, encode
    from pyowtorrent.metainfo.torrent_file import load_metainfo

    meta = load_metainfo(base)
    top = {**meta.raw_top, b"url-list": [url.encode()], b"info": Bencached(meta.info_bytes)}
    dest.write_bytes(encode(top))


# ---------------------------------------------------------------------------
# One case


def run_case(
    case: str, run: int, ctx: argparse.Namespace, torrent: Path, seed_dir: Path, work: Path, size: int
) -> Result:
    source, leech_impl = CASES[case]
    res = Result(case, source, leech_impl, run)
    out = work / f"leech-{case}{run}"
    prof_s, prof_l = profile_paths(res, ctx, work)
    if source != WEB_SEED:  # BitTorrent from a libtorrent seeder, as bench_swarm.py does it
        seed = seeder_cmd(source, torrent, seed_dir, prof_s, ctx.lt_preset)
        return run_pair(
            res, ctx, work, size, torrent, out, seed,
            lambda port: leecher_cmd(leech_impl, torrent, out, port, prof_l, ctx.lt_preset),
            prof_s, prof_l,
        )  # fmt: skip

    ws_torrent = work / f"{case}{run}-webseed.torrent"

    def leech(port: int) -> list[str]:
        # The server serves seed_dir at its root: a directory URL (trailing
        # slash) is where a multi-file torrent's <name>/<path> are, and for a
        # single file BEP 19 appends the file's name to it.
        web_seed_torrent(torrent, ws_torrent, f"http://127.0.0.1:{port}/")
        # No --peer, no tracker in the torrent: the web seed is the only source.
        return leecher_cmd(leech_impl, ws_torrent, out, None, prof_l, ctx.lt_preset)

    # Verified against the plain torrent: the same info dict, so the same pieces.
    return run_pair(res, ctx, work, size, torrent, out, serve_cmd(seed_dir), leech, prof_s, prof_l)


# ---------------------------------------------------------------------------


def parse_cases(text: str) -> list[str]:
    names = [c for c in text.replace(",", " ").split() if c]
    bad = [c for c in names if c not in CASES]
    if not names or bad:
        raise SystemExit(f"--only takes a comma-separated list among {', '.join(CASES)}")
    return [c for c in CASES if c in names]  # table order, once each


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--size", type=parse_size, default=256 << 20, help="payload size, e.g. 1GiB, 256MiB (default 256MiB)"
    )
    p.add_argument("--piece-length", type=parse_size, default=256 * KiB, help="default 256KiB")
    p.add_argument("--files", type=int, default=4, help="files in the payload; 1 = a single-file torrent (default 4)")
    p.add_argument("--dir", type=Path, default=None, help="where the payload and downloads go (default: $TMPDIR)")
    p.add_argument(
        "--only", default=",".join(CASES), help=f"cases, e.g. 'a,w' (default: {','.join(CASES)}; ratios need a)"
    )
    p.add_argument("--repeat", type=int, default=1, help="runs of each case, interleaved; the fastest is kept")
    p.add_argument(
        "--timeout", type=float, help="seconds per transfer before the case fails (default: 60 + 1 per 2 MB)"
    )
    p.add_argument(
        "--lt-preset",
        choices=("default", "high-performance"),
        default="default",
        help="libtorrent settings: its defaults, or the per-connection part of high_performance_seed()",
    )
    p.add_argument(
        "--profile",
        nargs="?",
        const="cprofile",
        choices=("cprofile", "py-spy", "py-spy-gil"),
        help="profile the pyowtorrent leechers (as bench_swarm.py --profile); the table is then not comparable",
    )
    p.add_argument("--no-verify", action="store_true", help="skip hashing each download after the case")
    p.add_argument("--keep", action="store_true", help="leave the payload, .torrent, logs and profiles behind")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    # Helper mode: the HTTP server of the web-seed cases.
    p.add_argument("--serve", nargs=2, metavar=("DIR", "PORT"), help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve:
        return serve_main(args.serve[0], int(args.serve[1]))
    cases = parse_cases(args.only)
    if args.files < 1 or args.repeat < 1:
        raise SystemExit("--files and --repeat must be at least 1")
    if args.timeout is None:
        args.timeout = 60 + args.size / 2e6
    return in_work_dir(args, "pyowtorrent-webseed-", "processes", lambda root: run(args, root, cases))


def run(args: argparse.Namespace, root: Path, cases: list[str]) -> int:
    import aiohttp

    from pyowtorrent.metainfo.webseed import run_pieces

    size = args.size
    seed_dir, meta = seed_payload(args, root, "webseed")
    torrent = root / "webseed.torrent"
    # Byte-compile the package, as installing it does (bench_hashing.py too):
    # with PYTHONDONTWRITEBYTECODE set, every pyowtorrent leecher would compile
    # our modules from source at start-up (~0.1 s in its wall time), which no
    # install pays and libtorrent's leechers do not.
    compileall.compile_dir(REPO / "pyowtorrent", quiet=1)

    def one(case: str, run_no: int) -> Result:
        source, leech_impl = CASES[case]
        log(f"case {case} run {run_no + 1}/{args.repeat}: {source} → {leech_impl} leecher")
        return run_case(case, run_no, args, torrent, seed_dir, root, size)

    results, best = repeat_cases(args, cases, one)
    rows = [best[c] for c in cases]
    # Our web-seed leecher against libtorrent's from the same server: whether
    # a gap is the server's (both slow) or our downloader's.
    w, lw = best.get("w"), best.get("lw")
    w_vs_lw = w.mb_s / lw.mb_s if w is not None and lw is not None and w.ok and lw.ok else None
    setup = {
        "payload": f"{human(size)} in {args.files} file{'s' * (args.files > 1)}",
        "size": size,
        "piece_length": args.piece_length,
        "num_pieces": meta.num_pieces,
        # What our web seed asks for in one run (one range GET per file it touches).
        "web_seed_run_bytes": run_pieces(meta.piece_length, meta.total_length) * meta.piece_length,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "libtorrent": __import__("libtorrent").__version__,
        "aiohttp": aiohttp.__version__,
        "lt_preset": args.lt_preset,
        "repeat": args.repeat,
        "profiled": args.profile,
        "loadavg_1min": os.getloadavg()[0],
    }
    if args.json:
        doc = {
            "setup": setup,
            "best": [asdict(r) for r in rows],
            "runs": [asdict(r) for r in results],
            "w_vs_lw": w_vs_lw,
        }
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"payload {setup['payload']}, piece length {human(args.piece_length)} ({meta.num_pieces} pieces), "
            f"loopback, {os.cpu_count()} CPUs, Python {setup['python']}, libtorrent {setup['libtorrent']} "
            f"({args.lt_preset} settings), web seed: aiohttp {setup['aiohttp']} static files, our runs of "
            f"{human(setup['web_seed_run_bytes'])}"
            + (f", PROFILED ({args.profile}): times are not comparable" if args.profile else "")
        )
        print(
            "wall = leecher spawn → verified complete (start: spawn → listening, included); MB = 10^6 bytes; "
            "× (a) = MB/s / (a)'s (libtorrent → pyowtorrent over BitTorrent); "
            "seed columns: the seeder, or the HTTP server for a web seed; "
            f"{'best of ' + str(args.repeat) if args.repeat > 1 else 'one run each'}"
        )
        print(table(rows, size))
        if args.repeat > 1:
            for c in cases:
                runs = " ".join(f"{r.seconds:.2f}" if r.ok else "fail" for r in results if r.case == c)
                print(f"  runs of {c} (s): {runs}")
        if w_vs_lw is not None:
            print(f"pyowtorrent / libtorrent from the same web seed (w / lw): {w_vs_lw:.2f}×")
        print(f"1-minute load average at the end: {setup['loadavg_1min']:.2f} on {os.cpu_count()} CPUs")
        if args.profile:
            for r in rows:
                for p in r.profiles:
                    print(f"\nprofile: {p}")
                    print(profile_summary(Path(p)))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
