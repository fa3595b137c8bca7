"""``pyowtorrent daemon start|stop|run``, ``add``, ``status``, ``pause``, ``resume``, ``remove``.

The daemon runs torrents in the background; these commands talk to it over
its control socket (see :mod:`pyowtorrent.daemon`).  Each takes
``--state-dir`` (else ``$PYOWTORRENT_STATE_DIR``, else the config file's
``state_dir``): one daemon per state directory.  Every command exits 2 with a
one-line error when it fails, including when no daemon runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from ..daemon.paths import DaemonPaths, resolve_state_dir
from .engine import _peer

if TYPE_CHECKING:
    from ..daemon.client import DaemonClient
    from ..daemon.run import DaemonOptions


def add_arguments(sub: Any, common: argparse.ArgumentParser) -> None:
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state-dir", metavar="DIR", help="the daemon's state directory (default: $PYOWTORRENT_STATE_DIR, else the config's)")

    # The flags go on each action only: argparse lets a subparser's defaults overwrite what its parent parsed.
    p = sub.add_parser("daemon", help="start, stop or run the background daemon")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, handler, text in (
        ("start", _start, "start the daemon in the background; returns once it takes commands"),
        ("run", _run, "run the daemon in the foreground (for a service manager); logs to standard error"),
    ):
        a = actions.add_parser(name, parents=[common, state], help=text)
        a.set_defaults(handler=handler)
        a.add_argument("--listen", action="append", metavar="ADDR", help="listen address for peers (default: the config's)")
        a.add_argument("--port", type=int, help="listen port for peers (default: the config's; 0: any free port)")
        a.add_argument("--upload-limit", type=int, metavar="BYTES", help="upload cap in bytes/s, all torrents (0: none)")
        a.add_argument("--max-connections", type=int, metavar="N", help="peer connections, all torrents together")
    a = actions.add_parser("stop", parents=[common, state], help="stop the daemon (saving resume data) and wait for it to exit")
    a.set_defaults(handler=_stop)

    p = sub.add_parser("add", parents=[common, state], help="hand a torrent to the daemon")
    p.set_defaults(handler=_add)
    p.add_argument("torrent", help="a .torrent file or an http(s) URL of one")
    p.add_argument("-o", "--output", metavar="DIR", help="the directory that will hold the payload (default: the config's download_dir)")
    p.add_argument("--peer", action="append", default=[], metavar="HOST:PORT", type=_peer, help="a peer to connect to")
    p.add_argument("--paused", action="store_true", help="add it paused")
    p.add_argument("--no-seed", dest="seed", action="store_false", help="pause it once complete instead of seeding")

    p = sub.add_parser("status", parents=[common, state], help="show the daemon's torrents")
    p.set_defaults(handler=_status)
    p.add_argument("--json", action="store_true", help="a JSON array, one object per torrent")
    p.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")

    for name, handler, text in (
        ("pause", _pause, "pause a torrent of the daemon's"),
        ("resume", _resume, "resume a paused torrent (or retry a failed one)"),
        ("remove", _remove, "remove a torrent from the daemon"),
    ):
        p = sub.add_parser(name, parents=[common, state], help=text)
        p.set_defaults(handler=handler)
        p.add_argument("torrent", help="an info-hash, a unique prefix of one (6+ hex digits), a name, or a .torrent file")
        if name == "remove":
            p.add_argument("--delete-data", action="store_true", help="delete the downloaded files too")


def _client(paths: DaemonPaths) -> DaemonClient:
    # Imported here: the client needs aiohttp, which no other command should pay for at start-up.
    from ..daemon.client import DaemonClient

    return DaemonClient(paths.root)


def _paths(args: argparse.Namespace) -> DaemonPaths:
    return DaemonPaths(resolve_state_dir(args.state_dir, args.config))


# -- the daemon ---------------------------------------------------------------------


def _options(args: argparse.Namespace, paths: DaemonPaths) -> DaemonOptions:
    from ..daemon.run import DaemonOptions  # the engine, loaded only by the commands that run one

    # The daemon's log is where a person finds what it did: info unless asked otherwise.
    level = args.log_level or ("debug" if args.verbose >= 2 else "info")
    return DaemonOptions(
        state_dir=str(paths.root),
        listen=args.listen,
        port=args.port,
        upload_limit=args.upload_limit,
        max_connections=args.max_connections,
        log_level=level,
        log_file=os.path.abspath(args.log_file) if args.log_file else None,
        config=os.path.abspath(os.path.expanduser(args.config)) if args.config else None,
    )


def _start(args: argparse.Namespace) -> int:
    from ..daemon.process import start_daemon

    paths = _paths(args)
    options = _options(args, paths)
    pid = start_daemon(options)
    print(f"daemon {pid} running for {paths.root} (log: {options.log_file or paths.log})")
    return 0


def _run(args: argparse.Namespace) -> int:
    from ..daemon.run import run_process

    options = _options(args, _paths(args))
    options.log_stderr = options.log_file is None
    return run_process(options)


def _stop(args: argparse.Namespace) -> int:
    from ..daemon.process import stop_daemon

    paths = _paths(args)
    pid = stop_daemon(paths.root)
    print(f"daemon {pid} stopped")
    return 0


# -- torrents ----------------------------------------------------------------------------


def _add(args: argparse.Namespace) -> int:
    from ..api import resolve_torrent

    paths = _paths(args)
    if args.output is None:
        from .options import load_cli_config

        output = str(load_cli_config(args).download_dir)
    else:
        output = os.path.abspath(os.path.expanduser(args.output))  # ours, not the daemon's working directory
    # Read here, sent as bytes: the daemon never reads a path or fetches a URL on our behalf.
    meta = asyncio.run(resolve_torrent(args.torrent))
    result = _client(paths).add(meta.to_bytes(), output, seed=args.seed, paused=args.paused, peers=args.peer)
    if result["added"]:
        print(f"added {meta.name} ({meta.info_hash.hex()}) into {output}")
    else:
        print(f"{meta.name} ({meta.info_hash.hex()}) was already there, into {output}")
    return 0


def _pause(args: argparse.Namespace) -> int:
    doc = _client(_paths(args)).pause(args.torrent)
    print(f"paused {doc['name']} ({doc['info_hash']})")
    return 0


def _resume(args: argparse.Namespace) -> int:
    doc = _client(_paths(args)).resume(args.torrent)
    print(f"resumed {doc['name']} ({doc['info_hash']}): {doc['state']}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    doc = _client(_paths(args)).remove(args.torrent, delete_data=args.delete_data)
    print(f"removed {doc['name']} ({doc['info_hash']})" + (" and deleted its data" if doc["deleted_data"] else ""))
    return 0


# -- status ---------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    paths = _paths(args)
    if args.watch:
        return asyncio.run(_watch(paths, args.json))
    rows = _client(paths).status()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(render_table(rows, shutil.get_terminal_size().columns))
    return 0


async def _watch(paths: DaemonPaths, as_json: bool) -> int:
    """Redraw once a second until Ctrl-C or SIGTERM, which end it with exit 0."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tty = sys.stdout.isatty()
    from ..daemon.client import AsyncDaemonClient

    async with AsyncDaemonClient(paths.root) as client:
        while not stop.is_set():
            rows = await client.status()
            if as_json:
                frame = json.dumps(rows)  # one array per line: a stream a program can read
            else:
                frame = render_table(rows, shutil.get_terminal_size().columns)
                frame += f"\n\n{time.strftime('%H:%M:%S')}  (Ctrl-C to stop)"
            # On a terminal, home the cursor and clear the screen; elsewhere, frames one after another.
            print("\x1b[H\x1b[2J" + frame if tty and not as_json else frame + ("" if as_json else "\n"), flush=True)
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
    return 0


