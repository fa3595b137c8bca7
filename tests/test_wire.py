"""The sans-IO peer wire protocol (pyowtorrent.wire): BEP 3, 5, 6 and 10.

Two PeerConnection objects talk to each other in memory; hypothesis writes
the conversations, splits the byte streams and throws noise at the parser.
Every strictness rule has its own test naming the Violation it expects.
Last, libtorrent (a test-only dependency) downloads from us and seeds to us
over loopback.  Nothing sleeps; clocks only bound how long a hang may last.
"""

from __future__ import annotations

import random
import socket
import struct
import time
import tracemalloc
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyowtorrent.metainfo.bencoding import encode
from pyowtorrent.errors import ProtocolError
from pyowtorrent.wire import (
    HANDSHAKE_LENGTH,
    AllowedFast,
    Bitfield,
    Cancel,
    Choke,
    Event,
    Extended,
    ExtensionHandshake,
    Handshake,
    Have,
    HaveAll,
    HaveNone,
    Interested,
    InvalidRequest,
    KeepAlive,
    LocalProtocolError,
    Message,
    NotInterested,
    PeerConnection,
    Piece,
    Port,
    Reject,
    RemoteProtocolError,
    Request,
    Suggest,
    Unchoke,
    UnrequestedPiece,
    Violation,
    bitfield_bytes,
    bitfield_flags,
    bits_to_set,
    encode_handshake,
    parse_handshake,
)

INFO_HASH = bytes(range(20))
LOCAL_ID = b"-PY0001-localpeer000"
REMOTE_ID = b"-XX0001-remotepeer00"
BLOCK = 1 << 14
PIECE_LENGTH = 2 * BLOCK
NUM_PIECES = 10
LAST_PIECE = 5000  # the last piece is shorter, and not a whole block
TOTAL = (NUM_PIECES - 1) * PIECE_LENGTH + LAST_PIECE


def connection(peer_id: bytes = LOCAL_ID, **kw: Any) -> PeerConnection:
    return PeerConnection(INFO_HASH, peer_id, NUM_PIECES, PIECE_LENGTH, TOTAL, **kw)


def remote_handshake(fast: bool = True, ext: bool = True, dht: bool = False) -> bytes:
    return encode_handshake(Handshake(INFO_HASH, REMOTE_ID, fast, ext, dht))


def connected(*, remote_fast: bool = True, remote_ext: bool = True, **kw: Any) -> PeerConnection:
    """Our side of a connection whose handshakes are done (nothing else sent)."""
    conn = connection(**kw)
    conn.handshake_bytes()
    [handshake] = conn.receive_data(remote_handshake(remote_fast, remote_ext))
    assert isinstance(handshake, Handshake)
    return conn


def frame(msg_id: int, payload: bytes = b"") -> bytes:
    """A message as a peer would put it on the wire, bypassing our own checks."""
    return struct.pack(">IB", 1 + len(payload), msg_id) + payload


def block_frame(msg_id: int, index: int, begin: int, length: int) -> bytes:
    return frame(msg_id, struct.pack(">III", index, begin, length))


def piece_frame(index: int, begin: int, block: bytes) -> bytes:
    return frame(7, struct.pack(">II", index, begin) + block)


def extended_frame(ext_id: int, payload: bytes) -> bytes:
    return frame(20, bytes([ext_id]) + payload)


def violation(conn: PeerConnection, data: bytes) -> Violation:
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_data(data)
    assert isinstance(info.value, ProtocolError)
    return info.value.reason


def feed_in_chunks(conn: PeerConnection, data: bytes, cuts: list[int]) -> tuple[list[Event], Violation | None]:
    """Feed ``data`` cut at ``cuts``; every event, and the violation if one was raised."""
    events: list[Event] = []
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    for start, end in zip(bounds, bounds[1:]):
        try:
            events += conn.receive_data(data[start:end])
        except RemoteProtocolError as exc:
            return events + exc.events, exc.reason
    return events, None


def random_bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


# --- the handshake ---------------------------------------------------------------


def test_parse_handshake_needs_all_68_bytes_and_ignores_what_follows() -> None:
    wire = remote_handshake(fast=True, ext=False, dht=True)
    assert len(wire) == HANDSHAKE_LENGTH
    for n in range(HANDSHAKE_LENGTH):
        assert parse_handshake(wire[:n]) is None
    expected = Handshake(INFO_HASH, REMOTE_ID, fast=True, extension_protocol=False, dht=True)
    assert parse_handshake(wire) == expected
    assert parse_handshake(bytearray(wire + frame(1))) == expected


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("ext", [False, True])
@pytest.mark.parametrize("dht", [False, True])
def test_handshake_reserved_bits_are_those_of_bep_5_6_and_10(fast: bool, ext: bool, dht: bool) -> None:
    wire = remote_handshake(fast, ext, dht)
    reserved = wire[20:28]
    assert reserved[5] == (0x10 if ext else 0)
    assert reserved[7] == (0x04 if fast else 0) | (0x01 if dht else 0)
    assert reserved[:5] + reserved[6:7] == bytes(6)
    assert parse_handshake(wire) == Handshake(INFO_HASH, REMOTE_ID, fast, ext, dht)


def test_unknown_reserved_bits_are_ignored() -> None:
    wire = bytearray(remote_handshake(False, False))
    wire[20:28] = b"\xff" * 8
    assert parse_handshake(bytes(wire)) == Handshake(INFO_HASH, REMOTE_ID, True, True, True)


def test_a_stream_that_is_not_bittorrent_is_refused_from_its_first_bytes() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_handshake(b"GET / HTTP/1.1\r\n")
    assert info.value.reason is Violation.BAD_PROTOCOL_STRING
    assert violation(connection(), b"\x13BitTorrent protocoX") is Violation.BAD_PROTOCOL_STRING
    # The first byte alone is enough: 19 is the only length prefix BEP 3 knows.
    assert violation(connection(), b"\x14") is Violation.BAD_PROTOCOL_STRING


def test_handshake_with_another_torrents_info_hash_is_refused() -> None:
    other = encode_handshake(Handshake(b"\xee" * 20, REMOTE_ID))
    assert violation(connection(), other) is Violation.WRONG_INFO_HASH


def test_handshake_event_reports_what_the_remote_advertised_and_both_sides_decide_the_extensions() -> None:
    conn = connection(fast=True, extension_protocol=False)
    ours = conn.handshake_bytes()
    assert parse_handshake(ours) == Handshake(INFO_HASH, LOCAL_ID, fast=True, extension_protocol=False)
    [event] = conn.receive_data(remote_handshake(fast=False, ext=True))
    assert event == Handshake(INFO_HASH, REMOTE_ID, fast=False, extension_protocol=True)
    assert conn.handshake_done and not conn.fast_enabled and not conn.extension_protocol_enabled


def test_accepting_side_may_answer_after_reading_the_remote_handshake() -> None:
    incoming = remote_handshake() + frame(15)  # handshake, have none
    found = parse_handshake(incoming)
    assert found is not None and found.info_hash == INFO_HASH
    conn = connection()
    assert conn.receive_data(incoming) == [found, HaveNone()]
    with pytest.raises(LocalProtocolError):
        conn.send(Interested())  # our handshake has not gone out yet
    conn.handshake_bytes()
    assert conn.send(HaveAll()) == frame(14)


# --- round trips between two connections -------------------------------------------


def pair(
    *, fast: tuple[bool, bool] = (True, True), ext: tuple[bool, bool] = (True, True), dht: bool = False
) -> tuple[PeerConnection, PeerConnection]:
    a = connection(LOCAL_ID, fast=fast[0], extension_protocol=ext[0], dht=dht)
    b = connection(REMOTE_ID, fast=fast[1], extension_protocol=ext[1], dht=dht)
    assert b.receive_data(a.handshake_bytes()) == [a.local]
    assert a.receive_data(b.handshake_bytes()) == [b.local]
    return a, b


@dataclass
class Side:
    """One end of a scripted conversation, and what it did in order."""

    conn: PeerConnection
    started: bool = False
    # ("handshake", bytes) | ("send", (Message, bytes)) | ("recv", bytes), in order
    transcript: list[tuple[str, Any]] = field(default_factory=list)
    received: list[Event] = field(default_factory=list)


_TYPED_KEYS = {b"m", b"v", b"reqq", b"p", b"yourip"}


def comparable(event: Event) -> Event:
    """Received extension handshakes carry the whole dictionary in ``raw``."""
    if isinstance(event, ExtensionHandshake):
        return replace(event, raw={k: v for k, v in event.raw.items() if k not in _TYPED_KEYS})
    return event


def encode_raw(handshake: ExtensionHandshake) -> dict[bytes, Any]:
    """The dictionary a receiver of ``handshake`` finds in its ``raw``."""
    typed = {
        b"m": {name.encode(): ext_id for name, ext_id in handshake.m.items()},
        b"v": None if handshake.v is None else handshake.v.encode(),
        b"reqq": handshake.reqq,
        b"p": handshake.p,
        b"yourip": handshake.yourip,
    }
    return {**handshake.raw, **{k: v for k, v in typed.items() if v is not None}}


