"""The tracker codecs, sans I/O: compact peers, HTTP announce/scrape (BEP 3, 7, 23, 48), UDP (BEP 15)."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pyowtorrent.metainfo.bencoding import encode
from pyowtorrent.errors import TrackerError
from pyowtorrent.tracker.http_codec import (
    DEFAULT_INTERVAL,
    INTERVAL_CEILING,
    INTERVAL_FLOOR,
    MAX_MESSAGE_CHARS,
    MAX_RESPONSE_BYTES,
    MAX_TRACKER_ID_BYTES,
    AnnounceRequest,
    AnnounceResponse,
    ScrapeResult,
    TrackerFailure,
    announce_url,
    parse_announce_response,
    parse_scrape_response,
    scrape_request_url,
    scrape_url,
)
from pyowtorrent.tracker.peers import (
    encode_compact_peers,
    encode_compact_peers6,
    parse_compact_peers,
    parse_compact_peers6,
)
from pyowtorrent.tracker.udp_codec import (
    ACTION_ANNOUNCE,
    ACTION_CONNECT,
    ACTION_ERROR,
    ACTION_SCRAPE,
    CONNECTION_ID_LIFETIME,
    MAX_SCRAPE_HASHES,
    PROTOCOL_ID,
    ConnectResponse,
    ScrapeResponse,
    StrayPacket,
    decode_announce,
    decode_connect,
    decode_response,
    decode_scrape,
    encode_announce,
    encode_connect,
    encode_scrape,
    retransmit_timeout,
)

INFO_HASH = bytes(range(20))
PEER_ID = b"-PO0001-" + bytes(range(0xF4, 0x100))
TID = 0x12345678
CID = 0x0123456789ABCDEF


def request(**changes: Any) -> AnnounceRequest:
    fields: dict[str, Any] = dict(info_hash=INFO_HASH, peer_id=PEER_ID, port=6881, uploaded=1, downloaded=2, left=3)
    fields.update(changes)
    return AnnounceRequest(**fields)


def query_of(url: str) -> dict[str, list[str]]:
    """The query of ``url`` as a server decodes it: percent-escapes to bytes, each byte one latin-1 character."""
    return parse_qs(urlsplit(url).query, keep_blank_values=True, strict_parsing=True, encoding="latin-1")


def as_bytes(value: str) -> bytes:
    return value.encode("latin-1")


def _reachable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address a compact list can carry back unchanged (the parsers drop or unmap the rest)."""
    if isinstance(address, ipaddress.IPv6Address) and (address.ipv4_mapped is not None or address.scope_id):
        return False
    return not address.is_unspecified


_ipv4 = st.ip_addresses(v=4).filter(_reachable).map(str)
_ipv6 = st.ip_addresses(v=6).filter(_reachable).map(str)
_port = st.integers(1, 65535)


# ---------------------------------------------------------------------------
# Compact peers (BEP 23, BEP 7)


def test_compact_ipv4_peers_are_6_bytes_each_big_endian() -> None:
    data = bytes([10, 0, 0, 1, 0x1A, 0xE1, 192, 168, 1, 2, 0x00, 0x50])
    assert parse_compact_peers(data) == [("10.0.0.1", 6881), ("192.168.1.2", 80)]


def test_compact_ipv6_peers_are_18_bytes_each_compressed_text() -> None:
    data = ipaddress.IPv6Address("2001:db8::1").packed + b"\x1a\xe1"
    assert parse_compact_peers6(data) == [("2001:db8::1", 6881)]


def test_compact_ipv6_mapped_ipv4_address_comes_back_as_ipv4() -> None:
    data = ipaddress.IPv6Address("::ffff:1.2.3.4").packed + b"\x00\x50"
    assert parse_compact_peers6(data) == [("1.2.3.4", 80)]


def test_empty_compact_lists_have_no_peers() -> None:
    assert parse_compact_peers(b"") == []
    assert parse_compact_peers6(b"") == []


@pytest.mark.parametrize("length", [1, 5, 7, 11, 13])
def test_truncated_compact_ipv4_list_is_an_error_naming_its_length(length: int) -> None:
    with pytest.raises(TrackerError, match=f"{length} bytes long, not a multiple of 6"):
        parse_compact_peers(bytes([1]) * length)


@pytest.mark.parametrize("length", [1, 6, 17, 19, 35])
def test_truncated_compact_ipv6_list_is_an_error_naming_its_length(length: int) -> None:
    with pytest.raises(TrackerError, match=f"{length} bytes long, not a multiple of 18"):
        parse_compact_peers6(bytes([1]) * length)


