"""Web seeds without I/O: how ``url-list`` URLs are read (libtorrent 2.1.1 as the oracle), the URL
of each file, the range requests of a run of bytes, and what makes an answer unusable."""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence

import bencodepy
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pyowtorrent.errors import MetainfoError
from pyowtorrent.metainfo.layout import BLOCK_SIZE, FileEntry, Layout
from pyowtorrent.metainfo.torrent_file import parse_metainfo
from pyowtorrent.metainfo.urls import web_seed_url
from pyowtorrent.metainfo.webseed import (
    MAX_RUN_BYTES,
    MIN_RUN_BYTES,
    RangeRequest,
    answer_problem,
    content_range,
    file_urls,
    range_requests,
    run_pieces,
)

import libtorrent as lt  # noqa: E402  (test-only reference implementation)

_SINGLE = {b"name": b"x", b"piece length": 16384, b"length": 10, b"pieces": bytes(20)}
_MULTI = {
    b"name": b"d",
    b"piece length": 16384,
    b"files": [{b"length": 5, b"path": [b"a"]}, {b"length": 5, b"path": [b"b"]}],
    b"pieces": bytes(20),
}


def _torrent(url_list: object, info: dict[bytes, object] = _SINGLE) -> bytes:
    return bytes(bencodepy.encode({b"url-list": url_list, b"info": info}))


def _lt_web_seeds(data: bytes) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [w["url"] for w in lt.torrent_info(data).web_seeds()]


# -- reading url-list: the table ------------------------------------------------------------

# (as written in the torrent, what libtorrent 2.1.1 reads, what we read): where the two
# differ, the difference is deliberate (docstring of pyowtorrent.metainfo.urls.web_seed_url).
URL_TABLE = [
    ("http://a.com/f", "http://a.com/f", "http://a.com/f"),
    ("http://a.com/a b", "http://a.com/a%20b", "http://a.com/a%20b"),  # unsafe path: escaped
    ("http://a.com/a%20b", "http://a.com/a%20b", "http://a.com/a%20b"),  # already escaped: kept
    ("http://a.com/é", "http://a.com/%c3%a9", "http://a.com/%c3%a9"),
    ("http://a.com/a?b=c d", "http://a.com/a%3fb%3dc%20d", "http://a.com/a%3fb%3dc%20d"),  # ? escaped too
    ("http://a.com/a#frag", "http://a.com/a%23frag", "http://a.com/a%23frag"),
    ("http://a.com?x y", "http://a.com/%3fx%20y", "http://a.com/%3fx%20y"),  # empty path: '/' first
    ("http://a.com/a+b;c", "http://a.com/a+b;c", "http://a.com/a+b;c"),  # safe characters
    ("http://a.com/a'b", "http://a.com/a%27b", "http://a.com/a%27b"),
    ("http://a.com/a%zz", "http://a.com/a%zz", "http://a.com/a%zz"),  # a bad escape, left alone
    ("http://u:p@a.com/a b", "http://u:p@a.com/a%20b", "http://u:p@a.com/a%20b"),
    ("HTTP://A.COM/a b", "HTTP://A.COM/a%20b", "HTTP://A.COM/a%20b"),
    ("http://[::1]:8000/ab", "http://[::1]:8000/ab", "http://[::1]:8000/ab"),
    ("ftp://a.com/f", "ftp://a.com/f", "ftp://a.com/f"),  # kept; the engine uses http(s) only
    ("http://a.com:x/a b", "http://a.com:x/a b", "http://a.com:x/a b"),  # unparsable port: untouched
    ("http://é.com/a b", "http://é.com/a b", "http://é.com/a b"),  # unparsable host: untouched
    ("http://a.com:2147483648/a b", "http://a.com:2147483648/a b", "http://a.com:2147483648/a b"),
    ("http://a b.com/x", "http://a b.com/x", "http://a b.com/x"),
    ("", None, None),  # skipped by both
    # Deliberate differences.
    (" http://a.com/f", " http://a.com/f", "http://a.com/f"),  # leading whitespace trimmed
    ("http://a.com/f ", "http://a.com/f%20", "http://a.com/f"),  # trailing: trimmed, not escaped
    ("http://a.com/f\n", "http://a.com/f%0a", "http://a.com/f"),
    ("\thttp://a.com/f\t", "http://a.com/f%09", "http://a.com/f"),
    ("http://[::1]:8000/a b", "http://::1:8000/a%20b", "http://[::1]:8000/a%20b"),  # brackets kept
    ("http://[::1]/a b", "http://::1/a%20b", "http://[::1]/a%20b"),
    ("http://a.com:08/a b", "http://a.com:8/a%20b", "http://a.com:08/a%20b"),  # authority as written
    ("   ", "   ", None),  # blank: nothing to fetch
]


