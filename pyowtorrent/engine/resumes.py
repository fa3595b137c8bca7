"""A torrent's resume data: read once at start, saved off the loop whenever the pieces we have change."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from ..metainfo.torrent_file import Metainfo
from ..storage.base import PieceStore
from ..storage.resume import ResumeData, write_atomically
from .services import Disk, Supervisor

log = logging.getLogger(__name__)

__all__ = ["ResumeKeeper"]


class ResumeKeeper:
    """Keeps one torrent's resume file (``path`` None: keeps none, as for in-memory storage).

    ``have`` gives the verified pieces as they are now.  Saves run on the
    disk executor one at a time: a save asked for while one is in flight is
    done by that writer when it finishes, from the state as it is then, so
    an older snapshot never lands after a newer one.
    """

    def __init__(
        self, path: Path | None, meta: Metainfo, storage: PieceStore, disk: Disk, have: Callable[[], bytearray]
    ) -> None:
        self.path = path
        self.meta = meta
        self.storage = storage
        self.disk = disk
        self.have = have
        self.dirty = False  # the pieces changed since the last save
        self._asked = False  # a save was asked for and not yet begun
        self._writing = False
        self._writes = Supervisor(f"{meta.name} resume data")

    def trusted_pieces(self) -> set[int]:
        """The pieces the resume file vouches for (their files unchanged since); runs on the disk executor."""
        if self.path is None or not self.path.is_file():
            return set()
        try:
            resume = ResumeData.from_json(self.path.read_text(), self.meta)
        except (OSError, UnicodeDecodeError):
            return set()
        return resume.trusted_pieces(self.meta, self.storage.file_stamps()) if resume is not None else set()

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self._asked = True
        if self._writing:
            return  # the writer saves again when it is done
        self._writing = True
        self._writes.spawn(self._write(self.path), f"{self.meta.name} resume")

    async def wait(self) -> None:
        """Until every save asked for so far is on disk (or failed)."""
        await self._writes.wait()

    async def _write(self, path: Path) -> None:
        try:
            # Once per save asked for, not once per change: pieces pass all the time while
            # downloading, and a writer that looped while they did would never stop.
            while self._asked:
                self._asked = False
                have = self.have()
                self.dirty = False

                def write() -> None:
                    write_atomically(path, ResumeData(self.meta.info_hash, have, self.storage.file_stamps()).to_json())

                try:
                    await self.disk.run(write)
                except OSError as exc:
                    self.dirty = True
                    self._asked = False
                    log.warning("%s: cannot save resume data: %s", self.meta.name, exc)
                    return
        finally:
            self._writing = False
