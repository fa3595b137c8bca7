"""``pyowtorrent download`` and ``pyowtorrent seed``: a session on the command line.

Both run one torrent until done (download) or until interrupted (seed, or
download --seed).  Ctrl-C and SIGTERM shut down cleanly, saving resume data:
exit 130 after Ctrl-C, 0 after SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

from ..engine.events import (
    Completed,
    PeerBanned,
    PieceFailed,
    StateChanged,
    TorrentEvent,
    TorrentFailed,
    TorrentState,
    TorrentStatus,
)
from ..engine.loop import run as run_loop
from ..errors import DownloadTimeout, PyowtorrentError
from ..metainfo.magnet import parse_magnet
from ..metainfo.torrent_file import load_metainfo


def add_arguments(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("download", parents=[common], help="download a torrent into a directory")
    p.set_defaults(handler=run_download)
    p.add_argument("torrent", help="a .torrent file, its http(s) URL, a magnet link, or a name the --source resolves")
    p.add_argument("-o", "--output", metavar="DIR", help="the directory that will hold the payload (default: the config's download_dir, else here)")
    p.add_argument("--source", metavar="SOURCE", help="find TORRENT in this torrent source: a directory, an http(s) base URL, or gdrive:FOLDER_ID (default: the config's)")
    _common(p)
    p.add_argument("--seed", action="store_true", help="keep seeding after the download, until interrupted")
    p.add_argument("--timeout", type=float, help="give up after this many seconds (exit 1)")
    p.add_argument("--json", action="store_true", help="print status as JSON lines instead of a progress bar")

    p = sub.add_parser("tracker", parents=[common], help="run a small HTTP tracker until interrupted")
    p.set_defaults(handler=run_tracker)
    p.add_argument("--listen", action="append", metavar="ADDR", help="listen address (default: all, IPv4 and IPv6)")
    p.add_argument("--port", type=int, default=6969, help="listen port (default 6969; 0: any free port)")
    p.add_argument("--allow", action="append", default=[], metavar="TORRENT", help="serve only these torrents")
    p.add_argument("--interval", type=int, default=1800, help="seconds between a client's announces")

    p = sub.add_parser("seed", parents=[common], help="check a payload, then seed it until interrupted")
    p.set_defaults(handler=run_seed)
    p.add_argument("torrent")
    p.add_argument("dir", nargs="?", default=".", help="the directory that holds the payload (default: here)")
    _common(p)
    p.add_argument("--json", action="store_true", help="print status as JSON lines")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--peer", action="append", default=[], metavar="HOST:PORT", type=_peer, help="a peer to connect to")
    p.add_argument("--port", type=int, help="listen port (default: the config's, else any free port)")
    p.add_argument(
        "--listen", action="append", metavar="ADDR",
        help="listen address; a specific one is also where dials and announces leave from (default: the config's, else all, IPv4 and IPv6)",
    )  # fmt: skip
    p.add_argument("--announce-ip", metavar="ADDR", help="ask trackers to give peers this address for us (behind NAT; default: the one announces come from)")
    p.add_argument("--upload-limit", type=int, metavar="BYTES", help="upload cap in bytes/s (0: none; default: the config's)")
    p.add_argument(
        "--encryption",
        choices=("disabled", "enabled", "required"),
        default="enabled",
        help="message stream encryption (MSE/PE): enabled (default: plaintext, or encrypted for peers that want it),"
        " required (encrypted only), disabled (plaintext only)",
    )


def _peer(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def run_download(args: argparse.Namespace) -> int:
    return _run(args, seed_only=False)


def run_seed(args: argparse.Namespace) -> int:
    args.output = args.dir
    args.seed = True
    args.timeout = None
    args.source = None
    return _run(args, seed_only=True)


def run_tracker(args: argparse.Namespace) -> int:
    """The embedded tracker as a process: prints its announce URL(s), runs until Ctrl-C or SIGTERM."""
    allowed = [load_metainfo(t).info_hash for t in args.allow] or None

    async def main() -> int:
        from ..service.tracker import Tracker

        stop, code = _stop_on_signals()
        tracker = Tracker(interval=args.interval, allowed_info_hashes=allowed)
        await tracker.start(args.listen or ["0.0.0.0", "::"], args.port)
        try:
            for host in args.listen or ["127.0.0.1"]:
                print(f"announce URL: {tracker.announce_url(host)}", flush=True)
            await stop.wait()
        finally:
            await tracker.close()
        return code.get("signal", 0)

    try:
        return run_loop(main())
    except OSError as exc:
        print(f"error: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 2


def _stop_on_signals() -> tuple[asyncio.Event, dict[str, int]]:
    """An event set by Ctrl-C or SIGTERM, and the exit code each means (130 and 0)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    outcome: dict[str, int] = {}

    def on_signal(code: int) -> None:
        outcome.setdefault("signal", code)
        stop.set()

    loop.add_signal_handler(signal.SIGINT, on_signal, 130)
    loop.add_signal_handler(signal.SIGTERM, on_signal, 0)
    return stop, outcome