def extension_handshakes() -> st.SearchStrategy[ExtensionHandshake]:
    names = st.sampled_from(["ut_metadata", "ut_pex", "lt_donthave", "x_test", "ü_ext"])
    ids = st.dictionaries(names, st.integers(0, 255), max_size=4).filter(
        lambda m: len([i for i in m.values() if i]) == len({i for i in m.values() if i})
    )
    return st.builds(
        ExtensionHandshake,
        m=ids,
        v=st.none() | st.text(max_size=12),
        reqq=st.none() | st.integers(1, 5000),
        p=st.none() | st.integers(1, 65535),
        yourip=st.none() | st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16),
        raw=st.dictionaries(st.sampled_from([b"x_flag", b"upload_only"]), st.integers(0, 9) | st.binary(max_size=4)),
    )


@st.composite
def blocks(draw: st.DrawFn) -> tuple[int, int, int]:
    index = draw(st.integers(0, NUM_PIECES - 1))
    size = PIECE_LENGTH if index < NUM_PIECES - 1 else LAST_PIECE
    begin = draw(st.integers(0, size - 1))
    length = draw(st.integers(1, min(BLOCK, size - begin)))
    return index, begin, length


def bitfields() -> st.SearchStrategy[bytes]:
    return st.lists(st.booleans(), min_size=NUM_PIECES, max_size=NUM_PIECES).map(bitfield_bytes)


def legal_messages(me: PeerConnection, peer: PeerConnection, started: bool) -> st.SearchStrategy[Message]:
    """Every message ``me`` may send ``peer`` now, with fields that fit the torrent."""
    fast, ext = me.fast_enabled, me.extension_protocol_enabled
    indices = st.integers(0, NUM_PIECES - 1)
    anytime: list[st.SearchStrategy[Message]] = [st.just(KeepAlive())]
    if ext:
        anytime.append(extension_handshakes())
        their_ids = sorted(set(me.remote_extensions.values()))
        if their_ids:
            anytime.append(st.builds(Extended, st.sampled_from(their_ids), st.binary(max_size=40)))
    if me.local.dht:
        anytime.append(st.builds(Port, st.integers(0, 65535)))
    first: list[st.SearchStrategy[Message]] = [st.builds(Bitfield, bitfields())]
    if fast:
        first += [st.just(HaveAll()), st.just(HaveNone())]
    if not started and fast:
        return st.one_of(*first, *anytime)
    mine = sorted(me.outstanding_requests, key=lambda r: (r.index, r.begin, r.length))
    theirs = sorted(peer.outstanding_requests, key=lambda r: (r.index, r.begin, r.length))
    regular: list[st.SearchStrategy[Message]] = [
        st.sampled_from([Choke(), Unchoke(), Interested(), NotInterested()]),
        st.builds(Have, indices),
        blocks().map(lambda b: Request(*b)),
    ]
    if mine:
        regular.append(st.sampled_from(mine).map(lambda r: Cancel(r.index, r.begin, r.length)))
    if theirs:
        regular.append(
            st.tuples(st.sampled_from(theirs), st.integers(0, 255)).map(
                lambda rs: Piece(rs[0].index, rs[0].begin, random_bytes(rs[1], rs[0].length))
            )
        )
    if fast:
        regular += [st.builds(Suggest, indices), st.builds(AllowedFast, indices)]
        if theirs:
            regular.append(st.sampled_from(theirs).map(lambda r: Reject(r.index, r.begin, r.length)))
    return st.one_of(*(regular + anytime + (first if not started else [])))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.data(), st.booleans(), st.booleans(), st.booleans(), st.booleans())
def test_every_message_round_trips_and_any_split_of_the_stream_gives_the_same_events(
    data: st.DataObject, fast_a: bool, fast_b: bool, ext_a: bool, ext_b: bool
) -> None:
    dht = data.draw(st.booleans())
    a = Side(connection(LOCAL_ID, fast=fast_a, extension_protocol=ext_a, dht=dht))
    b = Side(connection(REMOTE_ID, fast=fast_b, extension_protocol=ext_b, dht=dht))
    sides = {id(a): b, id(b): a}

    def deliver(sender: Side, wire: bytes) -> list[Event]:
        receiver = sides[id(sender)]
        receiver.transcript.append(("recv", wire))
        got = receiver.conn.receive_data(wire)
        receiver.received += got
        return got

    hs = a.conn.handshake_bytes()
    a.transcript.append(("handshake", hs))
    assert deliver(a, hs) == [a.conn.local]
    hs = b.conn.handshake_bytes()
    b.transcript.append(("handshake", hs))
    assert deliver(b, hs) == [b.conn.local]

    for _ in range(data.draw(st.integers(0, 30))):
        sender = data.draw(st.sampled_from([a, b]))
        receiver = sides[id(sender)]
        message = data.draw(legal_messages(sender.conn, receiver.conn, sender.started))
        wire = sender.conn.send(message)
        sender.transcript.append(("send", (message, wire)))
        if not isinstance(message, (KeepAlive, Port, ExtensionHandshake, Extended)):
            sender.started = True
        assert [comparable(e) for e in deliver(sender, wire)] == [comparable(message)]

    for side, other in ((a, b), (b, a)):
        assert side.conn.peer_choking == other.conn.am_choking
        assert side.conn.peer_interested == other.conn.am_interested
        local = side.conn.local
        fresh = connection(local.peer_id, fast=local.fast, extension_protocol=local.extension_protocol, dht=dht)
        assert replay_events(side, fresh, data) == side.received


def replay_events(side: Side, conn: PeerConnection, data: st.DataObject) -> list[Event]:
    """Replay ``side``'s transcript on a fresh connection, re-cutting what it received."""
    events: list[Event] = []
    pending = b""
    for action, value in [*side.transcript, ("end", None)]:
        if action == "recv":
            assert isinstance(value, bytes)
            pending += value
            continue
        if pending:
            cuts = data.draw(st.lists(st.integers(0, len(pending)), max_size=6))
            got, problem = feed_in_chunks(conn, pending, cuts)
            assert problem is None
            events += got
            pending = b""
        if action == "handshake":
            assert conn.handshake_bytes() == value
        elif action == "send":
            message, wire = value
            assert conn.send(message) == wire
    return events


def test_each_kind_of_message_round_trips() -> None:
    a, b = pair(dht=True)
    # b opens: its extension ids, what it has, and two requests for a to answer.
    offer = ExtensionHandshake(m={"ut_metadata": 3}, v="pyowtorrent", reqq=250, p=6881)
    opening: list[Message] = [offer, HaveNone(), Request(1, 0, BLOCK), Request(2, 0, 100)]
    got = a.receive_data(b"".join(b.send(m) for m in opening))
    assert [comparable(e) for e in got] == opening and got[0] == replace(offer, raw=encode_raw(offer))
    script: list[Message] = [
        Bitfield(bitfield_bytes([i % 2 == 0 for i in range(NUM_PIECES)])),
        KeepAlive(), Choke(), Unchoke(), Interested(), NotInterested(), Have(9), Suggest(0), AllowedFast(5),
        Request(NUM_PIECES - 1, 4096, LAST_PIECE - 4096), Cancel(NUM_PIECES - 1, 4096, LAST_PIECE - 4096),
        Piece(1, 0, random_bytes(2, BLOCK)), Reject(2, 0, 100), Port(6881), Extended(3, b"d8:msg_typei0ee"),
    ]
    for message in script:
        assert b.receive_data(a.send(message)) == [message]
    kinds = {type(m) for m in script} | {ExtensionHandshake, HaveNone}
    assert kinds == set(typing.get_args(Message)) - {HaveAll}  # HaveAll: see the test below


@pytest.mark.parametrize("message", [Bitfield(bitfield_bytes([True] * NUM_PIECES)), HaveAll(), HaveNone()])
def test_bitfield_have_all_or_have_none_opens_and_anything_may_follow(message: Message) -> None:
    a, b = pair()
    wire = a.send(message) + a.send(Unchoke()) + a.send(AllowedFast(3))
    assert b.receive_data(wire) == [message, Unchoke(), AllowedFast(3)]


def test_a_piece_is_encoded_with_its_header_and_block_in_one_message() -> None:
    a, b = pair()
    b.send(HaveNone())
    a.receive_data(b.send(Request(2, BLOCK, BLOCK)))
    a.send(HaveAll())
    block = random_bytes(1, BLOCK)
    wire = a.send(Piece(2, BLOCK, block))
    assert wire == struct.pack(">IBII", 9 + BLOCK, 7, 2, BLOCK) + block
    [piece] = b.receive_data(wire)
    assert piece == Piece(2, BLOCK, block)


