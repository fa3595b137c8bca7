"""Transmission (Debian's transmission-daemon) both ways, through opentracker, byte-exact.

Transmission drops the peers a tracker hands out on 127.0.0.0/8, so the three
parties get addresses of their own on the loopback of a network namespace
(tests/netns_util.py): opentracker on 10.78.0.1, Transmission on 10.78.0.2,
our session on 10.78.0.3 — each listening on its address only, so each is
found only where its announces say it is.  Nobody is told of anybody else:
peers come from the tracker alone (Transmission's DHT, LPD and PEX are off).
A client starts once the tracker knows the one before it (a scrape says so),
so the newcomer's first announce finds it.
"""

from __future__ import annotations

from pathlib import Path
from pyowtorrent.storage.create import create_torrent

from .engine_util import make_payload, same_tree
from .netns_util import (
    TR_SEEDING,
    Namespace,
    Transmission,
    session_on,
    start_opentracker,
    stop,
    wait_for_swarm,
)

TRACKER, TRANSMISSION, US = "10.78.0.1", "10.78.0.2", "10.78.0.3"
ANNOUNCE = f"http://{TRACKER}:6969/announce"
# A few pieces more than Transmission asks for at once, two files (one across a piece boundary).
SIZES = {"data.bin": 3_000_000, "notes/readme.txt": 54_321}
PIECE = 65536
TIMEOUT = 30.0


def test_transmission_downloads_from_our_seeder(tmp_path: Path) -> None:
    make_payload(tmp_path / "seeder" / "ds", SIZES)
    meta = create_torrent(tmp_path / "seeder" / "ds", piece_length=PIECE, trackers=[ANNOUNCE])
    (tmp_path / "t.torrent").write_bytes(meta.to_bytes())

    async def main() -> int:
        tracker = await start_opentracker(tmp_path / "opentracker", [meta.info_hash], TRACKER)
        transmission = Transmission(tmp_path / "transmission", TRANSMISSION)
        try:
            async with session_on(US) as session:
                seeder = await session.add_torrent(meta, tmp_path / "seeder")
                await wait_for_swarm(ANNOUNCE, meta.info_hash, lambda seeders, _: seeders >= 1, "our seeder")
                await transmission.start()
                tid = await transmission.add(tmp_path / "t.torrent", tmp_path / "leech")
                await transmission.wait(tid, lambda t: t["percentDone"] == 1 and t["status"] == TR_SEEDING, "done", TIMEOUT)
                await transmission.close()  # its writes reach the disk before the comparison
                return seeder.uploaded_bytes
        finally:
            await transmission.close()
            await stop(tracker)

    with Namespace([TRACKER, TRANSMISSION, US]) as ns:
        uploaded = ns.run(main, timeout=TIMEOUT + 30)
    assert uploaded >= meta.total_length
    assert same_tree(tmp_path / "seeder" / "ds", tmp_path / "leech" / "ds")


def test_we_download_from_a_transmission_seeder(tmp_path: Path) -> None:
    make_payload(tmp_path / "transmission-data" / "ds", SIZES)
    meta = create_torrent(tmp_path / "transmission-data" / "ds", piece_length=PIECE, trackers=[ANNOUNCE])
    (tmp_path / "t.torrent").write_bytes(meta.to_bytes())

    async def main() -> None:
        tracker = await start_opentracker(tmp_path / "opentracker", [meta.info_hash], TRACKER)
        transmission = Transmission(tmp_path / "transmission", TRANSMISSION)
        try:
            await transmission.start()
            tid = await transmission.add(tmp_path / "t.torrent", tmp_path / "transmission-data")
            await transmission.wait(tid, lambda t: t["status"] == TR_SEEDING, "seeding its files", TIMEOUT)
            await wait_for_swarm(ANNOUNCE, meta.info_hash, lambda seeders, _: seeders >= 1, "Transmission seeding")
            async with session_on(US) as session:
                leecher = await session.add_torrent(meta, tmp_path / "leech")
                await leecher.wait_done(timeout=TIMEOUT)
        finally:
            await transmission.close()
            await stop(tracker)

    with Namespace([TRACKER, TRANSMISSION, US]) as ns:
        ns.run(main, timeout=TIMEOUT + 30)
    assert same_tree(tmp_path / "transmission-data" / "ds", tmp_path / "leech" / "ds")
