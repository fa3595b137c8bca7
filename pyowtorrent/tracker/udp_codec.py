"""The UDP tracker protocol (BEP 15) as pure functions: packets out, packets in.

No sockets, no clock, no randomness: the caller draws transaction ids (and
the announce ``key``), keeps time, and sends and receives the datagrams::

    send(encode_connect(tid))
    conn = decode_connect(recv(), tid)                  # ConnectResponse
    send(encode_announce(conn.connection_id, tid2, request))
    resp = decode_announce(recv(), tid2, ipv6=sock_is_v6)  # http_codec.AnnounceResponse

Retransmit after :func:`retransmit_timeout` ``(n)`` seconds for the n-th try;
get a new connection id once :data:`CONNECTION_ID_LIFETIME` has passed.

Errors, all :class:`~pyowtorrent.errors.TrackerError`:

- :class:`StrayPacket`: a datagram that is not the answer to this request
  (too short to carry a transaction id, or another transaction's id).  BEP 15
  has the client check the id; a stale answer to an earlier try or a spoofed
  packet lands here, and the caller should drop it and keep waiting.
- :class:`~pyowtorrent.tracker.http_codec.TrackerFailure`: the tracker's error
  action (3), with its message.
- :class:`TrackerError`: our transaction, but the wrong action or a packet
  cut short.

The announce response uses the same :class:`AnnounceResponse` as HTTP
(``complete`` = seeders, ``incomplete`` = leechers, ``interval`` clamped as
there), and a scrape gives one :class:`ScrapeResult` per info-hash.  Peers in
an announce response are 6 bytes each over IPv4 and 18 over IPv6; which one
is decided by the address family of the socket (BEP 15), so the caller says.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import TrackerError
from .http_codec import (
    DEFAULT_MAX_PEERS,
    AnnounceRequest,
    AnnounceResponse,
    ScrapeResult,
    TrackerFailure,
    clamp_interval,
    tracker_text,
)
from .peers import parse_compact_peers, parse_compact_peers6

__all__ = [
    "ACTION_ANNOUNCE",
    "ACTION_CONNECT",
    "ACTION_ERROR",
    "ACTION_SCRAPE",
    "CONNECTION_ID_LIFETIME",
    "EVENT_CODES",
    "MAX_RETRANSMIT_EXPONENT",
    "MAX_SCRAPE_HASHES",
    "PROTOCOL_ID",
    "ConnectResponse",
    "ScrapeResponse",
    "StrayPacket",
    "decode_announce",
    "decode_connect",
    "decode_response",
    "decode_scrape",
    "encode_announce",
    "encode_connect",
    "encode_scrape",
    "retransmit_timeout",
]

PROTOCOL_ID = 0x41727101980  # the magic constant of a connect request

ACTION_CONNECT = 0
ACTION_ANNOUNCE = 1
ACTION_SCRAPE = 2
ACTION_ERROR = 3

# BEP 15's event field: 0 none, 1 completed, 2 started, 3 stopped.
EVENT_CODES: dict[str | None, int] = {None: 0, "completed": 1, "started": 2, "stopped": 3}

CONNECTION_ID_LIFETIME = 60.0  # seconds a client may use a connection id after receiving it
MAX_RETRANSMIT_EXPONENT = 8  # 15 * 2**8 = 3840 s, BEP 15's longest wait
MAX_SCRAPE_HASHES = 74  # BEP 15: "up to about 74 torrents can be scraped at once"

_HEADER = struct.Struct(">II")  # action, transaction_id: the start of every response
_CONNECT_REQUEST = struct.Struct(">QII")  # protocol_id, action, transaction_id
_REQUEST_HEADER = struct.Struct(">QII")  # connection_id, action, transaction_id
_CONNECT_RESPONSE = struct.Struct(">IIQ")  # action, transaction_id, connection_id
# connection_id, action, transaction_id, info_hash, peer_id, downloaded, left,
# uploaded, event, IP address, key, num_want, port: 98 bytes.
_ANNOUNCE_REQUEST = struct.Struct(">QII20s20sQQQIIIiH")
_ANNOUNCE_RESPONSE = struct.Struct(">IIiii")  # action, transaction_id, interval, leechers, seeders
_SCRAPE_ENTRY = struct.Struct(">iii")  # seeders, completed, leechers

_ACTION_NAMES = {ACTION_CONNECT: "connect", ACTION_ANNOUNCE: "announce", ACTION_SCRAPE: "scrape", ACTION_ERROR: "error"}


class StrayPacket(TrackerError):
    """A datagram that does not answer the request we wait on: drop it and keep waiting."""


@dataclass(frozen=True, slots=True)
class ConnectResponse:
    connection_id: int


@dataclass(frozen=True, slots=True)
class ScrapeResponse:
    """One result per info-hash, in the order of the request."""

    results: list[ScrapeResult] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Requests


def encode_connect(transaction_id: int) -> bytes:
    """A connect request (16 bytes)."""
    _check_u32("transaction_id", transaction_id)
    return _CONNECT_REQUEST.pack(PROTOCOL_ID, ACTION_CONNECT, transaction_id)


def encode_announce(connection_id: int, transaction_id: int, req: AnnounceRequest) -> bytes:
    """An announce request (98 bytes) from the same :class:`AnnounceRequest` as HTTP.

    The IP address field holds ``req.ip`` when it is an IPv4 address (an
    explicit external address, as libtorrent's ``announce_ip`` fills it), else
    0, BEP 15's default: the field cannot hold an IPv6 address or a name.
    ``req.compact`` and ``req.trackerid`` have no UDP form.  ``key`` ``None``
    is sent as 0 and ``numwant`` ``None`` as -1 (the tracker's default).
    """
    _check_u64("connection_id", connection_id)
    _check_u32("transaction_id", transaction_id)
    return _ANNOUNCE_REQUEST.pack(
        connection_id,
        ACTION_ANNOUNCE,
        transaction_id,
        req.info_hash,
        req.peer_id,
        req.downloaded,
        req.left,
        req.uploaded,
        EVENT_CODES[req.event],
        _ipv4_field(req.ip),
        0 if req.key is None else req.key,
        -1 if req.numwant is None else req.numwant,
        req.port,
    )


def _ipv4_field(ip: str | None) -> int:
    """BEP 15's IP address field: the IPv4 address ``ip`` as a number, or 0 (anything else)."""
    if ip is None:
        return 0
    try:
        return int(ipaddress.IPv4Address(ip))
    except ValueError:
        return 0


def encode_scrape(connection_id: int, transaction_id: int, info_hashes: Sequence[bytes]) -> bytes:
    """A scrape request for 1 to :data:`MAX_SCRAPE_HASHES` info-hashes."""
    _check_u64("connection_id", connection_id)
    _check_u32("transaction_id", transaction_id)
    if not 1 <= len(info_hashes) <= MAX_SCRAPE_HASHES:
        raise ValueError(f"a UDP scrape names 1 to {MAX_SCRAPE_HASHES} info-hashes, not {len(info_hashes)}")
    for info_hash in info_hashes:
        if not isinstance(info_hash, bytes) or len(info_hash) != 20:
            raise ValueError("an info-hash must be 20 bytes")
    return _REQUEST_HEADER.pack(connection_id, ACTION_SCRAPE, transaction_id) + b"".join(info_hashes)


def retransmit_timeout(n: int, base: float = 15.0) -> float:
    """Seconds to wait for an answer to the n-th try (n from 0): ``base * 2**n``, n capped at 8."""
    if n < 0:
        raise ValueError(f"the try number starts at 0, not {n}")
    return base * (1 << min(n, MAX_RETRANSMIT_EXPONENT))


# ---------------------------------------------------------------------------
# Responses


def decode_response(
    packet: bytes,
    expected_transaction_id: int,
    expected_action: int,
    *,
    ipv6: bool,
    max_peers: int = DEFAULT_MAX_PEERS,
    scrape_count: int | None = None,
) -> ConnectResponse | AnnounceResponse | ScrapeResponse:
    """Decode the answer to a request of ``expected_action`` (connect, announce or scrape).

    ``ipv6``: the packet came over IPv6, so announce peers are 18 bytes each.
    ``max_peers`` bounds the announce's peer list; ``scrape_count`` is the
    number of info-hashes scraped (fewer results is an error; ``None``: take
    what is there).  :func:`decode_connect`, :func:`decode_announce` and
    :func:`decode_scrape` are the same with a precise return type.
    """
    if expected_action == ACTION_CONNECT:
        return decode_connect(packet, expected_transaction_id)
    if expected_action == ACTION_ANNOUNCE:
        return decode_announce(packet, expected_transaction_id, ipv6=ipv6, max_peers=max_peers)
    if expected_action == ACTION_SCRAPE:
        return decode_scrape(packet, expected_transaction_id, scrape_count=scrape_count)
    raise ValueError(f"no request has action {expected_action!r}; expected connect, announce or scrape")


def decode_connect(packet: bytes, expected_transaction_id: int) -> ConnectResponse:
    """A connect response: the connection id (valid for :data:`CONNECTION_ID_LIFETIME` seconds)."""
    _check_header(packet, expected_transaction_id, ACTION_CONNECT, _CONNECT_RESPONSE.size)
    _, _, connection_id = _CONNECT_RESPONSE.unpack_from(packet)
    return ConnectResponse(connection_id)


def decode_announce(
    packet: bytes, expected_transaction_id: int, *, ipv6: bool, max_peers: int = DEFAULT_MAX_PEERS
) -> AnnounceResponse:
    """An announce response: interval (clamped), leechers, seeders and the peers."""
    _check_header(packet, expected_transaction_id, ACTION_ANNOUNCE, _ANNOUNCE_RESPONSE.size)
    _, _, interval, leechers, seeders = _ANNOUNCE_RESPONSE.unpack_from(packet)
    body = memoryview(packet)[_ANNOUNCE_RESPONSE.size :]
    if ipv6:
        peers = parse_compact_peers6(body, max_peers=max_peers, what="peer list of the UDP announce response (IPv6)")
    else:
        peers = parse_compact_peers(body, max_peers=max_peers, what="peer list of the UDP announce response (IPv4)")
    return AnnounceResponse(
        interval=clamp_interval(interval),
        peers=peers,
        complete=_count(seeders),
        incomplete=_count(leechers),
    )


def decode_scrape(packet: bytes, expected_transaction_id: int, *, scrape_count: int | None = None) -> ScrapeResponse:
    """A scrape response: ``(seeders, completed, leechers)`` per info-hash, as :class:`ScrapeResult`."""
    _check_header(packet, expected_transaction_id, ACTION_SCRAPE, _HEADER.size)
    body = memoryview(packet)[_HEADER.size :]
    if len(body) % _SCRAPE_ENTRY.size:
        raise TrackerError(
            f"UDP scrape response has {len(body)} bytes of results, not a multiple of {_SCRAPE_ENTRY.size}: it was cut short"
        )
    if scrape_count is not None:
        if len(body) // _SCRAPE_ENTRY.size < scrape_count:
            raise TrackerError(
                f"UDP scrape response has {len(body) // _SCRAPE_ENTRY.size} results for {scrape_count} info-hashes"
            )
        body = body[: scrape_count * _SCRAPE_ENTRY.size]
    results = [
        ScrapeResult(complete=_count(seeders), incomplete=_count(leechers), downloaded=_count(completed))
        for seeders, completed, leechers in _SCRAPE_ENTRY.iter_unpack(body)
    ]
    return ScrapeResponse(results)


def _check_header(packet: bytes, expected_transaction_id: int, expected_action: int, min_size: int) -> None:
    """BEP 15's checks, in its order: length, transaction id, action; an error action raises its message."""
    _check_u32("expected_transaction_id", expected_transaction_id)
    if not isinstance(packet, (bytes, bytearray, memoryview)):
        raise TypeError(f"a packet is bytes, not {type(packet).__name__}")
    if len(packet) < _HEADER.size:
        raise StrayPacket(f"a {len(packet)}-byte UDP packet is too short to be a tracker response")
    action, transaction_id = _HEADER.unpack_from(packet)
    if transaction_id != expected_transaction_id:
        raise StrayPacket(
            f"UDP packet has transaction id {transaction_id:#010x}, not the {expected_transaction_id:#010x} we sent"
        )
    if action == ACTION_ERROR:
        # Some trackers end the message with a NUL, C style.
        raise TrackerFailure(tracker_text(bytes(packet[_HEADER.size :]).rstrip(b"\x00")) or "(no message)")
    if action != expected_action:
        got = _ACTION_NAMES.get(action, f"unknown action {action}")
        raise TrackerError(f"UDP tracker answered a {_ACTION_NAMES[expected_action]} request with {got}")
    if len(packet) < min_size:
        raise TrackerError(
            f"UDP {_ACTION_NAMES[expected_action]} response is {len(packet)} bytes, shorter than its {min_size}-byte header"
        )


def _count(value: int) -> int | None:
    return None if value < 0 else value


def _check_u32(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 32:
        raise ValueError(f"{name} must be an unsigned 32-bit integer, not {value!r}")


def _check_u64(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise ValueError(f"{name} must be an unsigned 64-bit integer, not {value!r}")