def _run(args: argparse.Namespace, seed_only: bool) -> int:
    from .options import load_cli_config

    cfg = load_cli_config(args, listen=args.listen, port=args.port, upload_rate_limit=args.upload_limit)
    source = args.source or (cfg.torrent_source if not seed_only else None)

    async def main() -> int:
        from ..api import resolve_torrent
        from ..engine.session import Session
        from ..sources import open_source

        # A path given on the command line is a file, even when a source is configured.
        from_source = None
        if source is not None and (args.source is not None or not os.path.exists(args.torrent)):
            from_source = open_source(source, cfg)
        magnet = parse_magnet(args.torrent) if args.torrent[:7].lower() == "magnet:" else None
        meta = None if magnet is not None else await resolve_torrent(args.torrent, torrent_source=from_source)
        stop, outcome = _stop_on_signals()
        output = args.output or cfg.download_dir
        async with Session(
            listen=list(cfg.listen),
            port=cfg.port,
            upload_rate_limit=cfg.upload_rate_limit,
            max_connections=cfg.max_connections,
            encryption=args.encryption,
            announce_ip=args.announce_ip,
        ) as session:
            deadline = None if args.timeout is None else time.monotonic() + args.timeout
            if meta is None:
                assert magnet is not None
                fetch = asyncio.ensure_future(session.add_magnet(magnet, output, peers=args.peer, timeout=args.timeout))
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({fetch, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if not fetch.done():
                    fetch.cancel()
                    await asyncio.wait({fetch})
                    return outcome.get("signal", 0)
                try:
                    torrent = fetch.result()
                except DownloadTimeout as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
                meta = torrent.meta
            report = _Reporter(args.json, meta.total_length)
            for host, port in session.listen_addresses:
                report.line({"event": "listening", "host": host, "port": port}, f"listening on {_fmt(host, port)}")
            if magnet is not None:
                report.line({"event": "metadata", "name": meta.name}, f"metadata received: {meta.name}")
            else:
                torrent = await session.add_torrent(meta, output, peers=args.peer)
            # A state change (done, error) wakes the loop at once, not at its next status tick.
            changed = asyncio.Event()

            def on_event(e: TorrentEvent) -> None:
                report.event(e)
                if isinstance(e, StateChanged):
                    changed.set()

            torrent.add_listener(on_event)
            done_reported = False
            while not stop.is_set():
                changed.clear()
                st = torrent.status()
                report.status(st)
                if st.state is TorrentState.ERROR:
                    report.close()
                    print(f"error: {st.error}", file=sys.stderr)
                    return 1
                if st.progress >= 1.0 and st.state is TorrentState.SEEDING and not done_reported:
                    done_reported = True
                    report.line({"event": "done", "bytes": st.bytes_total}, f"done: {meta.name} verified on disk")
                    if not args.seed:
                        return 0
                if deadline is not None and time.monotonic() > deadline and not done_reported:
                    report.close()
                    print(f"error: not done after {args.timeout:g} s", file=sys.stderr)
                    return 1
                await _first_of(stop, changed, timeout=1.0)
            report.close()
        return outcome.get("signal", 0)

    try:
        return run_loop(main())
    except PyowtorrentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _first_of(*events: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Reporter:
    """JSON lines when asked, a progress bar on a terminal, plain lines otherwise."""

    def __init__(self, as_json: bool, total: int) -> None:
        self.as_json = as_json
        self.bar: Any = None
        self._last = 0
        if not as_json and sys.stderr.isatty():
            from tqdm import tqdm  # type: ignore[import-untyped]

            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)

    def line(self, doc: dict[str, Any], text: str) -> None:
        if self.as_json:
            print(json.dumps(doc), flush=True)
        elif self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def event(self, e: TorrentEvent) -> None:
        if not self.as_json:
            return
        if isinstance(e, PieceFailed):
            doc: dict[str, Any] = {"event": "piece_failed", "piece": e.piece}
        elif isinstance(e, PeerBanned):
            doc = {"event": "peer_banned", "ip": e.ip, "whole_address": e.peer_id is None, "message": e.reason}
        elif isinstance(e, TorrentFailed):
            doc = {"event": "error", "message": e.message}
        elif isinstance(e, Completed):
            doc = {"event": "completed"}
        else:
            return
        print(json.dumps(doc), flush=True)

    def status(self, st: TorrentStatus) -> None:
        if self.as_json:
            print(
                json.dumps(
                    {
                        "event": "status",
                        "state": st.state.value,
                        "progress": round(st.progress, 4),
                        "pieces": st.pieces_have,
                        "num_pieces": st.num_pieces,
                        "peers": st.num_peers,
                        "download_rate": round(st.download_rate),
                        "upload_rate": round(st.upload_rate),
                    }
                ),
                flush=True,
            )
        elif self.bar is not None:
            self.bar.update(st.bytes_done - self._last)
            self._last = st.bytes_done
            self.bar.set_postfix(peers=st.num_peers, up=f"{st.upload_rate / 1e6:.1f}MB/s", state=st.state.value)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
