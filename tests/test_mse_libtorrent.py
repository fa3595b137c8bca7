"""Message stream encryption against libtorrent, and our three policies as seen on the wire.

1. pyowtorrent with default settings downloads from a libtorrent seeder that
   forces encryption (``in_enc_policy``/``out_enc_policy`` ``pe_forced``,
   ``allowed_enc_level`` ``pe_rc4``), whoever dials; and a libtorrent leecher
   forcing encryption downloads from our default-settings seeder.  Byte-exact,
   and the connection is RC4 on our side (its reader and writer are the
   cipher stream's).  When we dial, libtorrent first turns away our plaintext
   handshake, and we try again encrypted at once.
2. ``encryption="required"`` refuses a plaintext-only libtorrent
   (``pe_disabled``) both ways; a default session then downloads from it.
3. ``encryption="disabled"`` never sends a key exchange: a listener that
   hangs up on every handshake (as a client forcing encryption does) sees
   only plaintext handshakes, where a default session tries a key exchange
   on its second connection; and a forcing libtorrent gets nowhere with us.

Loopback only, libtorrent without DHT, LSD, UPnP, NAT-PMP or uTP (see
``lt_util``).  Nothing waits on a bare sleep: libtorrent is polled (status
and alerts) in short steps up to a deadline, our side through its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from pyowtorrent.engine.crypto_stream import CipherReader, CipherWriter
from pyowtorrent.engine.events import PeerConnected, TorrentEvent, TorrentState
from pyowtorrent.engine.session import Session
from pyowtorrent.engine.torrent import Torrent
from pyowtorrent.metainfo.torrent_file import Metainfo
from pyowtorrent.wire.handshake import PROTOCOL
from pyowtorrent.wire.mse import is_plaintext_opening

import libtorrent as lt  # noqa: E402  (test-only reference implementation)

from .engine_util import make_torrent, same_tree, until
from .lt_util import lt_session

DEADLINE = 30.0
POLL = 0.05

FORCED = {
    "out_enc_policy": lt.enc_policy.pe_forced,
    "in_enc_policy": lt.enc_policy.pe_forced,
    "allowed_enc_level": lt.enc_level.pe_rc4,
}
PLAINTEXT_ONLY = {"out_enc_policy": lt.enc_policy.pe_disabled, "in_enc_policy": lt.enc_policy.pe_disabled}
# Connections opened and closed (with their reasons), besides status and errors.
ALERTS = lt.alert_category.status | lt.alert_category.error | lt.alert_category.storage | lt.alert_category.connect

SIZES = {"data.bin": 2_500_001, "sub/small.txt": 1_000, "sub/tail.bin": 333_333}


class Lt:
    """One libtorrent session with at most one torrent, polled without blocking the loop."""

    def __init__(self, label: str, **settings: Any) -> None:
        self.label = label
        self.ses = lt_session(alert_mask=ALERTS, **settings)
        self.handle: Any = None
        self.log: list[str] = []
        self.disconnects: list[str] = []

    @property
    def port(self) -> int:
        return int(self.ses.listen_port())

    def add(self, meta: Metainfo, save_path: Path) -> Any:
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(meta.to_bytes())
        atp.save_path = str(save_path)
        self.handle = self.ses.add_torrent(atp)
        return self.handle

    def drain(self) -> None:
        for a in self.ses.pop_alerts():
            self.log.append(f"{type(a).__name__}: {a.message()}")
            if isinstance(a, lt.peer_disconnected_alert):
                self.disconnects.append(a.message())
            if isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
                pytest.fail(f"libtorrent {self.label}: {a.message()}")

    async def wait_for(self, what: str, pred: Callable[[Any], bool], deadline: float = DEADLINE) -> Any:
        end = time.monotonic() + deadline
        while True:
            self.drain()
            st = self.handle.status()
            if pred(st):
                return st
            if time.monotonic() > end:
                pytest.fail(f"libtorrent {self.label}: not {what} after {deadline}s; alerts: {self.log[-15:]}")
            await asyncio.sleep(POLL)

    async def disconnected(self, count: int, containing: str = "") -> list[str]:
        """Wait until libtorrent has closed ``count`` connections whose reason holds ``containing``."""
        end = time.monotonic() + DEADLINE
        while True:
            self.drain()
            matching = [d for d in self.disconnects if containing in d]
            if len(matching) >= count:
                return matching
            if time.monotonic() > end:
                what = f"{count} disconnects ({containing!r})"
                pytest.fail(f"libtorrent {self.label}: {what} never came; alerts: {self.log[-15:]}")
            await asyncio.sleep(POLL)

    async def seed(self, meta: Metainfo, save_path: Path) -> None:
        self.add(meta, save_path)
        await self.wait_for("seeding", lambda s: s.is_seeding)

    async def active(self) -> None:
        """Until the torrent takes peers (it turns them away while checking or paused)."""
        paused = lt.torrent_flags.paused
        await self.wait_for(
            "active",
            lambda st: st.state in (lt.torrent_status.downloading, lt.torrent_status.seeding) and not st.flags & paused,
        )

    def close(self) -> None:
        for h in self.ses.get_torrents():
            self.ses.remove_torrent(h)
        self.ses.pause()


@contextlib.contextmanager
def lt_peer(label: str, **settings: Any) -> Iterator[Lt]:
    peer = Lt(label, **settings)
    try:
        yield peer
    finally:
        peer.close()


def run(coro: Any) -> None:
    asyncio.run(coro)


def watch_rc4(t: Torrent) -> tuple[list[TorrentEvent], list[bool]]:
    """Every event of ``t``, and for each peer as it connects whether its stream is RC4 (the cipher stream's)."""
    events: list[TorrentEvent] = []
    rc4: list[bool] = []

    def on(e: TorrentEvent) -> None:
        events.append(e)
        if isinstance(e, PeerConnected):
            peer = t.peers[e.peer]
            rc4.append(isinstance(peer.reader, CipherReader) and isinstance(peer.writer, CipherWriter))

    t.add_listener(on)
    return events, rc4


DIRECTIONS = ["we-dial", "lt-dials"]


# ---------------------------------------------------------------------------
# 1. Default settings against a libtorrent that forces encryption


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_default_settings_download_from_a_libtorrent_seeder_that_forces_encryption(
    tmp_path: Path, direction: str
) -> None:
    meta, seed_dir = make_torrent(tmp_path, SIZES)

    async def main() -> None:
        with lt_peer("seeder", **FORCED) as seeder:
            await seeder.seed(meta, seed_dir)
            async with Session(listen="127.0.0.1") as s:
                peers = [("127.0.0.1", seeder.port)] if direction == "we-dial" else []
                t = await s.add_torrent(meta, tmp_path / "ours", peers=peers)
                events, rc4 = watch_rc4(t)
                if direction == "lt-dials":
                    seeder.handle.connect_peer(("127.0.0.1", s.listen_port))
                await t.wait_done(timeout=DEADLINE)
                assert t.state is TorrentState.SEEDING and t.error is None
                assert rc4 and all(rc4), rc4
                if direction == "we-dial":
                    # Our plaintext handshake first, turned away; then the encrypted one, at once.
                    seeder.drain()
                    assert any("regular connections disabled" in d for d in seeder.disconnects), seeder.log

    run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "ours" / "ds")


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_libtorrent_leecher_that_forces_encryption_downloads_from_our_default_seeder(
    tmp_path: Path, direction: str
) -> None:
    meta, seed_dir = make_torrent(tmp_path, SIZES)
    dest = tmp_path / "lt"
    dest.mkdir()

    async def main() -> None:
        async with Session(listen="127.0.0.1") as s:
            t = await s.add_torrent(meta, seed_dir)
            assert t.state is TorrentState.SEEDING
            events, rc4 = watch_rc4(t)
            with lt_peer("leecher", **FORCED) as leecher:
                h = leecher.add(meta, dest)
                if direction == "lt-dials":
                    h.connect_peer(("127.0.0.1", s.listen_port))
                else:
                    await leecher.active()
                    t.add_peer("127.0.0.1", leecher.port)
                st = await leecher.wait_for("seeding", lambda st: st.is_seeding)
                assert all(st.pieces)
                assert rc4 and all(rc4), rc4
                assert t.status().uploaded >= meta.total_length

    run(main())
    assert same_tree(seed_dir / "ds", dest / "ds")


