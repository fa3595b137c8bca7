"""pyowtorrent: a pure-Python BitTorrent engine for research datasets.

The façade: everything a data loader or a script needs is importable from
here.  Names are imported on first use, so ``python -m pyowtorrent.verify``
pays only for what verification needs.  (Checking a payload is
``verify_payload``: the name ``pyowtorrent.verify`` belongs to that module.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

from .errors import (  # noqa: E402  (cheap, and every caller wants them)
    BencodeError,
    ConfigError,
    DaemonError,
    DownloadTimeout,
    MagnetError,
    MetainfoError,
    NoPeersError,
    ProtocolError,
    PyowtorrentError,
    SourceAccessError,
    SourceError,
    StorageError,
    TorrentNotFound,
    TrackerError,
)

_LAZY = {
    "download": ".api",
    "adownload": ".api",
    "seed": ".api",
    "aseed": ".api",
    "stop_seeding": ".api",
    "resolve_torrent": ".api",
    "is_complete": ".api",
    "Session": ".engine.session",
    "TorrentStatus": ".engine.events",
    "TorrentState": ".engine.events",
    "Config": ".config",
    "load_config": ".config",
    "Metainfo": ".metainfo.torrent_file",
    "load_metainfo": ".metainfo.torrent_file",
    "parse_metainfo": ".metainfo.torrent_file",
    "Magnet": ".metainfo.magnet",
    "parse_magnet": ".metainfo.magnet",
    "create_torrent": ".storage.create",
    "VerifyReport": ".storage.verifier",
    "verify_payload": ".storage.verifier",
}

__all__ = [
    "__version__",
    "BencodeError",
    "ConfigError",
    "DaemonError",
    "DownloadTimeout",
    "MagnetError",
    "MetainfoError",
    "NoPeersError",
    "ProtocolError",
    "PyowtorrentError",
    "SourceAccessError",
    "SourceError",
    "StorageError",
    "TorrentNotFound",
    "TrackerError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyowtorrent' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .api import adownload, aseed, download, is_complete, resolve_torrent, seed, stop_seeding
    from .config import Config, load_config
    from .engine.events import TorrentState, TorrentStatus
    from .engine.session import Session
    from .storage.create import create_torrent
    from .storage.verifier import VerifyReport, verify_payload
    from .metainfo.magnet import Magnet, parse_magnet
    from .metainfo.torrent_file import Metainfo, load_metainfo, parse_metainfo
