"""The HTTP tracker protocol (BEP 3, 7, 23, 48) as pure functions: URLs out, bodies in.

No sockets, no clock: the caller fetches the URL and hands us the body.

Announce::

    url = announce_url(tracker, AnnounceRequest(info_hash, peer_id, port=6881,
                                                 uploaded=0, downloaded=0, left=total,
                                                 event="started", key=key))
    body = <GET url, reading at most MAX_RESPONSE_BYTES>
    response = parse_announce_response(body)      # or TrackerError

Scrape (BEP 48)::

    base = scrape_url(tracker)                    # None: this tracker cannot be scraped
    body = <GET scrape_request_url(base, [info_hash])>
    result = parse_scrape_response(body, info_hash)

What we accept from a tracker, and what we do with it:

- The body must be one bencoded dictionary (trailing whitespace, which some
  trackers write, is ignored) of at most :data:`MAX_RESPONSE_BYTES`; the
  caller must stop reading there, we only refuse longer bodies.
- ``failure reason`` makes the whole answer a :class:`TrackerFailure` (a
  :class:`TrackerError`) carrying the tracker's text; nothing else is read.
- A missing ``interval`` is 1800 s (30 minutes), as libtorrent assumes;
  ``interval`` and ``min interval`` are clamped to
  [:data:`INTERVAL_FLOOR`, :data:`INTERVAL_CEILING`], so a tracker can make
  us neither hammer it nor go silent for years (nor overflow a timer).
- A missing ``peers`` is an empty list (libtorrent has the same rule: a
  tracker may have no one to offer).
- Every key we read must have its BEP type (integer, string, list); a wrong
  type is a :class:`TrackerError` naming the key.  The exception is an entry
  of a dictionary-model peer list: like libtorrent, we skip an entry we cannot
  use (not a dict, no usable ``ip`` or ``port``) and fail only when no entry is
  usable.
- A ``tracker id`` longer than :data:`MAX_TRACKER_ID_BYTES` is ignored: it
  would go back to the tracker in every later announce.
- Counts (``complete``, ``incomplete``, ``downloaded``) that are negative mean
  "unknown" and become ``None``.
- Peers from ``peers`` (compact or dictionary model) and ``peers6`` are merged
  into one list of ``(host, port)`` pairs, at most ``max_peers`` long (IPv4
  and dictionary-model peers first); entries with port 0 or the unspecified
  address are dropped.  A host is an IP address in canonical text form (an
  IPv4-mapped IPv6 address as plain IPv4) or, in the dictionary model only, a
  lower-case DNS name.
- Text from the tracker (failure reason, warning message) is decoded as UTF-8
  with replacement, line breaks and tabs turned to spaces, other control
  characters replaced and cut to :data:`MAX_MESSAGE_CHARS`, so it is safe to
  log on one line.

Requests are the caller's data: a bad field is a :class:`ValueError`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard, get_args
from urllib.parse import quote, quote_from_bytes

from ..metainfo.bencoding import decode
from ..errors import BencodeError, TrackerError
from .peers import address_text, parse_compact_peers, parse_compact_peers6

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_MAX_PEERS",
    "INTERVAL_CEILING",
    "INTERVAL_FLOOR",
    "MAX_MESSAGE_CHARS",
    "MAX_RESPONSE_BYTES",
    "MAX_TRACKER_ID_BYTES",
    "AnnounceEvent",
    "AnnounceRequest",
    "AnnounceResponse",
    "ScrapeResult",
    "TrackerFailure",
    "announce_url",
    "clamp_interval",
    "parse_announce_response",
    "parse_scrape_response",
    "scrape_request_url",
    "scrape_url",
    "tracker_text",
]

# libtorrent's tracker_maximum_response_length: far more than any honest
# announce needs (1000 dictionary-model peers are ~80 KB), little enough to
# hold in memory.
MAX_RESPONSE_BYTES = 1024 * 1024

DEFAULT_MAX_PEERS = 1000
DEFAULT_INTERVAL = 1800  # seconds, when the tracker names none (libtorrent's default)
INTERVAL_FLOOR = 30  # seconds; libtorrent's default "min interval"
INTERVAL_CEILING = 24 * 3600  # seconds; a tracker asking for more is broken or hostile
MAX_MESSAGE_CHARS = 512  # of a tracker's failure reason or warning message
MAX_TRACKER_ID_BYTES = 256  # a longer "tracker id" is ignored

AnnounceEvent = Literal["started", "completed", "stopped"]
_EVENTS: frozenset[str] = frozenset(get_args(AnnounceEvent))
_MAX_INT64 = (1 << 63) - 1


class TrackerFailure(TrackerError):
    """The tracker answered, and refused: a ``failure reason`` (HTTP) or an error action (UDP).

    ``reason`` is the tracker's own text, made safe to log.  Retrying the same
    request at once will get the same answer; the other errors of this module
    mean the answer could not be read at all.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"tracker refused the request: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AnnounceRequest:
    """One announce, for HTTP (:func:`announce_url`) or UDP (``udp_codec.encode_announce``).

    ``key`` is a 32-bit number kept for the whole session (BEP 7: at least 32
    bits of entropy; the caller draws it).  ``numwant`` ``None`` leaves the
    number of peers to the tracker.  ``trackerid`` is the ``tracker id`` of an
    earlier response, sent back as BEP 3 asks.  ``ip`` is BEP 3's optional
    address parameter, for a host whose trackers would otherwise record the
    wrong address (behind NAT); BEP 7 discourages it and many trackers ignore
    it.  UDP announces carry it only when it is an IPv4 address.
    """

    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: AnnounceEvent | None = None
    numwant: int | None = None
    key: int | None = None
    compact: bool = True
    trackerid: bytes | None = None
    ip: str | None = None

    def __post_init__(self) -> None:
        for name in ("info_hash", "peer_id"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 20:
                raise ValueError(f"{name} must be 20 bytes")
        if not _is_int(self.port) or not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port!r} is not a port number")
        for name in ("uploaded", "downloaded", "left"):
            value = getattr(self, name)
            if not _is_int(value) or not 0 <= value <= _MAX_INT64:
                raise ValueError(f"{name} must be an integer from 0 to 2**63-1, not {value!r}")
        if self.event is not None and self.event not in _EVENTS:
            raise ValueError(f"event must be one of {sorted(_EVENTS)} or None, not {self.event!r}")
        if self.numwant is not None and (not _is_int(self.numwant) or not 0 <= self.numwant < 1 << 31):
            raise ValueError(f"numwant must be a non-negative 32-bit integer or None, not {self.numwant!r}")
        if self.key is not None and (not _is_int(self.key) or not 0 <= self.key < 1 << 32):
            raise ValueError(f"key must be an unsigned 32-bit integer or None, not {self.key!r}")
        if self.trackerid is not None and not isinstance(self.trackerid, bytes):
            raise ValueError("trackerid must be bytes (the tracker's 'tracker id', as it sent it)")
        if self.ip is not None and (not isinstance(self.ip, str) or not self.ip):
            raise ValueError("ip must be a non-empty string or None")


