"""BEP 9 metadata exchange (``ut_metadata``), sans-IO: the codec, the assembler, the server.

* The codec: messages round-trip (hypothesis); the decoder takes any bytes
  and any damage to a real message and either decodes or raises the wire's
  error type, with bounded work; a data message framed by hand as libtorrent
  frames it (BEP 9's example) decodes; BEP 9's musts for data are enforced.
* The assembler: pieces in order, at most two outstanding per peer, blocks
  arriving in any order from several peers with rejects and timeouts; the
  info-hash check, a liar named with its pieces, then a clean redo; blocks
  out of range, of the wrong length or of another size refused; sizes over
  the cap refused; the size rule for peers that advertise another size.
* The server: answers, rejects out of range, its two bounds.
* End to end: our server feeding our assembler reproduces a real torrent's
  info dictionary.
"""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyowtorrent.metainfo.bencoding import decode, encode
from pyowtorrent.storage.create import create_torrent
from pyowtorrent.wire import LocalProtocolError, RemoteProtocolError, Violation
from pyowtorrent.wire import events as ev
from pyowtorrent.wire.metadata import (
    MAX_METADATA_MESSAGE,
    MAX_METADATA_SIZE,
    MAX_OUTSTANDING_PER_PEER,
    MAX_QUEUED_ANSWERS,
    METADATA_BLOCK,
    SERVES_PER_PIECE,
    MetadataAssembler,
    MetadataData,
    MetadataFailed,
    MetadataMessage,
    MetadataReject,
    MetadataRequest,
    MetadataServer,
    MetadataVerified,
    advertised_metadata_size,
    decode_metadata_message,
    encode_metadata_message,
    metadata_block_length,
    metadata_pieces,
)

# -- the codec ----------------------------------------------------------------------------------


@st.composite
def data_messages(draw: st.DrawFn) -> MetadataData:
    total = draw(st.integers(1, 5 * METADATA_BLOCK) | st.sampled_from([MAX_METADATA_SIZE, METADATA_BLOCK]))
    piece = draw(st.integers(0, metadata_pieces(total) - 1))
    length = metadata_block_length(total, piece)
    return MetadataData(piece, total, draw(st.binary(min_size=length, max_size=length)))


