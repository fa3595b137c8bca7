"""Hostile peers on loopback: whatever one connection does ends that connection, never the torrent."""

from __future__ import annotations

import asyncio
import logging
import struct
from pathlib import Path
from typing import Any, Callable

import pytest

from pyowtorrent.engine.conduct import IDLE_MESSAGE_BURST
from pyowtorrent.engine.events import PeerDisconnected, TorrentState
from pyowtorrent.engine.session import MAX_PENDING_HANDSHAKES, Session
from pyowtorrent.wire import events as ev

from .engine_util import make_torrent, same_tree, until
from .hostile import Attacker

JUNK_ANSWERS = {
    # What an HTTP server, a random byte stream, or a peer that speaks only MSE/PE answers.
    "http": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".ljust(68, b" "),
    "random": bytes(range(97, 97 + 68)),
    "wrong protocol string": b"\x13" + b"BitTorrent protocoX" + bytes(48),
    "short then close": b"\x13BitTorrent",
}


class JunkPeer:
    """A listener that answers every connection with ``answer`` and records when we hung up."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.hung_up = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.2", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.answer)
        try:
            await writer.drain()
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        finally:
            self.hung_up += 1
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def lo_session(**kw: Any) -> Session:
    kw.setdefault("reconnect_delay", 0.2)
    return Session(listen="127.0.0.1", **kw)


@pytest.mark.parametrize("answer", list(JUNK_ANSWERS))
def test_a_junk_handshake_from_a_dialled_peer_ends_that_connection_not_the_torrent(tmp_path: Path, answer: str) -> None:
    """A leecher and a seeder each dial an address that answers junk; both keep going,
    and the download from the real seeder completes byte-exact."""
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 600_000})

    async def main() -> None:
        junk = JunkPeer(JUNK_ANSWERS[answer])
        port = await junk.start()
        try:
            async with lo_session() as seed_s, lo_session() as leech_s:
                seeder = await seed_s.add_torrent(meta, seed_dir, peers=[("127.0.0.2", port)])
                await until(lambda: junk.hung_up >= 1, what="the seeder to drop the junk peer")
                assert seeder.state is TorrentState.SEEDING
                leecher = await leech_s.add_torrent(
                    meta, tmp_path / "leech", peers=[("127.0.0.2", port), ("127.0.0.1", seed_s.listen_port)]
                )
                await leecher.wait_done(timeout=30)
                await until(lambda: junk.hung_up >= 2, what="the leecher to drop the junk peer")
                assert leecher.state is TorrentState.SEEDING and leecher.error is None
                assert seeder.state is TorrentState.SEEDING and seeder.error is None
        finally:
            await junk.close()

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "leech" / "ds")


# -- floods of messages that cost us work: the flooder is dropped, a good peer downloads on ------

HAVE, REQUEST, CANCEL, EXTENDED = 4, 6, 8, 20


def _message(msg_id: int, body: bytes = b"") -> bytes:
    return struct.pack(">IB", 1 + len(body), msg_id) + body


def _extension_handshake(size: int) -> bytes:
    filler = b"i1e" * max(0, (size - 12) // 3)
    return _message(EXTENDED, b"\x00" + b"d1:xl" + filler + b"ee")


# More than the kernel's socket buffers hold on loopback, so a flood that is not
# cut off runs to its end, and one that is cut off stops early.
FLOOD = 2_000_000

FLOODS = {
    # name: (messages, what the seeder says when it drops the flooder)
    "1 MiB extension handshakes": (lambda meta: (_extension_handshake(1 << 20) for _ in range(200)), "too long"),
    # Beyond the eighth they are ignored (libtorrent has no bound), and charged as messages that carry nothing.
    "repeated extension handshakes": (lambda meta: (_extension_handshake(64) for _ in range(FLOOD)), "flooding"),
    "cancels of nothing": (
        lambda meta: (_message(CANCEL, struct.pack(">III", i % (meta.num_pieces - 1), 0, 16384)) for i in range(FLOOD)),
        "flooding",
    ),
    "requests while choked": (
        lambda meta: (_message(REQUEST, struct.pack(">III", i % (meta.num_pieces - 1), 0, 16384)) for i in range(FLOOD)),
        "while choked",
    ),
    # Out of range: each is rejected and counted; libtorrent drops after 300 while choked, so do we (always).
    "invalid requests": (
        lambda meta: (_message(REQUEST, struct.pack(">III", meta.num_pieces, 0, 16384)) for _ in range(FLOOD)),
        "invalid requests",
    ),
    # Ignored (libtorrent logs and ignores them), and charged as messages that carry nothing.
    "allowed fast out of range": (
        lambda meta: (_message(17, struct.pack(">I", meta.num_pieces + i % 100)) for i in range(FLOOD)),
        "flooding",
    ),
    "repeated haves": (lambda meta: (_message(HAVE, struct.pack(">I", 0)) for _ in range(FLOOD)), "flooding"),
    "keep-alives": (lambda meta: (b"\0\0\0\0" for _ in range(FLOOD)), "flooding"),
    # Each choke/unchoke makes us drop and re-send our requests, or look for blocks to ask.
    "choke and unchoke": (lambda meta: (b"\0\0\0\x01\x01\0\0\0\x01\x00" for _ in range(FLOOD)), "flooding"),
}


@pytest.mark.parametrize("flood", list(FLOODS))
def test_a_flooding_peer_is_dropped_and_a_good_download_completes(
    tmp_path: Path, flood: str, caplog: pytest.LogCaptureFixture
) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 2_000_000})
    messages, reason = FLOODS[flood]

    async def main() -> None:
        async with lo_session() as seed_s, lo_session() as leech_s:
            seeder = await seed_s.add_torrent(meta, seed_dir)
            gone: list[PeerDisconnected] = []
            seeder.add_listener(lambda e: gone.append(e) if isinstance(e, PeerDisconnected) else None)
            attacker = Attacker(meta, local_host="127.0.0.7")
            await attacker.connect(("127.0.0.1", seed_s.listen_port))
            attack = asyncio.ensure_future(attacker.flood(messages(meta), batch=1 if "1 MiB" in flood else 1000))
            leecher = await leech_s.add_torrent(meta, tmp_path / "leech", peers=[("127.0.0.1", seed_s.listen_port)])
            await leecher.wait_done(timeout=60)
            sent = await asyncio.wait_for(attack, 60)
            attacker.close()
            await until(lambda: any(e.peer[0] == "127.0.0.7" for e in gone), what="the flooder to be dropped")
            dropped = next(e for e in gone if e.peer[0] == "127.0.0.7")
            assert reason in dropped.reason
            assert sent < (200 if "1 MiB" in flood else FLOOD)  # dropped before the flood ran out

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "leech" / "ds")
    assert not [r for r in caplog.records if r.exc_info]  # no traceback anywhere
    # Nor asyncio's complaint, once per write, about writing to a connection that is gone.
    assert not [r for r in caplog.records if "socket.send() raised exception" in r.getMessage()]


# -- slowloris: silent connections that would fill the handshake slots ---------------------------


class Slowloris:
    """Keeps ``count`` connections open that send nothing (or half a handshake), re-opening them as they close."""

    def __init__(self, target: tuple[str, int], sources: list[str], count: int) -> None:
        self.target = target
        self.sources = sources
        self.count = count
        self.opened = 0
        self.closed_at_once = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event, max_connections: int = 5000) -> None:
        while not stop.is_set() and self.opened < max_connections:
            for _ in range(2):  # up to 40 new connections a second, as slots free up
                if len(self._open) >= self.count or self.opened >= max_connections:
                    break
                source = self.sources[self.opened % len(self.sources)]
                reader, writer = await asyncio.open_connection(*self.target, local_addr=(source, 0))
                if self.opened % 2:
                    writer.write(b"\x13BitTorrent proto")  # half a handshake, then nothing
                self.opened += 1
                self._open.add(writer)
                task = asyncio.ensure_future(self._hold(reader, writer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(0.05)  # pacing, as in the attack

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()
        except ConnectionError:
            pass
        self._open.discard(writer)
        writer.close()

    def close(self) -> None:
        for w in self._open:
            w.close()
        for t in self._tasks:
            t.cancel()


@pytest.mark.parametrize("sources", [1, 20], ids=["one address", "twenty addresses"])
def test_silent_connections_cannot_keep_a_real_peer_out(tmp_path: Path, sources: int) -> None:
    """~70-80 silent sockets, re-opened as they are closed, against a seeder; a leecher still downloads."""
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 1_000_000})

    async def main() -> None:
        # The leecher retries a refused connection after 5 s, as by default.
        async with lo_session() as seed_s, lo_session(reconnect_delay=5.0) as leech_s:
            await seed_s.add_torrent(meta, seed_dir)
            loris = Slowloris(
                ("127.0.0.1", seed_s.listen_port), [f"127.0.0.{10 + i}" for i in range(sources)], 70 if sources == 1 else 80
            )
            stop = asyncio.Event()
            attack = asyncio.ensure_future(loris.run(stop))
            await until(lambda: loris.opened >= 2 * loris.count, what="the silent connections to open")
            leecher = await leech_s.add_torrent(meta, tmp_path / "leech", peers=[("127.0.0.1", seed_s.listen_port)])
            try:
                await leecher.wait_done(timeout=30)
            finally:
                stop.set()
                await attack
                loris.close()
            assert seed_s.handshaking <= MAX_PENDING_HANDSHAKES

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "leech" / "ds")


# -- our own files: changed under us, or a resume file that cannot be read ---------------------


def test_a_payload_truncated_under_a_running_seeder_is_an_error_state_naming_it(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 3_000_000})

    async def main() -> None:
        async with lo_session(upload_rate_limit=300_000) as seed_s, lo_session() as leech_s:
            seeder = await seed_s.add_torrent(meta, seed_dir)
            leecher = await leech_s.add_torrent(meta, tmp_path / "leech", peers=[("127.0.0.1", seed_s.listen_port)])
            await until(lambda: leecher.status().pieces_have >= 3, what="some pieces")
            with open(seed_dir / "ds" / "data.bin", "r+b") as f:
                f.truncate(100_000)
            await until(lambda: seeder.state is TorrentState.ERROR, what="the seeder to notice")
            assert seeder.error is not None and "data.bin" in seeder.error
            await until(lambda: not leecher.peers, what="the leecher to be let go")
            assert leecher.state is TorrentState.DOWNLOADING  # waiting for another source, not failed

    asyncio.run(main())


def test_a_resume_file_too_deeply_nested_to_read_counts_as_absent(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 300_000})
    resume = seed_dir / ".pyowtorrent" / f"{meta.info_hash.hex()}.resume.json"
    resume.parent.mkdir(parents=True)
    resume.write_text("[" * 200_000 + "]" * 200_000)

    async def main() -> None:
        async with lo_session() as s:
            t = await s.add_torrent(meta, seed_dir)
            assert t.state is TorrentState.SEEDING and t.status().checked_bytes == meta.total_length

    asyncio.run(main())


def test_peers_that_never_read_are_really_disconnected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropping a peer that reads nothing must close its socket: a gentle close would wait for the
    unread buffer to drain forever, keeping the socket, the peer and its task."""
    import socket

    from pyowtorrent.engine import conduct

    monkeypatch.setattr(conduct, "UPLOAD_DEAD", 3.0)  # the rule under test, without its 60 s wait
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 12_000_000}, piece_length=262144)

    async def main() -> None:
        async with lo_session() as s:
            t = await s.add_torrent(meta, seed_dir)
            gone: list[PeerDisconnected] = []
            t.add_listener(lambda e: gone.append(e) if isinstance(e, PeerDisconnected) else None)
            attackers = []
            for _ in range(3):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it reads nothing anyway
                sock.connect(("127.0.0.1", s.listen_port))
                sock.setblocking(False)
                a = Attacker(meta)
                a.reader, a.writer = await asyncio.open_connection(sock=sock)
                a.writer.write(a.conn.handshake_bytes())
                a.events += a.conn.receive_data(await a.reader.readexactly(68))
                a.send(ev.HaveNone(), ev.Interested())
                attackers.append(a)
            await until(lambda: len(t.peers) == 3 and all(not p.am_choking for p in t.peers.values()), what="unchokes")
            peers = list(t.peers.values())
            blocks = [ev.Request(i, b, 16384) for i in range(meta.num_pieces) for b in range(0, meta.piece_length, 16384)]
            for a in attackers:
                a.send(*blocks[:500])  # 8 MB asked for, none of it read
            await until(lambda: len(gone) == 3, timeout=30, what="the non-readers to be dropped")
            assert all("stopped reading" in e.reason for e in gone)
            for p in peers:
                assert p.writer.transport.get_extra_info("socket").fileno() == -1  # closed, not lingering
            await until(lambda: not t.swarm.connections._runs.tasks, what="their tasks to end")
            for a in attackers:
                a.close()

    asyncio.run(main())


