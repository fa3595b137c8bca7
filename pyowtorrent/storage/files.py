"""A torrent's files on disk.

Received blocks wait in memory until their piece is whole; then one worker
call hashes the piece (a ``memoryview`` of the receive buffer, no copy) and,
only if the SHA-1 matches, writes it with positional writes across the files
it spans.  So a piece is on disk exactly when it is verified, and a bad piece
never touches the disk.  Files are created when first written (sparse, no
preallocation); pad files are never written; every path is checked to be
inside the save directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

from ..errors import StorageError
from .hasher import Progress, hash_pieces
from .verifier import check_files
from ..metainfo.torrent_file import Metainfo

log = logging.getLogger(__name__)

__all__ = ["Storage"]


class Storage:
    def __init__(self, meta: Metainfo, save_path: str | os.PathLike[str]) -> None:
        self.meta = meta
        self.layout = meta.layout
        self.save_path = Path(save_path)
        root = os.path.abspath(self.save_path)
        self.paths: list[Path | None] = []
        for f in self.layout.files:
            if f.pad or f.symlink is not None:
                self.paths.append(None)
                continue
            p = self.save_path.joinpath(*f.path)
            # The parser already made every element safe; this is the last line
            # of defence against a path that would leave the save directory.
            if os.path.commonpath([root, os.path.abspath(p)]) != root:
                raise StorageError(f"{f.path_str}: path leaves the save directory")
            self.paths.append(p)
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    # -- files -------------------------------------------------------------

    def _fd(self, index: int, create: bool) -> int:
        with self._lock:
            fd = self._fds.get(index)
            if fd is not None:
                return fd
            path = self.paths[index]
            assert path is not None
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
            else:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._fds[index] = fd
            return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def create_empty_files(self) -> None:
        """Zero-length files hold no piece, so no write would ever create them."""
        for i, (f, p) in enumerate(zip(self.layout.files, self.paths)):
            if p is not None and f.length == 0 and not p.exists():
                try:
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.touch()
                except OSError as exc:
                    raise StorageError(f"{p}: cannot create: {exc.strerror or exc}") from None

    # -- pieces --------------------------------------------------------------

    def write_piece_if_valid(self, index: int, data: bytearray | memoryview) -> bool:
        """Hash ``data`` (piece ``index`` whole); write it only if it matches.  Runs in a worker thread."""
        view = memoryview(data)
        if hashlib.sha1(view).digest() != self.meta.piece_hash(index):
            return False
        start = index * self.layout.piece_length
        pos = 0
        for s in self.layout.slices(start, len(view)):
            chunk = view[pos : pos + s.length]
            pos += s.length
            if self.paths[s.file_index] is None:
                continue  # pad file: zeros by definition, never written
            try:
                fd = self._fd(s.file_index, create=True)
                written = 0
                while written < s.length:
                    written += os.pwrite(fd, chunk[written:], s.file_offset + written)
            except OSError as exc:
                raise StorageError(f"{self.paths[s.file_index]}: cannot write: {exc.strerror or exc}") from None
        return True

    def read_block(self, index: int, begin: int, length: int) -> bytearray:
        """Read ``length`` bytes of piece ``index`` from ``begin``, for a peer.  Runs in a worker thread."""
        buf = bytearray(length)
        view = memoryview(buf)
        pos = 0
        for s in self.layout.slices(index * self.layout.piece_length + begin, length):
            dest = view[pos : pos + s.length]
            pos += s.length
            if self.paths[s.file_index] is None:
                continue  # zeros
            try:
                fd = self._fd(s.file_index, create=False)
                got = 0
                while got < s.length:
                    n = os.preadv(fd, [dest[got:]], s.file_offset + got)
                    if n == 0:
                        raise StorageError(f"{self.paths[s.file_index]}: shorter than the torrent says")
                    got += n
            except OSError as exc:
                raise StorageError(f"{self.paths[s.file_index]}: cannot read: {exc.strerror or exc}") from None
        return buf

    def check(
        self,
        trusted: set[int] | None = None,
        *,
        progress: Progress | None = None,
        threads: int | None = None,
    ) -> bytearray:
        """Which pieces are on disk and good: one byte per piece, 1 for good.

        Pieces in ``trusted`` (from resume data that still matches the files)
        are taken as good without reading them; the others are hashed, except
        where their files are missing or short, which cannot hold them.
        """
        layout = self.layout
        have = bytearray(layout.num_pieces)
        for i in trusted or ():
            have[i] = 1
        missing = {p.file_index for p in check_files(layout.files, self.paths) if p.kind == "missing"}
        # Hash what could be there: not trusted, and not lying wholly in missing files.
        wanted = [
            not have[i] and any(s.file_index not in missing for s in layout.piece_slices(i) if self.paths[s.file_index])
            for i in range(layout.num_pieces)
        ]
        if not any(wanted):
            return have
        hashes = hash_pieces(layout, self.paths, threads=threads, progress=progress, wanted=wanted)
        for i in range(layout.num_pieces):
            if wanted[i] and i not in hashes.unreadable and hashes.digest(i) == self.meta.piece_hash(i):
                have[i] = 1
        return have

    def file_stamps(self) -> list[tuple[int, int] | None]:
        """``(size, mtime_ns)`` of each file, ``None`` where it is absent or has no bytes on disk."""
        out: list[tuple[int, int] | None] = []
        for p in self.paths:
            if p is None:
                out.append(None)
                continue
            try:
                st = os.stat(p)
                out.append((st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return out

    def delete_files(self) -> None:
        self.close()
        for p in self.paths:
            if p is not None:
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
        # Remove the directories the torrent made, deepest first, if now empty.
        dirs = {p.parent for p in self.paths if p is not None}
        for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
            while d != self.save_path and self.save_path in d.parents:
                try:
                    d.rmdir()
                except OSError:
                    break
                d = d.parent