BAR_WIDTH = 20
# The columns but the name, the ID and the bar: state, percent, down, up, peers, ETA, with their gaps.
_FIXED = 2 + 11 + 1 + 1 + 6 + 1 + 10 + 1 + 10 + 1 + 5 + 1 + 7


def render_table(rows: list[dict[str, Any]], width: int = 100) -> str:
    """The torrents as a person reads them at a glance: one line each, errors under their torrent.

    Fits ``width`` columns (80 and up): on a narrow terminal the ID column
    goes first, then the bar shrinks, then the name is cut short.
    """
    if not rows:
        return "no torrents (add one with `pyowtorrent add TORRENT -o DIR`)"
    for show_id, bar in ((True, BAR_WIDTH), (False, BAR_WIDTH), (False, BAR_WIDTH // 2), (False, 6)):
        name_width = width - _FIXED - (bar + 2) - (10 if show_id else 0)
        if name_width >= 16:
            break
    longest = max(len(r["name"]) for r in rows)
    name_width = max(8, min(48, name_width, longest))
    id_head = f"{'ID':<8}  " if show_id else ""
    lines = [
        f"{id_head}{'NAME':<{name_width}}  {'STATE':<11} {'PROGRESS':<{bar + 9}} {'DOWN':>10} {'UP':>10} {'PEERS':>5} {'ETA':>7}"
    ]
    for r in rows:
        ident = f"{r['info_hash'][:8]:<8}  " if show_id else ""
        lines.append(
            f"{ident}{_truncate(r['name'], name_width):<{name_width}}  {r['state']:<11} "
            f"{progress_bar(r['progress'], bar)} {r['progress'] * 100:5.1f}% "
            f"{human_rate(r['download_rate']):>10} {human_rate(r['upload_rate']):>10} {r['peers']:>5} "
            f"{human_eta(r['eta'], r['progress']):>7}"
        )
        if r.get("error"):
            lines.append(f"  error: {r['error']}")
    down = sum(r["download_rate"] for r in rows)
    up = sum(r["upload_rate"] for r in rows)
    lines.append(f"{len(rows)} torrent{'s' if len(rows) != 1 else ''}, down {human_rate(down)}, up {human_rate(up)}")
    return "\n".join(lines)


def _truncate(text: str, width: int) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)  # a name from a .torrent must not drive the terminal
    return text if len(text) <= width else text[: width - 1] + "…"


def progress_bar(progress: float, width: int = BAR_WIDTH) -> str:
    filled = int(max(0.0, min(1.0, progress)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def human_rate(rate: float) -> str:
    """Bytes per second in binary units, three significant digits at most: at most 10 characters."""
    value = float(rate)
    if value < 999.5:  # what rounds to 1000 goes up a unit
        return f"{value:.0f} B/s"
    for unit in ("KiB/s", "MiB/s", "GiB/s", "TiB/s"):
        value /= 1024
        if value < 999.5 or unit == "TiB/s":
            return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def human_eta(eta: float | None, progress: float) -> str:
    if progress >= 1.0:
        return "done"
    if eta is None:
        return "-"
    s = int(eta)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