def test_rules_real_clients_break_are_tolerated_and_the_connection_kept(tmp_path: Path) -> None:
    """What libtorrent forgives, we forgive: the peer stays, its invalid requests are rejected
    and counted, the block we never asked for is dropped and counted as waste."""
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 300_000})
    n = meta.num_pieces
    invalid = [(n, 0, 16384), (0, 0, 0), (0, 0, 16385)]

    async def main() -> None:
        async with lo_session() as s:
            t = await s.add_torrent(meta, seed_dir)
            a = Attacker(meta, local_host="127.0.0.7")
            await a.connect(("127.0.0.1", s.listen_port))
            a.send_raw(
                _message(15)  # have none
                + _message(13, struct.pack(">I", n))  # suggest out of range
                + _message(17, struct.pack(">I", n + 5))  # allowed fast out of range
                + _message(CANCEL, struct.pack(">III", n, 0, 16384))  # cancel out of range
                + _message(16, struct.pack(">III", 0, 0, 16384))  # reject of nothing we were asked
                + _message(EXTENDED, b"\x00junk")  # an extension handshake that does not decode
                + _message(7, struct.pack(">II", 0, 0) + bytes(16384))  # a block nobody asked for
                + b"".join(_message(REQUEST, struct.pack(">III", *r)) for r in invalid)
                + _message(2)  # interested
            )
            await a.drain()
            rejects = [_message(16, struct.pack(">III", *r)) for r in invalid]
            received = b""
            while not all(r in received for r in rejects):  # BEP 6: each invalid request rejected
                received += await asyncio.wait_for(a.reader.read(1 << 16), 10)  # type: ignore[union-attr]
            [peer] = t.peers.values()
            await until(lambda: peer.peer_interested, what="the interested message, after all that")
            assert peer.conduct.invalid_requests == 3
            assert peer.conduct.wasted_bytes == 16384
            assert not peer.closed.is_set()
            a.close()

    asyncio.run(main())


