"""pyowtorrent: a pure-Python BitTorrent engine for research datasets.

The façade: everything a data loader or a script needs is importable from
here.  Names are imported on first use, so ``python -m pyowtorrent.verify``
pays only for what verification needs.  (Checking a payload is
``verify_payload``: the name ``pyowtorrent.verify`` belongs to that module.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

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
    "Metainfo": ".metainfo",
    "load_metainfo": ".metainfo",
    "parse_metainfo": ".metainfo",
    "Magnet": ".magnet",
    "parse_magnet": ".magnet",
    "create_torrent": ".create",
    "VerifyReport": ".hashing",
    "verify_payload": ".hashing",
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
    from .create import create_torrent
    from .hashing import VerifyReport, verify_payload
    from .magnet import Magnet, parse_magnet
    from .metainfo import Metainfo, load_metainfo, parse_metainfo
