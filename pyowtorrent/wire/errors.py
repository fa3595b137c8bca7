"""Who broke the wire protocol: the remote peer, or our own caller."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from ..errors import ProtocolError, PyowtorrentError

if TYPE_CHECKING:
    from .events import Event

__all__ = ["LocalProtocolError", "RemoteProtocolError", "Violation"]


class Violation(enum.StrEnum):
    """The rule a peer broke, one member per check, stable for code to test.

    Some rules are tolerated on receiving, as libtorrent tolerates them, and no longer end a
    connection: ``BITFIELD_SPARE_BITS`` (the bits are cleared), ``REJECT_NOT_REQUESTED``,
    ``INVALID_EXTENSION_HANDSHAKE`` and ``TOO_MANY_EXTENSION_HANDSHAKES`` (ignored), and
    ``INDEX_OUT_OF_RANGE``, ``BAD_BLOCK_LENGTH`` and ``BLOCK_OUT_OF_RANGE`` for everything but a
    ``have`` and a piece (see :mod:`pyowtorrent.wire.connection`).  The members stay: what we
    send is still held to them.
    """

    BAD_PROTOCOL_STRING = "bad protocol string"
    WRONG_INFO_HASH = "wrong info-hash"
    MESSAGE_TOO_LONG = "message too long"
    UNKNOWN_MESSAGE_ID = "unknown message id"
    FAST_NOT_NEGOTIATED = "fast extension not negotiated"
    EXTENSION_PROTOCOL_NOT_NEGOTIATED = "extension protocol not negotiated"
    WRONG_MESSAGE_LENGTH = "wrong message length"
    BITFIELD_WRONG_LENGTH = "bitfield of the wrong length"
    BITFIELD_SPARE_BITS = "bitfield with spare bits set"
    INDEX_OUT_OF_RANGE = "piece index out of range"
    BAD_BLOCK_LENGTH = "block length zero or over the limit"
    BLOCK_OUT_OF_RANGE = "block beyond the end of its piece"
    PIECE_NOT_REQUESTED = "piece not requested"
    REJECT_NOT_REQUESTED = "reject for a request never sent"
    INVALID_EXTENSION_HANDSHAKE = "invalid extension handshake"
    EXTENSION_HANDSHAKE_TOO_LONG = "extension handshake too long"
    TOO_MANY_EXTENSION_HANDSHAKES = "too many extension handshakes"
    EXTENDED_ID_NOT_ADVERTISED = "extended message id not advertised"
    INVALID_PEX = "invalid PEX message"
    PEX_TOO_LARGE = "PEX message too large"
    INVALID_METADATA_MESSAGE = "invalid ut_metadata message"
    METADATA_MESSAGE_TOO_LARGE = "ut_metadata message too large"
    METADATA_SIZE_OUT_OF_RANGE = "metadata size zero or over the limit"
    METADATA_PIECE_OUT_OF_RANGE = "metadata piece out of range"
    METADATA_WRONG_BLOCK_LENGTH = "metadata block of the wrong length"
    METADATA_SIZE_MISMATCH = "metadata size other than advertised"


class RemoteProtocolError(ProtocolError):
    """The remote peer broke a rule; the connection must be closed.

    ``reason`` names the rule.  ``events`` holds what the same
    :meth:`~pyowtorrent.wire.PeerConnection.receive_data` call decoded before
    the violation, so no event is lost however the stream was split.
    """

    def __init__(self, reason: Violation, detail: str, events: list[Event] | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.events: list[Event] = events if events is not None else []


class LocalProtocolError(PyowtorrentError, ValueError):
    """Our caller asked to send something the protocol does not allow.

    Not a :class:`ProtocolError`: a driver that closes the connection on
    ``ProtocolError`` must not mistake our own bug for a misbehaving peer.
    """