@pytest.mark.parametrize(("raw", "lt_reads", "we_read"), URL_TABLE)
def test_url_list_entries_are_read_as_the_table_says(raw: str, lt_reads: str | None, we_read: str | None) -> None:
    assert _lt_web_seeds(_torrent([raw.encode()])) == ([lt_reads] if lt_reads is not None else [])
    assert list(parse_metainfo(_torrent([raw.encode()])).web_seeds) == ([we_read] if we_read is not None else [])
    assert web_seed_url(raw.encode()) == we_read


def test_multi_file_web_seeds_name_a_directory_like_libtorrents() -> None:
    data = _torrent([b"http://a.com/d", b"http://b.com/pub/", b"http://c.com/x y"], _MULTI)
    assert _lt_web_seeds(data) == ["http://a.com/d/", "http://b.com/pub/", "http://c.com/x%20y/"]
    assert list(parse_metainfo(data).web_seeds) == _lt_web_seeds(data)


def test_a_lone_string_and_junk_entries_as_libtorrent() -> None:
    data = _torrent(b"http://a.com/x y")
    assert list(parse_metainfo(data).web_seeds) == _lt_web_seeds(data) == ["http://a.com/x%20y"]
    data = _torrent([b"http://a.com/x", 5, [b"http://b.com/"], {b"k": b"v"}])
    assert list(parse_metainfo(data).web_seeds) == _lt_web_seeds(data) == ["http://a.com/x"]
    assert parse_metainfo(_torrent(7)).web_seeds == ()


def test_duplicates_are_dropped_after_escaping_where_libtorrent_keeps_both() -> None:
    # One server, one web seed: libtorrent compares the entries as written.
    data = _torrent([b"http://a.com/a b", b"http://a.com/a%20b", b"http://a.com/a b"])
    assert _lt_web_seeds(data) == ["http://a.com/a%20b", "http://a.com/a%20b"]
    assert list(parse_metainfo(data).web_seeds) == ["http://a.com/a%20b"]


def test_bytes_that_are_not_utf8_are_escaped_as_they_are() -> None:
    data = _torrent([b"http://a.com/\xe9x"])
    assert list(parse_metainfo(data).web_seeds) == _lt_web_seeds(data) == ["http://a.com/%e9x"]
    # Not re-escaped (a host libtorrent cannot parse): shown with U+FFFD; libtorrent's
    # Python binding cannot even return it.
    assert web_seed_url(b"http://\xe9.com/x y") == "http://\ufffd.com/x y"


# -- reading url-list: generated URLs -------------------------------------------------------


def _mostly(good: st.SearchStrategy[str], bad: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.integers(0, 5).flatmap(lambda i: bad if i == 0 else good)


_urls = st.builds(
    lambda *parts: "".join(parts),
    _mostly(st.sampled_from(["http", "https", "HTTP"]), st.sampled_from(["ftp", "", "ht tp", "x"])),
    _mostly(st.just("://"), st.sampled_from([":/", "//", ":", ":///"])),
    _mostly(st.just(""), st.sampled_from(["u:p@", "u@", ":p@", "a@b:c@", "@"])),
    _mostly(
        st.sampled_from(["a.com", "1.2.3.4", "xn--e1afmkfd.com", "a-b.c", "[::1]", "[::1%25e]", "[a_~:]"]),
        st.sampled_from(["", "[::1", "[]", "é.com", "a_b", "%41.com", "a b", "[zz]"]),
    ),
    _mostly(
        st.sampled_from(["", ":80", ":0", ":99999", ":2147483647"]),
        st.sampled_from([":", ":x", ":٣", ":80:90", ":2147483648", ":-1"]),
    ),
    st.one_of(
        st.sampled_from(["", "/", "/a", "?x=1", "#f", "/é", "/a@b", "/%zz", "/a b", "/a'b", "/\x00", "/a:b c"]),
        st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=10).map(lambda t: "/" + t),
        st.text(max_size=8).map(lambda t: "/" + t),
    ),
)
_C0_AND_SPACE = "".join(map(chr, range(0x21)))


def _as_we_differ(lt_url: str, ours: str) -> bool:
    """Whether ``ours`` is libtorrent's ``lt_url`` but for keeping the authority as written."""
    scheme, _, rest = ours.partition("://")
    authority, slash, path = rest.partition("/")
    lt_scheme, _, lt_rest = lt_url.partition("://")
    lt_authority, lt_slash, lt_path = lt_rest.partition("/")
    return (scheme, slash, path) == (lt_scheme, lt_slash, lt_path) and authority != lt_authority