def test_compact_entries_with_port_0_or_the_unspecified_address_are_dropped() -> None:
    data = bytes([1, 2, 3, 4, 0, 0]) + bytes([0, 0, 0, 0, 0, 80]) + bytes([5, 6, 7, 8, 0, 81])
    assert parse_compact_peers(data) == [("5.6.7.8", 81)]
    data6 = bytes(16) + b"\x00\x50" + ipaddress.IPv6Address("::1").packed + b"\x00\x00"
    assert parse_compact_peers6(data6) == []


def test_compact_list_is_cut_at_max_peers() -> None:
    data = encode_compact_peers([("1.1.1.1", p) for p in range(1, 101)])
    assert parse_compact_peers(data, max_peers=7) == [("1.1.1.1", p) for p in range(1, 8)]
    assert parse_compact_peers(data, max_peers=0) == []


def test_compact_length_is_checked_even_past_max_peers() -> None:
    with pytest.raises(TrackerError):
        parse_compact_peers(bytes(6 * 10 + 1), max_peers=1)


def test_compact_parsers_accept_memoryview_and_bytearray() -> None:
    data = bytes([1, 2, 3, 4, 0, 1])
    assert parse_compact_peers(memoryview(data)) == parse_compact_peers(bytearray(data)) == [("1.2.3.4", 1)]


def test_compact_parser_refuses_a_non_bytes_value_as_tracker_error() -> None:
    with pytest.raises(TrackerError, match="not a byte string"):
        parse_compact_peers([1, 2, 3, 4, 5, 6])  # type: ignore[arg-type]


@given(st.lists(st.tuples(_ipv4, _port), max_size=50))
def test_compact_ipv4_round_trip(peers: list[tuple[str, int]]) -> None:
    data = encode_compact_peers(peers)
    assert len(data) == 6 * len(peers)
    assert parse_compact_peers(data) == peers


@given(st.lists(st.tuples(_ipv6, _port), max_size=30))
def test_compact_ipv6_round_trip(peers: list[tuple[str, int]]) -> None:
    data = encode_compact_peers6(peers)
    assert len(data) == 18 * len(peers)
    assert parse_compact_peers6(data) == [(str(ipaddress.IPv6Address(h)), p) for h, p in peers]


@pytest.mark.parametrize(
    "encoder, peer",
    [
        (encode_compact_peers, ("::1", 80)),
        (encode_compact_peers, ("example.com", 80)),
        (encode_compact_peers, ("1.2.3.4", 0)),
        (encode_compact_peers, ("1.2.3.4", 65536)),
        (encode_compact_peers6, ("1.2.3.4", 80)),
        (encode_compact_peers6, ("::1", -1)),
    ],
)
def test_encoding_a_bad_address_or_port_is_a_value_error(encoder: Any, peer: tuple[str, int]) -> None:
    with pytest.raises(ValueError):
        encoder([peer])


# ---------------------------------------------------------------------------
# Announce URL (BEP 3)


def test_announce_url_carries_every_field_of_the_request() -> None:
    url = announce_url(
        "http://tracker.example/announce",
        request(event="started", numwant=50, key=0xDEADBEEF, trackerid=b"t\x00id", ip="10.1.2.3"),
    )
    q = query_of(url)
    assert as_bytes(q["info_hash"][0]) == INFO_HASH
    assert as_bytes(q["peer_id"][0]) == PEER_ID
    assert q["port"] == ["6881"] and q["uploaded"] == ["1"] and q["downloaded"] == ["2"] and q["left"] == ["3"]
    assert q["compact"] == ["1"]
    assert q["event"] == ["started"]
    assert q["numwant"] == ["50"]
    assert q["key"] == ["DEADBEEF"]
    assert as_bytes(q["trackerid"][0]) == b"t\x00id"
    assert q["ip"] == ["10.1.2.3"]
    assert url.startswith("http://tracker.example/announce?info_hash=")


def test_announce_url_leaves_out_optional_fields_that_are_none() -> None:
    q = query_of(announce_url("http://t/announce", request(compact=False)))
    assert set(q) == {"info_hash", "peer_id", "port", "uploaded", "downloaded", "left", "compact"}
    assert q["compact"] == ["0"]


def test_percent_encoding_of_all_256_byte_values_round_trips() -> None:
    every_byte = bytes(range(256))
    for start in range(0, 256, 20):
        chunk = (every_byte[start : start + 20] * 2)[:20]
        url = announce_url("http://t/announce", request(info_hash=chunk, peer_id=chunk[::-1]))
        raw = urlsplit(url).query
        value = raw.split("info_hash=")[1].split("&")[0]
        assert unquote_to_bytes(value) == chunk
        q = query_of(url)
        assert as_bytes(q["info_hash"][0]) == chunk
        assert as_bytes(q["peer_id"][0]) == chunk[::-1]


def test_percent_encoding_leaves_only_unreserved_characters_bare() -> None:
    unreserved = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    for byte in range(256):
        info_hash = bytes([byte]) * 20
        q = urlsplit(announce_url("http://t/announce", request(info_hash=info_hash))).query
        encoded = q.split("info_hash=")[1].split("&")[0]
        expected = chr(byte) if byte in unreserved else f"%{byte:02X}"
        assert encoded == expected * 20, byte


