"""The quick-start demo: make a sample dataset, make its torrent, verify it, show a damaged byte caught."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .create import create_torrent
from .hashing import verify_payload


def make_sample(root: Path, size: int) -> Path:
    """A small dataset tree: a large pseudo-random 'zip', a readme, an empty file."""
    ds = root / "sample-dataset"
    (ds / "docs").mkdir(parents=True, exist_ok=True)
    (ds / "docs" / "README.txt").write_text("A sample dataset made by `pyowtorrent demo`.\n")
    (ds / "EMPTY").write_bytes(b"")
    block = hashlib.sha256(b"pyowtorrent demo").digest() * 32768  # 1 MiB, the same on every machine
    with open(ds / "data.zip", "wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)
    return ds


def run_demo(directory: str | None, size: int) -> int:
    with tempfile.TemporaryDirectory(prefix="pyowtorrent-demo-") as tmp:
        root = Path(directory) if directory else Path(tmp)
        ds = make_sample(root, size)
        print(f"sample payload: {ds} ({size} bytes)")
        meta = create_torrent(ds, comment="pyowtorrent demo")
        torrent = root / "sample-dataset.torrent"
        torrent.write_bytes(meta.to_bytes())
        print(f"created {torrent}: {meta.num_pieces} pieces of {meta.piece_length} bytes, info-hash {meta.info_hash.hex()}")
        report = verify_payload(meta, ds)
        print(f"verify: {report.pieces_passed}/{report.num_pieces} pieces good")
        if not report.ok:
            print("demo FAILED: a freshly created torrent did not verify")
            return 1
        with open(ds / "data.zip", "r+b") as f:
            f.seek(size // 2)
            byte = f.read(1)
            f.seek(size // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
        damaged = verify_payload(meta, ds)
        caught = [f.index for f in damaged.failures]
        print(f"after flipping one byte of data.zip: pieces {caught} fail, as they should")
        if len(caught) != 1:
            print("demo FAILED: the damaged byte was not caught exactly")
            return 1
        print("demo complete: torrent made, payload verified, damage caught")
    return 0
