"""Peer exchange (BEP 11 ``ut_pex``): the codec, the wire, the engine on loopback, and libtorrent.

* Sans-IO: messages round-trip (hypothesis); the parser takes any bytes and
  any bencoded dictionary and raises only the wire's error type; it tolerates
  what libtorrent tolerates and refuses what libtorrent drops a peer for; we
  never send what BEP 11 forbids; a connection made with ``pex`` decodes and
  sends ``Pex`` under the right ids, one made without does neither.
* The engine over real sockets, against a scripted peer: our extension
  handshake lists ``ut_pex`` (not for a private torrent, which drops a peer
  that sends one anyway); contacts we learn are bounded and filtered (bad
  ports and addresses, ourselves, too many from one source or one IP) and
  dialled; a peer that floods PEX messages or sends a bad one is dropped; we
  tell a peer whom we trade with, flagged.
* Against libtorrent (default plugins): our leecher knows one libtorrent peer
  only and finds the other, which holds the data, through its PEX; and a
  libtorrent leecher finds a peer through ours.

The swarm scenarios, in virtual time, are in ``tests/sim/test_pex_swarm.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
import time
from pathlib import Path
from typing import Any, Callable

import libtorrent as lt  # test-only reference implementation
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyowtorrent.engine.events import PeerConnected, PeerDisconnected, TorrentEvent
from pyowtorrent.engine.pex import MAX_LEARNED_PER_SOURCE, PEX_ID, usable_contact
from pyowtorrent.engine.session import Session
from pyowtorrent.engine.torrent import Torrent
from pyowtorrent.metainfo.bencoding import encode
from pyowtorrent.metainfo.layout import BLOCK_SIZE
from pyowtorrent.metainfo.torrent_file import Metainfo
from pyowtorrent.storage.create import create_torrent
from pyowtorrent.wire import LocalProtocolError, PeerConnection, RemoteProtocolError, Violation
from pyowtorrent.wire import events as ev
from pyowtorrent.wire.pex import MAX_PEX_CONTACTS, MAX_PEX_MESSAGE, PexFlags, decode_pex, encode_pex

from .engine_util import make_payload, make_torrent, same_tree
from .hostile import Attacker
from .lt_util import LT_SETTINGS

DEADLINE = 30.0  # only turns a hang into a failure

# -- the codec ----------------------------------------------------------------------------------

ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
ports = st.integers(0, 65535)


@st.composite
def pex_messages(draw: st.DrawFn) -> ev.Pex:
    """Any message BEP 11 allows: no contact twice, none both added and dropped, at least one."""
    v4 = draw(st.lists(st.tuples(ipv4, ports), unique=True, max_size=60))
    v6 = draw(st.lists(st.tuples(ipv6, ports), unique=True, max_size=60))
    gone4 = draw(st.lists(st.tuples(ipv4, ports), unique=True, max_size=60).map(lambda xs: [x for x in xs if x not in v4]))
    gone6 = draw(st.lists(st.tuples(ipv6, ports), unique=True, max_size=60).map(lambda xs: [x for x in xs if x not in v6]))
    flags = draw(st.lists(st.integers(0, 255), min_size=len(v4) + len(v6), max_size=len(v4) + len(v6)))
    added = tuple(ev.PexPeer(ip, port, f) for (ip, port), f in zip(v4 + v6, flags))
    message = ev.Pex(added, tuple(gone4 + gone6))
    if not message.added and not message.dropped:
        return ev.Pex(dropped=(("10.0.0.1", 6881),))
    return message


@settings(max_examples=300, deadline=None)
@given(pex_messages())
def test_pex_messages_round_trip(message: ev.Pex) -> None:
    assert decode_pex(encode_pex(message)) == message


def test_a_libtorrent_style_message_decodes() -> None:
    # libtorrent writes every key, the empty ones too, and a flag byte per added contact.
    payload = encode(
        {
            b"added": bytes([127, 0, 0, 1]) + struct.pack(">H", 6881) + bytes([10, 1, 2, 3]) + struct.pack(">H", 51413),
            b"added.f": bytes([PexFlags.REACHABLE | PexFlags.SEED, PexFlags.ENCRYPTION]),
            b"added6": ipaddress.IPv6Address("2001:db8::1").packed + struct.pack(">H", 6882),
            b"added6.f": b"\x00",
            b"dropped": bytes([192, 168, 1, 9]) + struct.pack(">H", 1),
            b"dropped6": b"",
        }
    )
    assert decode_pex(payload) == ev.Pex(
        (
            ev.PexPeer("127.0.0.1", 6881, 0x12),
            ev.PexPeer("10.1.2.3", 51413, 0x01),
            ev.PexPeer("2001:db8::1", 6882, 0),
        ),
        (("192.168.1.9", 1),),
    )


def _decodes_or_refuses(payload: bytes) -> None:
    try:
        message = decode_pex(payload)
    except RemoteProtocolError as exc:
        assert exc.reason in (Violation.INVALID_PEX, Violation.PEX_TOO_LARGE)
        return
    contacts = [(c.ip, c.port) for c in message.added] + list(message.dropped)
    assert len(message.added) <= 2 * MAX_PEX_CONTACTS and len(message.dropped) <= 2 * MAX_PEX_CONTACTS
    assert all(0 <= port < 65536 and ipaddress.ip_address(ip) for ip, port in contacts)
    assert all(0 <= c.flags <= 255 for c in message.added)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_the_parser_takes_any_bytes_and_raises_only_the_wire_error(payload: bytes) -> None:
    _decodes_or_refuses(payload)


PEX_KEYS = [b"added", b"added.f", b"added6", b"added6.f", b"dropped", b"dropped6", b"x"]
bencodable = st.recursive(
    st.binary(max_size=80) | st.integers(-(2**70), 2**70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(PEX_KEYS), bencodable, max_size=7), st.data())
def test_the_parser_takes_any_bencoded_dictionary_and_any_damage_to_it(d: dict[bytes, Any], data: st.DataObject) -> None:
    payload = encode(d)
    _decodes_or_refuses(payload)
    cut = data.draw(st.integers(0, len(payload)))
    flip = data.draw(st.integers(0, max(0, len(payload) - 1)))
    damaged = bytearray(payload[:cut] + payload[cut + 1 :])
    if damaged:
        damaged[flip % len(damaged)] ^= data.draw(st.integers(1, 255))
    _decodes_or_refuses(bytes(damaged))


def test_what_libtorrent_tolerates_is_tolerated() -> None:
    contact = bytes([10, 0, 0, 1]) + struct.pack(">H", 6881)
    # A partial contact at the end of a list is ignored (libtorrent reads whole ones only).
    assert decode_pex(encode({b"added": contact + b"\x0a\x00"})).added == (ev.PexPeer("10.0.0.1", 6881),)
    # Flags missing or of the wrong length: the contacts are taken, with no flags.
    assert decode_pex(encode({b"added": contact, b"added.f": b"\x02\x02"})).added == (ev.PexPeer("10.0.0.1", 6881),)
    # A list that is not a string, and keys nobody knows, are ignored.
    assert decode_pex(encode({b"added": [1, 2], b"dropped": contact, b"x": 1})) == ev.Pex(dropped=(("10.0.0.1", 6881),))
    # An empty dictionary says nothing, which BEP 11 forbids, and libtorrent takes.
    assert decode_pex(b"de") == ev.Pex()


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", Violation.INVALID_PEX),
        (b"i1e", Violation.INVALID_PEX),
        (b"d5:added", Violation.INVALID_PEX),
        (b"le", Violation.INVALID_PEX),
        (encode({b"dropped": bytes(6 * (MAX_PEX_CONTACTS + 1))}), Violation.PEX_TOO_LARGE),
        (encode({b"added6": bytes(18 * (MAX_PEX_CONTACTS + 1))}), Violation.PEX_TOO_LARGE),
        (encode({b"x": bytes(MAX_PEX_MESSAGE)}), Violation.PEX_TOO_LARGE),
    ],
)
def test_what_libtorrent_drops_a_peer_for_is_refused(payload: bytes, reason: Violation) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_pex(payload)
    assert info.value.reason is reason


@pytest.mark.parametrize(
    "message",
    [
        ev.Pex(),
        ev.Pex((ev.PexPeer("10.0.0.1", 1), ev.PexPeer("10.0.0.1", 1))),
        ev.Pex(dropped=(("10.0.0.1", 1), ("10.0.0.1", 1))),
        ev.Pex((ev.PexPeer("10.0.0.1", 1),), (("10.0.0.1", 1),)),
        ev.Pex((ev.PexPeer("10.0.0.1", 65536),)),
        ev.Pex((ev.PexPeer("example.org", 1),)),
        ev.Pex((ev.PexPeer("10.0.0.1", 1, 256),)),
        ev.Pex(tuple(ev.PexPeer(str(ipaddress.IPv4Address(i)), 1) for i in range(MAX_PEX_CONTACTS + 1))),
    ],
)
def test_we_never_send_what_bep_11_forbids(message: ev.Pex) -> None:
    with pytest.raises(LocalProtocolError):
        encode_pex(message)


# -- the wire -----------------------------------------------------------------------------------

NUM_PIECES, PIECE_LENGTH = 8, 32768


def _pair(pex: tuple[bool, bool] = (True, True)) -> tuple[PeerConnection, PeerConnection]:
    def conn(peer_id: bytes, on: bool) -> PeerConnection:
        return PeerConnection(b"i" * 20, peer_id, NUM_PIECES, PIECE_LENGTH, NUM_PIECES * PIECE_LENGTH, pex=on)

    a, b = conn(b"a" * 20, pex[0]), conn(b"b" * 20, pex[1])
    b.receive_data(a.handshake_bytes())
    a.receive_data(b.handshake_bytes())
    return a, b


MESSAGE = ev.Pex((ev.PexPeer("10.0.0.1", 6881, PexFlags.SEED),), (("10.0.0.2", 51413),))


def test_a_connection_that_speaks_ut_pex_sends_it_under_the_remote_id_and_decodes_it_under_its_own() -> None:
    a, b = _pair()
    a.receive_data(b.send(ev.ExtensionHandshake(m={"ut_pex": 9})))  # b takes PEX under 9
    a.send(ev.ExtensionHandshake(m={"ut_pex": 1}))  # a under 1
    wire = a.send(MESSAGE)
    assert wire[4:6] == bytes([20, 9])  # an extended message under the id b chose
    assert b.receive_data(wire) == [MESSAGE]
    b.receive_data(a.send(ev.ExtensionHandshake(m={"ut_pex": 1})))
    assert b.send(MESSAGE)[4:6] == bytes([20, 1])


def test_without_pex_a_connection_neither_sends_nor_decodes_it() -> None:
    a, b = _pair(pex=(True, False))
    a.receive_data(b.send(ev.ExtensionHandshake(m={"ut_pex": 1})))
    # b advertised ut_pex but does not speak it: what comes under the id stays an opaque
    # extended message (a private torrent would not advertise it at all).
    assert b.receive_data(a.send(MESSAGE)) == [ev.Extended(1, encode_pex(MESSAGE))]
    b.receive_data(a.send(ev.ExtensionHandshake(m={"ut_pex": 4})))
    with pytest.raises(LocalProtocolError):
        b.send(MESSAGE)


def test_pex_is_not_sent_to_a_remote_that_did_not_advertise_it() -> None:
    a, _ = _pair()
    with pytest.raises(LocalProtocolError):
        a.send(MESSAGE)


def test_a_bad_pex_message_breaks_the_connection_and_keeps_what_came_before() -> None:
    a, b = _pair()
    b.send(ev.ExtensionHandshake(m={"ut_pex": 2}))
    stream = encode_frame(2, encode_pex(MESSAGE)) + encode_frame(2, b"not bencoding")
    with pytest.raises(RemoteProtocolError) as info:
        b.receive_data(stream)
    assert info.value.reason is Violation.INVALID_PEX and info.value.events == [MESSAGE]


def encode_frame(ext_id: int, payload: bytes) -> bytes:
    return struct.pack(">IBB", 2 + len(payload), 20, ext_id) + payload


# -- what a contact must be to be dialled ----------------------------------------------------------


@pytest.mark.parametrize(
    "ip, port, source, usable",
    [
        ("81.2.3.4", 6881, "90.1.1.1", ("81.2.3.4", 6881)),
        ("::ffff:81.2.3.4", 6881, "90.1.1.1", ("81.2.3.4", 6881)),  # a mapped address is its IPv4 one
        ("2001:db8::1", 6881, "90.1.1.1", None),  # the documentation range, not routed: "private" to Python
        ("2a00:1450::1", 6881, "90.1.1.1", ("2a00:1450::1", 6881)),
        ("81.2.3.4", 0, "90.1.1.1", None),
        ("0.0.0.0", 6881, "90.1.1.1", None),
        ("224.0.0.251", 6881, "90.1.1.1", None),
        ("255.255.255.255", 6881, "90.1.1.1", None),
        ("240.0.0.1", 6881, "90.1.1.1", None),
        ("127.0.0.1", 6881, "90.1.1.1", None),  # a stranger pointing us at ourselves
        ("192.168.1.5", 6881, "90.1.1.1", None),  # ... or at our network
        ("192.168.1.5", 6881, "192.168.1.9", ("192.168.1.5", 6881)),  # a neighbour may
        ("127.0.0.2", 6881, "127.0.0.1", ("127.0.0.2", 6881)),
    ],
)
def test_which_contacts_are_worth_a_dial(ip: str, port: int, source: str, usable: tuple[str, int] | None) -> None:
    assert usable_contact(ip, port, source) == usable


# -- the engine on loopback, against a scripted peer ---------------------------------------------------


def pex_peer(meta: Metainfo, **kw: Any) -> Attacker:
    """A scripted peer whose connection speaks ut_pex (it decodes what we send)."""
    a = Attacker(meta, **kw)
    a.conn = PeerConnection(
        meta.info_hash, a.conn.local.peer_id, meta.num_pieces, meta.piece_length, meta.total_length, pex=True
    )
    return a


async def read_until(a: Attacker, done: Callable[[list[ev.Event]], bool]) -> None:
    async with asyncio.timeout(DEADLINE):
        while not done(a.events):
            assert await a.read(), "we hung up on it"


def watch(t: Torrent, kind: type[TorrentEvent]) -> tuple[list[Any], asyncio.Event]:
    """The torrent's events of ``kind`` as they come, and an event set at the first."""
    seen: list[Any] = []
    came = asyncio.Event()

    def on(e: TorrentEvent) -> None:
        if isinstance(e, kind):
            seen.append(e)
            came.set()

    t.add_listener(on)
    return seen, came