@given(st.binary(min_size=20, max_size=20), st.binary(min_size=20, max_size=20))
def test_percent_encoded_hashes_round_trip_for_any_bytes(info_hash: bytes, peer_id: bytes) -> None:
    q = query_of(announce_url("http://t/announce", request(info_hash=info_hash, peer_id=peer_id)))
    assert as_bytes(q["info_hash"][0]) == info_hash
    assert as_bytes(q["peer_id"][0]) == peer_id


def test_announce_url_keeps_an_existing_query_and_appends_with_ampersand() -> None:
    url = announce_url("http://t/announce.php?passkey=abc%2F1&x=", request())
    assert url.startswith("http://t/announce.php?passkey=abc%2F1&x=&info_hash=")
    q = query_of(url)
    assert q["passkey"] == ["abc/1"] and q["x"] == [""]
    assert as_bytes(q["info_hash"][0]) == INFO_HASH


@pytest.mark.parametrize("base", ["http://t/announce?", "http://t/announce?a=1&"])
def test_announce_url_adds_no_empty_parameter_after_a_trailing_separator(base: str) -> None:
    url = announce_url(base, request())
    assert url.startswith(base + "info_hash=")


def test_announce_url_drops_a_fragment_so_the_parameters_reach_the_server() -> None:
    url = announce_url("http://t/announce?a=1#frag", request())
    assert "#" not in url
    assert url.startswith("http://t/announce?a=1&info_hash=")


