"""The engine against libtorrent, for real: pieces cross loopback sockets between the two.

1. pyowtorrent downloads from a libtorrent seeder a multi-file torrent (a file
   smaller than a piece, empty files, nested directories, pieces that span
   files), made by us, by libtorrent v1-only, and by libtorrent hybrid (with
   pad files); the payload on disk is byte for byte the source, nothing else
   is written, and the torrent ends ``seeding`` at progress 1.0.
2. A libtorrent leecher downloads from a pyowtorrent seeder, byte for byte.
3. A mixed swarm: a libtorrent seeder, a pyowtorrent leecher and a libtorrent
   leecher, all connected; both leechers finish byte for byte, and (the
   seeder's upload being capped, so that the leechers must trade) our leecher
   uploads to the libtorrent one.

Every session listens on 127.0.0.1 only; libtorrent runs with no DHT, LSD,
UPnP or NAT-PMP.  Nothing here waits on a bare sleep: libtorrent is polled
(status and alerts) from the event loop in short steps up to a deadline, and
our side is awaited through ``Torrent.wait_done``.

libtorrent is a test-only dependency; pyowtorrent never imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest

from pyowtorrent.storage.create import create_torrent
from pyowtorrent.metainfo.torrent_file import Metainfo, parse_metainfo
from pyowtorrent.engine.session import Session
from pyowtorrent.engine.events import Completed, PeerBanned, PieceFailed, TorrentEvent, TorrentFailed, TorrentState
from pyowtorrent.engine.torrent import Torrent

import libtorrent as lt  # noqa: E402  (test-only reference implementation)

from .engine_util import make_payload
from .lt_util import LT_SETTINGS, lt_make_torrent

KiB = 1 << 10
MiB = 1 << 20

# Generous next to what loopback needs (a second or two for a few MiB): a
# deadline only turns a hang into a clear failure.
TRANSFER_DEADLINE = 30.0
CHECK_DEADLINE = 20.0
POLL = 0.05

V1_ONLY = lt.create_torrent.v1_only
HYBRID = 0  # libtorrent's default: v1 + v2, each file padded to a piece boundary

# About 3.4 MiB.  No size but the last is a multiple of 16 KiB, so pieces and
# blocks straddle file boundaries (in the v1 layouts); there is a file smaller
# than a piece, empty files first, in the middle and last, nested directories.
TREE = {
    "0-empty-first": 0,
    "big.bin": 2_500_001,
    "small.txt": 1_000,
    "empty.dat": 0,
    "nested/deeper/mid.bin": 700_001,
    "nested/deeper/empty-too": 0,
    "nested/tail.bin": 33_333,
    "zzz/last.bin": 3 * 16 * KiB,
    "zzz/zz-empty-last": 0,
}


# ---------------------------------------------------------------------------
# Payload and torrents


def make_torrent(kind: str, payload: Path) -> Metainfo:
    """``ours`` (32 KiB pieces), ``lt-v1`` (64 KiB) or ``lt-hybrid`` (32 KiB, pad files)."""
    if kind == "ours":
        return create_torrent(payload, piece_length=32 * KiB)
    if kind == "lt-v1":
        return parse_metainfo(lt_make_torrent(payload, 64 * KiB, V1_ONLY))
    if kind == "lt-hybrid":
        return parse_metainfo(lt_make_torrent(payload, 32 * KiB, HYBRID))
    raise AssertionError(kind)


KINDS = ["ours", "lt-v1", "lt-hybrid"]


def check_layout(meta: Metainfo, kind: str) -> None:
    """The torrent has what these tests are about (so that a change to TREE cannot quietly weaken them)."""
    real = [f for f in meta.files if not f.pad]
    assert any(f.length == 0 for f in real)
    assert any(0 < f.length < meta.piece_length for f in real)
    assert any(len(f.path) > 3 for f in real)  # name/nested/deeper/file
    spanning = [i for i in range(meta.num_pieces) if len(meta.layout.piece_slices(i)) > 1]
    assert spanning
    if kind == "lt-hybrid":
        assert meta.hybrid
        pads = [f for f in meta.files if f.pad]
        # Pads end on piece boundaries, so a pad of 16 KiB or more holds a whole block of nothing but pad
        # bytes (which a client may request, or not).
        assert any(f.length >= 16 * KiB for f in pads)
    else:
        assert not meta.hybrid
        assert not any(f.pad for f in meta.files)
        assert meta.total_length % meta.piece_length  # a short last piece
        # Pieces spanning two real files with data in both.
        assert any(sum(1 for s in meta.layout.piece_slices(i) if s.length) > 1 for i in spanning)


def files_under(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_payload(meta: Metainfo, source_parent: Path, dest_parent: Path) -> None:
    """Every real file of ``meta`` under ``dest_parent`` is byte for byte the one under ``source_parent``,
    and the torrent's directory holds nothing else (no pad files, no stray files)."""
    src_root, dst_root = source_parent / meta.name, dest_parent / meta.name
    assert files_under(dst_root) == files_under(src_root)
    for f in meta.files:
        if f.pad:
            continue
        src, dst = source_parent.joinpath(*f.path), dest_parent.joinpath(*f.path)
        assert dst.is_file(), f"{f.path_str} missing"
        a, b = src.read_bytes(), dst.read_bytes()
        if a != b:
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            pytest.fail(f"{f.path_str}: {len(b)} bytes, expected {len(a)}; first difference at byte {first}")
    assert not (dest_parent / ".pad").exists()


