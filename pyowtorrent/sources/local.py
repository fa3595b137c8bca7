"""A directory of ``.torrent`` files as a torrent source."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import MetainfoError, SourceError, TorrentNotFound
from ..metainfo.torrent_file import MAX_TORRENT_SIZE, parse_metainfo
from .base import is_info_hash

__all__ = ["LocalDirectory"]


class LocalDirectory:
    """``.torrent`` files in one directory, found by file name or by info-hash.

    A name is a plain file name inside the directory (``a/b`` or ``..`` is
    refused, so a reference never reads outside it); ``NAME`` also finds
    ``NAME.torrent``.  An info-hash (40 hex digits) is looked up among the
    directory's ``*.torrent`` files.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).expanduser()

    def __repr__(self) -> str:
        return f"LocalDirectory({str(self.directory)!r})"

    def __str__(self) -> str:
        return str(self.directory)

    async def fetch(self, reference: str) -> bytes:
        import asyncio

        return await asyncio.to_thread(self.fetch_sync, reference)

    def fetch_sync(self, reference: str) -> bytes:
        if not self.directory.is_dir():
            raise SourceError(f"torrent directory {self.directory} does not exist")
        if is_info_hash(reference):
            return self._by_info_hash(bytes.fromhex(reference))
        if not reference or reference in (".", "..") or "/" in reference or "\\" in reference or "\0" in reference:
            raise TorrentNotFound(f"{reference!r} is not a file name in {self.directory}")
        for name in (reference, reference + ".torrent"):
            data = _read_capped(self.directory / name)
            if data is not None:
                return data
        raise TorrentNotFound(f"no torrent {reference!r} in {self.directory}")

    def _by_info_hash(self, info_hash: bytes) -> bytes:
        for path in sorted(self.directory.glob("*.torrent")):
            data = _read_capped(path, strict=False)  # another file's problem, not this lookup's
            if data is None:
                continue
            try:
                if parse_metainfo(data).info_hash == info_hash:
                    return data
            except MetainfoError:
                continue
        raise TorrentNotFound(f"no torrent with info-hash {info_hash.hex()} in {self.directory}")


def _read_capped(path: Path, strict: bool = True) -> bytes | None:
    """The file's bytes; ``None`` if there is no regular file there (or, not ``strict``, it is too large)."""
    try:
        # Non-blocking: a FIFO put where a .torrent should be must not hang the lookup.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_TORRENT_SIZE + 1)
        except OSError as exc:
            raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_TORRENT_SIZE:
        if not strict:
            return None
        raise SourceError(f"{path}: larger than {MAX_TORRENT_SIZE} bytes, not a .torrent")
    return data