def private_torrent(tmp_path: Path) -> tuple[Metainfo, Path]:
    seed_dir = tmp_path / "seeder"
    make_payload(seed_dir / "ds", {"data.bin": 300_000})
    return create_torrent(seed_dir / "ds", piece_length=32768, private=True), seed_dir


@pytest.mark.parametrize("private", [False, True])
def test_our_extension_handshake_lists_ut_pex_except_for_a_private_torrent(tmp_path: Path, private: bool) -> None:
    meta, seed_dir = private_torrent(tmp_path) if private else make_torrent(tmp_path, {"data.bin": 300_000})
    assert meta.private is private

    async def main() -> None:
        async with Session(listen="127.0.0.1", port=0) as s:
            await s.add_torrent(meta, seed_dir)
            a = pex_peer(meta)
            await a.connect(("127.0.0.1", s.listen_port))
            await read_until(a, lambda es: any(isinstance(e, ev.ExtensionHandshake) for e in es))
            [hs] = [e for e in a.events if isinstance(e, ev.ExtensionHandshake)]
            assert hs.m.get("ut_pex") == (None if private else PEX_ID)
            assert hs.yourip == bytes([127, 0, 0, 1])  # BEP 10: how we see it
            a.close()

    asyncio.run(main())


def test_a_private_torrent_drops_a_peer_that_sends_ut_pex_anyway(tmp_path: Path) -> None:
    meta, seed_dir = private_torrent(tmp_path)

    async def main() -> None:
        async with Session(listen="127.0.0.1", port=0) as s:
            t = await s.add_torrent(meta, seed_dir)
            gone, went = watch(t, PeerDisconnected)
            a = pex_peer(meta)
            await a.connect(("127.0.0.1", s.listen_port))
            a.send(ev.ExtensionHandshake(m={"ut_pex": 1}), ev.HaveNone())
            a.send_raw(encode_frame(PEX_ID, encode_pex(MESSAGE)))  # under the id we would have chosen
            async with asyncio.timeout(DEADLINE):
                await went.wait()
            assert "extended message id not advertised" in gone[0].reason
            assert set(t.swarm.connections.known) == set()  # nothing learned from it
            a.close()

    asyncio.run(main())


