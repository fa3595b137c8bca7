"""The download engine on loopback: pyowtorrent peers, real sockets, real files."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from pyowtorrent.errors import PyowtorrentError
from pyowtorrent.metainfo.torrent_file import Metainfo
from pyowtorrent.engine.peer import HAVE_DELAY, HaveBatch
from pyowtorrent.engine.session import Session
from pyowtorrent.engine.events import (
    Completed,
    PeerBanned,
    PeerDisconnected,
    PieceFailed,
    PieceVerified,
    TorrentEvent,
    TorrentState,
)
from pyowtorrent.wire import (
    Bitfield,
    Handshake,
    encode_handshake,
    PeerConnection,
    Piece,
    Request,
    Unchoke,
    bitfield_bytes,
    parse_handshake,
)

from .engine_util import make_torrent, same_tree, until

SIZES = {"big.bin": 700_000, "tiny.txt": 1000, "sub/empty": 0, "sub/mid.dat": 150_001}


def lo_session(host: str = "127.0.0.1", **kw: Any) -> Session:
    kw.setdefault("reconnect_delay", 0.2)
    return Session(listen=host, **kw)


def test_download_from_one_seeder_is_byte_exact(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, SIZES)

    async def main() -> None:
        async with lo_session() as s1, lo_session() as s2:
            seeder = await s1.add_torrent(meta, seed_dir)
            assert seeder.status().state is TorrentState.SEEDING
            events: list[TorrentEvent] = []
            leecher = await s2.add_torrent(meta, tmp_path / "leech", peers=[("127.0.0.1", s1.listen_port)])
            leecher.add_listener(events.append)
            await leecher.wait_done(timeout=30)
            st = leecher.status()
            assert st.state is TorrentState.SEEDING and st.progress == 1.0
            assert st.pieces_have == meta.num_pieces and st.bytes_done == meta.total_length
            assert sum(isinstance(e, PieceVerified) for e in events) == meta.num_pieces
            assert sum(isinstance(e, Completed) for e in events) == 1

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "leech" / "ds")


def test_swarm_of_one_seeder_and_four_leechers_trading_pieces(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"a.bin": 3_000_000, "b.bin": 1_000_000}, piece_length=16384)

    async def main() -> None:
        # One upload slot at the seeder: the leechers it chokes must get pieces from each other.
        seeder_session = lo_session(upload_slots=1)
        sessions = [lo_session() for _ in range(4)]
        async with seeder_session:
            for s in sessions:
                await s.start()
            try:
                await seeder_session.add_torrent(meta, seed_dir)
                ports = [seeder_session.listen_port] + [s.listen_port for s in sessions]
                leechers = []
                for i, s in enumerate(sessions):
                    others = [("127.0.0.1", p) for p in ports if p != s.listen_port]
                    leechers.append(await s.add_torrent(meta, tmp_path / f"leech{i}", peers=others))
                await asyncio.gather(*(t.wait_done(timeout=60) for t in leechers))
                assert sum(t.uploaded_bytes for t in leechers) > 0
            finally:
                for s in sessions:
                    await s.close()

    asyncio.run(main())
    for i in range(4):
        assert same_tree(seed_dir / "ds", tmp_path / f"leech{i}" / "ds")


def test_lying_peer_is_banned_and_the_download_still_correct(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 2_000_000}, piece_length=16384)
    liar_dir = tmp_path / "liar"
    (liar_dir / "ds").mkdir(parents=True)
    (liar_dir / "ds" / "data.bin").write_bytes((seed_dir / "ds" / "data.bin").read_bytes())

    async def main() -> None:
        # The liar listens on its own loopback address.
        async with lo_session() as honest_s, lo_session("127.0.0.2") as liar_s, lo_session() as leech_s:
            await honest_s.add_torrent(meta, seed_dir)
            liar = await liar_s.add_torrent(meta, liar_dir)
            assert liar.status().state is TorrentState.SEEDING
            # Now the liar's disk goes bad behind its back: it serves wrong bytes for every piece.
            (liar_dir / "ds" / "data.bin").write_bytes(os.urandom(2_000_000))
            liar.storage.close()
            leecher = await leech_s.add_torrent(meta, tmp_path / "leech", peers=[("127.0.0.2", liar_s.listen_port)])
            events: list[TorrentEvent] = []
            leecher.add_listener(events.append)
            await until(lambda: any(isinstance(e, PieceFailed) for e in events), what="a failed piece")
            leecher.add_peer("127.0.0.1", honest_s.listen_port)
            await leecher.wait_done(timeout=60)
            assert any(ip == "127.0.0.2" for ip, _ in leecher.banned_peers)
            assert any(isinstance(e, PeerBanned) and e.ip == "127.0.0.2" for e in events)
            assert not any(p.address[0] == "127.0.0.2" for p in leecher.peers.values())

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "leech" / "ds")


def test_a_liar_behind_the_same_address_as_an_honest_seeder_does_not_cut_it_off(tmp_path: Path) -> None:
    """One NAT, two peers: bans are by (IP, peer id), so the honest seeder on the liar's address stays."""
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 2_000_000}, piece_length=16384)
    liar_dir = tmp_path / "liar"
    (liar_dir / "ds").mkdir(parents=True)
    (liar_dir / "ds" / "data.bin").write_bytes((seed_dir / "ds" / "data.bin").read_bytes())

    async def main() -> None:
        async with lo_session("127.0.0.3") as honest_s, lo_session("127.0.0.3") as liar_s, lo_session() as leech_s:
            await honest_s.add_torrent(meta, seed_dir)
            liar = await liar_s.add_torrent(meta, liar_dir)
            (liar_dir / "ds" / "data.bin").write_bytes(os.urandom(2_000_000))
            liar.storage.close()
            leecher = await leech_s.add_torrent(meta, tmp_path / "leech", peers=[("127.0.0.3", liar_s.listen_port)])
            events: list[TorrentEvent] = []
            leecher.add_listener(events.append)
            await until(lambda: any(isinstance(e, PieceFailed) for e in events), what="a failed piece")
            leecher.add_peer("127.0.0.3", honest_s.listen_port)
            await leecher.wait_done(timeout=60)
            assert leecher.banned_peers == {("127.0.0.3", liar_s.peer_id)}
            assert "127.0.0.3" not in leecher.banned
            assert [p.peer_id for p in leecher.peers.values()] == [honest_s.peer_id]

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "leech" / "ds")


