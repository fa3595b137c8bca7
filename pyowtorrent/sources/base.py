"""The torrent-source protocol."""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

__all__ = ["TorrentSource", "is_info_hash", "GDRIVE_PREFIX"]

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
