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