@pytest.mark.parametrize(
    "changes",
    [
        dict(info_hash=b"short"),
        dict(peer_id=b"x" * 21),
        dict(port=65536),
        dict(port=-1),
        dict(uploaded=-1),
        dict(left=1 << 63),
        dict(event="paused"),
        dict(numwant=-1),
        dict(key=1 << 32),
        dict(trackerid="text"),
        dict(ip=""),
    ],
)
def test_a_bad_announce_request_is_a_value_error(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        request(**changes)


# ---------------------------------------------------------------------------
# Announce response (BEP 3, 7, 23)


def body(**fields: Any) -> bytes:
    return encode({k.replace("_", " ").encode(): v for k, v in fields.items()})


def test_compact_response_fields_are_read() -> None:
    data = body(
        interval=900,
        min_interval=60,
        tracker_id=b"tid\xff",
        complete=5,
        incomplete=7,
        peers=encode_compact_peers([("1.2.3.4", 6881), ("5.6.7.8", 6882)]),
    )
    assert parse_announce_response(data) == AnnounceResponse(
        interval=900,
        peers=[("1.2.3.4", 6881), ("5.6.7.8", 6882)],
        min_interval=60,
        complete=5,
        incomplete=7,
        tracker_id=b"tid\xff",
        warning_message=None,
    )


def test_dictionary_model_peers_are_read_with_or_without_peer_id() -> None:
    data = body(
        interval=1800,
        peers=[
            {b"peer id": b"A" * 20, b"ip": b"10.0.0.1", b"port": 1},
            {b"ip": b"2001:DB8::2", b"port": 2},
            {b"ip": b"Peer.Example.ORG", b"port": 3},
        ],
    )
    assert parse_announce_response(data).peers == [("10.0.0.1", 1), ("2001:db8::2", 2), ("peer.example.org", 3)]


def test_dictionary_model_skips_unusable_entries_like_libtorrent() -> None:
    data = body(
        interval=1800,
        peers=[
            b"not a dict",
            {b"ip": 5, b"port": 1},
            {b"ip": b"1.2.3.4"},
            {b"ip": b"1.2.3.4", b"port": 70000},
            {b"ip": b"bad host!", b"port": 1},
            {b"ip": b"fe80::1%eth0", b"port": 1},
            {b"ip": b"\xff\xfe", b"port": 1},
            {b"ip": b"1.2.3.4", b"port": 0},
            {b"ip": b"0.0.0.0", b"port": 9},
            {b"ip": b"9.9.9.9", b"port": 9},
        ],
    )
    assert parse_announce_response(data).peers == [("9.9.9.9", 9)]


def test_dictionary_model_with_no_usable_entry_is_an_error() -> None:
    with pytest.raises(TrackerError, match="none of the 2 entries of 'peers'"):
        parse_announce_response(body(interval=1800, peers=[1, {b"ip": b"1.2.3.4"}]))


def test_ipv6_peers_from_peers6_are_merged_after_peers() -> None:
    data = body(
        interval=1800,
        peers=encode_compact_peers([("1.2.3.4", 1)]),
        peers6=encode_compact_peers6([("::1", 2), ("2001:db8::5", 3)]),
    )
    assert parse_announce_response(data).peers == [("1.2.3.4", 1), ("::1", 2), ("2001:db8::5", 3)]


def test_bep7_example_response_parses() -> None:
    data = b"d8:intervali1800e5:peers6:iiiipp6:peers618:iiiiiiiiiiiiiiiippe"
    response = parse_announce_response(data)
    assert response.interval == 1800
    assert response.peers == [("105.105.105.105", 0x7070), ("6969:6969:6969:6969:6969:6969:6969:6969", 0x7070)]


def test_failure_reason_is_a_tracker_failure_carrying_the_message() -> None:
    with pytest.raises(TrackerFailure, match="torrent not registered") as info:
        parse_announce_response(body(failure_reason=b"torrent not registered", interval=5))
    assert info.value.reason == "torrent not registered"
    assert isinstance(info.value, TrackerError)


def test_failure_reason_wins_over_malformed_other_keys() -> None:
    with pytest.raises(TrackerFailure, match="go away"):
        parse_announce_response(body(failure_reason=b"go away", peers=b"\x01"))


def test_failure_reason_of_the_wrong_type_is_an_error() -> None:
    with pytest.raises(TrackerError, match="'failure reason' is an integer"):
        parse_announce_response(body(failure_reason=3))


def test_tracker_text_is_made_safe_to_log() -> None:
    with pytest.raises(TrackerFailure) as info:
        parse_announce_response(body(failure_reason=b"line one\r\nline\x1b[31m two\xff" + b"x" * 2000))
    reason = info.value.reason
    assert reason.startswith("line one  line\ufffd[31m two\ufffdxxx")
    assert reason.endswith("…")
    assert len(reason) == MAX_MESSAGE_CHARS + 1
    assert all(c.isprintable() for c in reason)


def test_warning_message_is_returned_with_the_peers() -> None:
    data = body(interval=1800, peers=b"", warning_message=b"your client is old")
    response = parse_announce_response(data)
    assert response.warning_message == "your client is old"
    assert response.peers == []


def test_missing_interval_defaults_to_1800_seconds_like_libtorrent() -> None:
    assert DEFAULT_INTERVAL == 1800
    response = parse_announce_response(body(peers=b""))
    assert response.interval == 1800
    assert response.min_interval is None


def test_missing_peers_is_an_empty_list() -> None:
    assert parse_announce_response(body(interval=1800)).peers == []


@pytest.mark.parametrize(
    "given_interval, expected", [(0, INTERVAL_FLOOR), (-5, INTERVAL_FLOOR), (2**62, INTERVAL_CEILING), (600, 600)]
)
def test_absurd_intervals_are_clamped(given_interval: int, expected: int) -> None:
    response = parse_announce_response(body(interval=given_interval, min_interval=given_interval))
    assert response.interval == expected
    assert response.min_interval == expected


def test_an_overlong_tracker_id_is_ignored() -> None:
    assert parse_announce_response(body(tracker_id=b"i" * MAX_TRACKER_ID_BYTES)).tracker_id == b"i" * MAX_TRACKER_ID_BYTES
    assert parse_announce_response(body(tracker_id=b"i" * (MAX_TRACKER_ID_BYTES + 1))).tracker_id is None


def test_negative_counts_mean_unknown() -> None:
    response = parse_announce_response(body(interval=1800, complete=-1, incomplete=-1))
    assert response.complete is None and response.incomplete is None


@pytest.mark.parametrize(
    "fields, key",
    [
        (dict(interval=b"1800"), "interval"),
        (dict(min_interval=[1]), "min interval"),
        (dict(peers=5), "peers"),
        (dict(peers={b"a": 1}), "peers"),
        (dict(peers6=[]), "peers6"),
        (dict(complete=b"3"), "complete"),
        (dict(incomplete={}), "incomplete"),
        (dict(tracker_id=7), "tracker id"),
        (dict(warning_message=[b"x"]), "warning message"),
    ],
)
def test_a_key_of_the_wrong_type_is_an_error_naming_the_key(fields: dict[str, Any], key: str) -> None:
    with pytest.raises(TrackerError, match=f"'{key}' is an? "):
        parse_announce_response(body(**fields))


@pytest.mark.parametrize("key", ["peers", "peers6"])
def test_truncated_compact_list_in_a_response_is_an_error(key: str) -> None:
    with pytest.raises(TrackerError, match=f"'{key}'.* not a multiple of"):
        parse_announce_response(body(interval=1800, **{key: b"\x01" * 20}))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "not bencoded"),
        (b"<html>502 Bad Gateway</html>", "not bencoded"),
        (b"d8:intervali1800e", "not bencoded"),
        (b"d8:intervali1800eeXX", "not bencoded"),
        (b"li1ee", "a list, not a bencoded dictionary"),
        (b"4:spam", "a string, not a bencoded dictionary"),
    ],
)
def test_a_body_that_is_not_a_bencoded_dictionary_is_an_error(data: bytes, message: str) -> None:
    with pytest.raises(TrackerError, match=message):
        parse_announce_response(data)