@settings(max_examples=1500, deadline=None)
@given(_urls)
@example("http://[::1]/a b")
@example("http://a.com:08/é")
def test_web_seed_urls_are_libtorrents_but_for_the_authority_as_written(url: str) -> None:
    # Generated URLs have nothing to trim around them: the other difference is the table's.
    url = url.strip(_C0_AND_SPACE)
    if not url:
        return
    data = _torrent([url.encode()])
    try:
        lt_urls = _lt_web_seeds(data)
    except UnicodeDecodeError:  # libtorrent's binding cannot return it (see the U+FFFD case)
        return
    ours = list(parse_metainfo(data).web_seeds)
    if lt_urls != ours:
        assert len(ours) == len(lt_urls) == 1 and _as_we_differ(lt_urls[0], ours[0]), (url, lt_urls, ours)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=40),
        st.integers(),
        st.lists(st.one_of(st.binary(max_size=40), st.integers(), st.lists(st.binary(max_size=5), max_size=2))),
        st.dictionaries(st.binary(max_size=4), st.binary(max_size=4), max_size=2),
    ),
    st.booleans(),
)
def test_reading_url_list_never_raises_anything_but_metainfo_error(value: object, multi: bool) -> None:
    try:
        meta = parse_metainfo(_torrent(value, _MULTI if multi else _SINGLE))
    except MetainfoError:
        return
    for url in meta.web_seeds:
        assert url and url == url.strip(_C0_AND_SPACE) and (not multi or url.endswith("/"))
        url.encode("utf-8")  # no lone surrogates escape


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_any_entry_reads_as_text_or_nothing(raw: bytes) -> None:
    url = web_seed_url(raw)
    assert url is None or (url and url.encode("utf-8"))


# -- the URL of each file -----------------------------------------------------------------


def _layout(files: Sequence[tuple[tuple[str, ...], int, bool]], piece_length: int = BLOCK_SIZE) -> Layout:
    entries, offset = [], 0
    for path, length, pad in files:
        entries.append(FileEntry(path, length, offset, pad))
        offset += length
    return Layout(piece_length, entries)


def test_a_single_file_url_is_the_file_or_names_it_when_it_ends_in_a_slash() -> None:
    layout = _layout([(("a b#?.bin",), 100, False)])
    assert file_urls("http://h/x/data.bin", layout) == ["http://h/x/data.bin"]
    assert file_urls("http://h/x/", layout) == ["http://h/x/a%20b%23%3F.bin"]


def test_multi_file_urls_are_the_directory_name_and_path_each_element_escaped() -> None:
    layout = _layout([(("d", "é x", "a+b!*().~_-"), 5, False), (("d", ".pad", "3"), 3, True), (("d", "100%"), 4, False)])
    assert file_urls("http://h/pub/", layout) == [
        "http://h/pub/d/%C3%A9%20x/a%2Bb!*().~_-",
        "http://h/pub/d/.pad/3",
        "http://h/pub/d/100%25",
    ]
    # A multi-file torrent's URL without its slash (a torrent made by hand) is still a directory.
    assert file_urls("http://h/pub", layout)[0] == "http://h/pub/d/%C3%A9%20x/a%2Bb!*().~_-"


def test_a_multi_file_torrent_of_one_file_is_fetched_as_libtorrent_does() -> None:
    # libtorrent: one file, so the URL is the file unless it ends in '/', then name/path follows.
    layout = _layout([(("d", "only.bin"), 7, False)])
    assert file_urls("http://h/only.bin", layout) == ["http://h/only.bin"]
    assert file_urls("http://h/", layout) == ["http://h/d/only.bin"]


# -- the range requests of a run ------------------------------------------------------------


@st.composite
def _layouts_and_runs(draw: st.DrawFn) -> tuple[Layout, int, int]:
    n = draw(st.integers(1, 6))
    files = []
    for i in range(n):
        pad = draw(st.booleans()) and 0 < i < n - 1
        files.append(((f"d{i}", f"f{i}"), draw(st.integers(0, 3 * BLOCK_SIZE)), pad))
    if not sum(f[1] for f in files):
        files.append((("d", "last"), 1, False))
    layout = _layout(files, draw(st.sampled_from([BLOCK_SIZE, 2 * BLOCK_SIZE])))
    start = draw(st.integers(0, layout.total_length - 1))
    return layout, start, draw(st.integers(1, layout.total_length - start))