# --- incremental parsing -------------------------------------------------------------


def answered_stream() -> tuple[PeerConnection, bytes, list[Event]]:
    """A connection that requested three blocks, and the rest of the remote's stream, answering them."""
    conn = connected()
    conn.send(HaveNone())
    wanted = [(0, 0, BLOCK), (0, BLOCK, BLOCK), (NUM_PIECES - 1, 0, LAST_PIECE)]
    for key in wanted:
        conn.send(Request(*key))
    conn.send(ExtensionHandshake(m={"ut_metadata": 3}))
    events: list[Event] = [HaveAll(), Unchoke(), Have(1), KeepAlive()]
    events += [Piece(i, b, random_bytes(i + b, n)) for i, b, n in wanted]
    events += [Extended(3, b"\x00" * 100), AllowedFast(4)]
    wire = b"".join(
        (
            frame(14),
            frame(1),
            frame(4, struct.pack(">I", 1)),
            b"\0\0\0\0",
            *(piece_frame(e.index, e.begin, e.block) for e in events if isinstance(e, Piece)),
            extended_frame(3, b"\x00" * 100),
            frame(17, struct.pack(">I", 4)),
        )
    )
    return conn, wire, events


def test_ten_thousand_one_byte_chunks_give_the_same_events_as_one_chunk() -> None:
    conn, stream, expected = answered_stream()
    assert len(stream) > 10_000
    got: list[Event] = []
    for i in range(len(stream)):
        got += conn.receive_data(stream[i : i + 1])
    assert got == expected
    assert answered_stream()[0].receive_data(stream) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 60_000), max_size=30))
def test_any_split_of_a_stream_gives_the_same_events(cuts: list[int]) -> None:
    conn, stream, expected = answered_stream()
    assert feed_in_chunks(conn, stream, cuts) == (expected, None)


def test_a_buffer_holding_a_hundred_thousand_messages_is_parsed_in_one_call() -> None:
    conn = connected()
    haves = b"".join(frame(4, struct.pack(">I", i % NUM_PIECES)) for i in range(100_000))
    events = conn.receive_data(frame(15) + haves)
    assert len(events) == 100_001 and events[-1] == Have(99_999 % NUM_PIECES)


def test_a_caller_may_reuse_its_buffer_after_receive_data_returns() -> None:
    conn = connected()
    buf = bytearray(frame(4, struct.pack(">I", 7))[:6])  # a have, cut mid-message
    assert conn.receive_data(buf) == []
    buf[:] = b"\xff" * len(buf)
    assert conn.receive_data(memoryview(bytearray(b"\x00\x00\x07"))) == [Have(7)]


def test_keep_alives_are_events_and_take_no_payload() -> None:
    conn = connected()
    assert conn.receive_data(b"\0\0\0\0" * 3) == [KeepAlive()] * 3
    assert conn.send(KeepAlive()) == b"\0\0\0\0"


# --- strictness: framing -----------------------------------------------------------


def test_a_length_prefix_over_the_largest_legal_message_fails_before_the_body_arrives() -> None:
    conn = connected(remote_ext=False)
    assert violation(conn, struct.pack(">I", 9 + BLOCK + 1)) is Violation.MESSAGE_TOO_LONG
    assert violation(connected(), struct.pack(">I", 0xFFFFFFFF)) is Violation.MESSAGE_TOO_LONG


def test_the_largest_legal_messages_are_accepted() -> None:
    conn = connected()
    conn.send(HaveNone())
    conn.send(Request(0, 0, BLOCK))
    conn.send(ExtensionHandshake(m={"ut_metadata": 1}))
    big = (1 << 20) - 2
    events = conn.receive_data(piece_frame(0, 0, b"x" * BLOCK) + extended_frame(1, b"y" * big))
    assert [type(e) for e in events] == [Piece, Extended]
    assert violation(conn, extended_frame(1, b"y" * (big + 1))) is Violation.MESSAGE_TOO_LONG


def test_a_bitfield_longer_than_a_piece_message_is_legal_for_a_torrent_of_many_pieces() -> None:
    n = 400_000  # 50 000 bitfield bytes
    conn = PeerConnection(INFO_HASH, LOCAL_ID, n, BLOCK, n * BLOCK, extension_protocol=False)
    conn.handshake_bytes()
    conn.receive_data(remote_handshake(ext=False))
    bits = bitfield_bytes([i % 3 == 0 for i in range(n)])
    assert conn.receive_data(frame(5, bits)) == [Bitfield(bits)]


def test_extension_messages_are_limited_to_the_core_sizes_when_bep_10_is_off() -> None:
    conn = connected(extension_protocol=False)
    assert violation(conn, struct.pack(">IB", 100_000, 20)) is Violation.MESSAGE_TOO_LONG


@pytest.mark.parametrize("msg_id", [10, 11, 12, 18, 19, 21, 22, 23, 255])
def test_unknown_message_ids_are_refused(msg_id: int) -> None:
    assert violation(connected(), frame(msg_id, b"\0" * 4)) is Violation.UNKNOWN_MESSAGE_ID


FIXED_SIZES = {0: 0, 1: 0, 2: 0, 3: 0, 4: 4, 6: 12, 8: 12, 9: 2, 13: 4, 14: 0, 15: 0, 16: 12, 17: 4}


@pytest.mark.parametrize("msg_id,size", sorted(FIXED_SIZES.items()))
@pytest.mark.parametrize("delta", [-1, 1])
def test_fixed_size_messages_with_the_wrong_payload_size_are_refused(msg_id: int, size: int, delta: int) -> None:
    if size + delta < 0:
        return
    # The header is enough: the body is never waited for.
    header = struct.pack(">IB", 1 + size + delta, msg_id)
    assert violation(connected(), header) is Violation.WRONG_MESSAGE_LENGTH


def test_a_piece_message_too_short_for_its_header_is_refused() -> None:
    assert violation(connected(), frame(7, b"\0" * 7)) is Violation.WRONG_MESSAGE_LENGTH


def test_a_piece_carrying_more_than_max_block_is_refused_from_its_header() -> None:
    conn = connected(max_block=1024)
    assert violation(conn, struct.pack(">IB", 9 + 1025, 7)) is Violation.MESSAGE_TOO_LONG


def test_an_extended_message_without_its_extended_id_is_refused() -> None:
    assert violation(connected(), frame(20)) is Violation.WRONG_MESSAGE_LENGTH


# --- strictness: bitfield, have all, have none ---------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3, 100])
def test_a_bitfield_of_the_wrong_length_is_refused(size: int) -> None:
    assert violation(connected(), frame(5, b"\0" * size)) is Violation.BITFIELD_WRONG_LENGTH


@pytest.mark.parametrize("spare", [0x01, 0x20, 0x3F])
def test_a_bitfield_with_spare_bits_set_is_taken_with_them_cleared(spare: int) -> None:
    # 10 pieces: the second byte holds pieces 8 and 9 in its two high bits.  libtorrent ignores
    # the spare bits; so do we, and the connection goes on.
    conn = connected()
    assert conn.receive_data(frame(5, bytes([0xFF, 0x40 | spare]))) == [Bitfield(b"\xff\x40")]
    assert conn.receive_data(frame(2)) == [Interested()]
    assert connected().receive_data(frame(5, b"\xff\xc0")) == [Bitfield(b"\xff\xc0")]


@pytest.mark.parametrize(
    "later, event", [(frame(5, b"\xff\xc0"), Bitfield(b"\xff\xc0")), (frame(14), HaveAll()), (frame(15), HaveNone())]
)
@pytest.mark.parametrize(
    "before", [frame(1), frame(2), frame(4, struct.pack(">I", 0)), frame(5, b"\x80\0"), frame(15)]
)
def test_a_later_bitfield_have_all_or_have_none_is_taken_as_an_update(before: bytes, later: bytes, event: object) -> None:
    """aria2 sends a whole bitfield mid-connection, and a have all once it completes; libtorrent
    takes them as updates, and so do we (a bitfield's length and spare bits are still checked)."""
    assert connected().receive_data(before + later)[-1] == event
    assert connected().receive_data(before + frame(5, b"\xff\xc1"))[-1] == Bitfield(b"\xff\xc0")
    assert violation(connected(), before + frame(5, b"\xff")) is Violation.BITFIELD_WRONG_LENGTH


def test_keep_alives_and_bep_10_and_port_messages_may_precede_the_bitfield() -> None:
    # libtorrent and Transmission send their extension handshake before the bitfield.
    conn = connected(dht=True)
    conn.send(HaveNone())
    conn.send(ExtensionHandshake(m={"ut_pex": 2}))
    stream = b"\0\0\0\0" + extended_frame(0, encode({b"m": {}})) + extended_frame(2, b"") + frame(9, b"\x1a\xe1")
    events = conn.receive_data(stream + frame(14))
    assert events[-1] == HaveAll() and Port(6881) in events


