"""Torrent sources: where a data loader finds a ``.torrent`` by name, info-hash or id.

One small protocol, :class:`TorrentSource`; implementations for a local
directory (:class:`LocalDirectory`), a web server (:class:`HttpSource`) and
a Google Drive folder (:class:`~pyowtorrent.sources.gdrive.DriveFolder`,
with the ``gdrive`` extra).  :func:`open_source` turns a configured string
into one of them.
"""

from __future__ import annotations

from .base import TorrentSource, open_source
from .http import HttpSource, fetch_url
from .local import LocalDirectory

__all__ = ["TorrentSource", "LocalDirectory", "HttpSource", "fetch_url", "open_source"]