def test_contacts_are_learned_within_bounds_and_dialled(tmp_path: Path) -> None:
    """One message from one source: the contacts worth a dial join the known addresses (and are
    dialled: a listener on 127.0.0.2 sees us come); port 0, unspecified and multicast addresses,
    the source itself and our own address (at the IP it says we have) are ignored; at most four
    ports of one IP, and fifty contacts in all from one source.  A later message that drops a
    contact frees its place for another."""
    meta, _ = make_torrent(tmp_path, {"data.bin": 300_000})
    dialled = asyncio.Event()

    async def main() -> None:
        async def on_dial(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            dialled.set()
            writer.close()

        listener = await asyncio.start_server(on_dial, "127.0.0.2", 0)
        good = ("127.0.0.2", int(listener.sockets[0].getsockname()[1]))
        async with Session(listen="127.0.0.1", port=0, reconnect_delay=3600) as s:
            t = await s.add_torrent(meta, tmp_path / "leech")
            ours = ("127.0.0.1", s.listen_port)
            a = pex_peer(meta)
            await a.connect(ours)
            await read_until(a, lambda es: any(isinstance(e, ev.ExtensionHandshake) for e in es))
            a.send(ev.ExtensionHandshake(m={"ut_pex": 5}, yourip=bytes([127, 0, 0, 1])), ev.HaveNone())
            bad = [("127.0.0.3", 0), ("0.0.0.0", 6881), ("224.0.0.1", 6881), ours, a.writer.get_extra_info("sockname")[:2]]
            four_of_five = [("127.0.0.4", 7000 + i) for i in range(5)]
            many = [(f"127.1.{i // 200}.{i % 200 + 1}", 6881) for i in range(60)]
            contacts = [good, *bad, *four_of_five, *many]
            a.send(ev.Pex(tuple(ev.PexPeer(ip, port) for ip, port in contacts)))
            # A request while choked is answered with a reject: once it comes, the PEX before it was read.
            a.send(ev.Request(0, 0, BLOCK_SIZE))
            await read_until(a, lambda es: any(isinstance(e, ev.Reject) for e in es))
            expected = [good, *four_of_five[:4], *many][:MAX_LEARNED_PER_SOURCE]
            assert list(t.swarm.connections.known) == expected
            async with asyncio.timeout(DEADLINE):
                await dialled.wait()
            # Dropping one makes room for one more; the others stay where they were.
            a.send(ev.Pex((ev.PexPeer("127.2.0.1", 6881),), (many[0],)))
            a.send(ev.Request(0, BLOCK_SIZE, BLOCK_SIZE))
            await read_until(a, lambda es: sum(isinstance(e, ev.Reject) for e in es) == 2)
            assert ("127.2.0.1", 6881) in t.swarm.connections.known
            assert t.swarm.pex.learned == MAX_LEARNED_PER_SOURCE + 1
            a.close()
        listener.close()
        await listener.wait_closed()

    asyncio.run(main())


FLOODS: dict[str, tuple[Callable[[], list[bytes]], str]] = {
    # name: (what the peer sends under our ut_pex id, what we say when we drop it)
    "seven messages in a minute": (
        lambda: [encode_pex(ev.Pex((ev.PexPeer(f"127.0.3.{i + 1}", 6881),))) for i in range(7)],
        "7 PEX messages within 60 s",
    ),
    "a list over the bound": (lambda: [encode({b"added": bytes(6 * (MAX_PEX_CONTACTS + 1))})], "PEX message too large"),
    "not bencoding": (lambda: [b"d5:added"], "invalid PEX message"),
}


@pytest.mark.parametrize("flood", list(FLOODS))
def test_a_peer_that_floods_pex_or_sends_a_bad_message_is_dropped(tmp_path: Path, flood: str) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 300_000})
    payloads, reason = FLOODS[flood]

    async def main() -> None:
        async with Session(listen="127.0.0.1", port=0) as s:
            t = await s.add_torrent(meta, seed_dir)
            gone, went = watch(t, PeerDisconnected)
            a = pex_peer(meta)
            await a.connect(("127.0.0.1", s.listen_port))
            a.send(ev.HaveNone())
            a.send_raw(b"".join(encode_frame(PEX_ID, p) for p in payloads()))
            async with asyncio.timeout(DEADLINE):
                await went.wait()
            assert reason in gone[0].reason
            a.close()

    asyncio.run(main())


