"""URL rules: which announce URLs a torrent or a magnet keeps, and how a torrent's web seeds are read (libtorrent 2.1's rules)."""

from __future__ import annotations

import re
import string

__all__ = ["ANNOUNCE_SCHEMES", "is_tracker_url", "web_seed_url"]

# Tracker URL schemes libtorrent keeps; we announce over the first three.
_KNOWN_TRACKER_SCHEMES = frozenset(("http", "https", "udp", "ws", "wss"))
ANNOUNCE_SCHEMES = frozenset(("http", "https", "udp"))
_AUTHORITY_END = re.compile(r"[/?#]")
_TRACKER_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[^\]]+\]")


def is_tracker_url(url: str) -> bool:
    """Whether ``url`` is a tracker URL libtorrent (2.1) keeps; it drops the others silently.

    Its rules, checked against it over tens of thousands of generated URLs
    (``tests/test_tracker_urls.py``): a known scheme and ``://``; no space,
    control character or DEL anywhere (a torrent's URLs have leading
    whitespace trimmed first, a magnet's not); user info only as
    ``user:password@``; a host of ASCII letters, digits, dots and hyphens,
    or anything in brackets; a port, if any, of ASCII digits.
    """
    if any(c <= " " or c == "\x7f" for c in url):
        return False
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _KNOWN_TRACKER_SCHEMES:
        return False
    authority = _AUTHORITY_END.split(rest, 1)[0]
    at = authority.find("@")
    if at != -1:
        colon = authority.find(":")
        if colon == -1 or colon > at:
            return False
        authority = authority[at + 1 :]
    port: str | None
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            return False
        host, after = authority[: close + 1], authority[close + 1 :]
        port = after[1:] if after.startswith(":") else None
    else:
        host, colon_sep, port = authority.partition(":")
        if not colon_sep:
            port = None
    if not _TRACKER_HOST.fullmatch(host):
        return False
    return port is None or (port.isascii() and port.isdigit())


# -- web seeds (BEP 19 'url-list') ----------------------------------------------

# What a browser's URL parser trims from both ends of a URL (WHATWG URL: "leading
# and trailing C0 control or space"): a URL pasted with a newline still works.
_URL_TRIM = bytes(range(0x21))
# Characters libtorrent leaves alone in a URL path (its need_encoding); a path
# with any other character is re-escaped, keeping only _URL_KEEP as they are.
_URL_PATH_OK = frozenset("%+;?:@=&,$/-_!.~*()" + string.ascii_letters + string.digits)
_URL_KEEP = frozenset("/-_!.~*()" + string.ascii_letters + string.digits)
_LDH = frozenset(string.ascii_letters + string.digits + "-.")
_LDH_V6 = _LDH | frozenset(":%_~")


def web_seed_url(raw: bytes) -> str | None:
    """One ``url-list`` entry as libtorrent 2.1 reads it, less two of its mistakes.

    As libtorrent (``maybe_url_encode``): a URL whose path holds a character
    outside ``%+;?:@=&,$/-_!.~*()`` and ASCII letters and digits has its path
    percent-encoded byte by byte (lower-case hex, keeping ``/-_!.~*()``
    letters and digits; ``?`` and ``#`` too are escaped then, and an empty
    path before them becomes ``/``); a URL whose scheme, host or port
    libtorrent cannot parse is kept as it is.  Deliberate differences, both
    so that the URL a torrent names is the one fetched:

    - C0 controls and spaces around the URL are trimmed, as a browser does;
      libtorrent escapes trailing ones into the path (``f%20``, a file that is
      not there) and keeps leading ones unless it re-escapes the URL.
    - The authority is kept as written: when libtorrent re-escapes a path it
      rebuilds the authority from its parts and loses an IPv6 literal's
      brackets (``http://[::1]:8000/a b`` becomes ``http://::1:8000/a%20b``,
      which no client can use).

    An entry that is empty after trimming is ``None`` (libtorrent keeps a
    blank one).  Bytes that are not UTF-8 are percent-encoded as they are when
    the path is re-escaped, and shown as U+FFFD otherwise.
    """
    trimmed = raw.strip(_URL_TRIM)
    if not trimmed:
        return None
    url = trimmed.decode("utf-8", "surrogateescape")
    split = _split_authority(url)
    if split is not None:
        head, path = split
        if not path or path[0] in "?#":
            path = "/" + path
        if any(c not in _URL_PATH_OK for c in path):
            url = head + "".join(c if c in _URL_KEEP else _escape(c) for c in path)
    return url.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _escape(c: str) -> str:
    return "".join(f"%{b:02x}" for b in c.encode("utf-8", "surrogateescape"))


def _split_authority(url: str) -> tuple[str, str] | None:
    """``url`` cut into scheme-and-authority and path, where libtorrent's
    ``parse_url_components`` accepts it; ``None`` where it refuses it."""
    colon = url.find(":")
    if colon < 0 or not url.startswith("//", colon + 1):
        return None
    start = colon + 3
    end = min((i for i in (url.find(c, start) for c in "/?#") if i >= 0), default=len(url))
    at, colon = url.find("@", start), url.find(":", start)
    if 0 <= colon < at < end:
        start = at + 1  # user:password@ (user info without a colon is no user info to it)
    if url.startswith("[", start):
        close = url.find("]", start)
        if close < 0:
            return None
        host, allowed = url[start + 1 : close], _LDH_V6
        port_at = url.find(":", close)
    else:
        port_at = url.find(":", start)
        host, allowed = url[start : port_at if 0 <= port_at < end else end], _LDH
    if not host or any(c not in allowed for c in host):
        return None
    if 0 <= port_at < end:
        port = url[port_at + 1 : end]
        # libtorrent reads the port into a C int: digits only, at most 2**31 - 1
        if not port or not all("0" <= c <= "9" for c in port) or int(port) > 0x7FFFFFFF:
            return None
    return url[:end], url[end:]