def test_a_peer_without_pieces_may_skip_the_bitfield_without_the_fast_extension() -> None:
    conn = connected(fast=False)
    assert conn.receive_data(frame(2) + frame(4, struct.pack(">I", 9))) == [Interested(), Have(9)]


# --- strictness: indices and blocks --------------------------------------------------


@pytest.mark.parametrize("index", [NUM_PIECES, NUM_PIECES + 1, 0xFFFFFFFF])
def test_a_have_with_an_index_out_of_range_is_refused(index: int) -> None:
    # Strict, as libtorrent: the peer's idea of the torrent is not ours.
    assert violation(connected(), frame(4, struct.pack(">I", index))) is Violation.INDEX_OUT_OF_RANGE
    assert connected().receive_data(frame(4, struct.pack(">I", NUM_PIECES - 1))) == [Have(NUM_PIECES - 1)]


@pytest.mark.parametrize("msg_id", [13, 17])
@pytest.mark.parametrize("index", [NUM_PIECES, NUM_PIECES + 1, 0xFFFFFFFF])
def test_suggest_and_allowed_fast_with_an_index_out_of_range_are_ignored(msg_id: int, index: int) -> None:
    # libtorrent logs and ignores them: no event, and the connection goes on.
    conn = connected()
    assert conn.receive_data(frame(msg_id, struct.pack(">I", index))) == []
    assert conn.receive_data(frame(msg_id, struct.pack(">I", NUM_PIECES - 1))) == [
        (Suggest if msg_id == 13 else AllowedFast)(NUM_PIECES - 1)
    ]


BAD_BLOCKS = [
    ((NUM_PIECES, 0, BLOCK), Violation.INDEX_OUT_OF_RANGE),
    ((0, 0, 0), Violation.BAD_BLOCK_LENGTH),
    ((0, 0, BLOCK + 1), Violation.BAD_BLOCK_LENGTH),
    ((0, PIECE_LENGTH - BLOCK + 1, BLOCK), Violation.BLOCK_OUT_OF_RANGE),
    ((0, PIECE_LENGTH, 1), Violation.BLOCK_OUT_OF_RANGE),
    ((0, 0xFFFFFFFF, 1), Violation.BLOCK_OUT_OF_RANGE),
    # The last piece is shorter: a block that would fit any other piece does not fit it.
    ((NUM_PIECES - 1, 0, LAST_PIECE + 1), Violation.BLOCK_OUT_OF_RANGE),
    ((NUM_PIECES - 1, LAST_PIECE, 1), Violation.BLOCK_OUT_OF_RANGE),
]


@pytest.mark.parametrize("block,reason", BAD_BLOCKS)
def test_an_invalid_request_is_an_event_and_may_be_rejected_once(block: tuple[int, int, int], reason: Violation) -> None:
    # libtorrent rejects it and counts it (the driver does: engine/conduct.py); the connection goes on.
    conn = connected()
    conn.send(HaveNone())
    [event] = conn.receive_data(block_frame(6, *block))
    assert isinstance(event, InvalidRequest) and (event.index, event.begin, event.length) == block
    assert event.reason  # what is wrong with it, for the log
    assert conn.send(Reject(*block)) == block_frame(16, *block)  # rejected as it came
    with pytest.raises(LocalProtocolError):
        conn.send(Reject(*block))  # once
    conn.receive_data(block_frame(6, *block) * 2)
    assert conn.send(Reject(*block)) + conn.send(Reject(*block)) == block_frame(16, *block) * 2  # once each
    assert conn.receive_data(frame(2)) == [Interested()]


def test_we_do_not_reject_an_invalid_request_the_peer_never_sent() -> None:
    conn = connected()
    conn.send(HaveNone())
    with pytest.raises(LocalProtocolError):
        conn.send(Reject(NUM_PIECES, 0, BLOCK))


@pytest.mark.parametrize("msg_id", [8, 16])
@pytest.mark.parametrize("block,reason", BAD_BLOCKS)
def test_cancel_and_reject_outside_the_torrent_are_ignored(
    msg_id: int, block: tuple[int, int, int], reason: Violation
) -> None:
    conn = requesting((0, 0, BLOCK))
    assert conn.receive_data(block_frame(msg_id, *block)) == []
    assert conn.outstanding_requests == {Request(0, 0, BLOCK)}
    assert conn.receive_data(frame(2)) == [Interested()]


@pytest.mark.parametrize(
    "block", [(0, 0, BLOCK), (0, PIECE_LENGTH - 1, 1), (NUM_PIECES - 1, LAST_PIECE - 8, 8), (3, 100, BLOCK)]
)
def test_requests_and_cancels_inside_the_torrent_are_events(block: tuple[int, int, int]) -> None:
    conn = connected()
    assert conn.receive_data(block_frame(6, *block) + block_frame(8, *block)) == [Request(*block), Cancel(*block)]


def test_max_block_sets_the_largest_request_a_peer_may_make() -> None:
    conn = connected(max_block=BLOCK * 2)
    assert conn.receive_data(block_frame(6, 0, 0, PIECE_LENGTH)) == [Request(0, 0, PIECE_LENGTH)]
    [event] = connected().receive_data(block_frame(6, 0, 0, PIECE_LENGTH))
    assert isinstance(event, InvalidRequest)


# --- strictness: pieces and rejects against our requests -----------------------------------


def requesting(*keys: tuple[int, int, int], fast: bool = True) -> PeerConnection:
    conn = connected(fast=fast)
    conn.send(HaveNone() if fast else Interested())
    for key in keys:
        conn.send(Request(*key))
    return conn


@given(st.lists(blocks(), max_size=20), st.booleans())
def test_send_requests_gives_the_bytes_and_records_of_one_send_per_request(keys: list[tuple[int, int, int]], fast: bool) -> None:
    one_by_one, batched = requesting(fast=fast), requesting(fast=fast)
    expected = b"".join(one_by_one.send(Request(*key)) for key in keys)
    assert batched.send_requests(keys) == expected
    # The pieces answering them are taken alike on both, and one not asked for dropped alike.
    unasked = [(1, 0, BLOCK)] if (1, 0, BLOCK) not in keys else []
    answers = b"".join(piece_frame(i, b, bytes(n)) for i, b, n in [*keys, *unasked])
    assert [comparable(e) for e in batched.receive_data(answers)] == [
        comparable(e) for e in one_by_one.receive_data(answers)
    ]


@given(st.lists(blocks(), max_size=20), st.booleans())
def test_send_pieces_gives_the_bytes_of_one_send_per_piece(keys: list[tuple[int, int, int]], fast: bool) -> None:
    one_by_one, batched = requesting(fast=fast), requesting(fast=fast)
    pieces = [(i, b, random_bytes(i * 7 + b, n)) for i, b, n in keys]
    expected = b"".join(one_by_one.send(Piece(*piece)) for piece in pieces)
    assert batched.send_pieces([(i, b, memoryview(d)) for i, b, d in pieces]) == expected


@given(st.lists(st.integers(0, NUM_PIECES - 1), max_size=20), st.booleans())
def test_send_haves_gives_the_bytes_of_one_send_per_have(indices: list[int], fast: bool) -> None:
    one_by_one, batched = requesting(fast=fast), requesting(fast=fast)
    assert batched.send_haves(indices) == b"".join(one_by_one.send(Have(i)) for i in indices)


def test_send_haves_refuses_what_send_refuses() -> None:
    with pytest.raises(LocalProtocolError):
        requesting().send_haves([0, NUM_PIECES])
    with pytest.raises(LocalProtocolError, match="first"):
        connected().send_haves([0])  # the fast extension: have-none or a bitfield first
    assert connected(fast=False).send_haves([1, 2]) == connected(fast=False).send(Have(1)) + b"\0\0\0\x05\x04\0\0\0\x02"


@pytest.mark.parametrize("key", [(NUM_PIECES, 0, BLOCK), (0, 0, BLOCK + 1), (NUM_PIECES - 1, BLOCK, BLOCK)])
def test_send_pieces_refuses_a_block_outside_the_torrent(key: tuple[int, int, int]) -> None:
    index, begin, length = key
    with pytest.raises(LocalProtocolError):
        requesting().send_pieces([(0, 0, bytes(BLOCK)), (index, begin, bytes(length))])
    with pytest.raises(LocalProtocolError):
        connected().send_pieces([(0, 0, bytes(BLOCK))])  # before have-none or a bitfield (BEP 6)


@pytest.mark.parametrize("key", [(NUM_PIECES, 0, BLOCK), (0, 0, BLOCK + 1), (NUM_PIECES - 1, BLOCK, BLOCK), (0, 0, 0)])
def test_send_requests_refuses_a_request_outside_the_torrent(key: tuple[int, int, int]) -> None:
    with pytest.raises(LocalProtocolError):
        requesting().send_requests([(0, 0, BLOCK), key])


