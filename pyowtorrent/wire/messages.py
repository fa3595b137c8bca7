"""The byte layout of each message: ids, sizes, encoding, and BEP 10's dictionary.

Only the layout lives here; which message is legal when is the connection's
business (:mod:`pyowtorrent.wire.connection`).
"""

from __future__ import annotations

import enum
import struct
from typing import Any, Callable, TypeVar

from ..metainfo.bencoding import decode, encode
from ..errors import BencodeError
from .errors import LocalProtocolError, RemoteProtocolError, Violation
from .events import (
    AllowedFast,
    Bitfield,
    Cancel,
    Choke,
    Extended,
    ExtensionHandshake,
    Have,
    HaveAll,
    HaveNone,
    Interested,
    KeepAlive,
    Message,
    NotInterested,
    Piece,
    Port,
    Reject,
    Request,
    Suggest,
    Unchoke,
)

__all__ = [
    "EXTENSION_HANDSHAKE_ID",
    "FAST_IDS",
    "FIXED_LENGTH",
    "MessageId",
    "decode_extension_handshake",
    "encode_message",
]


T = TypeVar("T")
R = TypeVar("R")


class MessageId(enum.IntEnum):
    CHOKE = 0
    UNCHOKE = 1
    INTERESTED = 2
    NOT_INTERESTED = 3
    HAVE = 4
    BITFIELD = 5
    REQUEST = 6
    PIECE = 7
    CANCEL = 8
    PORT = 9  # BEP 5
    SUGGEST = 13  # BEP 6 from here
    HAVE_ALL = 14
    HAVE_NONE = 15
    REJECT = 16
    ALLOWED_FAST = 17
    EXTENDED = 20  # BEP 10


FAST_IDS = frozenset(
    {MessageId.SUGGEST, MessageId.HAVE_ALL, MessageId.HAVE_NONE, MessageId.REJECT, MessageId.ALLOWED_FAST}
)

# The length prefix (id byte included) of every message whose size is fixed.
FIXED_LENGTH: dict[int, int] = {
    MessageId.CHOKE: 1,
    MessageId.UNCHOKE: 1,
    MessageId.INTERESTED: 1,
    MessageId.NOT_INTERESTED: 1,
    MessageId.HAVE: 5,
    MessageId.REQUEST: 13,
    MessageId.CANCEL: 13,
    MessageId.PORT: 3,
    MessageId.SUGGEST: 5,
    MessageId.HAVE_ALL: 1,
    MessageId.HAVE_NONE: 1,
    MessageId.REJECT: 13,
    MessageId.ALLOWED_FAST: 5,
}

# BEP 10's extended message id of the extension handshake.
EXTENSION_HANDSHAKE_ID = 0

HEADER = struct.Struct(">IB")  # length prefix, message id
INDEX = struct.Struct(">I")
BLOCK = struct.Struct(">III")  # index, begin, length
PIECE_HEADER = struct.Struct(">IBII")  # length prefix, id, index, begin
PORT = struct.Struct(">H")

_LENGTH = struct.Struct(">I")
_WITH_INDEX = struct.Struct(">IBI")
_WITH_BLOCK = struct.Struct(">IBIII")
_WITH_PORT = struct.Struct(">IBH")


def _bare(msg_id: MessageId) -> bytes:
    return HEADER.pack(1, msg_id)


_BARE: dict[type, bytes] = {
    KeepAlive: _LENGTH.pack(0),
    Choke: _bare(MessageId.CHOKE),
    Unchoke: _bare(MessageId.UNCHOKE),
    Interested: _bare(MessageId.INTERESTED),
    NotInterested: _bare(MessageId.NOT_INTERESTED),
    HaveAll: _bare(MessageId.HAVE_ALL),
    HaveNone: _bare(MessageId.HAVE_NONE),
}
_INDEXED: dict[type, MessageId] = {
    Have: MessageId.HAVE,
    Suggest: MessageId.SUGGEST,
    AllowedFast: MessageId.ALLOWED_FAST,
}
_BLOCKS: dict[type, MessageId] = {Request: MessageId.REQUEST, Cancel: MessageId.CANCEL, Reject: MessageId.REJECT}