def test_trailing_whitespace_after_the_dictionary_is_ignored() -> None:
    assert parse_announce_response(body(interval=900) + b"\r\n").interval == 900


def test_body_over_max_response_bytes_is_refused() -> None:
    data = body(interval=1800, peers=bytes(6) * (MAX_RESPONSE_BYTES // 6))
    assert len(data) > MAX_RESPONSE_BYTES
    with pytest.raises(TrackerError, match="more than the"):
        parse_announce_response(data)


def test_huge_compact_peer_list_is_truncated_to_max_peers() -> None:
    peers = [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1000 + i % 60000) for i in range(150_000)]
    data = body(interval=1800, peers=encode_compact_peers(peers))
    assert len(data) < MAX_RESPONSE_BYTES
    assert parse_announce_response(data).peers == peers[:1000]
    assert parse_announce_response(data, max_peers=10).peers == peers[:10]


def test_huge_dictionary_model_list_is_truncated_to_max_peers() -> None:
    entries = [{b"ip": b"10.0.0.1", b"port": 1 + i} for i in range(5000)]
    response = parse_announce_response(body(interval=1800, peers=entries), max_peers=50)
    assert response.peers == [("10.0.0.1", 1 + i) for i in range(50)]


def test_max_peers_bounds_peers_and_peers6_together() -> None:
    data = body(
        interval=1800,
        peers=encode_compact_peers([("1.1.1.1", p) for p in range(1, 4)]),
        peers6=encode_compact_peers6([("::2", p) for p in range(1, 4)]),
    )
    assert parse_announce_response(data, max_peers=5).peers == [("1.1.1.1", 1), ("1.1.1.1", 2), ("1.1.1.1", 3), ("::2", 1), ("::2", 2)]


# ---------------------------------------------------------------------------
# Scrape (BEP 48)


@pytest.mark.parametrize(
    "announce, expected",
    [
        ("http://example.com/announce", "http://example.com/scrape"),
        ("http://example.com/x/announce", "http://example.com/x/scrape"),
        ("http://example.com/announce?x2%0644", "http://example.com/scrape?x2%0644"),
        ("http://example.com/x/announce?x2%0644", "http://example.com/x/scrape?x2%0644"),
        ("http://example.com/announce.php", "http://example.com/scrape.php"),
        ("https://example.com:8443/a/b/announce?passkey=1/2", "https://example.com:8443/a/b/scrape?passkey=1/2"),
        ("http://example.com/a", None),
        ("http://example.com/announce?x=2/4", "http://example.com/scrape?x=2/4"),
        ("http://example.com/x%064announce", None),
        ("http://example.com/announce/x", None),
        ("http://example.com/Announce", None),
        ("http://example.com", None),
        ("http://announce", None),
        ("http://example.com/?/announce", None),
        ("udp://tracker.example:80/announce", None),
        ("not a url", None),
    ],
)
def test_scrape_url_follows_bep48(announce: str, expected: str | None) -> None:
    assert scrape_url(announce) == expected


def test_scrape_request_url_names_each_info_hash() -> None:
    other = bytes([0xFF] * 20)
    url = scrape_request_url("http://t/scrape?k=1", [INFO_HASH, other])
    q = query_of(url)
    assert q["k"] == ["1"]
    assert [as_bytes(v) for v in q["info_hash"]] == [INFO_HASH, other]
    with pytest.raises(ValueError):
        scrape_request_url("http://t/scrape", [])
    with pytest.raises(ValueError):
        scrape_request_url("http://t/scrape", [b"short"])


def test_scrape_response_bep48_example() -> None:
    # BEP 48's example with the two "e"s it lacks: as printed, neither the first
    # swarm's dictionary nor the top-level one is closed, so it is not bencoding.
    data = (
        b"d5:filesd20:xxxxxxxxxxxxxxxxxxxxd8:completei11e10:downloadedi13772e10:incompletei19ee"
        b"20:yyyyyyyyyyyyyyyyyyyyd8:completei21e10:downloadedi206e10:incompletei20eeee"
    )
    assert parse_scrape_response(data, b"x" * 20) == ScrapeResult(complete=11, incomplete=19, downloaded=13772)
    assert parse_scrape_response(data, b"y" * 20) == ScrapeResult(complete=21, incomplete=20, downloaded=206)


def test_scrape_response_missing_counts_are_none() -> None:
    data = encode({b"files": {INFO_HASH: {b"complete": 1}}})
    assert parse_scrape_response(data, INFO_HASH) == ScrapeResult(complete=1, incomplete=None, downloaded=None)


def test_scrape_response_without_our_info_hash_is_an_error_naming_it() -> None:
    data = encode({b"files": {b"z" * 20: {b"complete": 1}}})
    with pytest.raises(TrackerError, match=INFO_HASH.hex()):
        parse_scrape_response(data, INFO_HASH)


@pytest.mark.parametrize(
    "top, message",
    [
        ({}, "no 'files'"),
        ({b"files": []}, "'files' is a list"),
        ({b"files": {INFO_HASH: 5}}, "not a dictionary"),
        ({b"files": {INFO_HASH: {b"complete": b"1"}}}, "'complete' is a string"),
    ],
)
def test_malformed_scrape_response_is_an_error(top: dict[bytes, Any], message: str) -> None:
    with pytest.raises(TrackerError, match=message):
        parse_scrape_response(encode(top), INFO_HASH)


def test_scrape_failure_reason_is_a_tracker_failure() -> None:
    with pytest.raises(TrackerFailure, match="scrape disabled"):
        parse_scrape_response(body(failure_reason=b"scrape disabled"), INFO_HASH)


# ---------------------------------------------------------------------------
# UDP (BEP 15)


def test_udp_constants_are_bep15s() -> None:
    assert PROTOCOL_ID == 0x41727101980
    assert (ACTION_CONNECT, ACTION_ANNOUNCE, ACTION_SCRAPE, ACTION_ERROR) == (0, 1, 2, 3)
    assert CONNECTION_ID_LIFETIME == 60.0


def test_connect_request_layout() -> None:
    packet = encode_connect(TID)
    assert packet == struct.pack(">QII", 0x41727101980, 0, TID)
    assert len(packet) == 16


def test_connect_response_round_trip() -> None:
    packet = struct.pack(">IIQ", ACTION_CONNECT, TID, CID)
    assert decode_connect(packet, TID) == ConnectResponse(CID)
    assert decode_response(packet, TID, ACTION_CONNECT, ipv6=False) == ConnectResponse(CID)


@pytest.mark.parametrize(
    "event, code", [(None, 0), ("completed", 1), ("started", 2), ("stopped", 3)]
)
def test_announce_request_layout(event: Any, code: int) -> None:
    req = request(event=event, key=0xCAFEBABE, numwant=80, uploaded=1 << 40, downloaded=5, left=6)
    packet = encode_announce(CID, TID, req)
    assert len(packet) == 98
    fields = struct.unpack(">QII20s20sQQQIIIiH", packet)
    assert fields == (CID, 1, TID, INFO_HASH, PEER_ID, 5, 6, 1 << 40, code, 0, 0xCAFEBABE, 80, 6881)


def test_announce_request_defaults_num_want_minus_1_key_0_ip_0() -> None:
    fields = struct.unpack(">QII20s20sQQQIIIiH", encode_announce(CID, TID, request()))
    assert fields[9:12] == (0, 0, -1)


@pytest.mark.parametrize("ip, field", [("1.2.3.4", 0x01020304), ("2001:db8::1", 0), ("tracker.example", 0)])
def test_announce_request_ip_field_holds_an_ipv4_ip_only(ip: str, field: int) -> None:
    fields = struct.unpack(">QII20s20sQQQIIIiH", encode_announce(CID, TID, request(ip=ip)))
    assert fields[9] == field


def test_scrape_request_layout() -> None:
    hashes = [INFO_HASH, b"\xff" * 20]
    packet = encode_scrape(CID, TID, hashes)
    assert packet == struct.pack(">QII", CID, 2, TID) + b"".join(hashes)


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_connect(-1),
        lambda: encode_connect(1 << 32),
        lambda: encode_announce(1 << 64, TID, request()),
        lambda: encode_announce(CID, True, request()),
        lambda: encode_scrape(CID, TID, []),
        lambda: encode_scrape(CID, TID, [INFO_HASH] * (MAX_SCRAPE_HASHES + 1)),
        lambda: encode_scrape(CID, TID, [b"short"]),
        lambda: decode_response(b"", TID, ACTION_ERROR, ipv6=False),
        lambda: retransmit_timeout(-1),
    ],
)
def test_bad_arguments_to_the_udp_codec_are_value_errors(call: Any) -> None:
    with pytest.raises(ValueError):
        call()


