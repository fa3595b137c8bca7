"""Compact peer lists (BEP 23 for IPv4, BEP 7 ``peers6`` for IPv6), sans I/O.

The same packed layout serves the HTTP tracker's ``peers``/``peers6`` strings
and the UDP tracker's announce response (BEP 15): per peer, the address in
network byte order followed by a 16-bit big-endian port, 6 bytes for IPv4 and
18 for IPv6.

Parsing is strict about the shape of the list: a length that is not a
multiple of the entry size means the list was cut short, and that is a
:class:`~pyowtorrent.errors.TrackerError` naming the length.  Entries no one
can connect to are dropped, not reported: port 0 (BEP 3 has no such port) and
the unspecified address (``0.0.0.0`` / ``::``, which a connect would turn into
this host).  ``max_peers`` bounds the size of the list we build, whatever the
size of the input.

Encoding is for our own tracker; what it is given is the caller's data, so a
bad address or port there is a :class:`ValueError`.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

from ..errors import TrackerError

__all__ = [
    "Holder",
    "holder_of",
    "holder_of_text",
    "address_text",
    "COMPACT_PEER_LENGTH",
    "COMPACT_PEER6_LENGTH",
    "BytesLike",
    "encode_compact_peers",
    "encode_compact_peers6",
    "parse_compact_peers",
    "parse_compact_peers6",
]

BytesLike = bytes | bytearray | memoryview

COMPACT_PEER_LENGTH = 6  # 4 address bytes + 2 port bytes
COMPACT_PEER6_LENGTH = 18  # 16 address bytes + 2 port bytes

_UNSPECIFIED = frozenset({"0.0.0.0", "::"})
_V4 = struct.Struct(">4sH")
_V6 = struct.Struct(">16sH")


def parse_compact_peers(data: BytesLike, *, max_peers: int | None = None, what: str = "compact peer list") -> list[tuple[str, int]]:
    """IPv4 peers from a BEP 23 compact string: 6 bytes each.

    Returns ``(address, port)`` pairs in the order given, at most
    ``max_peers`` of them.  ``what`` names the list in error messages.
    """
    return _parse(data, _V4, ipaddress.IPv4Address, max_peers, what, "IPv4")


def parse_compact_peers6(data: BytesLike, *, max_peers: int | None = None, what: str = "compact IPv6 peer list") -> list[tuple[str, int]]:
    """IPv6 peers from a BEP 7 ``peers6`` string: 18 bytes each.

    Addresses come back in compressed form (``"2001:db8::1"``); an
    IPv4-mapped address (``::ffff:a.b.c.d``) comes back as the IPv4 address,
    so the same peer has one spelling whichever list names it.
    """
    return _parse(data, _V6, ipaddress.IPv6Address, max_peers, what, "IPv6")


def encode_compact_peers(peers: Iterable[tuple[str, int]]) -> bytes:
    """Pack IPv4 ``(address, port)`` pairs, 6 bytes each (BEP 23)."""
    return b"".join(_pack(_V4, ipaddress.IPv4Address, host, port) for host, port in peers)


def encode_compact_peers6(peers: Iterable[tuple[str, int]]) -> bytes:
    """Pack IPv6 ``(address, port)`` pairs, 18 bytes each (BEP 7)."""
    return b"".join(_pack(_V6, ipaddress.IPv6Address, host, port) for host, port in peers)


def _parse(
    data: BytesLike,
    layout: struct.Struct,
    family: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address],
    max_peers: int | None,
    what: str,
    family_name: str,
) -> list[tuple[str, int]]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TrackerError(f"{what} is a {type(data).__name__}, not a byte string")
    size = layout.size
    if len(data) % size:
        raise TrackerError(
            f"{what} is {len(data)} bytes long, not a multiple of {size} ({family_name} peers are {size} bytes each)"
        )
    limit = len(data) // size if max_peers is None else max(0, max_peers)
    peers: list[tuple[str, int]] = []
    if limit == 0:
        return peers
    for raw, port in layout.iter_unpack(data):
        host = address_text(family(raw))
        if port == 0 or host in _UNSPECIFIED:
            continue  # nothing can be reached at port 0 or at the unspecified address
        peers.append((host, port))
        if len(peers) >= limit:
            break
    return peers


def address_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address in canonical text form, an IPv4-mapped IPv6 address as the IPv4 address it maps."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _pack(
    layout: struct.Struct,
    family: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address],
    host: str,
    port: int,
) -> bytes:
    try:
        address = family(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an {'IPv4' if layout.size == 6 else 'IPv6'} address") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{port!r} is not a port number (1-65535) for peer {host}")
    return layout.pack(address.packed, port)


# -- hosts, as the per-host limits count them ------------------------------------------------

Holder = bytes


def holder_of(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Holder:
    """The unit the per-host limits count by: an IPv4 address, or an IPv6 address's /64.

    One IPv4 address is one host, or one NAT with a few hosts behind it.  An
    IPv6 host usually has a whole /64 to itself (SLAAC, privacy addresses), so
    counting single IPv6 addresses would let one host take any number of
    places; a home network's /64 is the IPv6 counterpart of a NAT'd IPv4
    address.  (4 bytes or 8: the two kinds never collide.)
    """
    packed = address.packed
    return packed if len(packed) == 4 else packed[:8]


def holder_of_text(ip: str) -> Holder:
    """:func:`holder_of` of an address in text (anything else, e.g. a simulator's name, is its own holder)."""
    try:
        return holder_of(ipaddress.ip_address(ip.split("%", 1)[0]))
    except ValueError:
        return ip.encode()
