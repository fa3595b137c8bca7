"""Shared pieces for the engine tests: payloads on disk and a bounded wait."""

from __future__ import annotations

import asyncio
import filecmp
import random
from pathlib import Path
from typing import Callable

from pyowtorrent.storage.create import create_torrent
from pyowtorrent.metainfo.torrent_file import Metainfo


def make_payload(root: Path, sizes: dict[str, int], seed: int = 1) -> Path:
    """Files of pseudo-random bytes under ``root`` (the torrent's directory)."""
    rng = random.Random(seed)
    for rel, size in sizes.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))
    return root


def make_torrent(tmp: Path, sizes: dict[str, int], piece_length: int = 32768, seed: int = 1) -> tuple[Metainfo, Path]:
    """A seeder's directory holding the payload ``ds/...``, and its torrent."""
    seed_dir = tmp / "seeder"
    make_payload(seed_dir / "ds", sizes, seed)
    return create_torrent(seed_dir / "ds", piece_length=piece_length), seed_dir


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


async def until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition`` on the event loop until it holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def make_zip(path: Path, members: dict[str, int], seed: int = 1) -> Path:
    """A real ``.zip`` holding members of pseudo-random bytes (stored, so its size is what was asked)."""
    import zipfile

    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, size in members.items():
            # A fixed date: writestr(name) stamps the current time, and two zips of the same members
            # made across a second boundary (a test's probe and its real one) would differ.
            z.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), rng.randbytes(size))
    return path
