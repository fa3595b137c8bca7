"""BEP 3's handshake, and the reserved bits of BEP 5, 6 and 10.

:func:`parse_handshake` works without a connection object so that the side
that accepted a connection can learn which torrent the remote wants (its
info-hash) before it builds the :class:`~pyowtorrent.wire.PeerConnection`.
"""

from __future__ import annotations

from .errors import LocalProtocolError, RemoteProtocolError, Violation
from .events import Handshake

__all__ = ["HANDSHAKE_LENGTH", "PROTOCOL", "encode_handshake", "parse_handshake"]

# The length-prefixed protocol string that opens every connection.
PROTOCOL = b"\x13BitTorrent protocol"
HANDSHAKE_LENGTH = len(PROTOCOL) + 8 + 20 + 20

# (byte of the 8 reserved bytes, bit mask)
_EXTENSION_PROTOCOL = (5, 0x10)  # BEP 10
_FAST = (7, 0x04)  # BEP 6
_DHT = (7, 0x01)  # BEP 5


def encode_handshake(handshake: Handshake) -> bytes:
    if len(handshake.info_hash) != 20 or len(handshake.peer_id) != 20:
        raise LocalProtocolError("the info-hash and the peer id are 20 bytes each")
    reserved = bytearray(8)
    for enabled, (byte, mask) in (
        (handshake.extension_protocol, _EXTENSION_PROTOCOL),
        (handshake.fast, _FAST),
        (handshake.dht, _DHT),
    ):
        if enabled:
            reserved[byte] |= mask
    return b"".join((PROTOCOL, reserved, handshake.info_hash, handshake.peer_id))


def parse_handshake(data: bytes | bytearray | memoryview) -> Handshake | None:
    """The handshake at the start of ``data``, or None if more bytes are needed.

    Bytes after the handshake are ignored (they are the first messages).
    Raises :class:`RemoteProtocolError` as soon as the bytes cannot be the
    start of a BitTorrent handshake, so that a stray HTTP request or an
    encrypted (MSE) stream is refused early.
    """
    head = bytes(data[: len(PROTOCOL)])
    if not PROTOCOL.startswith(head):
        raise RemoteProtocolError(Violation.BAD_PROTOCOL_STRING, f"the stream starts with {head!r}")
    if len(data) < HANDSHAKE_LENGTH:
        return None
    rest = bytes(data[len(PROTOCOL) : HANDSHAKE_LENGTH])
    reserved, info_hash, peer_id = rest[:8], rest[8:28], rest[28:]

    def bit(flag: tuple[int, int]) -> bool:
        return bool(reserved[flag[0]] & flag[1])

    return Handshake(info_hash, peer_id, fast=bit(_FAST), extension_protocol=bit(_EXTENSION_PROTOCOL), dht=bit(_DHT))
