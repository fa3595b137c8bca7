"""A leecher fed faster than its disk hashes and writes stops asking for blocks, so its memory stays bounded.

Whole pieces wait in memory for the disk thread; without a bound, a fast
peer and a slow disk (or a slow CPU) pile up piece buffers for the whole
payload.  Here the disk is held shut: the leecher must stop requesting
once MAX_QUEUED_BYTES wait, then finish byte-exact once the disk opens.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

from pyowtorrent.engine import pieces
from pyowtorrent.engine.services import ThreadDisk
from pyowtorrent.engine.session import Session

from .engine_util import make_torrent, same_tree, until

T = TypeVar("T")
MiB = 1 << 20


class GatedDisk:
    """Runs everything on threads, but hashing-and-writing a piece only once ``gate`` is set."""

    def __init__(self) -> None:
        self.inner = ThreadDisk(2)
        self.gate = asyncio.Event()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if getattr(fn, "__name__", "") == "write_piece_if_valid":
            await self.gate.wait()
        return await self.inner.run(fn, *args)


def test_a_leecher_whose_disk_lags_stops_asking_and_finishes_once_it_catches_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pieces, "MAX_QUEUED_BYTES", 1 * MiB)
    meta, seed_dir = make_torrent(tmp_path, {"big.bin": 16 * MiB}, piece_length=64 << 10)

    async def main() -> None:
        disk = GatedDisk()
        async with Session(listen="127.0.0.1") as seeder, Session(listen="127.0.0.1", disk=disk) as leecher:
            await seeder.add_torrent(meta, seed_dir)
            torrent = await leecher.add_torrent(meta, tmp_path / "out", peers=[("127.0.0.1", seeder.listen_port)])
            assembler = torrent.assembler
            try:
                await until(lambda: assembler.backlogged, what="the disk queue to fill")
                # It stops asking: what was asked arrives, then nothing more is out.
                peers = torrent.peers.values
                await until(lambda: bool(peers()) and all(not p.outstanding for p in peers()), what="requests to drain")
                assert assembler.queued_bytes < 12 * MiB  # the bound plus what was out when it was reached, not 16
                assert not torrent.picker.is_finished()
            finally:
                disk.gate.set()  # a failure above must not leave the session's close waiting for the disk
            await torrent.wait_done(60)
        await disk.inner.shutdown()

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "out" / "ds")
