"""libtorrent in the tests: one settings pack for every test session, and how to read its torrents."""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import libtorrent as lt  # test-only reference implementation; pyowtorrent never imports it

# A session that talks to nobody else: loopback only, no DHT, LSD, UPnP or NAT-PMP.
LT_SETTINGS: Any = {
    "listen_interfaces": "127.0.0.1:0",
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    # Every peer of a loopback test shares 127.0.0.1: keep them apart by port,
    # or libtorrent's self-connection ban would cover all of them.
    "allow_multiple_connections_per_ip": True,
    # pyowtorrent speaks TCP only.  libtorrent dials uTP first and falls back
    # to TCP only after the uTP attempt times out (about 5 s on loopback).
    "enable_outgoing_utp": False,
    "enable_incoming_utp": False,
    "alert_mask": lt.alert_category.status | lt.alert_category.error | lt.alert_category.storage,
}


def lt_session(**overrides: Any) -> Any:
    return lt.session({**LT_SETTINGS, **overrides})


def lt_tracker_tiers(ti: Any) -> list[list[str]]:
    """A libtorrent ``torrent_info``'s trackers as pyowtorrent keeps them.

    libtorrent lists each URL as often as the torrent names it and keeps
    WebTorrent (ws/wss) trackers; pyowtorrent keeps each URL once and drops
    the ones it cannot announce to.  Tiers that end up empty disappear.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        entries = [(e.tier, e.url) for e in ti.trackers()]
    tiers: list[list[str]] = []
    seen: set[str] = set()
    last_tier = None
    for tier, url in entries:
        if url in seen or url.partition(":")[0].lower() in ("ws", "wss"):
            continue
        seen.add(url)
        if tier != last_tier:
            tiers.append([])
            last_tier = tier
        tiers[-1].append(url)
    return tiers


def lt_make_torrent(payload: Path, piece_length: int, flags: int) -> bytes:
    """Have libtorrent make a .torrent of ``payload`` (a file or a directory)."""
    ct = lt.create_torrent(lt.list_files(str(payload)), piece_length, flags)
    lt.set_piece_hashes(ct, str(payload.parent))
    return lt.bencode(ct.generate())


@contextlib.contextmanager
def lt_seeder(torrent: bytes, save_path: Path, *, announced: bool = True, timeout: float = 30.0) -> Iterator[Any]:
    """A libtorrent session seeding ``torrent`` from ``save_path``; gives the torrent handle.

    With ``announced``, returns only once libtorrent's announce reached the
    torrent's tracker (it says so in an alert), so a leecher started next
    finds it there.  The session is gone when the block ends.
    """
    ses = lt_session(alert_mask=lt.alert.category_t.all_categories)
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent)
    params.save_path = str(save_path)
    handle = ses.add_torrent(params)
    try:
        deadline = time.monotonic() + timeout
        while announced:
            assert time.monotonic() < deadline, "libtorrent never announced to the tracker"
            for a in ses.pop_alerts():
                if isinstance(a, lt.tracker_reply_alert):
                    announced = False
                if isinstance(a, lt.tracker_error_alert):
                    raise AssertionError(f"libtorrent's announce failed: {a.message()}")
            ses.wait_for_alert(100)
        yield handle
    finally:
        ses.remove_torrent(handle)
        del ses