def announce_packet(interval: int, leechers: int, seeders: int, peers: bytes, tid: int = TID) -> bytes:
    return struct.pack(">IIiii", ACTION_ANNOUNCE, tid, interval, leechers, seeders) + peers


@given(st.lists(st.tuples(_ipv4, _port), max_size=40), st.integers(INTERVAL_FLOOR, INTERVAL_CEILING), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_udp_ipv4_announce_response_round_trip(peers: list[tuple[str, int]], interval: int, leechers: int, seeders: int) -> None:
    packet = announce_packet(interval, leechers, seeders, encode_compact_peers(peers))
    response = decode_announce(packet, TID, ipv6=False)
    assert response == AnnounceResponse(interval=interval, peers=peers, complete=seeders, incomplete=leechers)
    assert decode_response(packet, TID, ACTION_ANNOUNCE, ipv6=False) == response


@given(st.lists(st.tuples(_ipv6, _port), max_size=20))
def test_udp_ipv6_announce_response_peers_are_18_bytes(peers: list[tuple[str, int]]) -> None:
    packet = announce_packet(1800, 1, 2, encode_compact_peers6(peers))
    assert decode_announce(packet, TID, ipv6=True).peers == [(str(ipaddress.IPv6Address(h)), p) for h, p in peers]


def test_udp_announce_peers_depend_on_the_socket_family() -> None:
    packet = announce_packet(1800, 0, 0, bytes(range(1, 19)))  # 18 bytes: three IPv4 peers, or one IPv6 peer
    assert len(decode_announce(packet, TID, ipv6=False).peers) == 3
    assert len(decode_announce(packet, TID, ipv6=True).peers) == 1


def test_udp_announce_interval_is_clamped_and_negative_counts_are_unknown() -> None:
    response = decode_announce(announce_packet(-1, -1, -2, b""), TID, ipv6=False)
    assert response == AnnounceResponse(interval=INTERVAL_FLOOR, peers=[], complete=None, incomplete=None)
    assert decode_announce(announce_packet(2**31 - 1, 0, 0, b""), TID, ipv6=False).interval == INTERVAL_CEILING


def test_udp_announce_peer_list_is_truncated_to_max_peers() -> None:
    peers = [("10.0.0.1", p) for p in range(1, 5001)]
    packet = announce_packet(1800, 0, 0, encode_compact_peers(peers))
    assert decode_announce(packet, TID, ipv6=False, max_peers=100).peers == peers[:100]
    assert len(decode_announce(packet, TID, ipv6=False).peers) == 1000


@given(st.lists(st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)), max_size=MAX_SCRAPE_HASHES))
def test_udp_scrape_response_round_trip(rows: list[tuple[int, int, int]]) -> None:
    packet = struct.pack(">II", ACTION_SCRAPE, TID) + b"".join(struct.pack(">iii", *row) for row in rows)
    expected = ScrapeResponse([ScrapeResult(complete=s, incomplete=l, downloaded=c) for s, c, l in rows])
    assert decode_scrape(packet, TID) == expected
    assert decode_response(packet, TID, ACTION_SCRAPE, ipv6=False, scrape_count=len(rows)) == expected


