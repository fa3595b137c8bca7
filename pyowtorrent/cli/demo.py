"""The quick-start demo: a dataset, its torrent, a tracker, a seeder and a downloader on loopback; verified."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..storage.create import create_torrent
from ..storage.verifier import verify_payload


def make_sample(root: Path, size: int) -> Path:
    """A small dataset tree: a large pseudo-random 'zip', a readme, an empty file."""
    ds = root / "sample-dataset"
    (ds / "docs").mkdir(parents=True, exist_ok=True)
    (ds / "docs" / "README.txt").write_text("A sample dataset made by `pyowtorrent demo`.\n")
    (ds / "EMPTY").write_bytes(b"")
    seed = hashlib.sha256(b"pyowtorrent demo").digest()
    with open(ds / "data.zip", "wb") as f:
        left, n = size, 0
        while left > 0:
            # 1 MiB blocks that differ from each other, the same on every machine.
            block = hashlib.sha256(seed + n.to_bytes(8, "big")).digest() * 32768
            f.write(block[: min(left, len(block))])
            left -= len(block)
            n += 1
    return ds


async def _demo(root: Path, size: int) -> int:
    from ..engine.session import Session
    from ..service.tracker import Tracker

    seed_dir = root / "seeder"
    ds = make_sample(seed_dir, size)
    print(f"sample payload: {ds} ({size} bytes)")
    tracker = Tracker()
    await tracker.start("127.0.0.1", 0)  # loopback only: nothing of the demo is reachable from outside
    async with tracker:
        url = tracker.announce_url("127.0.0.1")
        print(f"tracker: {url}")
        meta = create_torrent(ds, comment="pyowtorrent demo", trackers=[url])
        torrent = root / "sample-dataset.torrent"
        torrent.write_bytes(meta.to_bytes())
        print(f"created {torrent}: {meta.num_pieces} pieces of {meta.piece_length} bytes, info-hash {meta.info_hash.hex()}")
        async with Session(listen="127.0.0.1") as seeder, Session(listen="127.0.0.1") as leecher:
            await seeder.add_torrent(meta, seed_dir)
            # Let the seeder's first announce land, so the downloader's finds it.
            for _ in range(100):
                if tracker.peers(meta.info_hash):
                    break
                await asyncio.sleep(0.05)
            print(f"seeding on 127.0.0.1:{seeder.listen_port}; the downloader finds it through the tracker")
            start = time.monotonic()
            t = await leecher.add_torrent(meta, root / "downloader")
            await _show_progress(t, meta.total_length)
            seconds = time.monotonic() - start
        print(f"downloaded over loopback in {seconds:.2f} s ({size / seconds / 1e6:.0f} MB/s)")

    payload = root / "downloader" / ds.name
    report = verify_payload(meta, payload)
    print(f"verify: {report.pieces_passed}/{report.num_pieces} pieces good")
    if not report.ok:
        print("demo FAILED: the download did not verify")
        return 1
    print("DATA INTEGRITY CLEARED!")
    with open(payload / "data.zip", "r+b") as f:
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    caught = [f.index for f in verify_payload(meta, payload).failures]
    print(f"after flipping one byte of data.zip: pieces {caught} fail, as they should")
    if len(caught) != 1:
        print("demo FAILED: the damaged byte was not caught exactly")
        return 1
    print("demo complete: created, tracked, seeded, downloaded, verified; damage caught")
    return 0


async def _show_progress(t: Any, total: int) -> None:
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm  # type: ignore[import-untyped]

        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="downloading")
    done = asyncio.ensure_future(t.wait_done(timeout=300))
    shown = 0
    while not done.done():
        await asyncio.wait([done], timeout=0.2)
        if bar is not None:
            now = t.status().bytes_done
            bar.update(now - shown)
            shown = now
    if bar is not None:
        bar.close()
    done.result()


def run_demo(directory: str | None, size: int) -> int:
    with tempfile.TemporaryDirectory(prefix="pyowtorrent-demo-") as tmp:
        return asyncio.run(_demo(Path(directory) if directory else Path(tmp), size))