def test_the_blocks_a_peer_sent_before_the_message_that_gets_it_dropped_are_kept(tmp_path: Path) -> None:
    # A read's blocks are handed to the torrent after the read's other messages: one of those
    # ending the peer (here the 501st keep-alive of a burst) must not take the blocks with it.
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 2_000_000})
    payload = (seed_dir / "ds" / "data.bin").read_bytes()

    async def main() -> None:
        async with lo_session() as leech_s:
            leecher = await leech_s.add_torrent(meta, tmp_path / "leech")
            gone: list[PeerDisconnected] = []
            leecher.add_listener(lambda e: gone.append(e) if isinstance(e, PeerDisconnected) else None)
            attacker = Attacker(meta)
            await attacker.connect(("127.0.0.1", leech_s.listen_port))
            attacker.send(ev.HaveAll(), ev.Unchoke())
            await until_read(attacker, lambda: sum(isinstance(e, ev.Request) for e in attacker.events) >= 2)
            asked = [e for e in attacker.events if isinstance(e, ev.Request)][:2]
            pieces = [
                ev.Piece(r.index, r.begin, payload[r.index * meta.piece_length + r.begin :][: r.length]) for r in asked
            ]
            # One write: the blocks, then a burst of keep-alives past the allowance.
            attacker.send_raw(b"".join(attacker.conn.send(p) for p in pieces) + b"\0\0\0\0" * (IDLE_MESSAGE_BURST + 20))
            await until(lambda: bool(gone), what="the flooder to be dropped")
            assert "flooding" in gone[0].reason
            assert leecher.status().downloaded == sum(r.length for r in asked)
            attacker.close()

    asyncio.run(main())


async def until_read(attacker: Attacker, condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not condition():
            assert await attacker.read(), "the leecher hung up"
