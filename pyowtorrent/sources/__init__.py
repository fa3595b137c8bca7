"""Torrent sources: where a data loader finds a ``.torrent`` by name, info-hash or id.

One small protocol, :class:`TorrentSource`; implementations for a local
directory (:class:`LocalDirectory`), a web server (:class:`HttpSource`) and
a Google Drive folder (:class:`~pyowtorrent.sources.gdrive.DriveFolder`,
with the ``gdrive`` extra).  :func:`open_source` turns a configured string
into one of them.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from .base import GDRIVE_PREFIX, TorrentSource
from .http import HttpSource, fetch_url
from .local import LocalDirectory

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["TorrentSource", "LocalDirectory", "HttpSource", "fetch_url", "open_source"]


def open_source(spec: str | os.PathLike[str] | TorrentSource, config: Config | None = None) -> TorrentSource:
    """The source a setting names: ``gdrive:FOLDER_ID``, an ``http(s)://`` base URL, or a directory."""
    if isinstance(spec, TorrentSource):
        return spec
    text = os.fspath(spec)
    if text.startswith(GDRIVE_PREFIX):
        from .gdrive import DriveFolder

        return DriveFolder.from_config(text[len(GDRIVE_PREFIX) :], config)
    if re.match(r"(?i)https?://", text):
        return HttpSource(text)
    return LocalDirectory(text)
