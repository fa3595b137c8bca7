"""A torrent's pieces in memory, for the swarm simulator.

Pieces are kept content-addressed in a ``pool`` that many storages may
share: a dict from a piece's SHA-1 digest to its bytes.  A storage records
only which digest it holds for each piece, so a hundred simulated peers of a
64 MiB torrent hold one copy of it between them.  The digest is the one
computed to verify the piece, so keeping pieces this way costs nothing more.

Same semantics as :class:`~pyowtorrent.storage.files.Storage`: a piece is
stored only when its SHA-1 matches the torrent's, a seeder's pieces are
verified by :meth:`MemoryStorage.check`, and a piece not held cannot be read.
"""

from __future__ import annotations

import hashlib

from ..errors import StorageError
from ..metainfo.torrent_file import Metainfo
from .base import FileStamp, Progress

__all__ = ["MemoryStorage", "PiecePool"]

PiecePool = dict[bytes, bytes]  # SHA-1 digest -> piece bytes


class MemoryStorage:
    """Implements :class:`~pyowtorrent.storage.base.PieceStore` in memory.

    ``payload`` (the torrent's whole content) makes a seeder: every piece is
    stored, as a seeder's files would be on disk, and checked by :meth:`check`.
    """

    def __init__(self, meta: Metainfo, *, pool: PiecePool | None = None, payload: bytes | None = None) -> None:
        self.meta = meta
        self.pool: PiecePool = {} if pool is None else pool
        self._held: list[bytes | None] = [None] * meta.num_pieces  # the digest stored for each piece
        if payload is not None:
            if len(payload) != meta.total_length:
                raise ValueError(f"payload is {len(payload)} bytes but the torrent holds {meta.total_length}")
            view = memoryview(payload)
            step = meta.piece_length
            for i in range(meta.num_pieces):
                piece = view[i * step : (i + 1) * step]
                self._store(i, hashlib.sha1(piece).digest(), piece)

    def _store(self, index: int, digest: bytes, data: bytearray | memoryview) -> None:
        if digest not in self.pool:
            self.pool[digest] = bytes(data)
        self._held[index] = digest

    def check(self, trusted: set[int] | None = None, *, progress: Progress | None = None) -> bytearray:
        """One byte per piece: 1 where the piece held is the torrent's (``trusted`` ones taken as good)."""
        have = bytearray(self.meta.num_pieces)
        trusted = trusted or set()
        for i, digest in enumerate(self._held):
            if i in trusted:
                have[i] = 1
            elif digest is not None:
                have[i] = digest == self.meta.piece_hash(i)
                if progress is not None:
                    progress(self.meta.layout.piece_size(i))
        return have

    def create_empty_files(self) -> None:
        pass  # no files

    def write_piece_if_valid(self, index: int, data: bytearray | memoryview) -> bool:
        digest = hashlib.sha1(data).digest()
        if digest != self.meta.piece_hash(index):
            return False
        self._store(index, digest, data)
        return True

    def read_block(self, index: int, begin: int, length: int) -> bytes:
        digest = self._held[index] if 0 <= index < len(self._held) else None
        if digest is None:
            raise StorageError(f"{self.meta.name}: piece {index} is not held")
        piece = self.pool[digest]
        if begin < 0 or length < 0 or begin + length > len(piece):
            raise StorageError(f"{self.meta.name}: bytes {begin}..{begin + length} are outside piece {index}")
        return piece[begin : begin + length]

    def content(self) -> bytes:
        """The torrent's bytes as stored: zeros where a piece is not held."""
        layout = self.meta.layout
        return b"".join(
            self.pool[d] if d is not None else bytes(layout.piece_size(i)) for i, d in enumerate(self._held)
        )

    def file_stamps(self) -> list[FileStamp | None]:
        return [None] * len(self.meta.files)

    def close(self) -> None:
        pass

    def delete_files(self) -> None:
        # The pool is shared: other storages may hold the same pieces.
        self._held = [None] * self.meta.num_pieces