@dataclass(frozen=True, slots=True)
class AnnounceResponse:
    """A tracker's answer to an announce (HTTP or UDP).

    ``complete`` counts seeders and ``incomplete`` leechers; ``None`` when the
    tracker did not say.  ``min_interval``, ``tracker_id`` and
    ``warning_message`` are ``None`` when absent (UDP has none of them).
    """

    interval: int
    peers: list[tuple[str, int]] = field(default_factory=list)
    min_interval: int | None = None
    complete: int | None = None
    incomplete: int | None = None
    tracker_id: bytes | None = None
    warning_message: str | None = None


@dataclass(frozen=True, slots=True)
class ScrapeResult:
    """One torrent's swarm counts from a scrape (BEP 48 HTTP, BEP 15 UDP); ``None`` if not given.

    ``complete``: seeders now; ``incomplete``: leechers now; ``downloaded``:
    how many have ever completed the download.
    """

    complete: int | None
    incomplete: int | None
    downloaded: int | None


# ---------------------------------------------------------------------------
# URLs


def announce_url(base_url: str, req: AnnounceRequest) -> str:
    """The GET URL of an announce: ``base_url`` with BEP 3's parameters appended.

    Binary fields (``info_hash``, ``peer_id``, ``trackerid``) are percent-encoded
    byte by byte: every byte but the unreserved ``A-Z a-z 0-9 - . _ ~`` becomes
    ``%XX``.  A query already in ``base_url`` is kept as written and the
    parameters follow it after ``&``; a ``#fragment`` (never sent to a server)
    is dropped.
    """
    params = [
        ("info_hash", _quote(req.info_hash)),
        ("peer_id", _quote(req.peer_id)),
        ("port", str(req.port)),
        ("uploaded", str(req.uploaded)),
        ("downloaded", str(req.downloaded)),
        ("left", str(req.left)),
        ("compact", "1" if req.compact else "0"),
    ]
    if req.event is not None:
        params.append(("event", req.event))
    if req.numwant is not None:
        params.append(("numwant", str(req.numwant)))
    if req.key is not None:
        params.append(("key", f"{req.key:08X}"))  # libtorrent's form: 8 hex digits
    if req.trackerid is not None:
        params.append(("trackerid", _quote(req.trackerid)))
    if req.ip is not None:
        params.append(("ip", quote(req.ip, safe="")))
    return _append_query(base_url, params)


