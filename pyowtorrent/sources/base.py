"""The torrent-source protocol, and turning a configured string into a source."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["TorrentSource", "open_source", "is_info_hash", "GDRIVE_PREFIX"]

GDRIVE_PREFIX = "gdrive:"
_HEX40 = re.compile(r"[0-9a-fA-F]{40}")


@runtime_checkable
class TorrentSource(Protocol):
    """Resolves a reference (a file name, an info-hash in hex, a Drive file id) to ``.torrent`` bytes.

    ``fetch`` raises :class:`~pyowtorrent.errors.TorrentNotFound` when the
    source has no such torrent, :class:`~pyowtorrent.errors.SourceAccessError`
    when it refuses us, and :class:`~pyowtorrent.errors.SourceError` for
    anything else that kept it from answering.  It never returns more than
    :data:`~pyowtorrent.metainfo.torrent_file.MAX_TORRENT_SIZE` bytes.
    """

    async def fetch(self, reference: str) -> bytes: ...


def is_info_hash(reference: str) -> bool:
    """A v1 info-hash written as 40 hex digits."""
    return _HEX40.fullmatch(reference) is not None


def open_source(spec: str | os.PathLike[str] | TorrentSource, config: Config | None = None) -> TorrentSource:
    """The source a setting names: ``gdrive:FOLDER_ID``, an ``http(s)://`` base URL, or a directory."""
    if isinstance(spec, TorrentSource):
        return spec
    text = os.fspath(spec)
    if text.startswith(GDRIVE_PREFIX):
        from .gdrive import DriveFolder

        return DriveFolder.from_config(text[len(GDRIVE_PREFIX) :], config)
    if re.match(r"(?i)https?://", text):
        from .http import HttpSource

        return HttpSource(text)
    from .local import LocalDirectory

    return LocalDirectory(text)