def test_we_tell_a_peer_whom_we_trade_with(tmp_path: Path) -> None:
    """Our seeder dials a leecher; a peer that speaks ut_pex connects and is told the leecher's
    address, flagged reachable (we connected to it), and not its own."""
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 300_000})

    async def main() -> None:
        async with Session(listen="127.0.0.1", port=0) as leech_s, Session(listen="127.0.0.1", port=0) as seed_s:
            leecher = ("127.0.0.1", leech_s.listen_port)
            await leech_s.add_torrent(meta, tmp_path / "leech")
            seeder = await seed_s.add_torrent(meta, seed_dir)
            _, connected = watch(seeder, PeerConnected)
            seeder.add_peer(*leecher)
            async with asyncio.timeout(DEADLINE):
                await connected.wait()
            a = pex_peer(meta)
            await a.connect(("127.0.0.1", seed_s.listen_port))
            a.send(ev.ExtensionHandshake(m={"ut_pex": 7}, p=1), ev.HaveNone())
            await read_until(a, lambda es: any(isinstance(e, ev.Pex) for e in es))
            [told] = [e for e in a.events if isinstance(e, ev.Pex)]
            assert told.dropped == ()
            [contact] = told.added  # the leecher; not the peer itself, whose listen port 1 we were given
            assert (contact.ip, contact.port) == leecher and contact.flags & PexFlags.REACHABLE
            a.close()

    asyncio.run(main())