# ---------------------------------------------------------------------------
# libtorrent, driven from the event loop


class LtPeer:
    """A libtorrent session on loopback with at most one torrent, polled without blocking the loop."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.ses = lt.session(LT_SETTINGS)
        self.handle: Any = None
        self.log: list[str] = []

    @property
    def port(self) -> int:
        return int(self.ses.listen_port())

    def add(self, meta: Metainfo, save_path: Path) -> Any:
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(meta.to_bytes())
        atp.save_path = str(save_path)
        self.handle = self.ses.add_torrent(atp)
        return self.handle

    def drain_alerts(self) -> None:
        """Keep the alert log; fail at once on a torrent or file error."""
        for a in self.ses.pop_alerts():
            self.log.append(f"{type(a).__name__}: {a.message()}")
            if isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
                pytest.fail(f"libtorrent {self.label}: {a.message()}")

    def status(self) -> Any:
        self.drain_alerts()
        return self.handle.status()

    async def wait_for(self, what: str, pred: Callable[[Any], bool], deadline: float = TRANSFER_DEADLINE) -> Any:
        """Poll the torrent's status until ``pred`` holds, at most ``deadline`` seconds."""
        end = time.monotonic() + deadline
        while True:
            st = self.status()
            if pred(st):
                return st
            if time.monotonic() > end:
                pytest.fail(
                    f"libtorrent {self.label}: not {what} after {deadline}s (state {st.state},"
                    f" {st.num_pieces} pieces, {st.num_peers} peers, progress {st.progress:.3f});"
                    f" alerts: {self.log[-15:]}"
                )
            await asyncio.sleep(POLL)

    async def seed(self, meta: Metainfo, save_path: Path) -> None:
        """Add ``meta`` with its payload at ``save_path`` and wait until libtorrent has checked it and seeds."""
        self.add(meta, save_path)
        st = await self.wait_for("seeding", lambda s: s.is_seeding, CHECK_DEADLINE)
        assert st.num_pieces == meta.num_pieces

    async def active(self) -> None:
        """Wait until the torrent takes peers: libtorrent turns incoming connections away ("no active
        torrents") while it checks the save directory and until its auto-manager has resumed the torrent."""
        paused = lt.torrent_flags.paused
        await self.wait_for(
            "active",
            lambda st: st.state in (lt.torrent_status.downloading, lt.torrent_status.seeding) and not st.flags & paused,
            CHECK_DEADLINE,
        )

    def close(self) -> None:
        for h in self.ses.get_torrents():
            self.ses.remove_torrent(h)  # leaves the files alone
        self.ses.pause()


@contextlib.contextmanager
def lt_peers(*labels: str) -> Iterator[list[LtPeer]]:
    """libtorrent sessions, closed however the test ends."""
    peers = [LtPeer(label) for label in labels]
    try:
        yield peers
    finally:
        for p in peers:
            p.close()


def record_events(t: Torrent) -> list[TorrentEvent]:
    events: list[TorrentEvent] = []
    t.add_listener(events.append)
    return events


def assert_clean_run(events: list[TorrentEvent]) -> None:
    """An honest libtorrent never sends a piece that fails its hash, nor gets banned."""
    bad = [e for e in events if isinstance(e, (PieceFailed, PeerBanned, TorrentFailed))]
    assert not bad


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def assert_seeding(t: Torrent, meta: Metainfo) -> None:
    st = t.status()
    assert st.state is TorrentState.SEEDING
    assert st.progress == 1.0
    assert st.pieces_have == st.num_pieces == meta.num_pieces
    assert st.bytes_done == st.bytes_total == meta.total_length
    assert st.error is None
    assert st.eta is None or st.eta == 0


# ---------------------------------------------------------------------------
# 1. pyowtorrent downloads from a libtorrent seeder