# -- misbehaving peers, built on the real wire protocol ----------------------------------


async def bad_peer(meta: Metainfo, behaviour: str) -> tuple[asyncio.AbstractServer, int]:
    """A peer that claims every piece, then misbehaves: 'garbage', 'silent' or 'drop' (mid-piece)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = PeerConnection(meta.info_hash, b"-XX0000-" + os.urandom(12), meta.num_pieces, meta.piece_length, meta.total_length, fast=False, extension_protocol=False)
        try:
            data = await reader.readexactly(68)
            assert parse_handshake(data) is not None
            writer.write(conn.handshake_bytes())
            conn.receive_data(data)
            if behaviour == "garbage":
                writer.write(bytes([0, 0, 0, 5, 99]) + os.urandom(4000))
                await writer.drain()
                await reader.read()  # until the leecher hangs up on us
                return
            writer.write(conn.send(Bitfield(bitfield_bytes([True] * meta.num_pieces))) + conn.send(Unchoke()))
            served = 0
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                for e in conn.receive_data(chunk):
                    if isinstance(e, Request) and behaviour == "drop":
                        writer.write(conn.send(Piece(e.index, e.begin, bytes(e.length))))
                        served += 1
                        if served == 3:  # part of a piece, then gone
                            writer.close()
                            return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.3", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("behaviour", ["garbage", "silent", "drop"])
def test_download_survives_a_misbehaving_peer(tmp_path: Path, behaviour: str) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 1_000_000})

    async def main() -> None:
        server, port = await bad_peer(meta, behaviour)
        async with server, lo_session() as good_s, lo_session(request_timeout=1.0) as leech_s:
            await good_s.add_torrent(meta, seed_dir)
            leecher = await leech_s.add_torrent(meta, tmp_path / "leech", peers=[("127.0.0.3", port)])
            events: list[TorrentEvent] = []
            leecher.add_listener(events.append)
            if behaviour != "silent":
                await until(lambda: any(isinstance(e, PeerDisconnected) for e in events), what="the bad peer to go")
                gone = next(e for e in events if isinstance(e, PeerDisconnected))
                assert gone.peer == ("127.0.0.3", port)
                if behaviour == "garbage":
                    assert "protocol violation" in gone.reason
            else:
                await until(lambda: any(p.snubbed for p in leecher.peers.values()), what="the silent peer to be snubbed")
            leecher.add_peer("127.0.0.1", good_s.listen_port)
            await leecher.wait_done(timeout=30)

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "leech" / "ds")


def test_seeder_restarted_mid_download(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 4_000_000}, piece_length=16384)

    async def main() -> None:
        # Rate-limited so that the restart falls in the middle of the download.
        s1 = lo_session(upload_rate_limit=4_000_000)
        await s1.start()
        port = s1.listen_port
        await s1.add_torrent(meta, seed_dir)
        async with lo_session() as leech_s:
            leecher = await leech_s.add_torrent(meta, tmp_path / "leech", peers=[("127.0.0.1", port)])
            await until(lambda: leecher.status().pieces_have >= 10, what="some pieces")
            await s1.close()
            have_before = leecher.status().pieces_have
            assert have_before < meta.num_pieces
            s2 = lo_session(port=port)
            await s2.start()
            try:
                await s2.add_torrent(meta, seed_dir)
                await leecher.wait_done(timeout=60)
            finally:
                await s2.close()

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "leech" / "ds")


# -- resume and checking ---------------------------------------------------------------------


def test_resume_data_skips_the_recheck_until_a_file_changes(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, SIZES)

    async def run_once() -> tuple[int, TorrentState]:
        async with lo_session() as s:
            t = await s.add_torrent(meta, seed_dir)
            st = t.status()
            return st.checked_bytes, st.state

    checked, state = asyncio.run(run_once())
    assert state is TorrentState.SEEDING and checked > 0  # first time: everything hashed
    checked, state = asyncio.run(run_once())
    assert state is TorrentState.SEEDING and checked == 0  # resume data still matches: nothing hashed
    os.utime(seed_dir / "ds" / "tiny.txt")  # touched: its pieces must be checked again
    checked, state = asyncio.run(run_once())
    assert state is TorrentState.SEEDING and 0 < checked < meta.total_length
    with open(seed_dir / "ds" / "big.bin", "r+b") as f:
        f.write(b"corrupt")  # damaged: the first piece is no longer had
    _, state = asyncio.run(run_once())
    assert state is TorrentState.DOWNLOADING


def test_interrupted_download_continues_where_it_stopped(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 3_000_000}, piece_length=16384)

    async def main() -> None:
        async with lo_session(upload_rate_limit=3_000_000) as seed_s:
            await seed_s.add_torrent(meta, seed_dir)
            peers = [("127.0.0.1", seed_s.listen_port)]
            async with lo_session() as s:
                t = await s.add_torrent(meta, tmp_path / "leech", peers=peers)
                await until(lambda: t.status().pieces_have >= 20, what="some pieces")
            had, had_bytes = t.status().pieces_have, t.status().bytes_done
            async with lo_session() as s:
                t2 = await s.add_torrent(meta, tmp_path / "leech", peers=peers)
                assert t2.status().pieces_have >= had
                await t2.wait_done(timeout=60)
                # Only what was missing came again (the short last piece may be among those had).
                assert t2.status().downloaded <= meta.total_length - had_bytes

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "leech" / "ds")


def test_unwritable_save_path_is_an_error_state_not_a_crash(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, SIZES)
    blocked = tmp_path / "leech"
    blocked.mkdir()
    (blocked / "ds").write_text("a file where the torrent's directory should be")

    async def main() -> None:
        async with lo_session() as s1, lo_session() as s2:
            await s1.add_torrent(meta, seed_dir)
            t = await s2.add_torrent(meta, blocked, peers=[("127.0.0.1", s1.listen_port)])
            with pytest.raises(PyowtorrentError):
                await t.wait_done(timeout=30)
            st = t.status()
            assert st.state is TorrentState.ERROR and st.error
            assert st.pieces_have == 0

    asyncio.run(main())
    assert (blocked / "ds").read_text().startswith("a file")


def test_pause_resume_remove(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 2_000_000}, piece_length=16384)

    async def main() -> None:
        async with lo_session(upload_rate_limit=2_000_000) as s1, lo_session() as s2:
            await s1.add_torrent(meta, seed_dir)
            t = await s2.add_torrent(meta, tmp_path / "leech", peers=[("127.0.0.1", s1.listen_port)])
            await until(lambda: t.status().pieces_have >= 5, what="some pieces")
            t.pause()
            assert t.status().state is TorrentState.PAUSED
            await until(lambda: not t.peers, what="peers to disconnect")
            t.resume()
            await t.wait_done(timeout=60)
            assert same_tree(seed_dir / "ds", tmp_path / "leech" / "ds")
            await s2.remove_torrent(t, delete_files=True)
            assert meta.info_hash not in s2.torrents
            assert not (tmp_path / "leech" / "ds" / "data.bin").exists()

    asyncio.run(main())


def test_file_priority_zero_is_not_downloaded(tmp_path: Path) -> None:
    sizes = {"wanted.bin": 200_000, "skipped.bin": 300_000, "z_wanted.txt": 5}
    meta, seed_dir = make_torrent(tmp_path, sizes, piece_length=16384)
    names = [f.path[-1] for f in meta.files]
    priorities = [0 if n == "skipped.bin" else 1 for n in names]

    async def main() -> None:
        async with lo_session() as s1, lo_session() as s2:
            await s1.add_torrent(meta, seed_dir)
            t = await s2.add_torrent(meta, tmp_path / "leech", peers=[("127.0.0.1", s1.listen_port)], file_priorities=priorities)
            await t.wait_done(timeout=30)
            skipped = meta.files[names.index("skipped.bin")]
            shared = {i for i in meta.layout.pieces_of_file(names.index("skipped.bin"))} & (
                set(meta.layout.pieces_of_file(names.index("wanted.bin")))
                | set(meta.layout.pieces_of_file(names.index("z_wanted.txt")))
            )
            inner = set(meta.layout.pieces_of_file(names.index("skipped.bin"))) - shared
            assert inner and not any(t.have_piece(i) for i in inner)
            st = t.status()
            assert st.progress == 1.0 and st.pieces_have < meta.num_pieces and skipped.length > 0

    asyncio.run(main())
    for n in ("wanted.bin", "z_wanted.txt"):
        assert (tmp_path / "leech" / "ds" / n).read_bytes() == (seed_dir / "ds" / n).read_bytes()


def test_download_over_ipv6_loopback(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 300_000})

    async def main() -> None:
        async with lo_session("::1") as s1, lo_session("::1") as s2:
            await s1.add_torrent(meta, seed_dir)
            t = await s2.add_torrent(meta, tmp_path / "leech", peers=[("::1", s1.listen_port)])
            await t.wait_done(timeout=30)
            assert all(":" in addr[0] for addr in t.peers)

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "leech" / "ds")


def test_one_session_runs_several_torrents(tmp_path: Path) -> None:
    one, seed_one = make_torrent(tmp_path / "one", {"a.bin": 200_000}, seed=1)
    two, seed_two = make_torrent(tmp_path / "two", {"b.bin": 300_000}, seed=2)

    async def main() -> None:
        async with lo_session() as seeder, lo_session() as leecher:
            await seeder.add_torrent(one, seed_one)
            await seeder.add_torrent(two, seed_two)
            peers = [("127.0.0.1", seeder.listen_port)]
            t1 = await leecher.add_torrent(one, tmp_path / "out", peers=peers)
            t2 = await leecher.add_torrent(two, tmp_path / "out2", peers=peers)
            await asyncio.gather(t1.wait_done(timeout=30), t2.wait_done(timeout=30))
            assert set(leecher.torrents) == {one.info_hash, two.info_hash}

    asyncio.run(main())
    assert same_tree(seed_one / "ds", tmp_path / "out" / "ds")
    assert same_tree(seed_two / "ds", tmp_path / "out2" / "ds")


def test_haves_are_flushed_by_one_timer_per_peer_at_a_time(tmp_path: Path) -> None:
    # Haves wait for the next requests or HAVE_DELAY; a leecher verifies pieces faster than that,
    # and a timer per piece per peer was a measurable share of a swarm leecher's CPU.
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 8 << 20}, piece_length=16384)
    flushes: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        call_later = loop.call_later

        def counting(delay: float, callback: Any, *args: Any, **kw: Any) -> asyncio.TimerHandle:
            if getattr(callback, "__func__", None) is HaveBatch.flush:
                flushes.append(loop.time())
            return call_later(delay, callback, *args, **kw)

        loop.call_later = counting  # type: ignore[method-assign,assignment]
        async with lo_session() as s1, lo_session() as s2:
            await s1.add_torrent(meta, seed_dir)
            leecher = await s2.add_torrent(meta, tmp_path / "leech", peers=[("127.0.0.1", s1.listen_port)])
            started = loop.time()
            await leecher.wait_done(timeout=30)
            elapsed = loop.time() - started
        assert meta.num_pieces == 512
        # One peer, one flush pending at a time: at most one per HAVE_DELAY (and the first).
        assert 1 <= len(flushes) <= elapsed / HAVE_DELAY + 2, (len(flushes), elapsed)

    asyncio.run(main())


def test_a_peer_turned_away_for_want_of_room_gets_our_handshake_before_the_close(tmp_path: Path) -> None:
    # Closed before a handshake, a dial looks refused for being plaintext, and a dialler with
    # encryption enabled (ours, libtorrent's) tries again with a key exchange, for nothing.
    meta, seed_dir = make_torrent(tmp_path, SIZES)

    async def main() -> None:
        async with lo_session(max_connections_per_ip=1) as s1:
            await s1.add_torrent(meta, seed_dir)
            ours = Handshake(meta.info_hash, b"-XX0001-firstpeer000", True, True, False)
            first_reader, first_writer = await asyncio.open_connection("127.0.0.1", s1.listen_port)
            first_writer.write(encode_handshake(ours))
            assert parse_handshake(await first_reader.readexactly(68)) is not None
            torrent = s1.torrents[meta.info_hash]
            await until(lambda: len(torrent.peers) == 1, what="the first peer to be attached")
            reader, writer = await asyncio.open_connection("127.0.0.1", s1.listen_port)
            writer.write(encode_handshake(Handshake(meta.info_hash, b"-XX0001-secondpeer00", True, True, False)))
            answer = await asyncio.wait_for(reader.read(), 10)  # to the end: the seeder closes
            hs = parse_handshake(answer[:68])
            assert hs is not None and hs.info_hash == meta.info_hash and len(answer) == 68
            assert len(torrent.peers) == 1
            writer.close()
            first_writer.close()

    asyncio.run(main())
