"""Hashing a payload while it arrives: its SHA-256 and its torrent's SHA-1 piece hashes, chunk by chunk.

An upload is hashed as it streams in, so a 10 GB dataset is a torrent the
moment its last byte lands, and the file is never read again.  Feed
:class:`StreamHasher` the bytes in order, in chunks of any size; each
digest it keeps may also be fed from a thread of its own
(:meth:`StreamHasher.updaters`), as long as each one gets the chunks in order.
Pure: no I/O, no clock.

**The piece length** has to be fixed before the first byte is hashed, since
SHA-1 pieces of one length cannot be turned into pieces of another; yet
:func:`~pyowtorrent.storage.create.auto_piece_length` picks it from the
payload's size.  The rule (:func:`candidate_piece_lengths`,
:func:`choose_piece_length`):

* **A size declared up front** (a request's ``Content-Length``): one length,
  ``auto_piece_length(declared)``.  For a raw body the declared size *is* the
  payload's, so the torrent is exactly what ``pyowtorrent create`` makes of
  the file.  For a multipart body it is the body's size, a few hundred bytes
  over the file's: only a file just under one of the size boundaries (32 MiB,
  64 MiB, ... a power of two times 2048) then gets pieces twice as large as
  ``create`` would choose -- still at most 2048 pieces.
* **No size up front** (a chunked body): the payload is hashed at two lengths,
  256 KiB and 4 MiB, at once (twice the SHA-1 work), and the final size
  chooses: 256 KiB up to 512 MiB (at most 2048 pieces), 4 MiB above it (up to
  8 GiB in at most 2048 pieces; beyond, more pieces of 4 MiB).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Final

from .create import auto_piece_length

__all__ = [
    "UNKNOWN_SIZE_PIECE_LENGTHS",
    "PieceHasher",
    "StreamHasher",
    "StreamHashes",
    "candidate_piece_lengths",
    "choose_piece_length",
]

#: The lengths a payload of unknown size is hashed at (see the module docstring).
UNKNOWN_SIZE_PIECE_LENGTHS: Final = (256 << 10, 4 << 20)

# What hashlib's update() takes: bytes, bytearray, memoryview.
Chunk = bytes | bytearray | memoryview


def candidate_piece_lengths(declared_size: int | None) -> tuple[int, ...]:
    """The piece lengths to hash a payload at, given the size declared before it arrives (if any)."""
    if declared_size is None:
        return UNKNOWN_SIZE_PIECE_LENGTHS
    return (auto_piece_length(max(declared_size, 1)),)


def choose_piece_length(size: int, candidates: Sequence[int]) -> int:
    """Of the lengths hashed at, the one for a payload of ``size`` bytes.

    The smallest candidate no smaller than what ``auto_piece_length(size)``
    wants (so at most about 2048 pieces), else the largest there is.
    """
    wanted = auto_piece_length(max(size, 1))
    fitting = [c for c in candidates if c >= wanted]
    return min(fitting) if fitting else max(candidates)


class PieceHasher:
    """The SHA-1 of each ``piece_length`` bytes of a stream fed in chunks of any size.

    A whole piece inside one chunk is hashed in one call on a ``memoryview``
    slice (no copy); a piece split across chunks is hashed as it goes.
    """

    __slots__ = ("piece_length", "size", "_digests", "_partial", "_partial_length")

    def __init__(self, piece_length: int) -> None:
        if piece_length <= 0:
            raise ValueError(f"a piece length is positive, not {piece_length}")
        self.piece_length = piece_length
        self.size = 0
        self._digests = bytearray()
        self._partial: hashlib._Hash | None = None  # the piece under way, if it has bytes
        self._partial_length = 0

    def update(self, data: Chunk) -> None:
        view = memoryview(data).cast("B")
        plen = self.piece_length
        pos = 0
        n = len(view)
        while pos < n:
            if self._partial is None and n - pos >= plen:
                self._digests += hashlib.sha1(view[pos : pos + plen]).digest()
                pos += plen
                continue
            take = min(n - pos, plen - self._partial_length)
            if self._partial is None:
                self._partial = hashlib.sha1()
            self._partial.update(view[pos : pos + take])
            self._partial_length += take
            pos += take
            if self._partial_length == plen:
                self._digests += self._partial.digest()
                self._partial, self._partial_length = None, 0
        self.size += n

    def digests(self) -> bytes:
        """Every piece's SHA-1 so far, concatenated; the last, short piece included (the stream's end)."""
        if self._partial is None:
            return bytes(self._digests)
        return bytes(self._digests) + self._partial.digest()


class StreamHashes:
    """What :meth:`StreamHasher.finish` gives: the size, the SHA-256, the pieces at each length."""

    __slots__ = ("size", "sha256", "pieces")

    def __init__(self, size: int, sha256: bytes, pieces: dict[int, bytes]) -> None:
        self.size = size
        self.sha256 = sha256
        self.pieces = pieces  # piece length -> concatenated SHA-1 digests

    @property
    def piece_length(self) -> int:
        """The piece length this payload's torrent gets (:func:`choose_piece_length`)."""
        return choose_piece_length(self.size, list(self.pieces))


class StreamHasher:
    """SHA-256 of a whole stream and its SHA-1 pieces at each of ``piece_lengths``."""

    def __init__(self, piece_lengths: Sequence[int]) -> None:
        if not piece_lengths or len(set(piece_lengths)) != len(piece_lengths):
            raise ValueError(f"piece lengths must be distinct and at least one, not {piece_lengths!r}")
        self._sha256 = hashlib.sha256()
        self._pieces = [PieceHasher(length) for length in piece_lengths]

    def updaters(self) -> list[Callable[[Chunk], None]]:
        """One function per digest kept: each may run on a thread of its own, each fed every chunk in order."""
        return [self._sha256.update, *(p.update for p in self._pieces)]

    def update(self, data: Chunk) -> None:
        for update in self.updaters():
            update(data)

    def finish(self) -> StreamHashes:
        size = self._pieces[0].size
        if any(p.size != size for p in self._pieces):
            raise RuntimeError("the piece hashers were not all fed the same bytes")
        return StreamHashes(size, self._sha256.digest(), {p.piece_length: p.digests() for p in self._pieces})
