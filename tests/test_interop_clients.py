"""Real BitTorrent clients from Debian other than libtorrent, both ways, on loopback: aria2.

aria2 (1.36) sends a whole new bitfield in the middle of a connection instead of many haves,
and a have all once it completes; a seeder that took those for protocol violations dropped it
a few megabytes in.  Peers find each other through our embedded tracker.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from pyowtorrent.engine.session import Session
from pyowtorrent.service.tracker import Tracker
from pyowtorrent.storage.create import create_torrent

from .engine_util import make_payload, same_tree

# Big enough for aria2's mid-transfer bitfield (seen after ~3-7 MB), small enough to be quick.
SIZES = {"data.bin": 24_000_000, "notes.txt": 12_345}


def aria2c() -> str:
    binary = shutil.which("aria2c")
    if binary is None:
        pytest.fail("aria2c is not installed: the README's test command installs it (Debian package 'aria2')")
    return binary


ARIA2_FLAGS = [
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=false",
    "--bt-require-crypto=false",
    "--summary-interval=0",
    "--console-log-level=warn",
    "--file-allocation=none",
]


def test_aria2_downloads_from_our_seeder(tmp_path: Path) -> None:
    async def main() -> None:
        async with Tracker() as tracker:
            make_payload(tmp_path / "seeder" / "ds", SIZES)
            meta = create_torrent(tmp_path / "seeder" / "ds", piece_length=262144, trackers=[tracker.announce_url("127.0.0.1")])
            tracker.allow(meta.info_hash)
            (tmp_path / "t.torrent").write_bytes(meta.to_bytes())
            async with Session(listen="127.0.0.1") as s:
                seeder = await s.add_torrent(meta, tmp_path / "seeder")
                proc = await asyncio.create_subprocess_exec(
                    aria2c(), *ARIA2_FLAGS, "--seed-time=0", "-d", str(tmp_path / "aria2"), str(tmp_path / "t.torrent"),
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                )
                out, _ = await asyncio.wait_for(proc.communicate(), 120)
                assert proc.returncode == 0, out.decode(errors="replace")
                assert seeder.uploaded_bytes >= meta.total_length

    asyncio.run(main())
    assert same_tree(tmp_path / "seeder" / "ds", tmp_path / "aria2" / "ds")


def test_we_download_from_an_aria2_seeder(tmp_path: Path) -> None:
    async def main() -> None:
        async with Tracker() as tracker:
            make_payload(tmp_path / "aria2" / "ds", SIZES)
            meta = create_torrent(tmp_path / "aria2" / "ds", piece_length=262144, trackers=[tracker.announce_url("127.0.0.1")])
            tracker.allow(meta.info_hash)
            (tmp_path / "t.torrent").write_bytes(meta.to_bytes())
            proc = await asyncio.create_subprocess_exec(
                aria2c(), *ARIA2_FLAGS, "--check-integrity=true", "--seed-ratio=0.0",
                "-d", str(tmp_path / "aria2"), str(tmp_path / "t.torrent"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                async with Session(listen="127.0.0.1") as s:
                    leecher = await s.add_torrent(meta, tmp_path / "leech")
                    await leecher.wait_done(timeout=120)
            finally:
                proc.terminate()
                await proc.wait()

    asyncio.run(main())
    assert same_tree(tmp_path / "aria2" / "ds", tmp_path / "leech" / "ds")