# Who opens the connection: we dial libtorrent (Session.add_torrent(peers=...) /
# Torrent.add_peer), or libtorrent dials our listen socket (handle.connect_peer).
DIRECTIONS = ["we-dial", "lt-dials"]


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_we_download_from_a_libtorrent_seeder(tmp_path: Path, kind: str, direction: str) -> None:
    payload = make_payload(tmp_path / "src" / "dataset", TREE)
    meta = make_torrent(kind, payload)
    check_layout(meta, kind)
    dest = tmp_path / "ours"
    dest.mkdir()

    async def main() -> None:
        with lt_peers("seeder") as (seeder,):
            await seeder.seed(meta, payload.parent)
            async with Session(listen="127.0.0.1", port=0) as s:
                peers = [("127.0.0.1", seeder.port)] if direction == "we-dial" else []
                t = await s.add_torrent(meta, dest, peers=peers)
                events = record_events(t)
                assert t.state is TorrentState.DOWNLOADING
                if direction == "lt-dials":
                    seeder.handle.connect_peer(("127.0.0.1", s.listen_port))
                await t.wait_done(timeout=TRANSFER_DEADLINE)
                assert_seeding(t, meta)
                st = t.status()
                # Every byte of every piece came over the wire once (pad bytes included: they are in the pieces).
                assert st.downloaded >= meta.total_length
                assert_clean_run(events)
                assert sum(isinstance(e, Completed) for e in events) == 1

    run(main())
    assert_same_payload(meta, payload.parent, dest)


# ---------------------------------------------------------------------------
# 2. A libtorrent leecher downloads from a pyowtorrent seeder


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_libtorrent_downloads_from_our_seeder(tmp_path: Path, kind: str, direction: str) -> None:
    payload = make_payload(tmp_path / "src" / "dataset", TREE)
    meta = make_torrent(kind, payload)
    check_layout(meta, kind)
    dest = tmp_path / "lt"
    dest.mkdir()

    async def main() -> None:
        async with Session(listen="127.0.0.1", port=0) as s:
            t = await s.add_torrent(meta, payload.parent)
            events = record_events(t)
            assert t.state is TorrentState.SEEDING  # checked the payload: all there
            assert_seeding(t, meta)
            with lt_peers("leecher") as (leecher,):
                h = leecher.add(meta, dest)
                if direction == "lt-dials":
                    h.connect_peer(("127.0.0.1", s.listen_port))
                else:
                    await leecher.active()
                    t.add_peer("127.0.0.1", leecher.port)
                st = await leecher.wait_for("seeding", lambda st: st.is_seeding)
                assert st.num_pieces == meta.num_pieces
                assert all(st.pieces)
                # libtorrent skips blocks that lie wholly in pad files; the rest came from us.
                real = sum(f.length for f in meta.files if not f.pad)
                assert t.status().uploaded >= real
                assert_clean_run(events)
                assert t.state is TorrentState.SEEDING

    run(main())
    assert_same_payload(meta, payload.parent, dest)


# ---------------------------------------------------------------------------
# 3. Mixed swarm: libtorrent seeder, pyowtorrent leecher, libtorrent leecher


@pytest.mark.parametrize("kind", ["ours", "lt-hybrid"])
def test_mixed_swarm_both_leechers_finish(tmp_path: Path, kind: str) -> None:
    """All three connected (we dial both libtorrent sessions, the libtorrent leecher dials the seeder).

    The seeder's upload is capped (1 MiB/s for 3.4 MiB), so that it cannot
    serve each leecher the whole payload before they have pieces to trade:
    both get pieces from the seeder at about half the cap each, rarest first,
    so each soon holds pieces the other lacks.  Our leecher unchokes an
    interested peer at once while it has a free upload slot, so it uploads to
    the libtorrent leecher (about 1 MiB of the 3.4 in trial runs; only > 0 is
    asserted).  Only the libtorrent leecher can have received those bytes: a
    seeder asks for nothing.
    """
    payload = make_payload(tmp_path / "src" / "dataset", TREE)
    meta = make_torrent(kind, payload)
    ours_dir, lt_dir = tmp_path / "ours", tmp_path / "lt"
    ours_dir.mkdir()
    lt_dir.mkdir()
    seeder_cap = 1 * MiB  # bytes per second

    async def main() -> None:
        with lt_peers("seeder", "leecher") as (seeder, leecher):
            await seeder.seed(meta, payload.parent)
            seeder.handle.set_upload_limit(seeder_cap)
            lh = leecher.add(meta, lt_dir)
            lh.connect_peer(("127.0.0.1", seeder.port))
            await leecher.active()
            async with Session(listen="127.0.0.1", port=0) as s:
                t = await s.add_torrent(
                    meta, ours_dir, peers=[("127.0.0.1", seeder.port), ("127.0.0.1", leecher.port)]
                )
                events = record_events(t)
                lt_done = asyncio.ensure_future(leecher.wait_for("seeding", lambda st: st.is_seeding))
                try:
                    await t.wait_done(timeout=TRANSFER_DEADLINE)
                    await lt_done
                finally:
                    lt_done.cancel()
                assert_seeding(t, meta)
                assert_clean_run(events)
                st = t.status()
                # The libtorrent leecher took pieces from us (see the docstring).
                assert st.uploaded > 0, (st, [e for e in events if type(e).__name__.startswith("Peer")])
                assert all(leecher.status().pieces)

    run(main())
    assert_same_payload(meta, payload.parent, ours_dir)
    assert_same_payload(meta, payload.parent, lt_dir)
