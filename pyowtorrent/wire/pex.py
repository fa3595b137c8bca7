"""BEP 11 peer exchange (``ut_pex``): the message's bytes, both ways, bounded.

A ``ut_pex`` message is a bencoded dictionary of compact contact lists
(BEP 23's 6-byte IPv4 and 18-byte IPv6 forms) and one flag byte per added
contact::

    {added: <IPv4 contacts>, added.f: <flags>, added6: <IPv6 contacts>, added6.f: <flags>,
     dropped: <IPv4 contacts>, dropped6: <IPv6 contacts>}

:func:`decode_pex` reads what libtorrent reads and refuses what libtorrent
drops a peer for: input that is not a bencoded dictionary, and messages over
a size bound.  Like libtorrent it ignores a list that is not a byte string
and the bytes of a partial contact at the end of a list; unlike libtorrent
(which then ignores the whole ``added`` list) it takes contacts whose flag
string is missing or of the wrong length, with no flags.  Whether a contact
is worth dialling (its port, its address, a duplicate, ourselves) is the
engine's business, not the codec's.

:func:`encode_pex` holds what we send to BEP 11's musts: no duplicates, no
contact both added and dropped, and the same bounds we hold others to.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from typing import Any

from ..errors import BencodeError
from ..metainfo.bencoding import decode, encode
from .errors import LocalProtocolError, RemoteProtocolError, Violation
from .events import Pex, PexPeer

__all__ = ["MAX_PEX_CONTACTS", "MAX_PEX_MESSAGE", "PEX_EXTENSION", "PexFlags", "decode_pex", "encode_pex"]

PEX_EXTENSION = "ut_pex"
# libtorrent sends at most 100 added contacts a message, and drops what it had
# connected to since the last one (bounded by its connection limit, 200 by
# default); BEP 11 asks for at most 50 of each after the first message.  Five
# hundred contacts a list is far above any of them and bounds what one message
# makes us hold.
MAX_PEX_CONTACTS = 500
# Four lists of MAX_PEX_CONTACTS IPv6 contacts and their flags come to under
# 40 KiB.  Decoding bencode costs the event loop about 0.4 µs a byte, so the
# bound (libtorrent's is 500 KiB) also bounds the work a message makes us do.
MAX_PEX_MESSAGE = 64 << 10

_PORT = struct.Struct(">H")
# (contacts key, flags key or None, address length); IPv4 first, as decoded.
_ADDED = ((b"added", b"added.f", 4), (b"added6", b"added6.f", 16))
_DROPPED = ((b"dropped", 4), (b"dropped6", 16))


class PexFlags(enum.IntFlag):
    """BEP 11's flag bits, one byte per added contact."""

    ENCRYPTION = 0x01  # prefers encryption (the ``e`` of its extension handshake)
    SEED = 0x02  # a seed or upload-only
    UTP = 0x04  # supports uTP
    HOLEPUNCH = 0x08  # said ``ut_holepunch`` in its extension handshake
    REACHABLE = 0x10  # the sender connected to it: it accepts connections


# -- decoding ---------------------------------------------------------------------


def decode_pex(payload: bytes) -> Pex:
    """The contacts of one ``ut_pex`` message (the bytes after its extended id).

    Raises only :class:`RemoteProtocolError`: ``PEX_TOO_LARGE`` for a message
    or a list over its bound, ``INVALID_PEX`` for one that is not a bencoded
    dictionary.
    """
    if len(payload) > MAX_PEX_MESSAGE:
        raise RemoteProtocolError(Violation.PEX_TOO_LARGE, f"{len(payload)} bytes, the limit is {MAX_PEX_MESSAGE}")
    try:
        d = decode(bytes(payload))
    except BencodeError as exc:
        raise RemoteProtocolError(Violation.INVALID_PEX, str(exc)) from None
    if not isinstance(d, dict):
        raise RemoteProtocolError(Violation.INVALID_PEX, "not a bencoded dictionary")
    added: list[PexPeer] = []
    for key, flags_key, size in _ADDED:
        contacts = _contacts(d, key, size)
        flags = d.get(flags_key)
        if not isinstance(flags, bytes) or len(flags) != len(contacts):
            flags = bytes(len(contacts))  # BEP 11's flags are optional
        added += (PexPeer(ip, port, f) for (ip, port), f in zip(contacts, flags))
    dropped = [c for key, size in _DROPPED for c in _contacts(d, key, size)]
    return Pex(tuple(added), tuple(dropped))


def _contacts(d: dict[bytes, Any], key: bytes, size: int) -> list[tuple[str, int]]:
    data = d.get(key)
    if not isinstance(data, bytes):
        return []  # absent, or not a string: libtorrent ignores it too
    step = size + 2
    count = len(data) // step  # a partial contact at the end is ignored, as libtorrent does
    if count > MAX_PEX_CONTACTS:
        raise RemoteProtocolError(
            Violation.PEX_TOO_LARGE, f"{count} contacts in {key.decode()}, the limit is {MAX_PEX_CONTACTS}"
        )
    kind = ipaddress.IPv4Address if size == 4 else ipaddress.IPv6Address
    out = []
    for pos in range(0, count * step, step):
        (port,) = _PORT.unpack_from(data, pos + size)
        out.append((str(kind(data[pos : pos + size])), port))
    return out


# -- encoding ---------------------------------------------------------------------


def encode_pex(message: Pex) -> bytes:
    """The bencoded dictionary of ``message``; :class:`LocalProtocolError` if it breaks a rule of BEP 11."""
    if not message.added and not message.dropped:
        raise LocalProtocolError("a PEX message adds or drops at least one contact (BEP 11)")
    added = [(c.ip, c.port) for c in message.added]
    if len(set(added)) != len(added) or len(set(message.dropped)) != len(message.dropped):
        raise LocalProtocolError("a PEX message lists a contact twice (BEP 11)")
    if set(added) & set(message.dropped):
        raise LocalProtocolError("a PEX message adds and drops the same contact (BEP 11)")
    lists: dict[bytes, list[bytes]] = {key: [] for key in (b"added", b"added.f", b"added6", b"added6.f")}
    for contact in message.added:
        if not 0 <= contact.flags <= 0xFF:
            raise LocalProtocolError(f"PEX flags {contact.flags} do not fit a byte")
        packed = _pack(contact.ip, contact.port)
        six = b"6" if len(packed) == 18 else b""
        lists[b"added" + six].append(packed)
        lists[b"added" + six + b".f"].append(bytes((contact.flags,)))
    dropped: dict[bytes, list[bytes]] = {b"dropped": [], b"dropped6": []}
    for ip, port in message.dropped:
        packed = _pack(ip, port)
        dropped[b"dropped6" if len(packed) == 18 else b"dropped"].append(packed)
    out = {**lists, **dropped}
    for key, items in out.items():
        if len(items) > MAX_PEX_CONTACTS:
            raise LocalProtocolError(f"{len(items)} contacts in {key.decode()}, the limit is {MAX_PEX_CONTACTS}")
    # libtorrent writes every key, empty or not; the smaller message leaves the empty ones out.
    return encode({key: b"".join(items) for key, items in out.items() if items})


def _pack(ip: str, port: int) -> bytes:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise LocalProtocolError(f"{ip!r} is not an IP address") from None
    if not 0 <= port < 1 << 16:
        raise LocalProtocolError(f"port {port} is not a port number")
    return address.packed + _PORT.pack(port)