def test_udp_scrape_response_with_fewer_results_than_asked_is_an_error() -> None:
    packet = struct.pack(">IIiii", ACTION_SCRAPE, TID, 1, 2, 3)
    with pytest.raises(TrackerError, match="1 results for 2 info-hashes"):
        decode_scrape(packet, TID, scrape_count=2)


def test_udp_scrape_response_extra_results_are_ignored_when_count_given() -> None:
    packet = struct.pack(">IIiiiiii", ACTION_SCRAPE, TID, 1, 2, 3, 4, 5, 6)
    assert decode_scrape(packet, TID, scrape_count=1) == ScrapeResponse([ScrapeResult(1, 3, 2)])


@pytest.mark.parametrize("expected_action", [ACTION_CONNECT, ACTION_ANNOUNCE, ACTION_SCRAPE])
def test_udp_error_action_is_a_tracker_failure_with_the_message(expected_action: int) -> None:
    packet = struct.pack(">II", ACTION_ERROR, TID) + b"Connection ID missmatch.\x00"
    with pytest.raises(TrackerFailure) as info:
        decode_response(packet, TID, expected_action, ipv6=False)
    assert info.value.reason == "Connection ID missmatch."


def test_udp_error_action_without_a_message_still_says_so() -> None:
    with pytest.raises(TrackerFailure, match="no message"):
        decode_connect(struct.pack(">II", ACTION_ERROR, TID), TID)


@pytest.mark.parametrize("length", range(8))
def test_udp_packet_shorter_than_8_bytes_is_stray(length: int) -> None:
    with pytest.raises(StrayPacket, match="too short"):
        decode_connect(struct.pack(">IIQ", ACTION_CONNECT, TID, CID)[:length], TID)


@pytest.mark.parametrize(
    "packet",
    [
        struct.pack(">IIQ", ACTION_CONNECT, TID + 1, CID),
        struct.pack(">II", ACTION_ERROR, TID ^ 0xFFFFFFFF) + b"for someone else",
    ],
)
def test_udp_packet_with_another_transaction_id_is_stray(packet: bytes) -> None:
    with pytest.raises(StrayPacket, match="transaction id"):
        decode_connect(packet, TID)


