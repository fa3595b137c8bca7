"""The trackers' HTTP/1.1 GET, sans I/O: what goes out, and what any answer in any pieces comes back as."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyowtorrent.tracker.http1 import MAX_HEAD_BYTES, AnswerReader, GetRequest, HttpFailure, HttpResponse

URL = "http://tracker.example:6969/announce?info_hash=%24%00x"


def feed(reader: AnswerReader, data: bytes, cuts: list[int]) -> HttpResponse | None:
    """Feed ``data`` cut at ``cuts``, then the end of the stream; the response once there is one."""
    start = 0
    for cut in sorted({min(c, len(data)) for c in cuts} | {len(data)}):
        if cut == start:
            continue  # b"" is the end of the stream
        response = reader.feed(data[start:cut])
        start = cut
        if response is not None:
            return response
    return reader.feed(b"")


def answer(body: bytes, *, framing: str, coding: str = "identity", chunk: int = 7, status: bytes = b"200 OK") -> bytes:
    """A response carrying ``body`` encoded in ``coding`` and framed by ``framing``."""
    sent = {"identity": body, "gzip": gzip.compress(body), "deflate": zlib.compress(body)}[coding]
    head = b"HTTP/1.1 " + status + b"\r\n"
    if coding != "identity":
        head += b"Content-Encoding: " + coding.encode() + b"\r\n"
    if framing == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(sent) + sent
    if framing == "chunked":
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(sent[i : i + chunk]), sent[i : i + chunk]) for i in range(0, len(sent), chunk))
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    return head + b"Connection: close\r\n\r\n" + sent  # framed by the server's close


# -- the request ----------------------------------------------------------------------------


def test_the_request_carries_the_url_as_it_is_encoded() -> None:
    request = GetRequest.parse("http://u:p%40ss@[::1]:8080/ann?x=%24&y=!#frag", "pyowtorrent/1")
    assert (request.scheme, request.host, request.port) == ("http", "::1", 8080)
    assert request.encode() == (
        b"GET /ann?x=%24&y=! HTTP/1.1\r\nHost: [::1]:8080\r\nUser-Agent: pyowtorrent/1\r\n"
        b"Accept-Encoding: gzip\r\nConnection: close\r\nAuthorization: Basic dTpwQHNz\r\n\r\n"
    )  # the fragment stays home; the password is u:p@ss, unquoted before it is encoded


def test_default_ports_and_an_empty_path() -> None:
    assert GetRequest.parse("https://t.example", "ua").port == 443
    request = GetRequest.parse("HTTP://t.example", "ua")
    assert (request.port, request.target) == (80, "/")


@pytest.mark.parametrize(
    "url, message",
    [
        ("udp://t.example:80/announce", "not an http"),
        ("ftp://t.example/", "not an http"),
        ("http:///announce", "no host"),
        ("http://t.example:99999/announce", "not a usable URL"),
        ("http://[zz]/announce", "not a usable URL"),
    ],
)
def test_unusable_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(HttpFailure, match=message):
        GetRequest.parse(url, "ua")


@pytest.mark.parametrize("url", ["http://t.example/a b", "http://t.example/\u00e9", "http://t.example/a\r\nX: y"])
def test_a_url_that_cannot_go_on_the_wire_is_refused_not_sent(url: str) -> None:
    with pytest.raises(HttpFailure, match="not a usable URL"):
        GetRequest.parse(url, "ua").encode()


@given(st.text(max_size=200), st.text(max_size=40))
def test_any_url_is_a_request_or_an_http_failure(url: str, agent: str) -> None:
    try:
        head = GetRequest.parse(url, agent).encode()
    except HttpFailure:
        return
    assert head.startswith(b"GET ") and head.endswith(b"\r\n\r\n")
    assert head.count(b"\r\n\r\n") == 1  # nothing in the URL or the agent ended the head early


# -- the answer -----------------------------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=3000),
    framing=st.sampled_from(["length", "chunked", "close"]),
    coding=st.sampled_from(["identity", "gzip", "deflate"]),
    chunk=st.integers(1, 500),
    cuts=st.lists(st.integers(0, 4000), max_size=20),
)
def test_an_answer_in_any_pieces_gives_its_body(body: bytes, framing: str, coding: str, chunk: int, cuts: list[int]) -> None:
    response = feed(AnswerReader(URL, 4000), answer(body, framing=framing, coding=coding, chunk=chunk), cuts)
    assert response == HttpResponse(200, "OK", body)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=20), max_body=st.integers(0, 3000))
def test_any_bytes_are_an_answer_or_an_http_failure(data: bytes, cuts: list[int], max_body: int) -> None:
    try:
        response = feed(AnswerReader(URL, max_body), data, cuts)
    except HttpFailure:
        return
    assert response is not None  # the end of the stream ends every answer one way or the other
    assert len(response.body) <= max_body


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    head=st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 200 OK\r\n", b"HTTP/1.1 302 Found\r\nLocation: /x\r\n"]),
    lines=st.lists(st.binary(max_size=60), max_size=8),
    rest=st.binary(max_size=200),
    cuts=st.lists(st.integers(0, 800), max_size=10),
)
def test_answers_with_hostile_headers_are_an_answer_or_an_http_failure(
    head: bytes, lines: list[bytes], rest: bytes, cuts: list[int]
) -> None:
    data = head + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + rest
    try:
        response = feed(AnswerReader(URL, 100), data, cuts)
    except HttpFailure:
        return
    assert response is not None and len(response.body) <= 100


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_a_body_over_the_bound_is_refused_as_it_grows(framing: str) -> None:
    data = answer(b"x" * 1001, framing=framing)
    with pytest.raises(HttpFailure, match="larger than 1000 bytes"):
        feed(AnswerReader(URL, 1000), data, [])
    assert feed(AnswerReader(URL, 1001), data, []) == HttpResponse(200, "OK", b"x" * 1001)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compression_bomb_is_refused_without_inflating_it(coding: str) -> None:
    """64 MiB of zeros compress to about 64 KiB: the bound holds on what comes out, not what went in."""
    data = answer(b"\0" * (64 << 20), framing="chunked", coding=coding, chunk=4096)
    reader = AnswerReader(URL, 1 << 20)
    with pytest.raises(HttpFailure, match="once decompressed"):
        feed(reader, data, list(range(0, len(data), 4096)))
    assert len(reader._body) <= (1 << 20) + 1  # never more than the bound held


def test_a_compressed_answer_cut_short_is_refused() -> None:
    sent = gzip.compress(b"d8:intervali1800ee" * 10)[:-12]
    data = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nConnection: close\r\n\r\n" + sent
    with pytest.raises(HttpFailure, match="cut short"):
        feed(AnswerReader(URL, 1000), data, [])


def test_an_encoding_we_did_not_ask_for_is_refused() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx"
    with pytest.raises(HttpFailure, match="'br'"):
        feed(AnswerReader(URL, 1000), data, [])


def test_a_head_over_its_bound_is_refused() -> None:
    """h11 holds an incomplete head up to the bound: a longer one fails at the read that crosses it."""
    data = b"HTTP/1.1 200 OK\r\nX-Junk: " + b"j" * (4 * MAX_HEAD_BYTES) + b"\r\n\r\n"
    with pytest.raises(HttpFailure, match="not a readable HTTP answer"):
        feed(AnswerReader(URL, 1000), data, list(range(0, len(data), 1000)))


@pytest.mark.parametrize(
    "data",
    [
        b"",  # closed at once
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # closed before the body's end
        b"d8:intervali1800ee",  # HTTP/0.9: a body with no head
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # a chunk size that is not one
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",  # two lengths
    ],
)
def test_broken_answers_are_http_failures(data: bytes) -> None:
    with pytest.raises(HttpFailure):
        feed(AnswerReader(URL, 1000), data, [])


def test_a_redirect_names_the_absolute_url_and_its_body_is_not_read() -> None:
    reader = AnswerReader(URL, 10)
    response = reader.feed(b"HTTP/1.1 302 Found\r\nLocation: /moved/announce?x=1\r\nContent-Length: 99999\r\n\r\n")
    assert response == HttpResponse(302, "Found", b"", "http://tracker.example:6969/moved/announce?x=1")


def test_a_redirect_without_a_location_is_an_answer_like_any_other() -> None:
    data = b"HTTP/1.1 301 Moved\r\nContent-Length: 4\r\n\r\ngone"
    assert feed(AnswerReader(URL, 10), data, []) == HttpResponse(301, "Moved", b"gone")


def test_an_interim_answer_is_skipped() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert feed(AnswerReader(URL, 10), data, [5, 30]) == HttpResponse(200, "OK", b"ok")


def test_port_zero_is_refused_not_taken_for_the_default() -> None:
    with pytest.raises(HttpFailure, match="port 0"):
        GetRequest.parse("http://t.example:0/announce", "ua")


def test_an_empty_userinfo_sends_no_credentials() -> None:
    assert b"Authorization" not in GetRequest.parse("http://@t.example/announce", "ua").encode()


def test_a_flood_of_interim_answers_is_cut_short() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\n" * 50 + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with pytest.raises(HttpFailure, match="interim"):
        feed(AnswerReader(URL, 10), data, [])
