"""The ``pyowtorrent`` command line.

Each subcommand's module adds its parser with ``add_arguments(sub, common)``
and sets ``handler``; every subcommand takes the logging flags of
:func:`common_parser`.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .._version import __version__
from ..errors import PyowtorrentError
from .options import common_parser, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyowtorrent", description="Publish and fetch datasets over BitTorrent.")
    parser.add_argument("--version", action="version", version=f"pyowtorrent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_parser()

    p = sub.add_parser("create", parents=[common], help="make a .torrent of a file or directory")
    p.set_defaults(handler=_create)
    p.add_argument("path", help="the file or directory to share")
    p.add_argument("-o", "--output", help="where to write the .torrent (default: NAME.torrent here)")
    p.add_argument("--piece-length", type=_size, help="bytes per piece, a power of two >= 16 KiB (default: by size)")
    p.add_argument("--tracker", action="append", default=[], metavar="URL", help="a tracker; each one is a tier")
    p.add_argument("--web-seed", action="append", default=[], metavar="URL", help="a BEP 19 web seed URL")
    p.add_argument("--private", action="store_true", help="BEP 27: peers only from the trackers")
    p.add_argument("--comment", help="a free-text comment")
    p.add_argument("--no-date", action="store_true", help="leave out the creation date (reproducible output)")
    p.add_argument("--threads", type=int, help="hashing threads (default: one per core)")

    p = sub.add_parser("info", parents=[common], help="show what a .torrent holds")
    p.set_defaults(handler=_info)
    p.add_argument("torrent")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    from . import verify as verify_mod

    p = sub.add_parser("verify", parents=[common], help="check a payload against a .torrent")
    p.set_defaults(handler=verify_mod.run)
    verify_mod.build_parser(p)

    from . import engine as cli_engine

    cli_engine.add_arguments(sub, common)
    for name in _COMMAND_MODULES:
        importlib.import_module(f".{name}", __name__).add_arguments(sub, common)

    p = sub.add_parser("demo", parents=[common], help="create a sample dataset, make its torrent, verify it")
    p.set_defaults(handler=_demo)
    p.add_argument("--dir", help="work here instead of a temporary directory")
    p.add_argument("--size", type=_size, default=64 << 20, help="sample payload size in bytes (default 64 MiB)")
    return parser


# Modules adding further subcommands, each with add_arguments(sub, common).
_COMMAND_MODULES: list[str] = ["daemon", "gdrive", "serve"]


# The cyclic collector runs once this many more container objects were made than freed (the
# interpreter's default is 700).  A download's per-block objects are freed by reference counting;
# what lasts (buffers, tasks, peers) tripped the default ~80 times in 128 MiB, each a walk of every
# young object: ~18 ms of a leecher's ~0.7 CPU s, against ~5 ms here.
GC_THRESHOLD = 10_000


def main(argv: Sequence[str] | None = None) -> int:
    return _run(build_parser().parse_args(argv))


def entry() -> int:
    """:func:`main` as a process of its own (the ``pyowtorrent`` script, ``python -m pyowtorrent``):
    the collector is tuned for it, which a caller of :func:`main` in its own process may not want."""
    # What start-up makes (modules, classes, the parser) lives as long as the process: not
    # collected during it, and kept out of every later collection's walk.
    gc.disable()
    try:
        args = build_parser().parse_args()
    finally:
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
        gc.enable()
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from . import verify as verify_mod

    setup_logging(args.verbose, args.log_level, args.log_file)
    return verify_mod.run_command(args.handler, args)


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = units.get(t[-1:], 1)
    try:
        return int(t[:-1] if t[-1:] in units else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def _create(args: argparse.Namespace) -> int:
    from . import verify as verify_mod
    from ..storage.create import create_torrent, list_files

    src = Path(args.path)
    total = sum(s for _, s, _ in list_files(src)) if src.is_dir() else (src.stat().st_size if src.is_file() else 0)
    bar = verify_mod.progress_bar(total, "hashing")
    try:
        meta = create_torrent(
            src,
            piece_length=args.piece_length,
            trackers=args.tracker,
            web_seeds=args.web_seed,
            private=args.private,
            comment=args.comment,
            creation_date=None if args.no_date else -1,
            threads=args.threads,
            progress=bar.update if bar is not None else None,
        )
    except ValueError as exc:
        raise PyowtorrentError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    out = Path(args.output) if args.output else Path(f"{meta.name}.torrent")
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(meta.to_bytes())
    os.replace(tmp, out)
    print(f"{out}: {meta.name}, {meta.total_length} bytes in {meta.num_pieces} pieces of {meta.piece_length}")
    print(f"info-hash {meta.info_hash.hex()}")
    return 0


def info_dict(meta: Any) -> dict[str, Any]:
    return {
        "name": meta.name,
        "info_hash": meta.info_hash.hex(),
        "info_hash_v2": meta.info_hash_v2.hex() if meta.info_hash_v2 else None,
        "total_length": meta.total_length,
        "piece_length": meta.piece_length,
        "num_pieces": meta.num_pieces,
        "private": meta.private,
        "files": [{"path": f.path_str, "length": f.length} for f in meta.files if not f.pad],
        "trackers": [list(t) for t in meta.trackers],
        "web_seeds": list(meta.web_seeds),
        "creation_date": meta.creation_date,
        "comment": meta.comment,
        "created_by": meta.created_by,
        "magnet": meta.magnet(),
    }


def _info(args: argparse.Namespace) -> int:
    from ..metainfo.torrent_file import load_metainfo

    meta = load_metainfo(args.torrent)
    doc = info_dict(meta)
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
        return 0
    print(f"name:         {doc['name']}")
    print(f"info-hash:    {doc['info_hash']}")
    if doc["info_hash_v2"]:
        print(f"info-hash v2: {doc['info_hash_v2']} (hybrid torrent, read as v1)")
    print(f"size:         {doc['total_length']} bytes")
    print(f"pieces:       {doc['num_pieces']} x {doc['piece_length']} bytes")
    print(f"private:      {'yes' if doc['private'] else 'no'}")
    for i, tier in enumerate(doc["trackers"]):
        print(f"tracker tier {i}: {' '.join(tier)}")
    for url in doc["web_seeds"]:
        print(f"web seed:     {url}")
    if doc["comment"]:
        print(f"comment:      {doc['comment']}")
    print(f"files:        {len(doc['files'])}")
    for f in doc["files"]:
        print(f"  {f['length']:>14}  {f['path']}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.dir, args.size)


if __name__ == "__main__":
    sys.exit(main())