# -- against libtorrent ----------------------------------------------------------------------------


def _lt_session() -> Any:
    # A peer that wants nothing and a seed are both upload-only, and libtorrent closes such
    # "redundant" connections by default; these tests need them held.
    return lt.session({**LT_SETTINGS, "close_redundant_connections": False})


def _lt_add(ses: Any, meta: Metainfo, save: Path) -> Any:
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(meta.to_bytes())
    atp.save_path = str(save)
    return ses.add_torrent(atp)


async def _lt_wait(what: str, pred: Callable[[], bool]) -> None:
    """Poll libtorrent (it has no callback into our loop) until ``pred`` holds."""
    end = time.monotonic() + DEADLINE
    while not pred():
        assert time.monotonic() < end, f"libtorrent: not {what}"
        await asyncio.sleep(0.05)


def _lt_close(*sessions: Any) -> None:
    for ses in sessions:
        for h in ses.get_torrents():
            ses.remove_torrent(h)
        ses.pause()


def test_we_find_a_libtorrent_seeder_through_the_pex_of_a_libtorrent_peer_we_know(tmp_path: Path) -> None:
    """libtorrent 'hub' (which wants no file, so it has nothing to give) is connected to libtorrent
    'seeder'.  Our leecher is given the hub's address only; it completes byte-exact, so it found
    the seeder, and the seeder's address came from the hub's PEX.  (The seeder has PEX off, or it
    would learn our address from the hub and dial us first.  A hub held back by a download limit
    would not do: libtorrent reads the seeder's handshake at that rate too, and leaves a peer still
    in its handshake out of the one full list it sends a newcomer.)"""
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 1_300_000})

    async def main() -> None:
        hub, seeder = _lt_session(), _lt_session()
        try:
            sh = _lt_add(seeder, meta, seed_dir)
            sh.set_flags(lt.torrent_flags.disable_pex)
            await _lt_wait("seeding", lambda: sh.status().is_seeding)
            hh = _lt_add(hub, meta, tmp_path / "hub")
            hh.prioritize_files([0])
            hh.connect_peer(("127.0.0.1", seeder.listen_port()))
            await _lt_wait("connected", lambda: hh.status().num_peers >= 1)
            async with Session(listen="127.0.0.1", port=0) as s:
                t = await s.add_torrent(meta, tmp_path / "ours", peers=[("127.0.0.1", hub.listen_port())])
                await t.wait_done(timeout=DEADLINE)
                the_seeder = ("127.0.0.1", seeder.listen_port())
                assert the_seeder in t.swarm.connections.known and t.swarm.pex.learned >= 1
                assert ("127.0.0.1", s.listen_port) not in t.swarm.connections.known  # the hub lists us too
        finally:
            _lt_close(hub, seeder)

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "ours" / "ds")


