"""Downloading from a magnet link (BEP 9, the fetching side): the wire, the engine, the façade, the CLI.

* The wire: a connection made before the metadata is known takes the news
  of any torrent (haves, bitfields of any length a torrent may have), turns
  every request into an invalid one, refuses blocks, and can ask for none.
* The engine on loopback: the metadata comes from our own seeder named by
  ``x.pe``, the ``.torrent`` is kept beside the resume data, and the same
  link added again needs no network; a peer that dials us meanwhile is
  asked too.  A peer whose metadata fails the
  info-hash check is dropped and never dialled again; a liar among honest
  peers (whose pieces get mixed with theirs) cannot stop the fetch; with
  nobody to ask, a timeout says so.
* ``pyowtorrent.download(magnet, dest)`` and ``pyowtorrent download MAGNET
  -o DIR`` (a fresh process) complete byte-exact from a libtorrent seeder
  with its default plugins, found through opentracker.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

import pyowtorrent
from pyowtorrent.engine.events import TorrentState
from pyowtorrent.engine.connections import MAX_KNOWN_PEERS
from pyowtorrent.engine.session import Session, fetched_torrent_file
from pyowtorrent.errors import MetainfoError, NoPeersError
from pyowtorrent.metainfo.magnet import Magnet
from pyowtorrent.metainfo.torrent_file import Metainfo, load_metainfo, metainfo_from_info
from pyowtorrent.storage.create import create_torrent
from pyowtorrent.wire import LocalProtocolError, PeerConnection, RemoteProtocolError, Violation
from pyowtorrent.wire import events as ev
from pyowtorrent.wire.handshake import HANDSHAKE_LENGTH
from pyowtorrent.wire.metadata import METADATA_BLOCK, metadata_pieces
from pyowtorrent.wire.pex import MAX_PEX_CONTACTS

from .conftest import REPO, free_port
from .engine_util import make_payload, make_torrent, same_tree, until
from .lt_util import lt_seeder

DEADLINE = 30.0  # only turns a hang into a failure


# -- the wire -----------------------------------------------------------------------------------


def _metadata_only_pair() -> tuple[PeerConnection, PeerConnection]:
    """(ours without metadata, a remote that has the torrent: 20 pieces of 16 KiB)."""
    ours = PeerConnection.without_metadata(bytes(20), b"A" * 20)
    theirs = PeerConnection(bytes(20), b"B" * 20, 20, 16384, 20 * 16384)
    ours.receive_data(theirs.handshake_bytes())
    theirs.receive_data(ours.handshake_bytes())
    theirs.receive_data(ours.send(ev.HaveNone()))
    return ours, theirs


def test_a_connection_without_metadata_takes_haves_and_bitfields_of_any_torrent() -> None:
    ours, theirs = _metadata_only_pair()
    bits = theirs.send(ev.Bitfield(b"\xff\xff\xf0"))  # the first message; a later one is an update
    assert ours.receive_data(bits + theirs.send(ev.Have(19))) == [ev.Bitfield(b"\xff\xff\xf0"), ev.Have(19)]
    # Spare bits are not known to be spare, so they stay.
    late = (4).to_bytes(4, "big") + b"\x05\xff\xff\xff"
    assert ours.receive_data(late) == [ev.Bitfield(b"\xff\xff\xff")]


def test_a_connection_without_metadata_refuses_every_request_and_every_block_and_asks_for_none() -> None:
    ours, theirs = _metadata_only_pair()
    [have_all, invalid] = ours.receive_data(theirs.send(ev.HaveAll()) + theirs.send(ev.Request(0, 0, 16384)))
    assert have_all == ev.HaveAll() and isinstance(invalid, ev.InvalidRequest)
    with pytest.raises(LocalProtocolError, match="metadata is not known yet"):
        ours.send(ev.Request(0, 0, 16384))
    piece = (9 + 16384).to_bytes(4, "big") + b"\x07" + bytes(8) + bytes(16384)
    with pytest.raises(RemoteProtocolError) as info:
        ours.receive_data(piece)
    assert info.value.reason is Violation.PIECE_NOT_REQUESTED


def test_a_connection_without_metadata_still_bounds_a_bitfield() -> None:
    ours, _ = _metadata_only_pair()
    huge = (1 + (1 << 20)).to_bytes(4, "big") + b"\x05"  # 1 MiB of bitfield: more pieces than any torrent
    with pytest.raises(RemoteProtocolError):
        ours.receive_data(huge)


def test_the_torrent_of_fetched_metadata_keeps_the_info_bytes_and_takes_the_magnets_trackers_and_web_seeds(
    tmp_path: Path,
) -> None:
    meta, _ = make_torrent(tmp_path, {"a.bin": 1000, "b.bin": 2000})
    trackers = ["http://t1.example/announce", "udp://t2.example:6969"]
    built = metainfo_from_info(meta.info_bytes, trackers=trackers, web_seeds=["http://ws.example/"])
    assert built.info_hash == meta.info_hash and built.info_bytes == meta.info_bytes
    assert built.trackers == (("http://t1.example/announce",), ("udp://t2.example:6969",))  # a tier each, as libtorrent
    assert built.web_seeds == ("http://ws.example/",)
    with pytest.raises(MetainfoError):
        metainfo_from_info(b"d4:name3:abce")  # matched an info-hash, but is no torrent


# -- the engine on loopback ---------------------------------------------------------------------


def test_a_magnet_link_downloads_from_an_x_pe_peer_and_the_second_time_needs_no_network(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"a.bin": 300_000, "sub/b.bin": 70_000}, piece_length=16384)
    out = tmp_path / "out"

    async def main() -> None:
        async with Session(listen="127.0.0.1") as seeder, Session(listen="127.0.0.1") as leecher:
            await seeder.add_torrent(meta, seed_dir)
            magnet = Magnet(info_hash=meta.info_hash, peers=(("127.0.0.1", seeder.listen_port),))
            torrent = await leecher.add_magnet(magnet.uri(), out, timeout=DEADLINE)
            assert torrent.meta.info_bytes == meta.info_bytes
            await torrent.wait_done(DEADLINE)
        # The metadata was kept: the same info-hash with nobody to ask is whole again at once.
        kept = load_metainfo(fetched_torrent_file(meta.info_hash, out))
        assert kept.info_bytes == meta.info_bytes
        async with Session(listen="127.0.0.1") as again:
            torrent = await again.add_magnet(Magnet(info_hash=meta.info_hash).uri(), out)
            assert torrent.state is TorrentState.SEEDING

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", out / "ds")
    # And the façade returns the content at once, where it would otherwise fail: nobody to ask.
    assert pyowtorrent.download(Magnet(info_hash=meta.info_hash).uri(), out) == out / "ds"


def test_a_peer_that_connects_to_us_while_the_metadata_is_missing_is_asked_for_it(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"a.bin": 200_000})
    closed = ("127.0.0.1", free_port())  # the only peer the link names does not answer

    async def main() -> None:
        async with Session(listen="127.0.0.1") as seeder, Session(listen="127.0.0.1") as leecher:
            seeding = await seeder.add_torrent(meta, seed_dir)
            magnet = Magnet(info_hash=meta.info_hash, peers=(closed,))
            adding = asyncio.ensure_future(leecher.add_magnet(magnet.uri(), tmp_path / "out", timeout=DEADLINE))
            seeding.add_peer("127.0.0.1", leecher.listen_port)  # the seeder dials the leecher
            torrent = await adding
            await torrent.wait_done(DEADLINE)

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "out" / "ds")


def test_with_nobody_to_ask_a_magnet_link_fails_with_a_clear_error(tmp_path: Path) -> None:
    meta, _ = make_torrent(tmp_path, {"a.bin": 1000})
    with pytest.raises(NoPeersError, match="no tracker and no peer"):
        pyowtorrent.download(Magnet(info_hash=meta.info_hash).uri(), tmp_path / "out")
    closed = ("127.0.0.1", free_port())  # nothing listens there
    with pytest.raises(NoPeersError, match="no metadata after 1 s: 0 peers connected"):
        pyowtorrent.download(Magnet(info_hash=meta.info_hash, peers=(closed,)).uri(), tmp_path / "out", timeout=1)


def _many_files_torrent(tmp_path: Path) -> tuple[Metainfo, Path]:
    """A torrent whose info dictionary takes several 16 KiB metadata pieces (many long names)."""
    seed_dir = tmp_path / "seeder"
    make_payload(seed_dir / "ds", {f"{i:03d}-{'n' * 60}.bin": 100 + i for i in range(800)})
    meta = create_torrent(seed_dir / "ds", piece_length=16384)
    assert metadata_pieces(len(meta.info_bytes)) >= 4
    return meta, seed_dir


class Liar:
    """A listening peer that advertises the real metadata size and answers every request with wrong bytes."""

    def __init__(self, meta: Metainfo) -> None:
        self.meta = meta
        self.size = len(meta.info_bytes)
        self.connections = 0
        self.answered = 0
        self.hung_up = asyncio.Event()  # we closed a connection of its
        self.server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return "127.0.0.1", self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        m = self.meta
        conn = PeerConnection(m.info_hash, b"-LI0000-liarliarliar", m.num_pieces, m.piece_length, m.total_length, metadata=True)
        try:
            conn.receive_data(await reader.readexactly(HANDSHAKE_LENGTH))
            writer.write(conn.handshake_bytes())
            writer.write(conn.send(ev.ExtensionHandshake(m={"ut_metadata": 3}, metadata_size=self.size)))
            writer.write(conn.send(ev.HaveAll()))
            while data := await reader.read(65536):
                for e in conn.receive_data(data):
                    if isinstance(e, ev.MetadataRequest):
                        length = min(METADATA_BLOCK, self.size - e.piece * METADATA_BLOCK)
                        writer.write(conn.send(ev.MetadataData(e.piece, self.size, b"\x00" * length)))
                        self.answered += 1
        except (ConnectionError, asyncio.IncompleteReadError, RemoteProtocolError):
            pass
        finally:
            self.hung_up.set()
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def test_peers_told_of_by_pex_while_fetching_are_remembered_within_a_bound(tmp_path: Path) -> None:
    meta, _ = make_torrent(tmp_path, {"a.bin": 1000})
    contacts = [ev.PexPeer(f"127.1.{i // 250}.{i % 250 + 1}", 1) for i in range(3000)]  # nothing listens there

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        m = meta
        conn = PeerConnection(m.info_hash, b"-PX0000-pexpexpexpex", m.num_pieces, m.piece_length, m.total_length, pex=True)
        conn.receive_data(await reader.readexactly(HANDSHAKE_LENGTH))
        writer.write(conn.handshake_bytes() + conn.send(ev.ExtensionHandshake(m={"ut_pex": 1, "ut_metadata": 3})))
        conn.receive_data(await reader.read(65536))  # our extension handshake: now ut_pex may be sent
        for start in range(0, len(contacts), MAX_PEX_CONTACTS):
            writer.write(conn.send(ev.Pex(added=tuple(contacts[start : start + MAX_PEX_CONTACTS]))))
        # Then a metadata size: once the fetch knows it, every PEX message before it was taken.
        writer.write(conn.send(ev.ExtensionHandshake(m={"ut_pex": 1, "ut_metadata": 3}, metadata_size=len(m.info_bytes))))
        await reader.read()  # until we hang up

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        async with server, Session(listen="127.0.0.1") as leecher:
            peer = ("127.0.0.1", server.sockets[0].getsockname()[1])
            adding = asyncio.ensure_future(leecher.add_magnet(Magnet(info_hash=meta.info_hash, peers=(peer,)).uri(), tmp_path))
            await until(lambda: meta.info_hash in leecher._fetches, what="the fetch to start")
            fetch = leecher._fetches[meta.info_hash]
            await until(lambda: fetch.assembler is not None, what="the PEX messages and the metadata size")
            assert len(fetch.known) == MAX_KNOWN_PEERS  # 3001 addresses were offered
            adding.cancel()
            await asyncio.gather(adding, return_exceptions=True)

    asyncio.run(main())


def test_a_peer_whose_metadata_fails_the_check_is_dropped_and_the_next_peer_is_asked(tmp_path: Path) -> None:
    meta, seed_dir = _many_files_torrent(tmp_path)
    honest_port = free_port()  # nobody listens there until the liar has been caught

    async def main() -> None:
        liar = Liar(meta)
        liar_address = await liar.start()
        try:
            async with Session(listen="127.0.0.1", reconnect_delay=0.2) as leecher:
                magnet = Magnet(info_hash=meta.info_hash, peers=(liar_address, ("127.0.0.1", honest_port)))
                adding = asyncio.ensure_future(leecher.add_magnet(magnet.uri(), tmp_path / "out", timeout=DEADLINE))
                async with asyncio.timeout(DEADLINE):
                    await liar.hung_up.wait()
                assert liar.answered == metadata_pieces(len(meta.info_bytes))  # it sent the whole, then we hung up
                async with Session(listen="127.0.0.1", port=honest_port) as honest:
                    await honest.add_torrent(meta, seed_dir)
                    torrent = await adding
                    assert torrent.meta.info_bytes == meta.info_bytes
                    await torrent.wait_done(DEADLINE)
                assert liar_address not in torrent.swarm.connections.known  # never dialled again
                assert liar.connections == 1
        finally:
            liar.close()

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "out" / "ds")


def test_a_liar_among_honest_peers_cannot_stop_the_fetch(tmp_path: Path) -> None:
    meta, seed_dir = _many_files_torrent(tmp_path)

    async def main() -> None:
        liar = Liar(meta)
        liar_address = await liar.start()
        try:
            async with Session(listen="127.0.0.1") as honest, Session(listen="127.0.0.1") as leecher:
                await honest.add_torrent(meta, seed_dir)
                # The liar first: it is asked for the first pieces, the honest peer for the rest.
                peers = (liar_address, ("127.0.0.1", honest.listen_port))
                torrent = await leecher.add_magnet(Magnet(info_hash=meta.info_hash, peers=peers).uri(), tmp_path / "out", timeout=DEADLINE)
                assert torrent.meta.info_bytes == meta.info_bytes
                await torrent.wait_done(DEADLINE)
        finally:
            liar.close()

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "out" / "ds")


# -- libtorrent through opentracker ------------------------------------------------------------


def _tracked_torrent(tmp_path: Path, opentracker: Callable[[bytes], tuple[int, int]]) -> tuple[Metainfo, Path]:
    payload = make_payload(tmp_path / "seeder" / "ds", {"data.zip": 1_500_000, "notes/readme.txt": 4321})
    probe = create_torrent(payload, piece_length=65536)
    http, _ = opentracker(probe.info_hash)
    meta = create_torrent(payload, piece_length=65536, trackers=[[f"http://127.0.0.1:{http}/announce"]])
    assert meta.info_hash == probe.info_hash  # trackers are outside the info dictionary
    return meta, tmp_path / "seeder"


def test_download_magnet_cli_completes_byte_exact_from_a_libtorrent_seeder_found_through_a_tracker(
    tmp_path: Path, opentracker: Callable[[bytes], tuple[int, int]]
) -> None:
    meta, seed_dir = _tracked_torrent(tmp_path, opentracker)
    magnet = meta.magnet()
    assert "tr=" in magnet and "x.pe" not in magnet
    with lt_seeder(meta.to_bytes(), seed_dir):
        run = subprocess.run(
            [sys.executable, "-m", "pyowtorrent", "download", magnet, "-o", str(tmp_path / "out"), "--listen", "127.0.0.1", "--timeout", "60"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 0, run.stderr
    assert f"metadata received: {meta.name}" in run.stdout
    assert "done:" in run.stdout
    assert same_tree(seed_dir / "ds", tmp_path / "out" / "ds")


def test_the_facade_downloads_a_magnet_link_from_a_libtorrent_seeder(
    tmp_path: Path, opentracker: Callable[[bytes], tuple[int, int]]
) -> None:
    meta, seed_dir = _tracked_torrent(tmp_path, opentracker)
    with lt_seeder(meta.to_bytes(), seed_dir):
        path = pyowtorrent.download(meta.magnet(), tmp_path / "out", timeout=60, listen="127.0.0.1")
    assert path == tmp_path / "out" / "ds"
    assert same_tree(seed_dir / "ds", path)