def test_send_requests_before_both_handshakes_or_before_the_bitfield_is_refused_as_send_is() -> None:
    with pytest.raises(LocalProtocolError):
        connection().send_requests([(0, 0, BLOCK)])
    with pytest.raises(LocalProtocolError, match="first"):
        connected().send_requests([(0, 0, BLOCK)])  # the fast extension: have-none or a bitfield first


@pytest.mark.parametrize("block", [(1, 0, BLOCK), (1, BLOCK, BLOCK), (NUM_PIECES - 1, 0, LAST_PIECE)])
def test_a_piece_in_range_we_did_not_request_is_dropped_and_reported_without_its_bytes(
    block: tuple[int, int, int],
) -> None:
    # libtorrent drops it and counts it as waste; the connection goes on.
    conn = requesting((0, 0, BLOCK))
    index, begin, length = block
    assert conn.receive_data(piece_frame(index, begin, b"x" * length)) == [UnrequestedPiece(*block)]
    assert conn.outstanding_requests == {Request(0, 0, BLOCK)}
    assert conn.receive_data(piece_frame(0, 0, b"y" * BLOCK)) == [Piece(0, 0, b"y" * BLOCK)]


@pytest.mark.parametrize(
    "index,begin,length",
    [
        (0, 0, 10),  # same place, other length: off the block grid
        (0, 1, BLOCK - 1),
        (0, BLOCK // 2, BLOCK),
        (NUM_PIECES - 1, 0, BLOCK),  # longer than the last piece
        (NUM_PIECES, 0, BLOCK),
        (0, PIECE_LENGTH, BLOCK),
    ],
)
def test_a_piece_we_did_not_request_out_of_range_or_off_the_block_grid_is_refused(
    index: int, begin: int, length: int
) -> None:
    assert violation(requesting((0, 0, BLOCK)), piece_frame(index, begin, b"x" * length)) is Violation.PIECE_NOT_REQUESTED


def test_an_empty_piece_is_a_reject_bitcomet_style() -> None:
    conn = requesting((0, 0, BLOCK), (NUM_PIECES - 1, 0, LAST_PIECE), fast=False)
    assert conn.receive_data(piece_frame(0, 0, b"") + piece_frame(NUM_PIECES - 1, 0, b"")) == [
        Reject(0, 0, BLOCK),
        Reject(NUM_PIECES - 1, 0, LAST_PIECE),
    ]
    assert conn.outstanding_requests == frozenset()
    # One that answers nothing, or out of range, is ignored like such a reject.
    assert conn.receive_data(piece_frame(0, 0, b"") + piece_frame(NUM_PIECES, 0, b"") + frame(2)) == [Interested()]


def test_each_request_is_answered_once() -> None:
    conn = requesting((0, 0, BLOCK))
    assert conn.outstanding_requests == {Request(0, 0, BLOCK)}
    conn.receive_data(piece_frame(0, 0, b"x" * BLOCK))
    assert conn.outstanding_requests == frozenset()
    assert conn.receive_data(piece_frame(0, 0, b"x" * BLOCK)) == [UnrequestedPiece(0, 0, BLOCK)]


@pytest.mark.parametrize("fast", [False, True])
def test_a_piece_after_our_cancel_is_tolerated_once(fast: bool) -> None:
    conn = requesting((0, 0, BLOCK), fast=fast)
    conn.send(Cancel(0, 0, BLOCK))
    assert conn.outstanding_requests == frozenset()
    assert conn.receive_data(piece_frame(0, 0, b"x" * BLOCK)) == [Piece(0, 0, b"x" * BLOCK)]
    assert conn.receive_data(piece_frame(0, 0, b"x" * BLOCK)) == [UnrequestedPiece(0, 0, BLOCK)]


def test_a_reject_may_answer_a_cancel_under_the_fast_extension() -> None:
    conn = requesting((0, 0, BLOCK))
    conn.send(Cancel(0, 0, BLOCK))
    assert conn.receive_data(block_frame(16, 0, 0, BLOCK)) == [Reject(0, 0, BLOCK)]
    assert conn.receive_data(piece_frame(0, 0, b"x" * BLOCK)) == [UnrequestedPiece(0, 0, BLOCK)]


def test_a_choke_without_the_fast_extension_drops_our_requests_but_tolerates_pieces_in_flight() -> None:
    conn = requesting((0, 0, BLOCK), (1, 0, BLOCK), fast=False)
    assert conn.receive_data(frame(0) + piece_frame(1, 0, b"y" * BLOCK)) == [Choke(), Piece(1, 0, b"y" * BLOCK)]
    assert conn.outstanding_requests == frozenset() and conn.peer_choking
    assert conn.receive_data(piece_frame(1, 0, b"y" * BLOCK)) == [UnrequestedPiece(1, 0, BLOCK)]


def test_a_block_requested_again_after_a_choke_may_arrive_twice() -> None:
    # BEP 3: "an unexpected piece [may] arrive if choke and unchoke messages
    # are sent in quick succession"; the old answer and the new one both come.
    conn = requesting((0, 0, BLOCK), fast=False)
    conn.receive_data(frame(0) + frame(1))
    conn.send(Request(0, 0, BLOCK))
    assert len(conn.receive_data(piece_frame(0, 0, b"z" * BLOCK) * 2)) == 2


def test_a_choke_under_the_fast_extension_keeps_our_requests_outstanding() -> None:
    conn = requesting((0, 0, BLOCK), (1, 0, BLOCK))
    conn.receive_data(frame(0))
    assert conn.outstanding_requests == {Request(0, 0, BLOCK), Request(1, 0, BLOCK)}
    assert conn.receive_data(block_frame(16, 0, 0, BLOCK) + piece_frame(1, 0, b"a" * BLOCK)) == [
        Reject(0, 0, BLOCK),
        Piece(1, 0, b"a" * BLOCK),
    ]


def test_a_reject_for_a_request_we_never_sent_is_ignored() -> None:
    # libtorrent: "not in request queue", logged and ignored.
    conn = requesting((0, 0, BLOCK))
    assert conn.receive_data(block_frame(16, 0, BLOCK, BLOCK)) == []
    assert conn.outstanding_requests == {Request(0, 0, BLOCK)}
    assert conn.receive_data(block_frame(16, 0, 0, BLOCK)) == [Reject(0, 0, BLOCK)]
    assert conn.receive_data(block_frame(16, 0, 0, BLOCK) + frame(2)) == [Interested()]


# --- negotiation: fast extension and extension protocol ------------------------------------

FAST_FRAMES = [
    frame(13, struct.pack(">I", 1)),
    frame(14),
    frame(15),
    block_frame(16, 0, 0, BLOCK),
    frame(17, struct.pack(">I", 1)),
]


@pytest.mark.parametrize("ours,theirs", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("wire", FAST_FRAMES)
def test_fast_extension_messages_are_refused_unless_both_sides_advertised_it(
    ours: bool, theirs: bool, wire: bytes
) -> None:
    conn = connected(fast=ours, remote_fast=theirs)
    assert not conn.fast_enabled
    assert violation(conn, wire) is Violation.FAST_NOT_NEGOTIATED


@pytest.mark.parametrize("ours,theirs", [(True, False), (False, True), (False, False)])
def test_extension_protocol_messages_are_refused_unless_both_sides_advertised_it(ours: bool, theirs: bool) -> None:
    conn = connected(extension_protocol=ours, remote_ext=theirs)
    assert not conn.extension_protocol_enabled
    assert violation(conn, extended_frame(0, encode({b"m": {}}))) is Violation.EXTENSION_PROTOCOL_NOT_NEGOTIATED


@pytest.mark.parametrize("message", [HaveAll(), HaveNone(), Suggest(1), AllowedFast(1), Reject(0, 0, BLOCK)])
def test_we_do_not_send_fast_extension_messages_unless_both_sides_advertised_it(message: Message) -> None:
    conn = connected(remote_fast=False)
    with pytest.raises(LocalProtocolError):
        conn.send(message)


@pytest.mark.parametrize("message", [ExtensionHandshake(), Extended(1, b"")])
def test_we_do_not_send_extension_messages_unless_both_sides_advertised_it(message: Message) -> None:
    with pytest.raises(LocalProtocolError):
        connected(remote_ext=False).send(message)


# --- BEP 10 -----------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"d1:mde", b"d1:md11:ut_metadatai1e", b"i1e", b"de junk", b"\xff"])
def test_an_extension_handshake_that_is_not_valid_bencoding_means_no_extensions(payload: bytes) -> None:
    # libtorrent ignores it: no event, the remote has no extensions, the connection goes on.
    conn = connected()
    assert conn.receive_data(extended_frame(0, payload)) == []
    assert dict(conn.remote_extensions) == {}
    assert conn.receive_data(frame(2)) == [Interested()]


@pytest.mark.parametrize("payload", [b"li1ee", b"3:abc", b"i5e"])
def test_an_extension_handshake_that_is_not_a_dictionary_means_no_extensions(payload: bytes) -> None:
    conn = connected()
    assert conn.receive_data(extended_frame(0, payload)) == []
    with pytest.raises(LocalProtocolError):
        conn.send(Extended(1, b""))


def test_an_invalid_extension_handshake_later_keeps_what_the_remote_advertised() -> None:
    conn = connected()
    conn.receive_data(extended_frame(0, encode({b"m": {b"ut_pex": 3}})))
    assert conn.receive_data(extended_frame(0, b"junk")) == []
    assert dict(conn.remote_extensions) == {"ut_pex": 3}


def test_extension_handshakes_beyond_eight_are_ignored_and_one_over_16_kib_is_refused() -> None:
    conn = connected()
    for i in range(1, 9):
        [event] = conn.receive_data(extended_frame(0, encode({b"m": {b"ut_pex": i}})))
        assert isinstance(event, ExtensionHandshake)
    assert conn.receive_data(extended_frame(0, encode({b"m": {b"ut_pex": 99}}))) == []
    assert dict(conn.remote_extensions) == {"ut_pex": 8}
    big = encode({b"m": {}, b"x": b"a" * (16 << 10)})
    assert violation(connected(), extended_frame(0, big)) is Violation.EXTENSION_HANDSHAKE_TOO_LONG


def test_extension_handshake_fields_are_decoded_and_the_whole_dictionary_kept() -> None:
    raw = {b"m": {b"ut_metadata": 3, b"ut_pex": 0}, b"v": "µTorrent 1.2".encode(), b"reqq": 250,
           b"p": 6881, b"yourip": b"\x7f\0\0\1", b"metadata_size": 1234}
    [event] = connected().receive_data(extended_frame(0, encode(raw)))
    assert event == ExtensionHandshake(m={"ut_metadata": 3, "ut_pex": 0}, v="µTorrent 1.2", reqq=250, p=6881,
                                       yourip=b"\x7f\0\0\1", metadata_size=1234, raw=raw)


def test_extension_handshake_fields_of_the_wrong_type_are_ignored_as_bep_10_asks() -> None:
    raw = {b"m": {b"ut_metadata": b"one", b"ut_pex": 300, b"\xff\xfe": 4, b"ok": 5}, b"v": 7, b"reqq": b"x",
           b"p": 70000, b"yourip": b"abc"}
    [event] = connected().receive_data(extended_frame(0, encode(raw)))
    assert event == ExtensionHandshake(m={"ok": 5}, raw=raw)
    [event] = connected().receive_data(extended_frame(0, encode({b"m": [1, 2]})))
    assert isinstance(event, ExtensionHandshake) and event.m == {}


def test_later_extension_handshakes_change_only_the_extensions_they_name() -> None:
    conn = connected()
    conn.receive_data(extended_frame(0, encode({b"m": {b"ut_metadata": 3, b"ut_pex": 1}})))
    assert dict(conn.remote_extensions) == {"ut_metadata": 3, "ut_pex": 1}
    conn.receive_data(extended_frame(0, encode({b"m": {b"ut_pex": 0, b"lt_donthave": 7}})))
    assert dict(conn.remote_extensions) == {"ut_metadata": 3, "lt_donthave": 7}
    conn.send(HaveNone())
    assert conn.send(Extended(3, b"payload")) == extended_frame(3, b"payload")
    with pytest.raises(LocalProtocolError):
        conn.send(Extended(1, b""))  # ut_pex was switched off


def test_an_extended_message_under_an_id_we_never_advertised_is_refused() -> None:
    conn = connected()
    assert violation(conn, extended_frame(1, b"")) is Violation.EXTENDED_ID_NOT_ADVERTISED
    conn = connected()
    conn.send(ExtensionHandshake(m={"ut_metadata": 2}))
    assert violation(conn, extended_frame(3, b"")) is Violation.EXTENDED_ID_NOT_ADVERTISED


def test_an_extended_message_may_cross_the_handshake_that_disabled_it() -> None:
    conn = connected()
    conn.send(ExtensionHandshake(m={"ut_metadata": 2}))
    conn.send(ExtensionHandshake(m={"ut_metadata": 0}))
    assert conn.receive_data(extended_frame(2, b"late")) == [Extended(2, b"late")]


def test_our_extension_handshake_must_give_distinct_ids_that_fit_a_byte() -> None:
    conn = connected()
    for m in ({"a": 1, "b": 1}, {"a": 256}, {"a": -1}):
        with pytest.raises(LocalProtocolError):
            conn.send(ExtensionHandshake(m=m))
    assert conn.send(ExtensionHandshake(m={"a": 0, "b": 0, "c": 1}))


# --- what we send ---------------------------------------------------------------------


def test_nothing_is_sent_before_both_handshakes_and_the_handshake_only_once() -> None:
    conn = connection()
    with pytest.raises(LocalProtocolError):
        conn.send(KeepAlive())
    conn.handshake_bytes()
    with pytest.raises(LocalProtocolError):
        conn.handshake_bytes()
    with pytest.raises(LocalProtocolError):
        conn.send(Interested())  # the remote's handshake has not arrived
    with pytest.raises(LocalProtocolError):
        conn.send(Handshake(INFO_HASH, LOCAL_ID))  # type: ignore[arg-type]


def test_with_the_fast_extension_we_send_bitfield_have_all_or_have_none_first_and_only_first() -> None:
    conn = connected()
    conn.send(KeepAlive())
    with pytest.raises(LocalProtocolError):
        conn.send(Interested())
    conn.send(HaveNone())
    for message in (HaveAll(), HaveNone(), Bitfield(b"\0\0")):
        with pytest.raises(LocalProtocolError):
            conn.send(message)
    assert conn.send(Interested()) == frame(2)


def test_a_rejected_send_changes_no_state() -> None:
    conn = connected()
    with pytest.raises(LocalProtocolError):
        conn.send(Bitfield(b"\0"))
    assert conn.send(HaveNone()) == frame(15)


@pytest.mark.parametrize(
    "message",
    [Have(NUM_PIECES), Suggest(-1), AllowedFast(NUM_PIECES), Request(0, 0, 0), Request(0, 0, BLOCK + 1),
     Request(NUM_PIECES - 1, 0, LAST_PIECE + 1), Cancel(0, 0, BLOCK), Piece(0, PIECE_LENGTH, b"x"),
     Piece(0, 0, b"x" * (BLOCK + 1)), Reject(NUM_PIECES, 0, 1), Port(6881), Port(70000)],
)
def test_we_do_not_send_what_we_would_refuse(message: Message) -> None:
    conn = connected(dht=isinstance(message, Port) and message.port > 65535)
    conn.send(HaveNone())
    with pytest.raises(LocalProtocolError):
        conn.send(message)


@pytest.mark.parametrize("bits", [b"\xff\xff", b"\0", b"\0\0\0"])
def test_we_do_not_send_a_bitfield_we_would_refuse(bits: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        connected().send(Bitfield(bits))


def test_a_block_requested_twice_may_be_answered_twice_and_no_more() -> None:
    # A driver that timed a request out may send it again: both answers are legal.
    conn = requesting((0, 0, BLOCK), (0, 0, BLOCK))
    assert conn.outstanding_requests == {Request(0, 0, BLOCK)}
    assert len(conn.receive_data(piece_frame(0, 0, b"x" * BLOCK) + block_frame(16, 0, 0, BLOCK))) == 2
    assert conn.outstanding_requests == frozenset()
    assert conn.receive_data(piece_frame(0, 0, b"x" * BLOCK)) == [UnrequestedPiece(0, 0, BLOCK)]


def test_a_cancel_covers_every_copy_of_a_request() -> None:
    conn = requesting((0, 0, BLOCK), (0, 0, BLOCK))
    conn.send(Cancel(0, 0, BLOCK))
    assert conn.outstanding_requests == frozenset()
    assert len(conn.receive_data(piece_frame(0, 0, b"x" * BLOCK) * 2)) == 2
    with pytest.raises(LocalProtocolError):
        conn.send(Cancel(0, 0, BLOCK))  # nothing left to cancel


def test_choke_and_interest_state_follow_the_messages_both_ways() -> None:
    a, b = pair()
    assert a.am_choking and not a.am_interested and b.peer_choking and not b.peer_interested
    b.receive_data(a.send(HaveNone()) + a.send(Unchoke()) + a.send(Interested()))
    assert not a.am_choking and a.am_interested and not b.peer_choking and b.peer_interested
    b.receive_data(a.send(Choke()) + a.send(NotInterested()))
    assert a.am_choking and not a.am_interested and b.peer_choking and not b.peer_interested


# --- after a violation ---------------------------------------------------------------


def test_events_decoded_before_a_violation_travel_with_the_error() -> None:
    conn = connected()
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_data(frame(15) + frame(1) + frame(99))
    assert info.value.events == [HaveNone(), Unchoke()]
    assert info.value.reason is Violation.UNKNOWN_MESSAGE_ID and "99" in str(info.value)


def test_a_failed_connection_stays_failed() -> None:
    conn = connected()
    violation(conn, frame(99))
    assert violation(conn, frame(1)) is Violation.UNKNOWN_MESSAGE_ID


# --- noise ------------------------------------------------------------------------------


def noise() -> st.SearchStrategy[bytes]:
    """Bytes that look like messages often enough to reach every check."""
    ids = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 20, 10, 255])
    small_ints = st.sampled_from([0, 1, NUM_PIECES - 1, NUM_PIECES, BLOCK, LAST_PIECE, 0xFFFFFFFF])
    fields = st.lists(small_ints, max_size=3).map(lambda xs: b"".join(struct.pack(">I", x) for x in xs))
    well_formed = st.sampled_from([(4, 1), (6, 3), (8, 3), (13, 1), (16, 3), (17, 1)]).flatmap(
        lambda spec: st.lists(small_ints, min_size=spec[1], max_size=spec[1]).map(
            lambda xs: frame(spec[0], b"".join(struct.pack(">I", x) for x in xs))
        )
    )
    return st.one_of(
        well_formed,
        st.binary(max_size=12),
        st.builds(frame, ids, st.binary(max_size=16)),
        st.builds(lambda i, f, tail: frame(i, f + tail), ids, fields, st.binary(max_size=3)),
        st.builds(lambda n, i: struct.pack(">IB", n, i), st.integers(0, 1 << 21), ids),
        st.sampled_from([piece_frame(0, 0, b"p" * BLOCK), piece_frame(NUM_PIECES - 1, 0, b"q" * LAST_PIECE),
                         extended_frame(0, b"d1:md1:ai1eee"), extended_frame(1, b"x"), extended_frame(0, b"d")]),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(noise(), max_size=12), st.lists(st.integers(0, 40_000), max_size=8), st.booleans(), st.booleans())
def test_arbitrary_bytes_after_the_handshake_raise_only_protocol_errors_the_same_way_for_any_split(
    parts: list[bytes], cuts: list[int], fast: bool, ext: bool
) -> None:
    def fresh() -> PeerConnection:
        conn = connected(fast=fast, extension_protocol=ext)
        conn.send(HaveNone() if fast else Interested())
        for key in ((0, 0, BLOCK), (NUM_PIECES - 1, 0, LAST_PIECE)):
            conn.send(Request(*key))
        if ext:
            conn.send(ExtensionHandshake(m={"ut_metadata": 1}))
        return conn

    stream = b"".join(parts)
    whole = feed_in_chunks(fresh(), stream, [])
    assert feed_in_chunks(fresh(), stream, cuts) == whole


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(noise(), max_size=12), st.lists(st.integers(0, 40_000), max_size=8))
def test_a_connection_without_metadata_takes_arbitrary_bytes_the_same_way_and_raises_only_protocol_errors(
    parts: list[bytes], cuts: list[int]
) -> None:
    def fresh() -> PeerConnection:
        conn = PeerConnection.without_metadata(INFO_HASH, LOCAL_ID, pex=True)
        conn.handshake_bytes()
        conn.receive_data(remote_handshake())
        conn.send(HaveNone())
        conn.send(ExtensionHandshake(m={"ut_metadata": 1, "ut_pex": 2}))
        return conn

    stream = b"".join(parts)
    whole = feed_in_chunks(fresh(), stream, [])
    assert feed_in_chunks(fresh(), stream, cuts) == whole
    assert not any(isinstance(e, Piece) for e in whole[0])  # it asked for nothing: no block is ever taken


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(noise(), max_size=12), st.lists(st.integers(0, 40_000), max_size=8))
def test_bytes_received_borrowed_from_a_reused_buffer_give_the_same_events_as_bytes_copied(
    parts: list[bytes], cuts: list[int]
) -> None:
    def fresh() -> PeerConnection:
        conn = connected()
        conn.send(HaveNone())
        for key in ((0, 0, BLOCK), (NUM_PIECES - 1, 0, LAST_PIECE)):
            conn.send(Request(*key))
        conn.send(ExtensionHandshake(m={"ut_metadata": 1}))
        return conn

    stream = b"".join(parts)
    expected = feed_in_chunks(fresh(), stream, cuts)
    conn = fresh()
    buffer = bytearray(len(stream) + 1)  # one buffer, reused for every read as a socket's would be
    events: list[Event] = []
    violation = None
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(stream)), len(stream)]
    for start, end in zip(bounds, bounds[1:]):
        n = end - start
        buffer[:n] = stream[start:end]
        try:
            got = conn.receive_borrowed(memoryview(buffer)[:n])
        except RemoteProtocolError as exc:
            # What came before a violation is handled later, once the buffer served other reads.
            buffer[:] = b"\xee" * len(buffer)
            got, violation = exc.events, exc.reason
        # What a driver does before its next read: copy blocks out, then the buffer is overwritten.
        events += [Piece(e.index, e.begin, bytes(e.block)) if isinstance(e, Piece) else e for e in got]
        buffer[:] = b"\xee" * len(buffer)
        if violation is not None:
            break
    assert (events, violation) == expected


