"""Real BitTorrent clients from Debian other than libtorrent, both ways, on loopback: aria2.

aria2 (1.36) sends a whole new bitfield in the middle of a connection instead of many haves,
and a have all once it completes; a seeder that took those for protocol violations dropped it
a few megabytes in.  Peers find each other through a tracker: our embedded one, and
opentracker (Debian's), a real tracker as users run it.  aria2 takes peers on 127.0.0.1 from
a tracker, so these run on the host's loopback (Transmission does not: its tests run in a
network namespace, tests/test_interop_transmission.py).  A client starts once the tracker
knows the one before it (a scrape says so), so the newcomer's first announce finds it.
A magnet link is fetched from an aria2 seeder too (aria2 serves BEP 9 metadata).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import AsyncIterator, Callable

import pytest

from pyowtorrent.engine.session import Session
from pyowtorrent.metainfo.bencoding import decode, encode
from pyowtorrent.metainfo.torrent_file import Metainfo, parse_metainfo
from pyowtorrent.service.tracker import Tracker
from pyowtorrent.storage.create import create_torrent

from .engine_util import make_payload, same_tree
from .netns_util import wait_for_swarm

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


TRACKERS = ["ours", "opentracker"]


def with_tracker(meta: Metainfo, url: str) -> Metainfo:
    """``meta`` announcing to ``url`` (the info dictionary, so the info-hash, unchanged)."""
    top = decode(meta.to_bytes())
    top[b"announce"] = url.encode()
    out = parse_metainfo(encode(top))
    assert out.info_hash == meta.info_hash
    return out


@contextlib.asynccontextmanager
async def tracking(kind: str, info_hash: bytes, opentracker: Callable[[bytes], tuple[int, int]]) -> AsyncIterator[str]:
    """The announce URL of a tracker on 127.0.0.1 that tracks ``info_hash``: ours, or opentracker."""
    if kind == "opentracker":
        http_port, _ = opentracker(info_hash)  # started and ready: a few milliseconds
        yield f"http://127.0.0.1:{http_port}/announce"
        return
    async with Tracker() as tracker:
        tracker.allow(info_hash)
        yield tracker.announce_url("127.0.0.1")


@pytest.mark.parametrize("kind", TRACKERS)
def test_aria2_downloads_from_our_seeder(tmp_path: Path, kind: str, opentracker: Callable[[bytes], tuple[int, int]]) -> None:
    make_payload(tmp_path / "seeder" / "ds", SIZES)
    meta = create_torrent(tmp_path / "seeder" / "ds", piece_length=262144)

    async def main() -> None:
        async with tracking(kind, meta.info_hash, opentracker) as url:
            torrent = with_tracker(meta, url)
            (tmp_path / "t.torrent").write_bytes(torrent.to_bytes())
            async with Session(listen="127.0.0.1") as s:
                seeder = await s.add_torrent(torrent, tmp_path / "seeder")
                await wait_for_swarm(url, meta.info_hash, lambda seeders, _: seeders >= 1, "our seeder")
                proc = await asyncio.create_subprocess_exec(
                    aria2c(), *ARIA2_FLAGS, "--seed-time=0", "-d", str(tmp_path / "aria2"), str(tmp_path / "t.torrent"),
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                )
                out, _ = await asyncio.wait_for(proc.communicate(), 120)
                assert proc.returncode == 0, out.decode(errors="replace")
                assert seeder.uploaded_bytes >= meta.total_length

    asyncio.run(main())
    assert same_tree(tmp_path / "seeder" / "ds", tmp_path / "aria2" / "ds")


@contextlib.asynccontextmanager
async def aria2_seeding(tmp_path: Path, kind: str, opentracker: Callable[[bytes], tuple[int, int]]) -> AsyncIterator[Metainfo]:
    """aria2 seeding a fresh payload (tmp_path/aria2/ds) through a tracker: the torrent, once it has announced."""
    make_payload(tmp_path / "aria2" / "ds", SIZES)
    meta = create_torrent(tmp_path / "aria2" / "ds", piece_length=262144)
    async with tracking(kind, meta.info_hash, opentracker) as url:
        torrent = with_tracker(meta, url)
        (tmp_path / "t.torrent").write_bytes(torrent.to_bytes())
        proc = await asyncio.create_subprocess_exec(
            aria2c(), *ARIA2_FLAGS, "--check-integrity=true", "--seed-ratio=0.0",
            "-d", str(tmp_path / "aria2"), str(tmp_path / "t.torrent"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            # aria2 may announce before its check ends, as a leecher: any entry will do.
            await wait_for_swarm(url, meta.info_hash, lambda seeders, leechers: seeders + leechers >= 1, "aria2")
            yield torrent
        finally:
            proc.terminate()
            await proc.wait()


@pytest.mark.parametrize("kind", TRACKERS)
def test_we_download_from_an_aria2_seeder(tmp_path: Path, kind: str, opentracker: Callable[[bytes], tuple[int, int]]) -> None:
    async def main() -> None:
        async with aria2_seeding(tmp_path, kind, opentracker) as torrent, Session(listen="127.0.0.1") as s:
            leecher = await s.add_torrent(torrent, tmp_path / "leech")
            await leecher.wait_done(timeout=120)

    asyncio.run(main())
    assert same_tree(tmp_path / "aria2" / "ds", tmp_path / "leech" / "ds")


def test_we_download_a_magnet_link_from_an_aria2_seeder(
    tmp_path: Path, opentracker: Callable[[bytes], tuple[int, int]]
) -> None:
    """aria2 serves the metadata (BEP 9) to a leecher that has only the magnet link, then the data."""

    async def main() -> None:
        async with aria2_seeding(tmp_path, "opentracker", opentracker) as torrent, Session(listen="127.0.0.1") as s:
            magnet = torrent.magnet()
            assert "x.pe" not in magnet  # found through the tracker only
            leecher = await s.add_magnet(magnet, tmp_path / "leech", timeout=60)
            assert leecher.meta.info_bytes == torrent.info_bytes
            await leecher.wait_done(timeout=120)

    asyncio.run(main())
    assert same_tree(tmp_path / "aria2" / "ds", tmp_path / "leech" / "ds")
