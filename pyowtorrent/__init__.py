"""pyowtorrent: a pure-Python BitTorrent engine for research datasets.

The façade: everything a data loader or a script needs is importable from
here.  Names are imported on first use, so ``python -m pyowtorrent.verify``
pays only for what verification needs.
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
    "verify",
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


def verify(torrent: Any, payload: Any, **kwargs: Any) -> Any:
    """Check ``payload`` against ``torrent`` (a path to a .torrent or a :class:`Metainfo`).

    Returns a :class:`VerifyReport`; ``report.ok`` is true when every piece matched.
    """
    from .hashing import verify_payload
    from .metainfo import Metainfo, load_metainfo

    meta = torrent if isinstance(torrent, Metainfo) else load_metainfo(torrent)
    return verify_payload(meta, payload, **kwargs)


if TYPE_CHECKING:
    from .create import create_torrent
    from .hashing import VerifyReport, verify_payload
    from .magnet import Magnet, parse_magnet
    from .metainfo import Metainfo, load_metainfo, parse_metainfo