# ---------------------------------------------------------------------------
# 2. "required" and a peer that speaks only plaintext


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_required_refuses_a_plaintext_only_libtorrent(tmp_path: Path, direction: str) -> None:
    meta, seed_dir = make_torrent(tmp_path, SIZES)

    async def main() -> None:
        with lt_peer("seeder", **PLAINTEXT_ONLY) as seeder:
            await seeder.seed(meta, seed_dir)
            async with Session(listen="127.0.0.1", encryption="required") as s:
                peers = [("127.0.0.1", seeder.port)] if direction == "we-dial" else []
                t = await s.add_torrent(meta, tmp_path / "required", peers=peers)
                events, _ = watch_rc4(t)
                if direction == "lt-dials":
                    seeder.handle.connect_peer(("127.0.0.1", s.listen_port))
                    await seeder.disconnected(1)  # we hung up on its plaintext handshake
                else:
                    await seeder.disconnected(1, "encrypted connections disabled")  # it hung up on ours
                assert not [e for e in events if isinstance(e, PeerConnected)]
                assert not t.peers and t.status().pieces_have == 0
            # The same seeder serves a default session: the refusal was ours, not a broken seeder.
            async with Session(listen="127.0.0.1") as s:
                t = await s.add_torrent(meta, tmp_path / "enabled", peers=[("127.0.0.1", seeder.port)])
                await t.wait_done(timeout=DEADLINE)

    run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "enabled" / "ds")