def scrape_url(announce_url: str) -> str | None:
    """The scrape URL of an HTTP(S) announce URL (BEP 48), or ``None`` if it has none.

    The last component of the URL's path must begin with ``announce``; that
    word becomes ``scrape`` and everything else (the rest of the component,
    the query) is kept byte for byte::

        http://example.com/announce          -> http://example.com/scrape
        http://example.com/x/announce?x2%0644 -> http://example.com/x/scrape?x2%0644
        http://example.com/announce.php      -> http://example.com/scrape.php
        http://example.com/a                 -> None
    """
    scheme, sep, rest = announce_url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return None
    start = len(scheme) + len(sep)
    end = len(announce_url)
    for delim in "?#":
        found = announce_url.find(delim, start)
        if found != -1:
            end = min(end, found)
    if announce_url.find("/", start, end) == -1:
        return None  # no path at all
    slash = announce_url.rfind("/", start, end)
    word = slash + 1
    if not announce_url.startswith("announce", word, end):
        return None
    return announce_url[:word] + "scrape" + announce_url[word + len("announce") :]


def scrape_request_url(scrape_url: str, info_hashes: Iterable[bytes]) -> str:
    """The GET URL of a scrape: one ``info_hash`` parameter per torrent (BEP 48)."""
    params = []
    for info_hash in info_hashes:
        if not isinstance(info_hash, bytes) or len(info_hash) != 20:
            raise ValueError("an info-hash must be 20 bytes")
        params.append(("info_hash", _quote(info_hash)))
    if not params:
        raise ValueError("a scrape names at least one info-hash")
    return _append_query(scrape_url, params)


def _quote(data: bytes) -> str:
    # quote_from_bytes leaves exactly RFC 3986's unreserved set (letters,
    # digits, "-._~") alone when safe is empty, and writes %XX in upper case.
    return quote_from_bytes(data, safe="")


def _append_query(base_url: str, params: list[tuple[str, str]]) -> str:
    base = base_url.partition("#")[0]
    if "?" not in base:
        sep = "?"
    elif base.endswith(("?", "&")):
        sep = ""
    else:
        sep = "&"
    return base + sep + "&".join(f"{name}={value}" for name, value in params)


# ---------------------------------------------------------------------------
# Responses


def parse_announce_response(body: bytes, *, max_peers: int = DEFAULT_MAX_PEERS) -> AnnounceResponse:
    """Read an HTTP tracker's announce response (BEP 3, 7, 23); see the module notes for the rules."""
    top = _decode_body(body, "announce")
    raw_interval = _get(top, b"interval", int)
    interval = DEFAULT_INTERVAL if raw_interval is None else clamp_interval(raw_interval)
    raw_min = _get(top, b"min interval", int)
    min_interval = None if raw_min is None else clamp_interval(raw_min)
    tracker_id = _get(top, b"tracker id", bytes)
    if tracker_id is not None and len(tracker_id) > MAX_TRACKER_ID_BYTES:
        tracker_id = None  # we would send it back, tripled by escaping, in every announce
    warning = _get(top, b"warning message", bytes)

    peers: list[tuple[str, int]] = []
    raw_peers = top.get(b"peers")
    if isinstance(raw_peers, bytes):
        peers = parse_compact_peers(raw_peers, max_peers=max_peers, what="'peers' (compact)")
    elif isinstance(raw_peers, list):
        peers = _dict_model_peers(raw_peers, max_peers)
    elif raw_peers is not None:
        raise TrackerError(f"'peers' is {_kind(raw_peers)}, not a string (compact) or a list")
    raw_peers6 = _get(top, b"peers6", bytes)
    if raw_peers6 is not None:
        peers += parse_compact_peers6(raw_peers6, max_peers=max_peers - len(peers), what="'peers6'")

    return AnnounceResponse(
        interval=interval,
        peers=peers,
        min_interval=min_interval,
        complete=_count(top, b"complete"),
        incomplete=_count(top, b"incomplete"),
        tracker_id=tracker_id,
        warning_message=None if warning is None else tracker_text(warning),
    )