def test_a_connection_failed_in_a_borrowed_read_keeps_nothing_of_it() -> None:
    # The read is a view of the driver's buffer; what the parser keeps of it is copied.  Once the
    # connection has failed nothing more is parsed, so keeping the rest of a large read would only
    # hold memory (for as long as the failed connection lives).
    keys = [(0, 0, BLOCK), (0, BLOCK, BLOCK)]
    conn = requesting(*keys)
    good = b"".join(piece_frame(i, b, random_bytes(b, n)) for i, b, n in keys)
    read = bytearray(good + frame(4, b"\0\0\0") + b"\xab" * (1 << 20))  # a have of the wrong length, then more
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with pytest.raises(RemoteProtocolError) as info:
            conn.receive_borrowed(memoryview(read))
        kept_events = info.value.events
        del info
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert [(e.index, e.begin, bytes(e.block)) for e in kept_events if isinstance(e, Piece)] == [
        (i, b, random_bytes(b, n)) for i, b, n in keys
    ]
    assert held < 4 * BLOCK + 64 * 1024  # the two blocks the events carry, not the megabyte after them


def test_a_message_trickled_a_byte_per_read_into_a_reused_buffer_is_held_in_few_chunks() -> None:
    # Each read's leftover is copied out of the borrowed buffer; were every byte its own chunk, each
    # read would cost what is already held (and a peer trickling one message would stall the loop).
    conn = requesting((0, 0, BLOCK))
    block = random_bytes(3, BLOCK)
    stream = piece_frame(0, 0, block)
    buffer = bytearray(1)
    got: list[Event] = []
    for byte in stream:
        buffer[0] = byte
        got += conn.receive_borrowed(memoryview(buffer))
        held = conn._buffer.size
        assert len(conn._buffer._chunks) <= held // 256 + 2, (held, len(conn._buffer._chunks))
    assert [(e.index, e.begin, bytes(e.block)) for e in got if isinstance(e, Piece)] == [(0, 0, block)]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 268), max_size=6))
