"""A directory of ``.torrent`` files as a torrent source."""

from __future__ import annotations

import os
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
            data = _read_capped(path)
            if data is None:
                continue
            try:
                if parse_metainfo(data).info_hash == info_hash:
                    return data
            except MetainfoError:
                continue  # another file's problem, not this lookup's
        raise TorrentNotFound(f"no torrent with info-hash {info_hash.hex()} in {self.directory}")


def _read_capped(path: Path) -> bytes | None:
    """The file's bytes, ``None`` if it is not a regular file there; too large is an error."""
    try:
        with open(path, "rb") as f:
            if not os.path.isfile(f.name):
                return None
            data = f.read(MAX_TORRENT_SIZE + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_TORRENT_SIZE:
        raise SourceError(f"{path}: larger than {MAX_TORRENT_SIZE} bytes, not a .torrent")
    return data