# ---------------------------------------------------------------------------
# 3. "disabled" never sends a key exchange


class HangUpListener:
    """Reads the first 20 bytes of every connection, then hangs up: what a client forcing
    encryption does with a plaintext handshake (and a plaintext-only one with a key)."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.heads.append(await reader.readexactly(20))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.heads.append(b"")
        writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.parametrize("encryption", ["disabled", "enabled"])
def test_what_each_policy_sends_to_a_peer_that_hangs_up(tmp_path: Path, encryption: str) -> None:
    """``disabled``: a plaintext handshake on every connection, every time.  ``enabled``: a
    plaintext handshake, and on the hang-up a key exchange at once, on a second connection."""
    meta, _ = make_torrent(tmp_path, {"data.bin": 100_000})

    async def main() -> None:
        listener = HangUpListener()
        port = await listener.start()
        try:
            session = Session(listen="127.0.0.1", encryption=encryption, reconnect_delay=0.05)  # type: ignore[arg-type]
            async with session as s:
                await s.add_torrent(meta, tmp_path / "leech", peers=[("127.0.0.1", port)])
                await until(lambda: len(listener.heads) >= 4, what="four connections")
        finally:
            await listener.close()
        heads = listener.heads[:4]
        if encryption == "disabled":
            assert heads == [PROTOCOL] * 4
        else:
            # Each dial: plaintext, then a key exchange (not the protocol string, nor junk).
            assert heads[0] == heads[2] == PROTOCOL
            assert all(not is_plaintext_opening(h) for h in (heads[1], heads[3]))

    run(main())


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_disabled_gets_nowhere_with_a_libtorrent_that_forces_encryption(tmp_path: Path, direction: str) -> None:
    meta, seed_dir = make_torrent(tmp_path, SIZES)

    async def main() -> None:
        with lt_peer("seeder", **FORCED) as seeder:
            await seeder.seed(meta, seed_dir)
            async with Session(listen="127.0.0.1", encryption="disabled", reconnect_delay=0.05) as s:
                peers = [("127.0.0.1", seeder.port)] if direction == "we-dial" else []
                t = await s.add_torrent(meta, tmp_path / "ours", peers=peers)
                events, _ = watch_rc4(t)
                if direction == "lt-dials":
                    seeder.handle.connect_peer(("127.0.0.1", s.listen_port))
                    await seeder.disconnected(1)  # we took its key exchange for junk
                else:
                    # Two dials, each a plaintext handshake it turned away: no encrypted retry.
                    await seeder.disconnected(2, "regular connections disabled")
                assert not [e for e in events if isinstance(e, PeerConnected)]
                assert t.status().pieces_have == 0

    run(main())
