"""Finding peers through trackers: our embedded tracker, a real opentracker (HTTP and UDP), libtorrent."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Callable

import pytest

from pyowtorrent.storage.create import create_torrent
from pyowtorrent.metainfo.torrent_file import Metainfo
from pyowtorrent.engine.session import Session
from pyowtorrent.service.tracker import Tracker

from .conftest import free_port
from .engine_util import make_payload, same_tree, until
from .lt_util import lt_seeder, lt_session

SIZES = {"data.bin": 600_000, "notes.txt": 777}


def torrent_with(tmp: Path, trackers: list[str | list[str]]) -> tuple[Metainfo, Path]:
    seed_dir = tmp / "seeder"
    make_payload(seed_dir / "ds", SIZES)
    return create_torrent(seed_dir / "ds", piece_length=32768, trackers=trackers), seed_dir


def lo_session(**kw: object) -> Session:
    return Session(listen="127.0.0.1", reconnect_delay=0.2, **kw)  # type: ignore[arg-type]


def test_peers_found_through_the_embedded_tracker(tmp_path: Path) -> None:
    async def main() -> None:
        async with Tracker() as tracker:
            url = tracker.announce_url("127.0.0.1")
            meta, seed_dir = torrent_with(tmp_path, [url])
            async with lo_session() as s1, lo_session() as s2:
                seeder = await s1.add_torrent(meta, seed_dir)
                await until(lambda: len(tracker.peers(meta.info_hash)) == 1, what="the seeder's announce")
                leecher = await s2.add_torrent(meta, tmp_path / "leech")  # no peers given: the tracker must find them
                await leecher.wait_done(timeout=30)
                st = leecher.status()
                (tr,) = st.trackers
                assert tr.working and tr.last_error is None and tr.peers_received >= 1
                assert st.seeders is not None and st.seeders >= 1
                assert seeder.status().trackers[0].working
            # Both sessions said 'stopped' when they closed.
            assert tracker.peers(meta.info_hash) == []

    asyncio.run(main())
    assert same_tree(tmp_path / "seeder" / "ds", tmp_path / "leech" / "ds")


def test_dead_trackers_in_the_first_tiers_do_not_stop_the_start(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/announce"  # nothing listens: refused at once
    silent_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent_sock.bind(("127.0.0.1", 0))  # bound, never answers: every try times out
    silent = f"udp://127.0.0.1:{silent_sock.getsockname()[1]}/announce"

    async def main() -> None:
        async with Tracker() as tracker:
            good = tracker.announce_url("127.0.0.1")
            meta, seed_dir = torrent_with(tmp_path, [closed, silent, good])
            async with lo_session(udp_retransmit_base=0.1) as s1, lo_session(udp_retransmit_base=0.1) as s2:
                await s1.add_torrent(meta, seed_dir)
                await until(lambda: len(tracker.peers(meta.info_hash)) == 1, what="the seeder's announce")
                leecher = await s2.add_torrent(meta, tmp_path / "leech")
                await leecher.wait_done(timeout=30)
                by_url = {t.url: t for t in leecher.status().trackers}
                assert by_url[closed].last_error and not by_url[closed].working
                assert by_url[silent].last_error and "no answer" in by_url[silent].last_error
                assert by_url[good].working and by_url[good].last_error is None

    try:
        asyncio.run(main())
    finally:
        silent_sock.close()
    assert same_tree(tmp_path / "seeder" / "ds", tmp_path / "leech" / "ds")


# -- a real tracker: opentracker (the fixture is in conftest.py) ---------------------


@pytest.mark.parametrize("scheme", ["http", "udp"])
def test_download_from_a_libtorrent_seeder_found_through_opentracker(
    tmp_path: Path, opentracker: Callable[[bytes], tuple[int, int]], scheme: str
) -> None:
    # The torrent's identity does not depend on its tracker list, so learn it first.
    probe, _ = torrent_with(tmp_path / "probe", [])
    tcp, udp = opentracker(probe.info_hash)
    url = f"http://127.0.0.1:{tcp}/announce" if scheme == "http" else f"udp://127.0.0.1:{udp}/announce"
    meta, seed_dir = torrent_with(tmp_path, [url])
    assert meta.info_hash == probe.info_hash

    # opentracker hands libtorrent its own address: LT_SETTINGS keeps its
    # self-connection ban from covering all of 127.0.0.1.
    async def main() -> None:
        async with lo_session(udp_retransmit_base=0.5) as s:
            leecher = await s.add_torrent(meta, tmp_path / "leech")
            await leecher.wait_done(timeout=30)
            (tr,) = leecher.status().trackers
            assert tr.working and tr.peers_received >= 1

    with lt_seeder(meta.to_bytes(), seed_dir):  # returns once its announce reached opentracker
        asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "leech" / "ds")


def test_libtorrent_leecher_finds_our_seeder_through_our_tracker(tmp_path: Path) -> None:
    import libtorrent as lt

    async def main() -> None:
        async with Tracker() as tracker:
            meta, seed_dir = torrent_with(tmp_path, [tracker.announce_url("127.0.0.1")])
            tracker.allow(meta.info_hash)
            async with lo_session() as s:
                await s.add_torrent(meta, seed_dir)
                await until(lambda: len(tracker.peers(meta.info_hash)) == 1, what="our seeder's announce")
                ses = lt_session()
                params = lt.add_torrent_params()
                params.ti = lt.torrent_info(meta.to_bytes())
                params.save_path = str(tmp_path / "lt")
                handle = ses.add_torrent(params)
                await until(lambda: handle.status().is_seeding, timeout=60, what="libtorrent to finish")
                ses.remove_torrent(handle)

    asyncio.run(main())
    assert same_tree(tmp_path / "seeder" / "ds", tmp_path / "lt" / "ds")


def test_opentracker_takes_announces_whose_info_hash_and_peer_id_hold_reserved_bytes(
    opentracker: Callable[[bytes], tuple[int, int]],
) -> None:
    """opentracker answers '400 Invalid Request' to a raw '$' in the query: every byte that is
    not unreserved must reach it %XX-encoded, exactly as the codec wrote it."""
    from pyowtorrent.engine.http_client import HttpClient
    from pyowtorrent.engine.trackers import HttpTracker
    from pyowtorrent.tracker.http_codec import AnnounceRequest, TrackerFailure

    reserved = b"!$'()*,/:?@&=+;#[] %"
    info_hash = reserved[:20]
    tcp, _ = opentracker(info_hash)

    async def main() -> None:
        tracker = HttpTracker(f"http://127.0.0.1:{tcp}/announce", HttpClient("test"))
        first = AnnounceRequest(info_hash, b"-XX0000-" + reserved[:12], 6881, 0, 0, 10, "started", 50)
        second = AnnounceRequest(info_hash, b"-XX0000-" + reserved[8:20], 6882, 0, 0, 10, "started", 50)
        # opentracker reads its whitelist in a thread of its own, just after it starts listening.
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            try:
                await tracker.announce(first)
                break
            except TrackerFailure as exc:
                if "not authorized" not in str(exc) or asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)
        resp = await tracker.announce(second)
        assert ("127.0.0.1", 6881) in resp.peers

    asyncio.run(main())
