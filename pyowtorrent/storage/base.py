"""What the engine needs of a torrent's storage: :class:`PieceStore`.

:class:`~pyowtorrent.storage.files.Storage` keeps pieces in files under a
save directory; :class:`~pyowtorrent.storage.memory.MemoryStorage` keeps them
in memory (the swarm simulator's hundred peers need no hundred copies on
disk).  Every method but :meth:`PieceStore.close` may block: the engine calls
them on its disk executor, never on the event loop.
"""

from __future__ import annotations

from typing import Callable, Protocol

__all__ = ["FileStamp", "PieceStore", "Progress"]

Progress = Callable[[int], None]
FileStamp = tuple[int, int]  # (size, mtime_ns)


class PieceStore(Protocol):
    def check(self, trusted: set[int] | None = None, *, progress: Progress | None = None) -> bytearray:
        """Which pieces are present and good: one byte per piece, 1 for good (``trusted`` ones unread)."""
        ...

    def create_empty_files(self) -> None:
        """Create what no piece write would (zero-length files)."""
        ...

    def write_piece_if_valid(self, index: int, data: bytearray | memoryview) -> bool:
        """Hash ``data`` (piece ``index`` whole) and store it only if its SHA-1 matches."""
        ...

    def read_block(self, index: int, begin: int, length: int) -> bytes | bytearray:
        """``length`` bytes of piece ``index`` from ``begin``; raises ``StorageError`` if they are gone."""
        ...

    def file_stamps(self) -> list[FileStamp | None]:
        """Each file's size and mtime, for resume data (``None``: absent)."""
        ...

    def close(self) -> None: ...

    def delete_files(self) -> None: ...
