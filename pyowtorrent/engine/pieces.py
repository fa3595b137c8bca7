"""Pieces in flight: blocks gathered into a buffer per piece, then hashed and written in one disk call.

A piece counts as had exactly when its SHA-1 matched and it is on disk:
the storage hashes the whole buffer and writes it only if it matches, in
one call on the disk executor.  Buffers are page-aligned anonymous mappings
(the kernel copies them to the page cache faster) and are reused.  Each
block's sender is remembered so that :class:`~pyowtorrent.strategy.smartban.SmartBan`
can tell who sent the bad block of a failed piece.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
from typing import Any, Callable, Protocol

from ..errors import StorageError
from ..metainfo.layout import Layout
from ..storage.base import PieceStore
from ..strategy.smartban import SmartBan
from .services import Disk

PeerIdentity = tuple[str, bytes]  # (IP, peer id): what smart ban convicts

log = logging.getLogger(__name__)

__all__ = ["PieceAssembler", "PieceResults"]

# At most this much memory in receive buffers kept for reuse.
SPARE_BUFFER_BYTES = 32 << 20
# A new buffer of a piece up to this size has its pages mapped when it is made, in one call, not
# one fault per 4 KiB as blocks land (Linux): 40 instead of 100 us for a 256 KiB piece, and a
# leecher in a swarm fills many pieces at once, making a buffer for most of the first hundred it
# starts.  A larger piece's buffer takes memory only as its blocks land: mapping 16 MiB at once
# would hold the event loop ~4 ms, and many sparse pieces would take their whole size each.
POPULATE_MAX = 1 << 20
_POPULATE: dict[str, int] = (
    {"flags": mmap.MAP_SHARED | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE} if hasattr(mmap, "MAP_POPULATE") else {}
)
# Pieces whole and waiting to be hashed and written: past this many bytes no more blocks are
# asked for until the disk catches up (libtorrent's max_queued_disk_bytes), or a leecher fed
# faster than it hashes holds an ever longer queue of piece buffers in memory.
MAX_QUEUED_BYTES = 32 << 20


class PieceResults(Protocol):
    """Where the outcome of each piece goes (the torrent)."""

    def piece_passed(self, index: int) -> None: ...

    def piece_failed(self, index: int) -> None: ...

    def storage_failed(self, index: int, error: StorageError) -> None: ...

    def ban(self, peer: PeerIdentity, reason: str) -> None: ...


class PieceAssembler:
    def __init__(self, layout: Layout, storage: PieceStore, disk: Disk, results: PieceResults) -> None:
        self.layout = layout
        self.storage = storage
        self.disk = disk
        self.results = results
        self.smart_ban: SmartBan[PeerIdentity] = SmartBan()
        self._buffers: dict[int, memoryview] = {}
        self._spare: list[mmap.mmap] = []
        self._senders: dict[int, dict[int, PeerIdentity]] = {}  # piece -> block offset -> sender
        # Hash-and-write jobs run to the end even through a pause: cancelling
        # one would leave its piece neither had nor wanted.
        self.jobs: set[asyncio.Task[Any]] = set()
        self.closed = False
        self.queued_bytes = 0  # of pieces handed to the disk and not yet done
        self.on_caught_up: Callable[[], None] = lambda: None  # called when the queue falls back under its bound

    @property
    def backlogged(self) -> bool:
        """Too much is waiting for the disk: ask for no more blocks until :attr:`on_caught_up`."""
        return self.queued_bytes >= MAX_QUEUED_BYTES

    def add_block(self, index: int, begin: int, data: bytes | memoryview, sender: PeerIdentity) -> None:
        buf = self._buffers.get(index)
        if buf is None:
            buf = self._buffers[index] = self._take_buffer(index)
        buf[begin : begin + len(data)] = data
        self._senders.setdefault(index, {})[begin] = sender

    def finish(self, index: int) -> None:
        """Every block of ``index`` is in: hash it and, if good, write it (off the loop)."""
        if self.closed:
            return  # stopping: a piece completed now is one in flight, and lost
        self.queued_bytes += len(self._buffers[index])
        job = asyncio.get_running_loop().create_task(self._finish(index), name=f"piece {index}")
        self.jobs.add(job)
        job.add_done_callback(self.jobs.discard)

    async def close(self) -> None:
        """Finish the pieces being hashed and written; take no more."""
        self.closed = True
        while self.jobs:
            await asyncio.wait(list(self.jobs))

    async def _finish(self, index: int) -> None:
        buf = self._buffers.pop(index)
        senders = self._senders.pop(index, {})
        try:
            try:
                ok = await self.disk.run(self.storage.write_piece_if_valid, index, buf)
            except StorageError as exc:
                self.results.storage_failed(index, exc)
                return
            if ok:
                bans = self.smart_ban.piece_passed(index, buf) if len(self.smart_ban) else []
                self.results.piece_passed(index)
            else:
                bans = self.smart_ban.piece_failed(index, buf, senders)
                self.results.piece_failed(index)
            for sender, reason in bans:
                self.results.ban(sender, reason)
        finally:
            was_backlogged = self.backlogged
            self.queued_bytes -= len(buf)
            self._give_back(buf)
            if was_backlogged and not self.backlogged:
                self.on_caught_up()

    def _take_buffer(self, index: int) -> memoryview:
        if self._spare:
            spare = self._spare.pop()
        else:
            length = self.layout.piece_length
            spare = mmap.mmap(-1, length, **(_POPULATE if length <= POPULATE_MAX else {}))
        return memoryview(spare)[: self.layout.piece_size(index)]

    def _give_back(self, buf: memoryview) -> None:
        spare = buf.obj
        buf.release()
        if isinstance(spare, mmap.mmap) and len(self._spare) * self.layout.piece_length < SPARE_BUFFER_BYTES:
            self._spare.append(spare)