@pytest.mark.parametrize(
    "packet, expected_action, message",
    [
        (struct.pack(">IIQ", ACTION_ANNOUNCE, TID, CID), ACTION_CONNECT, "connect request with announce"),
        (struct.pack(">IIQ", ACTION_CONNECT, TID, CID), ACTION_ANNOUNCE, "announce request with connect"),
        (struct.pack(">IIQ", 9, TID, CID), ACTION_SCRAPE, "unknown action 9"),
    ],
)
def test_udp_unexpected_action_is_an_error(packet: bytes, expected_action: int, message: str) -> None:
    with pytest.raises(TrackerError, match=message) as info:
        decode_response(packet, TID, expected_action, ipv6=False)
    assert not isinstance(info.value, (StrayPacket, TrackerFailure))


@pytest.mark.parametrize(
    "packet, expected_action, message",
    [
        (struct.pack(">IIQ", ACTION_CONNECT, TID, CID)[:15], ACTION_CONNECT, "connect response is 15 bytes"),
        (announce_packet(1800, 0, 0, b"")[:19], ACTION_ANNOUNCE, "announce response is 19 bytes"),
        (announce_packet(1800, 0, 0, bytes(6 * 3 + 4)), ACTION_ANNOUNCE, "not a multiple of 6"),
        (struct.pack(">IIiii", ACTION_SCRAPE, TID, 1, 2, 3)[:-1], ACTION_SCRAPE, "not a multiple of 12"),
    ],
)
def test_udp_truncated_packet_is_an_error(packet: bytes, expected_action: int, message: str) -> None:
    with pytest.raises(TrackerError, match=message) as info:
        decode_response(packet, TID, expected_action, ipv6=False)
    assert not isinstance(info.value, StrayPacket)


def test_udp_ipv6_announce_with_a_partial_entry_is_an_error() -> None:
    with pytest.raises(TrackerError, match="not a multiple of 18"):
        decode_announce(announce_packet(1800, 0, 0, bytes(24)), TID, ipv6=True)


def test_udp_packets_may_be_longer_than_a_connect_response() -> None:
    packet = struct.pack(">IIQ", ACTION_CONNECT, TID, CID) + b"future extension"
    assert decode_connect(packet, TID) == ConnectResponse(CID)


def test_retransmit_timeout_doubles_from_15_seconds_up_to_3840() -> None:
    assert [retransmit_timeout(n) for n in range(10)] == [15, 30, 60, 120, 240, 480, 960, 1920, 3840, 3840]
    assert retransmit_timeout(100) == 3840
    assert retransmit_timeout(2, base=1.0) == 4.0


# ---------------------------------------------------------------------------
# Hostile input: every parser raises only TrackerError


_KEYS = [b"interval", b"min interval", b"peers", b"peers6", b"complete", b"incomplete", b"downloaded",
         b"tracker id", b"warning message", b"failure reason", b"files", b"ip", b"port", b"peer id", INFO_HASH]
_bencodable = st.recursive(
    st.one_of(st.integers(-(2**70), 2**70), st.binary(max_size=40)),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.binary(max_size=5)), children, max_size=6),
    ),
    max_leaves=25,
)
_tracker_like = st.dictionaries(st.sampled_from(_KEYS), _bencodable, max_size=8).map(encode)


def _only_tracker_errors(call: Any) -> None:
    try:
        call()
    except TrackerError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), _tracker_like))
@example(b"d5:peersld2:ipi1e4:porti1eeee")
@example(b"d5:filesd20:" + INFO_HASH + b"i3eee")
@example(b"d14:failure reasoni1ee")
def test_http_parsers_raise_only_tracker_error(data: bytes) -> None:
    _only_tracker_errors(lambda: parse_announce_response(data))
    _only_tracker_errors(lambda: parse_announce_response(data, max_peers=1))
    _only_tracker_errors(lambda: parse_scrape_response(data, INFO_HASH))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_compact_parsers_raise_only_tracker_error(data: bytes) -> None:
    _only_tracker_errors(lambda: parse_compact_peers(data))
    _only_tracker_errors(lambda: parse_compact_peers6(data))


_udp_packet = st.one_of(
    st.binary(max_size=120),
    st.builds(
        lambda action, tid, rest: struct.pack(">II", action, tid) + rest,
        st.integers(0, 4),
        st.sampled_from([TID, 0, TID + 1]),
        st.binary(max_size=120),
    ),
)


@settings(max_examples=400, deadline=None)
@given(_udp_packet, st.sampled_from([ACTION_CONNECT, ACTION_ANNOUNCE, ACTION_SCRAPE]), st.booleans(), st.none() | st.integers(0, 5))
def test_udp_decoder_raises_only_tracker_error(packet: bytes, action: int, ipv6: bool, count: int | None) -> None:
    _only_tracker_errors(lambda: decode_response(packet, TID, action, ipv6=ipv6, scrape_count=count))