def test_a_libtorrent_leecher_finds_a_peer_through_our_pex(tmp_path: Path) -> None:
    """Our seeder dials libtorrent 'other' (which wants no file); libtorrent 'newcomer' connects to
    our seeder only, and then to 'other', whose address only we could have told it.  ('other' has
    PEX off: told of the newcomer by us, it would dial it first, and the newcomer would see it at
    another port.)"""
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 1_300_000})

    async def main() -> None:
        other, newcomer = _lt_session(), _lt_session()
        try:
            oh = _lt_add(other, meta, tmp_path / "other")
            oh.prioritize_files([0])
            oh.set_flags(lt.torrent_flags.disable_pex)
            paused = lt.torrent_flags.paused
            await _lt_wait("active", lambda: oh.status().state == lt.torrent_status.finished and not oh.status().flags & paused)
            async with Session(listen="127.0.0.1", port=0) as s:
                t = await s.add_torrent(meta, seed_dir)
                _, connected = watch(t, PeerConnected)
                t.add_peer("127.0.0.1", other.listen_port())
                async with asyncio.timeout(DEADLINE):
                    await connected.wait()
                nh = _lt_add(newcomer, meta, tmp_path / "newcomer")
                nh.connect_peer(("127.0.0.1", s.listen_port))

                def met_other() -> bool:
                    return any(p.ip[1] == other.listen_port() for p in nh.get_peer_info())

                await _lt_wait("connected to the peer it was told of", met_other)
        finally:
            _lt_close(other, newcomer)

    asyncio.run(main())
