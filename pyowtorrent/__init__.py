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
    MagnetError,
    MetainfoError,
    ProtocolError,
    PyowtorrentError,
    StorageError,
    TrackerError,
)

_LAZY = {
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
    "MagnetError",
    "MetainfoError",
    "ProtocolError",
    "PyowtorrentError",
    "StorageError",
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
    from .storage.create import create_torrent
    from .storage.verifier import VerifyReport, verify_payload
    from .metainfo.magnet import Magnet, parse_magnet
    from .metainfo.torrent_file import Metainfo, load_metainfo, parse_metainfo
