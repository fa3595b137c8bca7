"""The exception hierarchy: one base, one subclass per area."""

from __future__ import annotations


class PyowtorrentError(Exception):
    """Base class of every error pyowtorrent raises on purpose."""


class BencodeError(PyowtorrentError):
    """Bytes that are not valid bencoding."""


class MetainfoError(PyowtorrentError):
    """A .torrent file (or info dictionary) that breaks a rule of BEP 3/12/19/27/47/52."""


class MagnetError(PyowtorrentError):
    """A magnet URI that cannot be understood."""


class StorageError(PyowtorrentError):
    """A payload file that cannot be read or written."""


class ProtocolError(PyowtorrentError):
    """A peer broke the wire protocol."""


class TrackerError(PyowtorrentError):
    """A tracker's answer could not be used."""


class ConfigError(PyowtorrentError):
    """A configuration file or setting that cannot be used (the message names the file and line)."""


class SourceError(PyowtorrentError):
    """A torrent source (a directory, a web server, a Google Drive folder) could not give a .torrent."""


class TorrentNotFound(SourceError):
    """The source answered, but has no .torrent by that reference."""


class SourceAccessError(SourceError):
    """The source refused us: missing or expired credentials, or no access to the folder."""


class DownloadTimeout(PyowtorrentError):
    """A download was not done within its timeout; the message says how far it got.

    ``status`` is the torrent's last :class:`~pyowtorrent.engine.events.TorrentStatus`.
    """

    def __init__(self, message: str, status: object = None) -> None:
        super().__init__(message)
        self.status = status


class NoPeersError(DownloadTimeout):
    """Nobody to download from: no peer connected and no tracker answered within the timeout."""


class DaemonError(PyowtorrentError):
    """The background daemon is not running, cannot start, or refused a command."""
