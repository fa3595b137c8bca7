"""A torrent's files on disk.

Received blocks wait in memory until their piece is whole; then one worker
call hashes the piece (a ``memoryview`` of the receive buffer, no copy) and,
only if the SHA-1 matches, writes it with positional writes across the files
it spans.  So a piece is on disk exactly when it is verified, and a bad piece
never touches the disk.  Files are created when first written (sparse, no
preallocation); pad files are never written.

Nothing is read, written, created or deleted outside the save directory,
whatever links lie below it: each file is reached from a descriptor of the
save directory one component at a time, never following a link
(:mod:`.confine`), and a link on the way is a ``StorageError`` naming it.  That
walk happens once per file: its descriptor is kept, so the hot path is one
cached descriptor and positional I/O.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
from pathlib import Path

from ..errors import StorageError
from .confine import DirWalk, LinkRefused, check_name, lstat_at, make_empty_file, not_found, open_file, open_save_dir
from .hasher import Progress, hash_pieces
from ..metainfo.torrent_file import Metainfo

log = logging.getLogger(__name__)

__all__ = ["Storage"]


class Storage:
    def __init__(self, meta: Metainfo, save_path: str | os.PathLike[str]) -> None:
        self.meta = meta
        self.layout = meta.layout
        self.save_path = Path(save_path)
        self.paths: list[Path | None] = []
        self._parts: list[tuple[str, ...] | None] = []
        for f in self.layout.files:
            if f.pad or f.symlink is not None:
                self.paths.append(None)
                self._parts.append(None)
                continue
            # The parser already made every element safe; this is the last line
            # of defence against a path that would leave the save directory.
            if not f.path or not all(check_name(c) for c in f.path):
                raise StorageError(f"{f.path_str}: path leaves the save directory")
            self.paths.append(self.save_path.joinpath(*f.path))
            self._parts.append(tuple(f.path))
        self._fds: dict[int, int] = {}  # read-write, by file index
        self._read_fds: dict[int, int] = {}  # read-only: files served before we wrote to them
        self._root: int | None = None  # the save directory, opened once
        self._lock = threading.Lock()

    # -- files -------------------------------------------------------------

    def _fd(self, index: int, create: bool) -> int:
        with self._lock:
            fd = self._fds.get(index)
            if fd is None and not create:
                fd = self._read_fds.get(index)
            if fd is None:
                fd = self._open(index, create)
                (self._fds if create else self._read_fds)[index] = fd
            return fd

    def _open(self, index: int, create: bool) -> int:
        """Open file ``index`` from the save directory down, following no link (once per file; lock held)."""
        parts = self._parts[index]
        path = self.paths[index]
        assert parts is not None and path is not None
        if self._root is None:
            self._root = open_save_dir(self.save_path, create)
            if self._root is None:
                raise not_found(self.save_path)
        with DirWalk(self._root, self.save_path) as walk:
            d = walk.dir(parts[:-1], create)
            if d is None:
                raise not_found(path)
            return open_file(d, parts[-1], path, write=create)

    def close(self) -> None:
        with self._lock:
            for fd in [*self._fds.values(), *self._read_fds.values()]:
                os.close(fd)
            self._fds.clear()
            self._read_fds.clear()
            if self._root is not None:
                os.close(self._root)
                self._root = None

    def _files(self) -> list[tuple[int, tuple[str, ...], Path]]:
        """``(index, components, path)`` of each file with bytes on disk (not pad files)."""
        return [(i, c, p) for i, (c, p) in enumerate(zip(self._parts, self.paths)) if c is not None and p is not None]

    def create_empty_files(self) -> None:
        """Zero-length files hold no piece, so no write would ever create them."""
        empty = [(i, parts, p) for i, parts, p in self._files() if self.layout.files[i].length == 0]
        if not empty:
            return
        try:
            root = open_save_dir(self.save_path, create=True)
        except OSError as exc:
            raise StorageError(f"{self.save_path}: cannot create: {exc.strerror or exc}") from None
        assert root is not None
        try:
            with DirWalk(root, self.save_path) as walk:
                for _, parts, p in empty:
                    try:
                        d = walk.dir(parts[:-1], create=True)
                        assert d is not None
                        make_empty_file(d, parts[-1], p)
                    except OSError as exc:
                        raise StorageError(f"{p}: cannot create: {exc.strerror or exc}") from None
        finally:
            os.close(root)

    def _lstat_all(self, refuse_links: bool) -> list[os.stat_result | None]:
        """Each file's ``lstat``, ``None`` where it is absent or cannot be reached.

        A link on the way or at the file raises :class:`LinkRefused` if
        ``refuse_links``, and is ``None`` otherwise.
        """
        out: list[os.stat_result | None] = [None] * len(self.paths)
        try:
            root = open_save_dir(self.save_path, create=False)
        except OSError:
            return out  # no save directory to read (a file there, no permission): no files
        if root is None:
            return out
        try:
            with DirWalk(root, self.save_path) as walk:
                for i, parts, p in self._files():
                    try:
                        d = walk.dir(parts[:-1], create=False)
                        st = None if d is None else lstat_at(d, parts[-1])
                    except LinkRefused:
                        if refuse_links:
                            raise
                        continue
                    except (OSError, StorageError):
                        continue  # a file in the way of a directory, no permission: nothing there to read
                    if st is not None and stat.S_ISLNK(st.st_mode):
                        if refuse_links:
                            raise LinkRefused(p)
                        continue
                    out[i] = st
        finally:
            os.close(root)
        return out

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
        where their files are missing or short, which cannot hold them.  A
        link where the torrent has a file or directory raises ``StorageError``
        naming it.  (The hasher opens files by path: a link made between this
        walk and its open would be read through, though never written through;
        a piece "found" that way cannot be served, as :meth:`read_block` refuses it.)
        """
        layout = self.layout
        have = bytearray(layout.num_pieces)
        for i in trusted or ():
            have[i] = 1
        stats = self._lstat_all(refuse_links=True)
        # Nothing to hash where a file is absent or not a regular file (a FIFO would block the hasher).
        missing = {i for i, st in enumerate(stats) if self.paths[i] is not None and not (st and stat.S_ISREG(st.st_mode))}
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
        """``(size, mtime_ns)`` of each file, ``None`` where it is absent, has no bytes on disk, or is behind a link."""
        return [
            (st.st_size, st.st_mtime_ns) if st is not None and stat.S_ISREG(st.st_mode) else None
            for st in self._lstat_all(refuse_links=False)
        ]

    def delete_files(self) -> None:
        """Delete the torrent's files, then the directories it made if now empty.

        Nothing is deleted through a link: a file behind one, or a link where a
        file should be, is left (and logged).
        """
        self.close()
        try:
            root = open_save_dir(self.save_path, create=False)
        except OSError as exc:
            raise StorageError(f"{self.save_path}: cannot delete from it: {exc.strerror or exc}") from None
        if root is None:
            return
        try:
            with DirWalk(root, self.save_path) as walk:
                files = self._files()
                for _, parts, p in files:
                    try:
                        d = walk.dir(parts[:-1], create=False)
                        st = None if d is None else lstat_at(d, parts[-1])
                        if d is None or st is None:
                            continue
                        if stat.S_ISLNK(st.st_mode):
                            raise LinkRefused(p)
                        if not stat.S_ISREG(st.st_mode):
                            raise StorageError(f"{p}: not a regular file")
                        os.unlink(parts[-1], dir_fd=d)
                    except FileNotFoundError:
                        pass
                    except StorageError as exc:
                        log.warning("not deleted: %s", exc)
                    except OSError as exc:
                        raise StorageError(f"{p}: cannot delete: {exc.strerror or exc}") from None
                # Deepest first; rmdir fails on a non-empty directory and on a link (ENOTDIR).
                dirs = {parts[:k] for _, parts, _ in files for k in range(1, len(parts))}
                for dparts in sorted(dirs, key=len, reverse=True):
                    try:
                        parent = walk.dir(dparts[:-1], create=False)
                        if parent is not None:
                            os.rmdir(dparts[-1], dir_fd=parent)
                    except (OSError, StorageError):
                        pass
        finally:
            os.close(root)