def test_arbitrary_bytes_before_the_handshake_raise_only_protocol_errors(junk: bytes, cuts: list[int]) -> None:
    for stream in (junk, remote_handshake()[: len(junk) % 69] + junk):
        conn = connection()
        assert feed_in_chunks(conn, stream, cuts) == feed_in_chunks(connection(), stream, [])


# --- bitfield helpers -------------------------------------------------------------------


def test_piece_zero_is_the_high_bit_of_the_first_byte() -> None:
    assert bitfield_bytes([True] + [False] * 9) == b"\x80\x00"
    assert bitfield_bytes([False] * 9 + [True]) == b"\x00\x40"
    assert bitfield_bytes(bytearray([0, 1, 0, 0, 0, 0, 0, 1, 1])) == b"\x41\x80"
    assert bits_to_set(b"\x41\x80") == {1, 7, 8}
    assert bitfield_bytes([]) == b"" and bits_to_set(b"") == set()


@given(st.lists(st.booleans(), max_size=2000))
def test_bitfield_helpers_round_trip(have: list[bool]) -> None:
    bits = bitfield_bytes(have)
    assert len(bits) == (len(have) + 7) // 8
    assert list(bitfield_flags(bits, len(have))) == [int(h) for h in have]
    assert bits_to_set(bits) == {i for i, h in enumerate(have) if h}


def test_constructor_refuses_a_geometry_that_does_not_add_up() -> None:
    with pytest.raises(ValueError):
        PeerConnection(INFO_HASH, LOCAL_ID, NUM_PIECES + 1, PIECE_LENGTH, TOTAL)
    with pytest.raises(ValueError):
        PeerConnection(INFO_HASH[:19], LOCAL_ID, NUM_PIECES, PIECE_LENGTH, TOTAL)
    with pytest.raises(ValueError):
        PeerConnection(INFO_HASH, LOCAL_ID, NUM_PIECES, PIECE_LENGTH, TOTAL, max_block=0)


