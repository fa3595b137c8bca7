"""How a torrent's pieces map onto its files.

BEP 3 treats the files of a torrent as one byte stream, concatenated in
order, cut into pieces of ``piece_length`` bytes (the last may be shorter).
:class:`Layout` answers the two questions everything else asks: which file
ranges make up a piece, and which pieces cover a file range.
"""

from __future__ import annotations

import bisect
from typing import Iterator, NamedTuple, Sequence

__all__ = ["BLOCK_SIZE", "FileEntry", "FileSlice", "Layout"]

# BEP 3's block: peers request pieces in blocks of 16 KiB (the last of a piece
# may be shorter), BEP 52 hashes leaves of the same size, and no piece is smaller.
BLOCK_SIZE = 1 << 14


# Records are NamedTuples rather than dataclasses: ``python -m pyowtorrent.verify``
# imports this module, and dataclasses (with inspect) would add ~8 ms to every run.


class FileEntry(NamedTuple):
    """One file of a torrent.

    ``path`` is the sanitised path as components, starting with the torrent's
    name for a multi-file torrent (libtorrent's convention), so that
    ``save_dir.joinpath(*path)`` is where the file lives.
    """

    path: tuple[str, ...]
    length: int
    offset: int = 0
    pad: bool = False
    executable: bool = False
    hidden: bool = False
    symlink: tuple[str, ...] | None = None
    mtime: int | None = None

    @property
    def path_str(self) -> str:
        return "/".join(self.path)


class FileSlice(NamedTuple):
    """``length`` bytes of file ``file_index`` starting at ``file_offset``."""

    file_index: int
    file_offset: int
    length: int


class Layout:
    def __init__(self, piece_length: int, files: Sequence[FileEntry]) -> None:
        if piece_length <= 0:
            raise ValueError("piece_length must be positive")
        self.piece_length = piece_length
        self.files = tuple(files)
        self._offsets = [f.offset for f in self.files]
        last = self.files[-1] if self.files else None
        self.total_length = last.offset + last.length if last else 0
        self.num_pieces = -(-self.total_length // piece_length)

    def piece_size(self, index: int) -> int:
        if not 0 <= index < self.num_pieces:
            raise IndexError(f"piece {index} out of range 0..{self.num_pieces - 1}")
        return min(self.piece_length, self.total_length - index * self.piece_length)

    def slices(self, start: int, length: int) -> Iterator[FileSlice]:
        """The file ranges that hold stream bytes ``[start, start + length)``, in order.

        Empty files are skipped: they hold no bytes of the stream.
        """
        end = min(start + length, self.total_length)
        i = bisect.bisect_right(self._offsets, start) - 1
        i = max(i, 0)
        pos = start
        while pos < end and i < len(self.files):
            f = self.files[i]
            f_end = f.offset + f.length
            if f_end > pos:
                n = min(end, f_end) - pos
                yield FileSlice(i, pos - f.offset, n)
                pos += n
            i += 1

    def piece_slices(self, index: int) -> list[FileSlice]:
        return list(self.slices(index * self.piece_length, self.piece_size(index)))

    def pieces_of_file(self, file_index: int) -> range:
        """The pieces that hold at least one byte of the file (empty range for an empty file)."""
        f = self.files[file_index]
        if f.length == 0:
            return range(0)
        first = f.offset // self.piece_length
        last = (f.offset + f.length - 1) // self.piece_length
        return range(first, last + 1)
