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

import base64
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StorageError
from .hasher import Progress, check_files, hash_pieces
from ..metainfo.torrent_file import Metainfo

log = logging.getLogger(__name__)

__all__ = ["Storage", "ResumeData"]

RESUME_VERSION = 1


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


@dataclass
class ResumeData:
    """What a restart needs to skip a full recheck: verified pieces and the files as they were."""

    info_hash: bytes
    have: bytearray
    stamps: list[tuple[int, int] | None]

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": RESUME_VERSION,
                "info_hash": self.info_hash.hex(),
                "num_pieces": len(self.have),
                "have": base64.b64encode(bytes(_pack(self.have))).decode(),
                "files": [list(s) if s is not None else None for s in self.stamps],
            }
        )

    @classmethod
    def from_json(cls, text: str, meta: Metainfo) -> ResumeData | None:
        """Resume data for ``meta``, or ``None`` if the file is not usable (then everything is rechecked)."""
        try:
            doc: Any = json.loads(text)
            if doc.get("version") != RESUME_VERSION or doc.get("info_hash") != meta.info_hash.hex():
                return None
            if doc.get("num_pieces") != meta.num_pieces:
                return None
            have = _unpack(base64.b64decode(doc["have"], validate=True), meta.num_pieces)
            files = doc["files"]
            if not isinstance(files, list) or len(files) != len(meta.files):
                return None
            stamps: list[tuple[int, int] | None] = []
            for s in files:
                if s is None:
                    stamps.append(None)
                elif isinstance(s, list) and len(s) == 2 and all(type(v) is int for v in s):
                    stamps.append((s[0], s[1]))
                else:
                    return None
            return cls(meta.info_hash, have, stamps)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def trusted_pieces(self, meta: Metainfo, current: list[tuple[int, int] | None]) -> set[int]:
        """The recorded pieces whose files are exactly as recorded (same size and mtime)."""
        changed = {i for i, (a, b) in enumerate(zip(self.stamps, current)) if a != b}
        out = set()
        for i in range(meta.num_pieces):
            if self.have[i] and not any(s.file_index in changed for s in meta.layout.piece_slices(i)):
                out.add(i)
        return out


def _pack(have: bytearray) -> bytearray:
    out = bytearray((len(have) + 7) // 8)
    for i, v in enumerate(have):
        if v:
            out[i >> 3] |= 0x80 >> (i & 7)
    return out


def _unpack(bits: bytes, n: int) -> bytearray:
    if len(bits) != (n + 7) // 8:
        raise ValueError("bitfield length")
    return bytearray(1 if bits[i >> 3] & (0x80 >> (i & 7)) else 0 for i in range(n))


def write_atomically(path: Path, text: str) -> None:
    """Write a small file so that a crash leaves either the old or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)  # make the rename itself durable
    finally:
        os.close(dfd)

