"""Serving the metadata (BEP 9 ``ut_metadata``, the seeding side): the wire, the engine, libtorrent.

* The wire: a connection made with ``metadata`` sends metadata messages under
  the remote's id and decodes them under its own (an unknown ``msg_type`` is
  no event); one made without does neither.
* The engine over real sockets, against a scripted peer: our extension
  handshake lists ``ut_metadata`` and the real ``metadata_size`` (neither for
  a private torrent, as libtorrent does, which drops a peer that asks anyway);
  a peer that asks for every piece gets the exact info dictionary; a request
  out of range gets a reject.
* libtorrent, given only a magnet link and our seeder's address, fetches the
  metadata from us and then the torrent, byte-exact.

The codec and the sans-IO server and assembler are in ``tests/test_metadata_exchange.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any, Callable

import libtorrent as lt  # test-only reference implementation
import pytest

from pyowtorrent.engine.events import PeerDisconnected, TorrentEvent
from pyowtorrent.engine.metadata import METADATA_ID
from pyowtorrent.engine.session import Session
from pyowtorrent.metainfo.torrent_file import Metainfo
from pyowtorrent.storage.create import create_torrent
from pyowtorrent.wire import LocalProtocolError, PeerConnection, Violation
from pyowtorrent.wire import events as ev
from pyowtorrent.wire.metadata import METADATA_BLOCK, encode_metadata_message, metadata_pieces

from .engine_util import make_payload, make_torrent, same_tree
from .hostile import Attacker
from .lt_util import lt_session

DEADLINE = 30.0  # only turns a hang into a failure


# -- the wire -----------------------------------------------------------------------------------


def _pair(metadata: bool) -> tuple[PeerConnection, PeerConnection]:
    a, b = (PeerConnection(bytes(20), bytes([i]) * 20, 1, 16384, 16384, metadata=metadata) for i in (1, 2))
    b.receive_data(a.handshake_bytes())
    a.receive_data(b.handshake_bytes())
    a.receive_data(b.send(ev.ExtensionHandshake(m={"ut_metadata": 3})))
    b.receive_data(a.send(ev.ExtensionHandshake(m={"ut_metadata": 5})))
    return a, b


def test_a_connection_that_speaks_ut_metadata_sends_it_under_the_remote_id_and_decodes_it_under_its_own() -> None:
    a, b = _pair(metadata=True)
    request = ev.MetadataRequest(0)
    data = a.send(request)
    assert data[5] == 3  # b's id for ut_metadata
    assert b.receive_data(data) == [request]
    answer = ev.MetadataData(0, 100, b"x" * 100)
    assert a.receive_data(b.send(answer)) == [answer]
    # An unknown msg_type is ignored (BEP 9): no event, and the connection goes on.
    unknown = ev.Extended(5, b"d8:msg_typei7e5:piecei0ee")
    assert a.receive_data(b.send(unknown) + b.send(ev.KeepAlive())) == [ev.KeepAlive()]


def test_without_metadata_a_connection_neither_sends_nor_decodes_it() -> None:
    a, b = _pair(metadata=False)
    with pytest.raises(LocalProtocolError):
        a.send(ev.MetadataRequest(0))
    payload = encode_metadata_message(ev.MetadataRequest(0))
    assert b.receive_data(a.send(ev.Extended(3, payload))) == [ev.Extended(3, payload)]


def test_the_extension_handshake_carries_a_typed_metadata_size() -> None:
    a, b = _pair(metadata=True)
    [hs] = b.receive_data(a.send(ev.ExtensionHandshake(m={"ut_metadata": 5}, metadata_size=31235)))
    assert isinstance(hs, ev.ExtensionHandshake) and hs.metadata_size == 31235 and hs.raw[b"metadata_size"] == 31235
    [hs] = b.receive_data(a.send(ev.ExtensionHandshake(raw={b"metadata_size": b"12"})))
    assert isinstance(hs, ev.ExtensionHandshake) and hs.metadata_size is None  # the wrong type is ignored (BEP 10)


# -- the engine on loopback, against a scripted peer ---------------------------------------------


def big_info_torrent(tmp_path: Path, private: bool = False) -> tuple[Metainfo, Path]:
    """A torrent whose info dictionary takes more than one 16 KiB metadata piece (many long names)."""
    seed_dir = tmp_path / "seeder"
    make_payload(seed_dir / "ds", {f"{i:03d}-{'n' * 60}.bin": 700 + i for i in range(300)})
    meta = create_torrent(seed_dir / "ds", piece_length=16384, private=private)
    assert metadata_pieces(len(meta.info_bytes)) >= 2
    return meta, seed_dir


def metadata_peer(meta: Metainfo) -> Attacker:
    """A scripted peer whose connection speaks ut_metadata (it decodes what we send)."""
    a = Attacker(meta)
    a.conn = PeerConnection(
        meta.info_hash, a.conn.local.peer_id, meta.num_pieces, meta.piece_length, meta.total_length, metadata=True
    )
    return a


async def read_until(a: Attacker, done: Callable[[list[ev.Event]], bool]) -> None:
    async with asyncio.timeout(DEADLINE):
        while not done(a.events):
            assert await a.read(), "we hung up on it"


def _handshake(events: list[ev.Event]) -> ev.ExtensionHandshake | None:
    return next((e for e in events if isinstance(e, ev.ExtensionHandshake)), None)


@pytest.mark.parametrize("private", [False, True])
def test_our_extension_handshake_advertises_ut_metadata_and_the_real_size(tmp_path: Path, private: bool) -> None:
    meta, seed_dir = big_info_torrent(tmp_path, private)

    async def main() -> None:
        async with Session(listen="127.0.0.1", port=0) as s:
            await s.add_torrent(meta, seed_dir)
            a = metadata_peer(meta)
            await a.connect(("127.0.0.1", s.listen_port))
            await read_until(a, lambda es: _handshake(es) is not None)
            hs = _handshake(a.events)
            assert hs is not None
            if private:  # as libtorrent: no ut_metadata for a private torrent
                assert "ut_metadata" not in hs.m and hs.metadata_size is None
            else:
                assert hs.m["ut_metadata"] == METADATA_ID
                assert hs.metadata_size == len(meta.info_bytes)
                assert hs.raw[b"metadata_size"] == len(meta.info_bytes)
            a.close()

    asyncio.run(main())


def test_a_peer_asking_for_every_piece_gets_the_info_dictionary_and_a_reject_out_of_range(tmp_path: Path) -> None:
    meta, seed_dir = big_info_torrent(tmp_path)
    size = len(meta.info_bytes)
    count = metadata_pieces(size)

    async def main() -> None:
        async with Session(listen="127.0.0.1", port=0) as s:
            await s.add_torrent(meta, seed_dir)
            a = metadata_peer(meta)
            await a.connect(("127.0.0.1", s.listen_port))
            await read_until(a, lambda es: _handshake(es) is not None)
            a.send(ev.ExtensionHandshake(m={"ut_metadata": 3}), ev.HaveNone())
            a.send(*(ev.MetadataRequest(i) for i in range(count)))
            a.send(ev.MetadataRequest(count))
            await read_until(a, lambda es: any(isinstance(e, ev.MetadataReject) for e in es))

            def blocks(es: list[ev.Event]) -> dict[int, ev.MetadataData]:
                return {e.piece: e for e in es if isinstance(e, ev.MetadataData)}

            await read_until(a, lambda es: len(blocks(es)) == count)
            got = blocks(a.events)
            assert all(b.total_size == size for b in got.values())
            assert all(len(got[i].data) == min(METADATA_BLOCK, size - i * METADATA_BLOCK) for i in range(count))
            metadata = b"".join(got[i].data for i in range(count))
            assert metadata == meta.info_bytes
            assert hashlib.sha1(metadata).digest() == meta.info_hash
            assert [e for e in a.events if isinstance(e, ev.MetadataReject)] == [ev.MetadataReject(count)]
            a.close()

    asyncio.run(main())


def test_a_private_torrent_drops_a_peer_that_asks_for_its_metadata_anyway(tmp_path: Path) -> None:
    meta, seed_dir = big_info_torrent(tmp_path, private=True)

    async def main() -> None:
        async with Session(listen="127.0.0.1", port=0) as s:
            t = await s.add_torrent(meta, seed_dir)
            gone: list[PeerDisconnected] = []
            went = asyncio.Event()

            def on(e: TorrentEvent) -> None:
                if isinstance(e, PeerDisconnected):
                    gone.append(e)
                    went.set()

            t.add_listener(on)
            a = metadata_peer(meta)
            await a.connect(("127.0.0.1", s.listen_port))
            a.send(ev.ExtensionHandshake(m={"ut_metadata": 3}), ev.HaveNone())
            # Under the id we would have chosen.
            a.send_raw(ev_frame(METADATA_ID, encode_metadata_message(ev.MetadataRequest(0))))
            async with asyncio.timeout(DEADLINE):
                await went.wait()
            assert Violation.EXTENDED_ID_NOT_ADVERTISED.value in gone[0].reason
            a.close()

    asyncio.run(main())


def ev_frame(ext_id: int, payload: bytes) -> bytes:
    """An extension message, framed by hand (our connection would refuse to send it)."""
    return (2 + len(payload)).to_bytes(4, "big") + bytes((20, ext_id)) + payload


# -- libtorrent ---------------------------------------------------------------------------------


def test_libtorrent_given_only_a_magnet_link_fetches_the_metadata_and_the_torrent_from_us(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 700_000, "sub/other.bin": 123_456})

    async def main() -> None:
        ses: Any = lt_session()
        try:
            async with Session(listen="127.0.0.1", port=0) as s:
                await s.add_torrent(meta, seed_dir)
                params = lt.parse_magnet_uri(meta.magnet())
                params.save_path = str(tmp_path / "lt")
                handle = ses.add_torrent(params)
                assert not handle.status().has_metadata
                handle.connect_peer(("127.0.0.1", s.listen_port))
                end = time.monotonic() + DEADLINE
                while not handle.status().is_seeding:  # libtorrent has no callback into our loop: poll it
                    assert time.monotonic() < end, f"libtorrent: {handle.status().state}, has metadata {handle.status().has_metadata}"
                    await asyncio.sleep(0.05)
                info = handle.torrent_file()
                assert bytes(info.info_section()) == meta.info_bytes
        finally:
            for h in ses.get_torrents():
                ses.remove_torrent(h)
            ses.pause()

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "lt" / "ds")