def test_helpers_refuse_malformed_arguments() -> None:
    with pytest.raises(ValueError):
        bitfield_flags(b"\0", NUM_PIECES)
    with pytest.raises(LocalProtocolError):
        encode_handshake(Handshake(INFO_HASH, b"short"))


# --- bounds on what a peer can make us remember -------------------------------------------


def test_a_block_cancelled_twice_may_be_answered_twice() -> None:
    conn = requesting((0, 0, BLOCK))
    conn.send(Cancel(0, 0, BLOCK))
    conn.send(Request(0, 0, BLOCK))
    conn.send(Cancel(0, 0, BLOCK))
    assert len(conn.receive_data(piece_frame(0, 0, b"x" * BLOCK) + block_frame(16, 0, 0, BLOCK))) == 2
    assert conn.receive_data(piece_frame(0, 0, b"x" * BLOCK)) == [UnrequestedPiece(0, 0, BLOCK)]


def test_answers_tolerated_after_a_cancel_are_forgotten_oldest_first_beyond_a_bound() -> None:
    n = 5000
    conn = PeerConnection(INFO_HASH, LOCAL_ID, n, BLOCK, n * BLOCK)
    conn.handshake_bytes()
    conn.receive_data(remote_handshake())
    conn.send(HaveNone())
    for i in range(n):
        conn.send(Request(i, 0, BLOCK))
        conn.send(Cancel(i, 0, BLOCK))
    assert conn.receive_data(block_frame(16, n - 1, 0, BLOCK)) == [Reject(n - 1, 0, BLOCK)]
    assert conn.receive_data(block_frame(16, 0, 0, BLOCK)) == []  # forgotten: not requested, ignored


def test_we_do_not_send_an_extension_message_over_the_limit_or_an_unbencodable_handshake() -> None:
    conn = connected(max_extension_message=100)
    conn.receive_data(extended_frame(0, encode({b"m": {b"ut_metadata": 3}})))
    conn.send(HaveNone())
    assert conn.send(Extended(3, b"x" * 98))
    with pytest.raises(LocalProtocolError):
        conn.send(Extended(3, b"x" * 99))
    with pytest.raises(LocalProtocolError):
        conn.send(ExtensionHandshake(raw={b"x_float": 1.5}))


def test_only_wire_messages_can_be_sent() -> None:
    with pytest.raises(LocalProtocolError, match="not a peer wire message"):
        connected().send("choke")  # type: ignore[arg-type]


# --- a real peer: libtorrent over loopback ---------------------------------------------

LT_PIECE = 2 * BLOCK
LT_PAYLOAD = 3 * LT_PIECE + 1696  # four pieces, the last not a whole block
SOCKET_TIMEOUT = 20.0  # only turns a hang into a failure


@dataclass
class LtSwarm:
    lt: Any
    session: Any
    info: Any
    payload: bytes
    save_path: Path


@pytest.fixture
def lt_swarm(tmp_path: Path) -> Iterator[LtSwarm]:
    """A libtorrent session on loopback (no encryption, no uTP) and a torrent it made."""
    lt = pytest.importorskip("libtorrent")
    payload = random_bytes(7, LT_PAYLOAD)
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    (seed_dir / "data.bin").write_bytes(payload)
    ct = lt.create_torrent(lt.list_files(str(seed_dir / "data.bin")), LT_PIECE, lt.create_torrent.v1_only)
    lt.set_piece_hashes(ct, str(seed_dir))
    info = lt.torrent_info(lt.bencode(ct.generate()))
    session = lt.session(
        {
            "listen_interfaces": "127.0.0.1:0",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            # Plain TCP: MSE would hide the handshake and uTP attempts delay the connection.
            "out_enc_policy": int(lt.enc_policy.disabled),
            "in_enc_policy": int(lt.enc_policy.disabled),
            "enable_outgoing_utp": False,
            "enable_incoming_utp": False,
            "alert_mask": lt.alert_category.status | lt.alert_category.error,
        }
    )
    try:
        yield LtSwarm(lt, session, info, payload, seed_dir)
    finally:
        for handle in session.get_torrents():
            session.remove_torrent(handle)


def wait_alerts(swarm: LtSwarm, *kinds: Any) -> None:
    """Wait until libtorrent has posted an alert of each kind."""
    missing = set(kinds)
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while missing and time.monotonic() < deadline:
        swarm.session.wait_for_alert(200)
        for alert in swarm.session.pop_alerts():
            missing -= {k for k in missing if isinstance(alert, k)}
    assert not missing, f"libtorrent did not post {[k.__name__ for k in missing]}"


def pump(sock: socket.socket, conn: PeerConnection) -> list[Event] | None:
    """The events of the next bytes from ``sock``; None once the peer closed it."""
    data = sock.recv(1 << 16)
    return conn.receive_data(data) if data else None


def pump_open(sock: socket.socket, conn: PeerConnection) -> list[Event]:
    events = pump(sock, conn)
    assert events is not None, "libtorrent closed the connection"
    return events


def test_we_download_every_block_from_a_libtorrent_seed(lt_swarm: LtSwarm) -> None:
    lt, info = lt_swarm.lt, lt_swarm.info
    atp = lt.add_torrent_params()
    atp.ti = info
    atp.save_path = str(lt_swarm.save_path)
    lt_swarm.session.add_torrent(atp)
    # A connection that arrives before the torrent is checked would be refused.
    wait_alerts(lt_swarm, lt.listen_succeeded_alert, lt.torrent_checked_alert)
    conn = PeerConnection(info.info_hashes().v1.to_bytes(), LOCAL_ID, info.num_pieces(), LT_PIECE, LT_PAYLOAD)
    with socket.create_connection(("127.0.0.1", lt_swarm.session.listen_port()), timeout=SOCKET_TIMEOUT) as sock:
        sock.sendall(conn.handshake_bytes())
        seen: list[Event] = []
        while not (conn.handshake_done and any(isinstance(e, (HaveAll, Bitfield)) for e in seen)):
            seen += pump_open(sock, conn)
        assert conn.fast_enabled and conn.extension_protocol_enabled
        assert "ut_metadata" in conn.remote_extensions
        opening = (HaveNone(), ExtensionHandshake(v="pyowtorrent-test"), Interested())
        sock.sendall(b"".join(conn.send(m) for m in opening))
        while conn.peer_choking:
            seen += pump_open(sock, conn)
        wanted = [
            Request(i, begin, min(BLOCK, size - begin))
            for i in range(info.num_pieces())
            for size in [min(LT_PIECE, LT_PAYLOAD - i * LT_PIECE)]
            for begin in range(0, size, BLOCK)
        ]
        sock.sendall(b"".join(conn.send(r) for r in wanted))
        got: dict[tuple[int, int], bytes] = {}
        while conn.outstanding_requests:
            for e in pump_open(sock, conn):
                assert not isinstance(e, Reject)
                if isinstance(e, Piece):
                    got[e.index, e.begin] = e.block
    assert b"".join(got[r.index, r.begin] for r in wanted) == lt_swarm.payload


def test_libtorrent_downloads_the_whole_torrent_from_us(lt_swarm: LtSwarm) -> None:
    lt, info, payload = lt_swarm.lt, lt_swarm.info, lt_swarm.payload
    atp = lt.add_torrent_params()
    atp.ti = info
    atp.save_path = str(lt_swarm.save_path.parent / "leech")
    handle = lt_swarm.session.add_torrent(atp)
    wait_alerts(lt_swarm, lt.torrent_checked_alert)
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(SOCKET_TIMEOUT)
        handle.connect_peer(server.getsockname())
        sock, _ = server.accept()
    with sock:
        sock.settimeout(SOCKET_TIMEOUT)
        # The accepting side: read the remote's handshake, then build the connection.
        received = b""
        while (handshake := parse_handshake(received)) is None:
            received += sock.recv(HANDSHAKE_LENGTH)
        conn = PeerConnection(handshake.info_hash, LOCAL_ID, info.num_pieces(), LT_PIECE, LT_PAYLOAD)
        events: list[Event] | None = conn.receive_data(received)
        sock.sendall(conn.handshake_bytes() + conn.send(HaveAll()) + conn.send(Unchoke()))
        served: set[Request] = set()
        # libtorrent closes the connection once it is a seed too (both ends complete).
        while events is not None:
            for e in events:
                if isinstance(e, Request):
                    start = e.index * LT_PIECE + e.begin
                    sock.sendall(conn.send(Piece(e.index, e.begin, payload[start : start + e.length])))
                    served.add(e)
            events = pump(sock, conn)
    # libtorrent has checked every piece we served against the torrent's SHA-1s.
    wait_alerts(lt_swarm, lt.torrent_finished_alert)
    status = handle.status()
    assert all(status.pieces) and status.is_seeding
    assert sum(r.length for r in served) == LT_PAYLOAD