@settings(max_examples=300, deadline=None)
@given(_layouts_and_runs())
def test_range_requests_cover_the_run_exactly_and_never_ask_for_pad_files(case: tuple[Layout, int, int]) -> None:
    layout, start, length = case
    urls = file_urls("http://h/", layout)
    reqs = range_requests(layout, urls, start, length)
    assert sum(r.length for r in reqs) == length
    pos = start
    for r in reqs:
        f = layout.files[r.file_index]
        assert f.offset + r.start == pos and r.length > 0 and 0 <= r.start and r.start + r.length <= f.length
        assert r.file_length == f.length and (r.url is None) == f.pad
        assert r.url is None or r.url == urls[r.file_index]
        pos += r.length
    assert [r.file_index for r in reqs] == sorted({r.file_index for r in reqs})  # one request per file


def test_a_run_across_files_is_one_request_per_file() -> None:
    layout = _layout([(("d", "a"), 10_000, False), (("d", "b"), 20_000, False), (("d", "c"), 30_000, False)])
    reqs = range_requests(layout, file_urls("http://h/", layout), 5_000, 30_000)
    assert [(r.url, r.start, r.length) for r in reqs] == [
        ("http://h/d/a", 5_000, 5_000),
        ("http://h/d/b", 0, 20_000),
        ("http://h/d/c", 0, 5_000),
    ]
    assert [r.whole_file for r in reqs] == [False, True, False]


def test_runs_are_several_small_pieces_or_one_large_one() -> None:
    assert run_pieces(16384, 300_000) == MIN_RUN_BYTES // 16384  # a small torrent: still 256 KiB a request
    assert run_pieces(16384, 10 << 30) == MAX_RUN_BYTES // 16384  # a large one: 4 MiB a request
    assert run_pieces(1 << 20, 60 << 20) == 3  # a twentieth of the torrent between the bounds
    assert run_pieces(16 << 20, 10 << 30) == 1  # a piece larger than the bound: one piece
    r = random.Random(1)
    for _ in range(200):
        plen, total = BLOCK_SIZE << r.randrange(12), r.randrange(1, 1 << 40)
        n = run_pieces(plen, total)
        assert n >= 1 and (n == 1 or n * plen <= MAX_RUN_BYTES)


# -- reading an answer's head ------------------------------------------------------------------

_REQ = RangeRequest("http://h/f", 0, 100, 50, 1000)
_WHOLE = RangeRequest("http://h/f", 0, 0, 1000, 1000)


def test_content_range_is_read_strictly() -> None:
    assert content_range("bytes 100-149/1000") == (100, 150, 1000)
    assert content_range(" bytes 0-0/*") == (0, 1, None)
    for bad in (None, "", "bytes 100-149", "bytes 150-100/1000", "items 1-2/3", "bytes=100-149/1000",
                "bytes 1-2/3, bytes 4-5/6", "bytes -1-2/3", "bytes 1-2/3x"):
        assert content_range(bad) is None, bad


@pytest.mark.parametrize(
    ("req", "status", "header", "length", "encoding", "problem"),
    [
        (_REQ, 206, "bytes 100-149/1000", 50, None, None),
        (_REQ, 206, "bytes 100-149/*", None, "identity", None),
        (_WHOLE, 200, None, 1000, None, None),  # the whole file asked: a 200 is the answer
        (_REQ, 200, None, 1000, None, "200 with the whole file to a range request"),
        (_REQ, 206, None, 50, None, "206 with no usable Content-Range"),
        (_REQ, 206, "bytes 0-49/1000", 50, None, "asked for bytes 100-149, got 0-49"),
        (_REQ, 206, "bytes 100-149/999", 50, None, "the file is 999 bytes, the torrent says 1000"),
        (_REQ, 206, "bytes 100-149/1000", 51, None, "a body of 51 bytes for 50 asked"),
        (_REQ, 206, "bytes 100-149/1000", 50, "gzip", "the body is encoded (gzip)"),
        (_REQ, 404, None, None, None, "HTTP 404 Not Found"),
        (_REQ, 503, None, None, None, "HTTP 503 Service Unavailable"),
        (_REQ, 416, None, None, None, "HTTP 416 Range Not Satisfiable"),
    ],
)
def test_an_answer_is_used_only_if_it_is_the_range_asked_for(
    req: RangeRequest, status: int, header: str | None, length: int | None, encoding: str | None, problem: str | None
) -> None:
    reasons = {200: "OK", 206: "Partial Content", 404: "Not Found", 416: "Range Not Satisfiable",
               503: "Service Unavailable"}
    got = answer_problem(req, status, reasons[status], header, length, encoding)
    assert got == problem if problem is None else (got is not None and got.startswith(problem))
