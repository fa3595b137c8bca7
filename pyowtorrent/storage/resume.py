"""Resume data: what a restart needs to skip a full recheck, written so a crash never tears it.

A resume file (JSON, never pickle) lists the verified pieces and each
file's size and mtime.  Pieces whose files are exactly as recorded are
trusted without reading; anything unusable in the file makes it count as
absent, and everything is rechecked.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..metainfo.torrent_file import Metainfo
from ..wire.bitfield import bitfield_bytes, bitfield_flags

__all__ = ["ResumeData", "write_atomically"]

RESUME_VERSION = 1


@dataclass
class ResumeData:
    """What a restart needs to skip a full recheck: verified pieces and the files as they were."""

    info_hash: bytes
    have: bytearray
    stamps: list[tuple[int, int] | None]

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": RESUME_VERSION,
                "info_hash": self.info_hash.hex(),
                "num_pieces": len(self.have),
                "have": base64.b64encode(bitfield_bytes(self.have)).decode(),
                "files": [list(s) if s is not None else None for s in self.stamps],
            }
        )

    @classmethod
    def from_json(cls, text: str, meta: Metainfo) -> ResumeData | None:
        """Resume data for ``meta``, or ``None`` if the file is not usable (then everything is rechecked)."""
        try:
            doc: Any = json.loads(text)
            if doc.get("version") != RESUME_VERSION or doc.get("info_hash") != meta.info_hash.hex():
                return None
            if doc.get("num_pieces") != meta.num_pieces:
                return None
            have = bitfield_flags(base64.b64decode(doc["have"], validate=True), meta.num_pieces)
            files = doc["files"]
            if not isinstance(files, list) or len(files) != len(meta.files):
                return None
            stamps: list[tuple[int, int] | None] = []
            for s in files:
                if s is None:
                    stamps.append(None)
                elif isinstance(s, list) and len(s) == 2 and all(type(v) is int for v in s):
                    stamps.append((s[0], s[1]))
                else:
                    return None
            return cls(meta.info_hash, have, stamps)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None

    def trusted_pieces(self, meta: Metainfo, current: list[tuple[int, int] | None]) -> set[int]:
        """The recorded pieces whose files are exactly as recorded (same size and mtime)."""
        changed = {i for i, (a, b) in enumerate(zip(self.stamps, current)) if a != b}
        out = set()
        for i in range(meta.num_pieces):
            if self.have[i] and not any(s.file_index in changed for s in meta.layout.piece_slices(i)):
                out.add(i)
        return out


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write a small file so that a crash leaves either the old or the new one, never a torn one.

    The file is made mode 0600, and a new parent directory 0700: resume
    data and the daemon's state are the user's own.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A temporary name of its own: two writers (two processes sharing a resume
    # directory) never rename each other's half-written file into place.
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)  # make the rename itself durable
    finally:
        os.close(dfd)

