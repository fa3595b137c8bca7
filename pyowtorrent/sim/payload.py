"""Torrents made in memory, for simulations and tests: no files, no temp dirs."""

from __future__ import annotations

import hashlib
import random

from ..metainfo.bencoding import encode
from ..metainfo.torrent_file import Metainfo, parse_metainfo

__all__ = ["make_payload", "metainfo_for_bytes"]


def make_payload(size: int, seed: int = 0) -> bytes:
    """``size`` pseudo-random bytes, the same for the same ``seed``."""
    return random.Random(seed).randbytes(size)


def metainfo_for_bytes(name: str, data: bytes, piece_length: int = 1 << 18) -> Metainfo:
    """The single-file v1 torrent of ``data``, named ``name``, parsed as any .torrent would be."""
    if not data:
        raise ValueError("a torrent needs at least one byte of data")
    view = memoryview(data)
    pieces = b"".join(hashlib.sha1(view[i : i + piece_length]).digest() for i in range(0, len(data), piece_length))
    info = {b"name": name.encode(), b"piece length": piece_length, b"length": len(data), b"pieces": pieces}
    return parse_metainfo(encode({b"info": info}))
