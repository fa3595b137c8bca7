"""Property tests of the bencoding wrapper: round trips, value spans, strictness, hostile input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyowtorrent.metainfo.bencoding import MAX_DEPTH, MAX_TOKENS, Bencached, decode, decode_dict_with_spans, encode
from pyowtorrent.errors import BencodeError

import libtorrent as lt  # noqa: E402  (test-only reference implementation)

# Integers up to 20 digits: libtorrent (and so we) refuse longer ones.
_leaves = st.one_of(st.binary(max_size=40), st.integers(-(10**20) + 1, 10**20 - 1), st.integers(-(2**64), 2**64))
VALUES = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.binary(max_size=8), children, max_size=5),
    ),
    max_leaves=30,
)
DICTS = st.dictionaries(st.binary(max_size=8), VALUES, max_size=8)


def _raw_dict(items: list[tuple[bytes, Any]]) -> bytes:
    """A bencoded dict with the keys in the given order (not necessarily sorted)."""
    return b"d" + b"".join(encode(k) + encode(v) for k, v in items) + b"e"


# ---------------------------------------------------------------------------
# Round trips


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_decode_encode_round_trip(value: Any) -> None:
    data = encode(value)
    assert decode(data) == value
    # Our encoding is canonical: re-encoding the decoded value gives the same bytes.
    assert encode(decode(data)) == data


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_encoding_is_canonical_bencoding(value: Any) -> None:
    data = encode(value)
    # libtorrent reads what we write, to the same value (its ints are 64-bit).
    if _fits_int64(value):
        assert lt.bencode(lt.bdecode(data)) == data


def _fits_int64(value: Any) -> bool:
    if type(value) is int:
        # libtorrent reads the digits as a positive number before the sign, so it
        # cannot read -2**63 (it gives 0): its range is symmetric.
        return -(2**63) < value < 2**63
    if isinstance(value, list):
        return all(_fits_int64(v) for v in value)
    if isinstance(value, dict):
        return all(_fits_int64(v) for v in value.values())
    return True


def test_encode_rejects_what_bencoding_cannot_hold() -> None:
    for bad in (1.5, None, object(), {1: b"x"}, [b"a", 2.0]):
        with pytest.raises(BencodeError):
            encode(bad)


def test_bencached_is_written_verbatim() -> None:
    assert encode({b"info": Bencached(b"d1:ai1ee"), b"a": 1}) == b"d1:ai1e4:infod1:ai1eee"


# ---------------------------------------------------------------------------
# Spans


@settings(max_examples=250, deadline=None)
@given(DICTS, st.randoms(use_true_random=False), st.binary(max_size=8))
def test_spans_slice_out_each_value(d: dict[bytes, Any], rnd: Any, trailing: bytes) -> None:
    items = list(d.items())
    rnd.shuffle(items)  # spans must not rely on sorted keys
    data = _raw_dict(items) + trailing
    result, spans = decode_dict_with_spans(data)
    assert result == d
    assert list(result) == [k for k, _ in items]  # input order is kept
    assert set(spans) == set(d)
    for key, value in d.items():
        start, end = spans[key]
        assert data[start:end] == encode(value)
        assert decode(data[start:end]) == value


@settings(max_examples=150, deadline=None)
@given(DICTS)
def test_spans_of_canonical_encoding(d: dict[bytes, Any]) -> None:
    data = encode(d)
    result, spans = decode_dict_with_spans(data)
    assert result == d
    previous_end = 1
    for key in sorted(d):
        start, end = spans[key]
        # Keys are back to back: each value starts right after its key.
        assert data[previous_end:start] == encode(key)
        previous_end = end
    assert data[previous_end:] == b"e"


def test_spans_keep_unsorted_info_bytes() -> None:
    info = b"d4:name1:x6:lengthi1ee"  # keys out of order: re-encoding would change the bytes
    data = b"d4:info" + info + b"1:ai1ee\n"
    result, spans = decode_dict_with_spans(data)
    start, end = spans[b"info"]
    assert data[start:end] == info
    assert encode(result[b"info"]) != info


@pytest.mark.parametrize("data", [b"", b"l", b"le", b"i1e", b"1:a", b"x", b"d", b"di1ei2ee", b"d1:a", b"d1:ai1e", b"d1:a5:abce"])
def test_spans_reject_non_dicts_and_bad_dicts(data: bytes) -> None:
    with pytest.raises(BencodeError):
        decode_dict_with_spans(data)


def test_repeated_key_keeps_first_value_like_libtorrent() -> None:
    data = b"d1:ai1e1:ai2e1:bd1:xi1e1:xi2eee"
    try:
        result, spans = decode_dict_with_spans(data)
    except BencodeError:
        return  # refusing repeated keys outright would do too
    assert result[b"a"] == 1
    assert data[spans[b"a"][0] : spans[b"a"][1]] == b"i1e"
    assert result[b"b"] == {b"x": 1}


# ---------------------------------------------------------------------------
# Hostile input


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_bencode_error(data: bytes) -> None:
    for func in (decode, decode_dict_with_spans):
        try:
            func(data)
        except BencodeError:
            pass


_PIECES = [b"i", b"e", b"l", b"d", b"0", b"1", b"2", b"9", b":", b"-", b"i-0e", b"i0e", b"0:", b"1:a", b"3:", b"le", b"de", b" ", b"+", b"_", b"\xff"]
ALMOST_BENCODE = st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ALMOST_BENCODE)
def test_near_bencoding_only_raises_bencode_error(data: bytes) -> None:
    for func in (decode, decode_dict_with_spans):
        try:
            func(data)
        except BencodeError:
            pass


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ALMOST_BENCODE)
def test_what_we_accept_libtorrent_accepts_too(data: bytes) -> None:
    """We are stricter than libtorrent (leading zeros), never laxer."""
    try:
        value = decode(data)
    except BencodeError:
        return
    theirs = lt.bdecode(data)
    if _fits_int64(value):
        assert theirs == value


@settings(max_examples=300, deadline=None)
@given(VALUES, st.data())
def test_mutated_encodings_only_raise_bencode_error(value: Any, data: st.DataObject) -> None:
    raw = bytearray(encode(value))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, len(raw)))
        if op == "flip" and pos < len(raw):
            raw[pos] = data.draw(st.sampled_from(list(b"iedl0123456789:-x ")))
        elif op == "insert":
            raw[pos:pos] = data.draw(st.sampled_from([b"i", b"e", b"l", b"d", b"1", b":", b"-", b"0"]))
        elif op == "delete":
            del raw[pos : pos + 1]
        else:
            del raw[pos:]
    try:
        decode(bytes(raw))
    except BencodeError:
        pass


# ---------------------------------------------------------------------------
# Strictness, one rule at a time


@pytest.mark.parametrize(
    "data",
    [
        b"i01e",  # leading zero
        b"i00e",
        b"i-01e",
        b"i-0e",  # negative zero
        b"i e",
        b"i 1e",  # spaces int() would take
        b"i1 e",
        b"i+1e",
        b"i1_0e",
        b"ie",
        b"i-e",
        b"i--1e",
        b"i1",
        "i\u0663e".encode(),  # a non-ASCII digit
        b"01:a",  # leading zero in a length
        b"00:",
        b"1_0:aaaaaaaaaa",
        b" 1:a",
        b"+1:a",
        b"-1:a",
        b"1 :a",
        b"5:abc",  # truncated strings
        b"1:",
        b"l5:abce",
        b"d1:a5:abce",
        b"l",  # unterminated containers
        b"d",
        b"li1e",
        b"d1:ai1e",
        b"di1ei1ee",  # a non-string key
        b"dlei1ee",
        b"e",
        b"",
        b"i1ei2e",  # trailing data
        b"le ",
        b"x",
    ],
)
def test_strictness(data: bytes) -> None:
    with pytest.raises(BencodeError):
        decode(data)


@pytest.mark.parametrize(
    "data, value",
    [
        (b"i0e", 0),
        (b"i-1e", -1),
        (b"i12345678901234567890e", 12345678901234567890),  # 20 digits: the most libtorrent reads
        (b"i-12345678901234567890e", -12345678901234567890),
        (b"0:", b""),
        (b"3:a:b", b"a:b"),
        (b"le", []),
        (b"de", {}),
        (b"d0:0:e", {b"": b""}),
        (b"d1:bi1e1:ai2ee", {b"b": 1, b"a": 2}),  # unsorted keys are read
    ],
)
def test_valid_edge_cases(data: bytes, value: Any) -> None:
    assert decode(data) == value


def _nested(n: int) -> bytes:
    return b"l" * n + b"e" * n


def test_nesting_limit() -> None:
    decode(_nested(50))
    decode(_nested(99))
    lt.bdecode(_nested(99))  # libtorrent's deepest
    for n in (MAX_DEPTH, MAX_DEPTH + 2, 1000, 100_000):
        with pytest.raises(BencodeError, match="nesting"):
            decode(_nested(n))
    deep_dict = b"d1:a" * 1000 + b"i1e" + b"e" * 1000
    with pytest.raises(BencodeError, match="nesting"):
        decode(deep_dict)
    with pytest.raises(BencodeError):
        decode_dict_with_spans(b"d1:a" + _nested(5000) + b"e")


@pytest.mark.parametrize("n", [100, 101])
def test_nesting_limit_like_libtorrent(n: int) -> None:
    try:
        lt.bdecode(_nested(n))
        lt_ok = True
    except RuntimeError:
        lt_ok = False
    try:
        decode(_nested(n))
        ours_ok = True
    except BencodeError:
        ours_ok = False
    assert ours_ok == lt_ok


def test_token_limit() -> None:
    # The real limit: a list of empty lists is the cheapest way to spend
    # values, two bytes each.
    with pytest.raises(BencodeError, match="values"):
        decode(b"l" + b"le" * MAX_TOKENS + b"e")


@pytest.fixture
def small_budget(monkeypatch: pytest.MonkeyPatch) -> int:
    """The token limit lowered to 1000 (the decoder takes it as a default argument)."""
    from pyowtorrent.metainfo import bencoding

    monkeypatch.setattr(bencoding._Decoder.__init__, "__defaults__", (1000,))
    return 1000


def test_token_limit_boundary(small_budget: int) -> None:
    # As in libtorrent, a list or dict counts two tokens (its start and its end).
    fits = (small_budget - 2) // 2
    decode(b"l" + b"le" * fits + b"e")
    with pytest.raises(BencodeError, match="values"):
        decode(b"l" + b"le" * (fits + 1) + b"e")
    decode(b"l" + b"i0e" * (small_budget - 2) + b"e")
    with pytest.raises(BencodeError, match="values"):
        decode(b"l" + b"0:" * (small_budget - 1) + b"e")
    # decode_dict_with_spans counts the top-level dict, its keys and values too.
    decode_dict_with_spans(b"d1:al" + b"i0e" * (small_budget - 5) + b"ee")
    with pytest.raises(BencodeError, match="values"):
        decode_dict_with_spans(b"d1:al" + b"i0e" * (small_budget - 4) + b"ee")
    with pytest.raises(BencodeError, match="values"):
        decode_dict_with_spans(b"d" + b"0:i0e" * small_budget + b"e")