messages = (
    st.builds(MetadataRequest, st.integers(0, 2**40))
    | st.builds(MetadataReject, st.integers(0, 2**40))
    | data_messages()
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_messages_round_trip(message: MetadataMessage) -> None:
    assert decode_metadata_message(encode_metadata_message(message)) == message


def test_a_data_message_framed_as_libtorrent_frames_it_decodes() -> None:
    # BEP 9's example, whole: <len><20><ut_metadata id> d8:msg_typei1e5:piecei0e10:total_sizei34256ee <block>.
    # libtorrent writes the dictionary with its keys sorted and the block right after it.
    block = bytes(range(256)) * 64  # 16 KiB: piece 0 of 34256 bytes is a whole block
    header = b"d8:msg_typei1e5:piecei0e10:total_sizei34256ee"
    payload = header + block
    frame = (2 + len(payload)).to_bytes(4, "big") + bytes([20, 3]) + payload
    assert frame[6:].startswith(b"d8:msg_type")
    assert decode_metadata_message(frame[6:]) == MetadataData(0, 34256, block)
    # The last piece (2) of 34256 bytes holds 34256 - 2 * 16384 = 1488.
    last = b"d8:msg_typei1e5:piecei2e10:total_sizei34256ee" + b"x" * 1488
    assert decode_metadata_message(last) == MetadataData(2, 34256, b"x" * 1488)
    # Our encoding of the same message is byte for byte libtorrent's.
    assert encode_metadata_message(MetadataData(0, 34256, block)) == payload
    # The request and reject of BEP 9's examples (its reject example says msg_type 1: a typo for 2).
    assert decode_metadata_message(b"d8:msg_typei0e5:piecei0ee") == MetadataRequest(0)
    assert encode_metadata_message(MetadataRequest(0)) == b"d8:msg_typei0e5:piecei0ee"
    assert decode_metadata_message(b"d8:msg_typei2e5:piecei0ee") == MetadataReject(0)
    # libtorrent puts total_size in its rejects when it has the metadata: ignored.
    assert decode_metadata_message(b"d8:msg_typei2e5:piecei7e10:total_sizei34256ee") == MetadataReject(7)


def test_what_bep_9_and_libtorrent_tolerate_is_tolerated() -> None:
    # An unknown msg_type MUST be ignored (BEP 9).
    assert decode_metadata_message(b"d8:msg_typei3e5:piecei0ee") is None
    # Unknown keys, any key order, and bytes after a request's dictionary.
    assert decode_metadata_message(b"d5:piecei4e1:xli1ee8:msg_typei0ee") == MetadataRequest(4)
    assert decode_metadata_message(b"d8:msg_typei0e5:piecei1eejunk") == MetadataRequest(1)
    # A request for a piece out of any range decodes (the server rejects it, as libtorrent does).
    assert decode_metadata_message(b"d8:msg_typei0e5:piecei-1ee") == MetadataRequest(-1)


@pytest.mark.parametrize(
    ("payload", "rule"),
    [
        (b"", Violation.INVALID_METADATA_MESSAGE),
        (b"le", Violation.INVALID_METADATA_MESSAGE),
        (b"d8:msg_typei0e", Violation.INVALID_METADATA_MESSAGE),
        (b"d8:msg_typei0ee", Violation.INVALID_METADATA_MESSAGE),  # no piece
        (b"d8:msg_type1:05:piecei0ee", Violation.INVALID_METADATA_MESSAGE),  # msg_type not an integer
        (b"d8:msg_typei1e5:piecei0eexxxx", Violation.INVALID_METADATA_MESSAGE),  # data without total_size
        (b"d8:msg_typei0e5:piecei0x0ee", Violation.INVALID_METADATA_MESSAGE),
        (b"d8:msg_typei1e5:piecei0e10:total_sizei0eex", Violation.METADATA_SIZE_OUT_OF_RANGE),
        (b"d8:msg_typei1e5:piecei0e10:total_sizei-5eex", Violation.METADATA_SIZE_OUT_OF_RANGE),
        (encode({b"msg_type": 1, b"piece": 0, b"total_size": MAX_METADATA_SIZE + 1}) + b"x", Violation.METADATA_SIZE_OUT_OF_RANGE),
        (b"d8:msg_typei1e5:piecei1e10:total_sizei5eexxxxx", Violation.METADATA_PIECE_OUT_OF_RANGE),
        (b"d8:msg_typei1e5:piecei-1e10:total_sizei5eexxxxx", Violation.METADATA_PIECE_OUT_OF_RANGE),
        (b"d8:msg_typei1e5:piecei0e10:total_sizei5eexxxx", Violation.METADATA_WRONG_BLOCK_LENGTH),  # short last block
        (b"d8:msg_typei1e5:piecei0e10:total_sizei5eexxxxxx", Violation.METADATA_WRONG_BLOCK_LENGTH),  # long last block
        (b"d8:msg_typei1e5:piecei0e10:total_sizei40000ee" + b"x" * 100, Violation.METADATA_WRONG_BLOCK_LENGTH),  # short middle block
        (b"d8:msg_typei0e5:piecei0ee" + b"x" * MAX_METADATA_MESSAGE, Violation.METADATA_MESSAGE_TOO_LARGE),
    ],
)
def test_what_breaks_the_rules_is_refused(payload: bytes, rule: Violation) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_metadata_message(payload)
    assert info.value.reason is rule
    assert isinstance(info.value, RemoteProtocolError)


def test_we_never_send_what_bep_9_forbids() -> None:
    for bad in (
        MetadataRequest(-1),
        MetadataData(0, 5, b"xxxx"),
        MetadataData(1, 5, b"xxxxx"),
        MetadataData(0, 0, b""),
        MetadataData(0, 40000, b"x" * 100),
    ):
        with pytest.raises(LocalProtocolError):
            encode_metadata_message(bad)


def _decodes_or_refuses(payload: bytes) -> None:
    started = time.perf_counter()
    try:
        message = decode_metadata_message(payload)
    except RemoteProtocolError as exc:
        assert isinstance(exc, RemoteProtocolError)
    else:
        if isinstance(message, MetadataData):
            assert 0 < message.total_size <= MAX_METADATA_SIZE
            assert 0 <= message.piece < metadata_pieces(message.total_size)
            assert len(message.data) == metadata_block_length(message.total_size, message.piece)
        else:
            assert message is None or isinstance(message, (MetadataRequest, MetadataReject))
    assert time.perf_counter() - started < 0.5  # bounded work, whatever the bytes


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_the_decoder_takes_any_bytes_and_raises_only_the_wire_error(payload: bytes) -> None:
    _decodes_or_refuses(payload)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_the_decoder_takes_any_damage_to_a_real_message(message: MetadataMessage, data: st.DataObject) -> None:
    payload = encode_metadata_message(message)
    cut = data.draw(st.integers(0, len(payload)))
    flip = data.draw(st.integers(0, max(0, len(payload) - 1)))
    damaged = bytearray(payload[:cut] + payload[cut + 1 :])
    if damaged:
        damaged[flip % len(damaged)] ^= data.draw(st.integers(1, 255))
    _decodes_or_refuses(bytes(damaged))


def test_the_decoder_bounds_hostile_shapes() -> None:
    # Deep nesting, a huge declared string length, an endless integer: refused, fast.
    for payload in (
        b"d1:x" + b"l" * 8000 + b"e" * 8000 + b"e",
        b"d1:x99999999999:",
        b"d1:xi" + b"1" * 10000,
        b"d" + b"1:xi0e" * 2500 + b"e",
    ):
        _decodes_or_refuses(payload)


def test_advertised_metadata_size() -> None:
    assert advertised_metadata_size(ev.ExtensionHandshake(raw={b"metadata_size": 31235})) == 31235
    for raw in ({}, {b"metadata_size": 0}, {b"metadata_size": -1}, {b"metadata_size": b"12"}):
        assert advertised_metadata_size(ev.ExtensionHandshake(raw=raw)) is None
    assert advertised_metadata_size(ev.ExtensionHandshake(raw={b"metadata_size": MAX_METADATA_SIZE + 1})) is None


# -- the assembler ------------------------------------------------------------------------------


def _metadata(size: int, seed: int = 0) -> tuple[bytes, bytes]:
    data = random.Random(seed).randbytes(size)
    return data, hashlib.sha1(data).digest()


def _block(metadata: bytes, piece: int) -> MetadataData:
    start = piece * METADATA_BLOCK
    return MetadataData(piece, len(metadata), metadata[start : start + METADATA_BLOCK])


def test_pieces_are_asked_in_order_two_at_a_peer() -> None:
    metadata, info_hash = _metadata(5 * METADATA_BLOCK + 7)
    asm = MetadataAssembler(info_hash, len(metadata))
    assert asm.num_pieces == 6
    for peer in "abc":
        assert asm.add_peer(peer, len(metadata))
    assert asm.next_requests("a") == [0, 1]
    assert asm.next_requests("a") == []  # two outstanding already
    assert asm.next_requests("b") == [2, 3]
    assert asm.next_requests("c") == [4, 5]
    assert asm.outstanding("a") == {0, 1}
    assert asm.on_data("a", _block(metadata, 1)) is None
    assert asm.next_requests("a") == []  # nothing left that nobody is asked for
    asm.on_reject("b", 2)
    assert asm.paused("b") and asm.next_requests("b") == []  # b rejected: not asked until resumed
    assert asm.outstanding("b") == {3}  # what it was asked besides stays asked
    assert asm.next_requests("a") == [2]
    asm.on_timeout("c", 5)
    assert asm.next_requests("b") == []
    asm.resume("b")
    assert asm.next_requests("b") == [5]
    assert asm.on_data("a", _block(metadata, 0)) is None
    asm.remove_peer("c")  # 4 goes back
    assert asm.next_requests("a") == [4]
    assert asm.outstanding("a") == {2, 4}


@pytest.mark.parametrize("seed", range(20))
def test_random_arrival_across_peers_with_rejects_and_timeouts_completes(seed: int) -> None:
    rng = random.Random(seed)
    metadata, info_hash = _metadata(rng.randrange(1, 12 * METADATA_BLOCK), seed)
    asm = MetadataAssembler(info_hash, len(metadata))
    peers = [f"p{i}" for i in range(rng.randrange(1, 5))]
    for peer in peers:
        assert asm.add_peer(peer, rng.choice([len(metadata), None]))
    in_flight: list[tuple[str, int]] = []
    result = None
    for _ in range(10_000):
        for peer in peers:
            in_flight += [(peer, piece) for piece in asm.next_requests(peer)]
            assert len(asm.outstanding(peer)) <= MAX_OUTSTANDING_PER_PEER
        assert in_flight, "stalled"
        peer, piece = in_flight.pop(rng.randrange(len(in_flight)))
        fate = rng.random()
        if fate < 0.1:
            asm.on_reject(peer, piece)
            assert asm.paused(peer)
            asm.resume(peer)  # as the engine does after a while
        elif fate < 0.2:
            asm.on_timeout(peer, piece)
            if rng.random() < 0.5:
                assert asm.on_data(peer, _block(metadata, piece)) is None  # a late answer is ignored
        else:
            result = asm.on_data(peer, _block(metadata, piece))
            if result is not None:
                break
    assert result == MetadataVerified(metadata)
    assert asm.done and asm.next_requests(peers[0]) == []


def test_a_wrong_block_fails_the_check_names_its_sender_and_a_redo_succeeds() -> None:
    metadata, info_hash = _metadata(3 * METADATA_BLOCK + 100)
    asm = MetadataAssembler(info_hash, len(metadata))
    asm.add_peer("honest", len(metadata))
    asm.add_peer("liar", len(metadata))
    assert asm.next_requests("honest") == [0, 1]
    assert asm.next_requests("liar") == [2, 3]
    for piece in (0, 1):
        assert asm.on_data("honest", _block(metadata, piece)) is None
    forged = _block(metadata, 2)
    assert asm.on_data("liar", MetadataData(2, forged.total_size, bytes(len(forged.data)))) is None
    failed = asm.on_data("liar", _block(metadata, 3))
    assert isinstance(failed, MetadataFailed)
    assert failed.senders == {"honest": (0, 1), "liar": (2, 3)}
    # Started over: nothing received, nothing outstanding.
    assert asm.num_received == 0 and not asm.done
    assert asm.outstanding("honest") == frozenset() and asm.outstanding("liar") == frozenset()
    # The engine drops the liar; the redo from the honest peer passes.
    asm.remove_peer("liar")
    result = None
    while result is None:
        pieces = asm.next_requests("honest")
        assert pieces
        for piece in pieces:
            result = asm.on_data("honest", _block(metadata, piece))
    assert result == MetadataVerified(metadata)


def test_a_single_piece_lie_names_the_one_sender() -> None:
    metadata, info_hash = _metadata(100)
    asm = MetadataAssembler(info_hash, 100)
    asm.add_peer(1, 100)
    assert asm.next_requests(1) == [0]
    assert asm.on_data(1, MetadataData(0, 100, b"y" * 100)) == MetadataFailed({1: (0,)})


def test_bad_blocks_are_refused_and_unasked_ones_ignored() -> None:
    metadata, info_hash = _metadata(2 * METADATA_BLOCK + 10)
    asm = MetadataAssembler(info_hash, len(metadata))
    asm.add_peer("p", None)
    assert asm.next_requests("p") == [0, 1]
    # Not asked of this peer, or by a peer we never took: ignored.
    assert asm.on_data("p", _block(metadata, 2)) is None
    assert asm.on_data("stranger", _block(metadata, 0)) is None
    assert asm.num_received == 0
    # Another total_size than ours (a peer that advertised none), or a block of the wrong length.
    with pytest.raises(RemoteProtocolError) as info:
        asm.on_data("p", MetadataData(0, METADATA_BLOCK, metadata[:METADATA_BLOCK]))
    assert info.value.reason is Violation.METADATA_SIZE_MISMATCH
    with pytest.raises(RemoteProtocolError) as info:
        asm.on_data("p", MetadataData(1, len(metadata), metadata[:100]))
    assert info.value.reason is Violation.METADATA_WRONG_BLOCK_LENGTH
    with pytest.raises(RemoteProtocolError) as info:
        asm.on_data("p", MetadataData(0, len(metadata), metadata[: METADATA_BLOCK + 1]))
    assert info.value.reason is Violation.METADATA_WRONG_BLOCK_LENGTH
    # A reject for what was never asked is ignored too.
    asm.on_reject("p", 2)
    asm.on_reject("q", 0)
    assert asm.outstanding("p") == {0, 1}


def test_sizes_out_of_range_are_refused_and_other_sizes_not_asked() -> None:
    info_hash = bytes(20)
    for size in (0, -1, MAX_METADATA_SIZE + 1):
        with pytest.raises(RemoteProtocolError) as info:
            MetadataAssembler(info_hash, size)
        assert info.value.reason is Violation.METADATA_SIZE_OUT_OF_RANGE
    asm = MetadataAssembler(info_hash, MAX_METADATA_SIZE)  # the cap itself is fine, and costs no memory up front
    assert asm.num_pieces == MAX_METADATA_SIZE // METADATA_BLOCK
    assert not asm.add_peer("other", MAX_METADATA_SIZE - 1)
    assert asm.next_requests("other") == []
    with pytest.raises(ValueError):
        MetadataAssembler(bytes(19), 100)


# -- the server ---------------------------------------------------------------------------------


def test_the_server_answers_and_rejects_out_of_range() -> None:
    metadata, _ = _metadata(2 * METADATA_BLOCK + 1)
    server = MetadataServer(metadata)
    assert server.num_pieces == 3
    assert server.answer("p", MetadataRequest(0)) == _block(metadata, 0)
    assert server.answer("p", MetadataRequest(2)) == MetadataData(2, len(metadata), metadata[-1:])
    for piece in (-1, 3, 2**40):
        assert server.answer("p", MetadataRequest(piece)) == MetadataReject(piece)
    # What it answers encodes (so it is within BEP 9's rules).
    encode_metadata_message(server.answer("q", MetadataRequest(1)))


def test_the_server_bounds_answers_not_yet_written_and_answers_in_all() -> None:
    metadata, _ = _metadata(3 * METADATA_BLOCK)
    server = MetadataServer(metadata)
    answers = [server.answer("p", MetadataRequest(i % 3)) for i in range(MAX_QUEUED_ANSWERS + 1)]
    assert all(isinstance(a, MetadataData) for a in answers[:-1])
    assert answers[-1] == MetadataReject(MAX_QUEUED_ANSWERS % 3)
    assert isinstance(server.answer("other", MetadataRequest(0)), MetadataData)  # per peer
    served = MAX_QUEUED_ANSWERS
    while True:
        server.written("p")
        answer = server.answer("p", MetadataRequest(0))
        if isinstance(answer, MetadataReject):
            break
        served += 1
    assert served == SERVES_PER_PIECE * 3
    server.forget("p")  # a new connection starts afresh
    assert isinstance(server.answer("p", MetadataRequest(0)), MetadataData)
    with pytest.raises(ValueError):
        MetadataServer(b"")


# -- end to end ---------------------------------------------------------------------------------


def test_our_server_feeding_our_assembler_reproduces_a_real_info_dict(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    rng = random.Random(7)
    # Enough files that the info dictionary spans several metadata pieces.
    for i in range(900):
        (root / f"file-{i:04d}-{'n' * 40}.bin").write_bytes(rng.randbytes(rng.randrange(1, 64)))
    meta = create_torrent(root, piece_length=16384)
    assert metadata_pieces(len(meta.info_bytes)) >= 3
    server = MetadataServer(meta.info_bytes)
    handshake = ev.ExtensionHandshake(m={"ut_metadata": 3}, raw={b"metadata_size": server.metadata_size})
    asm = MetadataAssembler(meta.info_hash, server.metadata_size)
    assert asm.add_peer("seeder", advertised_metadata_size(handshake))
    result = None
    while result is None:
        requests = asm.next_requests("seeder")
        assert requests
        for piece in requests:
            # Through the codec both ways, as over the wire.
            request = decode_metadata_message(encode_metadata_message(MetadataRequest(piece)))
            assert isinstance(request, MetadataRequest)
            answer = decode_metadata_message(encode_metadata_message(server.answer("leecher", request)))
            assert isinstance(answer, MetadataData)
            server.written("leecher")
            result = asm.on_data("seeder", answer)
    assert isinstance(result, MetadataVerified)
    assert result.metadata == meta.info_bytes
    assert hashlib.sha1(result.metadata).digest() == meta.info_hash
    assert isinstance(decode(result.metadata), dict)