def encode_message(message: Message) -> bytes:
    """The bytes of ``message``, length prefix included (fields already validated)."""
    kind = type(message)
    bare = _BARE.get(kind)
    if bare is not None:
        return bare
    if isinstance(message, (Have, Suggest, AllowedFast)):
        return _WITH_INDEX.pack(5, _INDEXED[kind], message.index)
    if isinstance(message, (Request, Cancel, Reject)):
        return _WITH_BLOCK.pack(13, _BLOCKS[kind], message.index, message.begin, message.length)
    if isinstance(message, Piece):
        # One join: the block is copied once, straight into the message.
        header = PIECE_HEADER.pack(9 + len(message.block), MessageId.PIECE, message.index, message.begin)
        return b"".join((header, message.block))
    if isinstance(message, Bitfield):
        return b"".join((HEADER.pack(1 + len(message.bits), MessageId.BITFIELD), message.bits))
    if isinstance(message, Port):
        return _WITH_PORT.pack(3, MessageId.PORT, message.port)
    if isinstance(message, ExtensionHandshake):
        return _extended(EXTENSION_HANDSHAKE_ID, encode_extension_handshake(message))
    if isinstance(message, Extended):
        return _extended(message.ext_id, message.payload)
    raise LocalProtocolError(f"{message!r} is not a peer wire message")


def _extended(ext_id: int, payload: bytes) -> bytes:
    return b"".join((HEADER.pack(2 + len(payload), MessageId.EXTENDED), bytes((ext_id,)), payload))


def encode_extension_handshake(handshake: ExtensionHandshake) -> bytes:
    d: dict[bytes, Any] = dict(handshake.raw)
    d[b"m"] = {name.encode("utf-8"): ext_id for name, ext_id in handshake.m.items()}
    typed: tuple[tuple[bytes, object], ...] = (
        (b"v", None if handshake.v is None else handshake.v.encode("utf-8")),
        (b"reqq", handshake.reqq),
        (b"p", handshake.p),
        (b"yourip", handshake.yourip),
        (b"metadata_size", handshake.metadata_size),
    )
    for key, value in typed:
        if value is not None:
            d[key] = value
    try:
        return encode(d)
    except BencodeError as exc:
        raise LocalProtocolError(f"extension handshake cannot be bencoded: {exc}") from None


def decode_extension_handshake(payload: bytes) -> ExtensionHandshake:
    """BEP 10's dictionary; keys of the wrong type are ignored, as BEP 10 asks."""
    try:
        d = decode(payload)
    except BencodeError as exc:
        raise RemoteProtocolError(Violation.INVALID_EXTENSION_HANDSHAKE, str(exc)) from None
    if not isinstance(d, dict):
        raise RemoteProtocolError(Violation.INVALID_EXTENSION_HANDSHAKE, "not a bencoded dictionary")
    m: dict[str, int] = {}
    raw_m = d.get(b"m")
    if isinstance(raw_m, dict):
        for name, ext_id in raw_m.items():
            if isinstance(ext_id, int) and 0 <= ext_id <= 255:
                try:
                    m[name.decode("utf-8")] = ext_id
                except UnicodeDecodeError:
                    continue  # a name we cannot know, so one we do not use
    return ExtensionHandshake(
        m=m,
        v=_typed(d, b"v", bytes, lambda v: v.decode("utf-8", "replace")),
        reqq=_typed(d, b"reqq", int, lambda n: n if n > 0 else None),
        p=_typed(d, b"p", int, lambda n: n if 0 < n < 65536 else None),
        yourip=_typed(d, b"yourip", bytes, lambda ip: ip if len(ip) in (4, 16) else None),
        metadata_size=_typed(d, b"metadata_size", int, lambda n: n),
        raw=d,
    )


def _typed(d: dict[bytes, Any], key: bytes, kind: type[T], convert: Callable[[T], R | None]) -> R | None:
    value = d.get(key)
    return convert(value) if isinstance(value, kind) else None
