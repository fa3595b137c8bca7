"""Which tracker URLs we keep, with libtorrent 2.1.1 as the oracle.

libtorrent silently drops tracker URLs it finds invalid, from a torrent's
``announce``/``announce-list`` and from a magnet's ``tr``.  We drop the same
ones (:func:`pyowtorrent.metainfo.torrent_file.is_tracker_url`), so that a torrent names
the same trackers in both; from a torrent we also drop the schemes we cannot
announce to (``ws``/``wss``), a deliberate difference.
"""

from __future__ import annotations

import warnings
from urllib.parse import quote

import bencodepy
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pyowtorrent.metainfo.magnet import parse_magnet
from pyowtorrent.metainfo.torrent_file import is_tracker_url, parse_metainfo

from .lt_util import lt_tracker_tiers

import libtorrent as lt  # noqa: E402  (test-only reference implementation)

_INFO = {b"name": b"x", b"piece length": 16384, b"length": 10, b"pieces": bytes(20)}

# URLs built from the parts libtorrent's parser tells apart; each part is
# usually well-formed (so that about half the URLs are valid) and sometimes not.


def _mostly(good: st.SearchStrategy[str], bad: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.integers(0, 7).flatmap(lambda i: bad if i == 0 else good)


_schemes = _mostly(
    st.sampled_from(["http", "https", "udp", "ws", "wss", "HTTP", "Udp"]), st.sampled_from(["x", "", "i2p", "ht tp"])
)
_separators = _mostly(st.just("://"), st.sampled_from([":/", "//", ":", ":///"]))
_userinfo = _mostly(st.just(""), st.sampled_from(["u:p@", "u@", ":p@", "u:@", "@", "a@b:c@"]))
_hosts = _mostly(
    st.sampled_from(["a.com", "[::1]", "1.2.3.4", "xn--e1afmkfd.com", "[zz]", "a-b.c", "."]),
    st.one_of(
        st.sampled_from(["", "[::1", "[]", "é.com", "a_b", "%41.com"]),
        st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=8),
    ),
)
_ports = _mostly(st.sampled_from(["", ":80", ":0", ":99999", ":08"]), st.sampled_from([":", ":x", ":٣", ":80:90"]))
_tails = _mostly(
    st.one_of(
        st.sampled_from(["", "/", "/announce", "?x=1", "#f", "/é", "/a@b", "/%zz"]),
        st.text(alphabet=st.characters(min_codepoint=0x21, exclude_characters="\x7f", codec="utf-8"), max_size=12).map(
            lambda t: "/" + t
        ),
    ),
    st.one_of(st.sampled_from(["/a b", "/a\tb", " ", "/\x7f"]), st.text(max_size=12).map(lambda t: "/" + t)),
)
_urls = st.builds(lambda *parts: "".join(parts), _schemes, _separators, _userinfo, _hosts, _ports, _tails)
# In a torrent (not in a magnet) libtorrent trims leading whitespace first.
_leads = _mostly(st.just(""), st.sampled_from([" ", "\t ", "\x0b", "\n", "\r\n", "\x0c", "\x01", " \x01"]))
_torrent_urls = st.builds(lambda lead, url: lead + url, _leads, _urls)


def _lt_torrent_keeps(url: str) -> bool:
    data = bencodepy.encode({b"announce-list": [[url.encode()]], b"info": _INFO})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(list(lt.torrent_info(data).trackers()))


def _lt_magnet_keeps(url: str) -> bool:
    uri = "magnet:?xt=urn:btih:" + "00" * 20 + "&tr=" + quote(url, safe="")
    return bool(list(lt.parse_magnet_uri(uri).trackers))


@settings(max_examples=1500, deadline=None)
@given(_urls)
@example("http://a.com/a b")  # a space inside: dropped, not only around
@example(" http://a.com/ ")  # surrounding whitespace is not trimmed
@example("http://u@a.com/")  # user info without a password
@example("http://u:p@a.com/")
@example("http://[::1]:80/announce")
@example("http://a.com:x/")
def test_is_tracker_url_agrees_with_libtorrent(url: str) -> None:
    keeps = _lt_torrent_keeps(url)
    assert is_tracker_url(url) == keeps
    assert _lt_magnet_keeps(url) == keeps
    uri = "magnet:?xt=urn:btih:" + "00" * 20 + "&tr=" + quote(url, safe="")
    assert parse_magnet(uri).trackers == ((url,) if keeps else ())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_torrent_urls, max_size=3), max_size=3), st.one_of(st.none(), _torrent_urls))
def test_torrent_trackers_are_libtorrents_less_duplicates_and_websockets(
    tiers: list[list[str]], announce: str | None
) -> None:
    top: dict[bytes, object] = {b"info": _INFO, b"announce-list": [[u.encode() for u in t] for t in tiers]}
    if announce is not None:
        top[b"announce"] = announce.encode()
    data = bencodepy.encode(top)
    ti = lt.torrent_info(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if any(e.url.partition(":")[0].lower() in ("ws", "wss") for e in ti.trackers()):
            return  # libtorrent keeps WebTorrent trackers; we drop them, and may then fall back to 'announce'
    expected = lt_tracker_tiers(ti)
    assert [list(t) for t in parse_metainfo(data).trackers] == expected