def parse_scrape_response(body: bytes, info_hash: bytes) -> ScrapeResult:
    """Read an HTTP scrape response (BEP 48): the counts for ``info_hash``.

    A response without an entry for ``info_hash`` is a :class:`TrackerError`.
    """
    if not isinstance(info_hash, bytes) or len(info_hash) != 20:
        raise ValueError("an info-hash must be 20 bytes")
    top = _decode_body(body, "scrape")
    files = _get(top, b"files", dict)
    if files is None:
        raise TrackerError("scrape response has no 'files' dictionary")
    entry = files.get(info_hash)
    if entry is None:
        raise TrackerError(f"scrape response has no entry for info-hash {info_hash.hex()}")
    if not isinstance(entry, dict):
        raise TrackerError(f"scrape entry for {info_hash.hex()} is {_kind(entry)}, not a dictionary")
    return ScrapeResult(
        complete=_count(entry, b"complete"),
        incomplete=_count(entry, b"incomplete"),
        downloaded=_count(entry, b"downloaded"),
    )


def clamp_interval(seconds: int) -> int:
    """An announce interval from a tracker, held to [INTERVAL_FLOOR, INTERVAL_CEILING]."""
    return min(max(seconds, INTERVAL_FLOOR), INTERVAL_CEILING)


def tracker_text(raw: bytes) -> str:
    """Text a tracker sent, safe to show and log: UTF-8 (with replacement), no control characters, bounded."""
    text = bytes(raw[: MAX_MESSAGE_CHARS * 4]).decode("utf-8", errors="replace")
    cut = len(raw) > MAX_MESSAGE_CHARS * 4 or len(text) > MAX_MESSAGE_CHARS
    text = "".join(c if c.isprintable() else " " if c.isspace() else "\ufffd" for c in text[:MAX_MESSAGE_CHARS])
    text = text.strip()
    return text + "…" if cut else text


def _decode_body(body: bytes, what: str) -> dict[bytes, Any]:
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TrackerError(f"{what} response is {_kind(body)}, not bytes")
    if len(body) > MAX_RESPONSE_BYTES:
        raise TrackerError(f"{what} response is {len(body)} bytes, more than the {MAX_RESPONSE_BYTES} we accept")
    try:
        top = decode(bytes(body).rstrip(b" \t\r\n"))
    except BencodeError as exc:
        raise TrackerError(f"{what} response is not bencoded: {exc}") from None
    if not isinstance(top, dict):
        raise TrackerError(f"{what} response is {_kind(top)}, not a bencoded dictionary")
    failure = top.get(b"failure reason")
    if failure is not None:
        if not isinstance(failure, bytes):
            raise TrackerError(f"'failure reason' is {_kind(failure)}, not a string")
        raise TrackerFailure(tracker_text(failure))
    return top


def _get(d: dict[bytes, Any], key: bytes, kind: type[Any]) -> Any:
    value = d.get(key)
    if value is not None and not isinstance(value, kind):
        raise TrackerError(f"'{key.decode()}' is {_kind(value)}, not {_KINDS[kind]}")
    return value


def _count(d: dict[bytes, Any], key: bytes) -> int | None:
    value: int | None = _get(d, key, int)
    if value is None or value < 0:
        return None
    return min(value, _MAX_INT64)


# A DNS name as trackers write them: labels of letters, digits, '-' and '_'.
_HOSTNAME = re.compile(rb"(?=.{1,253}\.?\Z)(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?\Z")


def _dict_model_peers(entries: list[Any], max_peers: int) -> list[tuple[str, int]]:
    peers: list[tuple[str, int]] = []
    well_formed = 0
    for entry in entries:
        if len(peers) >= max_peers:
            break
        peer = _dict_model_peer(entry)
        if peer is None:
            continue
        well_formed += 1
        host, port = peer
        if port != 0 and host not in ("0.0.0.0", "::"):
            peers.append(peer)
    if entries and not well_formed and max_peers > 0:
        raise TrackerError(f"none of the {len(entries)} entries of 'peers' is a dictionary with a usable 'ip' and 'port'")
    return peers


def _dict_model_peer(entry: Any) -> tuple[str, int] | None:
    """``(host, port)`` of one BEP 3 peer dictionary, or None if it is malformed."""
    if not isinstance(entry, dict):
        return None
    ip, port = entry.get(b"ip"), entry.get(b"port")
    if not isinstance(ip, bytes) or not _is_int(port) or not 0 <= port <= 65535:
        return None
    try:
        text = ip.decode("ascii")
    except UnicodeDecodeError:
        return None
    if "%" in text:
        return None  # a scoped IPv6 address means nothing off the tracker's host
    try:
        return address_text(ipaddress.ip_address(text)), port
    except ValueError:
        pass
    if _HOSTNAME.match(ip) and not ip.replace(b".", b"").isdigit():
        return text.rstrip(".").lower(), port
    return None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


_KINDS: dict[type[Any], str] = {int: "an integer", bytes: "a string", list: "a list", dict: "a dictionary"}


def _kind(value: object) -> str:
    for kind, name in _KINDS.items():
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"
