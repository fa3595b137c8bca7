"""One peer connection's wire protocol, sans I/O (in the style of h11).

Bytes from the socket go into :meth:`PeerConnection.receive_data`, which
returns events; events go into :meth:`PeerConnection.send`, which returns
the bytes to write.  The connection reads no socket and no clock: the driver
(``peer.py``) does the I/O, the timers and the keep-alives.

It checks every rule of BEP 3, 6 and 10 that one connection can see and
fails on the first broken one with a :class:`RemoteProtocolError` naming it.
What we send is held to the same rules (:class:`LocalProtocolError`), so a
bug of ours shows up here and not as a peer hanging up on us.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import get_args

from ..metainfo.layout import BLOCK_SIZE
from ._buffer import ByteQueue
from .bitfield import bitfield_length
from .errors import LocalProtocolError, RemoteProtocolError, Violation
from .events import (
    AllowedFast,
    Bitfield,
    Cancel,
    Choke,
    Event,
    Extended,
    ExtensionHandshake,
    Handshake,
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
from .handshake import HANDSHAKE_LENGTH, PROTOCOL, encode_handshake, parse_handshake
from .messages import (
    EXTENSION_HANDSHAKE_ID,
    FAST_IDS,
    FIXED_LENGTH,
    MessageId,
    decode_extension_handshake,
    encode_message,
)

# parse_handshake is re-exported: the accepting side needs it next to PeerConnection.
__all__ = ["DEFAULT_MAX_BLOCK", "DEFAULT_MAX_EXTENSION_MESSAGE", "PeerConnection", "parse_handshake"]

# BEP 3: "All current implementations use 2^14 (16 kiB), and close
# connections which request an amount greater than that."
DEFAULT_MAX_BLOCK = BLOCK_SIZE
# Extension messages carry metadata pieces (16 KiB) and peer lists; 1 MiB
# is far above any legitimate one and bounds what a peer makes us buffer.
DEFAULT_MAX_EXTENSION_MESSAGE = 1 << 20
# Answers we tolerate once (to a cancel, or to requests a BEP 3 choke
# dropped) are forgotten oldest first beyond this many: a peer that never
# answers must not make the set grow for the life of the connection.
_MAX_TOLERATED = 4096

_LENGTH = struct.Struct(">I")
_INDEX_BODY = struct.Struct(">xI")  # id, index
_BLOCK_BODY = struct.Struct(">xIII")  # id, index, begin, length
_PIECE_HEAD = struct.Struct(">xII")  # id, index, begin
_PORT_BODY = struct.Struct(">xH")

# Plain ints on the hot path: comparing with an IntEnum member costs an attribute lookup.
_PIECE, _BITFIELD, _PORT, _EXTENDED = (
    int(m) for m in (MessageId.PIECE, MessageId.BITFIELD, MessageId.PORT, MessageId.EXTENDED)
)
_FIRST_IDS = frozenset(int(i) for i in (MessageId.BITFIELD, MessageId.HAVE_ALL, MessageId.HAVE_NONE))
# Messages without fields are all alike: one instance each.
_KEEP_ALIVE = KeepAlive()
_CHOKE, _UNCHOKE, _INTERESTED, _NOT_INTERESTED = Choke(), Unchoke(), Interested(), NotInterested()
_HAVE_ALL, _HAVE_NONE = HaveAll(), HaveNone()
# BEP 6: bitfield, have all and have none only "immediately after the
# handshake".  Keep-alives and the messages of BEP 5 and 10 do not count:
# Transmission sends its extension handshake before its bitfield.
_BEFORE_FIRST = (KeepAlive, Port, ExtensionHandshake, Extended)
_FIRST = (Bitfield, HaveAll, HaveNone)
_FAST_MESSAGES = (Suggest, HaveAll, HaveNone, Reject, AllowedFast)
_MESSAGE_TYPES = frozenset(get_args(Message))

_BlockKey = tuple[int, int, int]  # index, begin, length


class PeerConnection:
    """The protocol state of one connection to one peer, for one torrent.

    Feed it the whole byte stream from the peer, the handshake included.
    Both sides send :meth:`handshake_bytes` first: the side that connected
    at once, the side that accepted after reading the remote's handshake
    (see :func:`~pyowtorrent.wire.parse_handshake`).  After a
    :class:`RemoteProtocolError` the connection is dead: close the socket.
    """

    def __init__(
        self,
        info_hash: bytes,
        peer_id: bytes,
        num_pieces: int,
        piece_length: int,
        total_length: int,
        *,
        fast: bool = True,
        extension_protocol: bool = True,
        dht: bool = False,
        max_block: int = DEFAULT_MAX_BLOCK,
        max_extension_message: int = DEFAULT_MAX_EXTENSION_MESSAGE,
    ) -> None:
        if len(info_hash) != 20 or len(peer_id) != 20:
            raise ValueError("the info-hash and the peer id are 20 bytes each")
        if piece_length <= 0 or total_length < 0 or num_pieces != -(-total_length // piece_length):
            raise ValueError(
                f"{num_pieces} pieces do not cover {total_length} bytes in pieces of {piece_length}"
            )
        if not 0 < max_block < 1 << 32 or max_extension_message < 2:
            raise ValueError("max_block and max_extension_message must be positive 32-bit sizes")
        self.info_hash = bytes(info_hash)
        self.local = Handshake(bytes(info_hash), bytes(peer_id), fast, extension_protocol, dht)
        self.remote: Handshake | None = None
        self.num_pieces = num_pieces
        self.piece_length = piece_length
        self.total_length = total_length
        self.max_block = max_block
        self.max_extension_message = max_extension_message
        self._last_piece_length = total_length - piece_length * (num_pieces - 1) if num_pieces else 0
        self._bitfield_length = bitfield_length(num_pieces)
        # BEP 3: connections start out choked and not interested.
        self.am_choking = True
        self.am_interested = False
        self.peer_choking = True
        self.peer_interested = False

        self._buffer = ByteQueue()
        self._failed: RemoteProtocolError | None = None
        self._handshake_sent = False
        self._length: int | None = None  # length prefix of the message being received
        self._header_checked = False
        self._max_length = 0  # set once the remote's handshake says what it speaks
        self._remote_started = False  # a message other than _BEFORE_FIRST was received
        self._local_started = False  # ... or sent
        # Requests we sent and how many answers each may still get: a
        # request sent again (say after a timeout) may be answered twice.
        self._requested: dict[_BlockKey, int] = {}
        self._tolerated: dict[_BlockKey, int] = {}
        self._remote_extensions: dict[str, int] = {}
        self._advertised_ids: set[int] = set()
        self._fixed_lengths: dict[int, int] = {}  # filled in by the remote's handshake

    # -- what was negotiated ------------------------------------------------

    @property
    def handshake_done(self) -> bool:
        return self._handshake_sent and self.remote is not None

    @property
    def fast_enabled(self) -> bool:
        """BEP 6 is in force only if both sides set its reserved bit."""
        return self.remote is not None and self.remote.fast and self.local.fast

    @property
    def extension_protocol_enabled(self) -> bool:
        return self.remote is not None and self.remote.extension_protocol and self.local.extension_protocol

    @property
    def remote_extensions(self) -> Mapping[str, int]:
        """Extension name -> the id the remote wants it sent under (BEP 10 ``m``)."""
        return MappingProxyType(self._remote_extensions)

    @property
    def outstanding_requests(self) -> frozenset[Request]:
        """Requests we sent that the remote has not yet answered, rejected, or had cancelled."""
        return frozenset(Request(*key) for key in self._requested)

    def piece_size(self, index: int) -> int:
        return self._last_piece_length if index == self.num_pieces - 1 else self.piece_length

    # -- sending ------------------------------------------------------------

    def handshake_bytes(self) -> bytes:
        """Our handshake: the first bytes we send, once."""
        if self._handshake_sent:
            raise LocalProtocolError("the handshake was already sent")
        self._handshake_sent = True
        return encode_handshake(self.local)

    def send(self, message: Message) -> bytes:
        """The bytes that send ``message``, after checking it is legal now."""
        if isinstance(message, Handshake):
            raise LocalProtocolError("send the handshake with handshake_bytes()")
        if type(message) not in _MESSAGE_TYPES:
            raise LocalProtocolError(f"{message!r} is not a peer wire message")
        if not self.handshake_done:
            # Which messages are legal depends on what the remote advertised.
            raise LocalProtocolError(f"cannot send {type(message).__name__} before both handshakes")
        self._check_outgoing(message)
        return encode_message(message)

    def _check_outgoing(self, message: Message) -> None:
        if isinstance(message, _FAST_MESSAGES) and not self.fast_enabled:
            raise LocalProtocolError(f"{type(message).__name__} needs the fast extension on both sides")
        if isinstance(message, (ExtensionHandshake, Extended)) and not self.extension_protocol_enabled:
            raise LocalProtocolError(f"{type(message).__name__} needs the extension protocol on both sides")
        starts = not isinstance(message, _BEFORE_FIRST)
        if starts and not self._local_started:
            if self.fast_enabled and not isinstance(message, _FIRST):
                raise LocalProtocolError("with the fast extension, bitfield, have all or have none comes first (BEP 6)")
        elif starts and isinstance(message, _FIRST):
            raise LocalProtocolError(f"{type(message).__name__} is only legal as the first message")
        try:
            self._validate_outgoing(message)
        except RemoteProtocolError as exc:  # the range checks are shared with receiving
            raise LocalProtocolError(exc.detail) from None
        self._local_started = self._local_started or starts

    def _validate_outgoing(self, message: Message) -> None:
        if isinstance(message, Choke):
            self.am_choking = True
        elif isinstance(message, Unchoke):
            self.am_choking = False
        elif isinstance(message, Interested):
            self.am_interested = True
        elif isinstance(message, NotInterested):
            self.am_interested = False
        elif isinstance(message, (Have, Suggest, AllowedFast)):
            self._check_index(message.index)
        elif isinstance(message, Bitfield):
            self._check_bitfield(message.bits)
        elif isinstance(message, Request):
            key = self._check_block(message.index, message.begin, message.length)
            self._requested[key] = self._requested.get(key, 0) + 1
        elif isinstance(message, Cancel):
            key = self._check_block(message.index, message.begin, message.length)
            if key not in self._requested:
                raise LocalProtocolError(f"{message} cancels no outstanding request")
            self._tolerate(key, self._requested.pop(key))
        elif isinstance(message, (Piece, Reject)):
            length = len(message.block) if isinstance(message, Piece) else message.length
            self._check_block(message.index, message.begin, length)
        elif isinstance(message, Port):
            if not self.local.dht:
                raise LocalProtocolError("a Port message advertises a DHT node, and we did not set the DHT bit")
            if not 0 <= message.port < 1 << 16:
                raise LocalProtocolError(f"port {message.port} is not a port number")
        elif isinstance(message, ExtensionHandshake):
            ids = [i for i in message.m.values() if i]
            if any(not 0 <= i <= 255 for i in message.m.values()) or len(ids) != len(set(ids)):
                raise LocalProtocolError(f"extension ids must be distinct bytes: {message.m}")
            self._advertised_ids.update(ids)
        elif isinstance(message, Extended):
            if message.ext_id not in self._remote_extensions.values():
                raise LocalProtocolError(f"the remote has no extension message with id {message.ext_id}")
            if 2 + len(message.payload) > self.max_extension_message:
                raise LocalProtocolError(f"extension message of {len(message.payload)} bytes is over the limit")

    # -- receiving ----------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """The events completed by ``data``, the next bytes from the peer.

        Incremental: however the stream is split, the same events come out.
        """
        if self._failed is not None:
            raise RemoteProtocolError(self._failed.reason, f"the connection already failed: {self._failed.detail}")
        # A caller's reusable buffer must not change under us; bytes are kept as they are.
        self._buffer.append(data if type(data) is bytes else bytes(data))
        events: list[Event] = []
        try:
            self._parse(events)
        except RemoteProtocolError as exc:
            exc.events = events
            self._failed = exc
            raise
        return events

    def _parse(self, events: list[Event]) -> None:
        buf = self._buffer
        if self.remote is None and not self._parse_handshake(events):
            return
        while True:
            length = self._length
            if length is None:
                if buf.size < 4:
                    return
                (length,) = _LENGTH.unpack(buf.take(4))
                if length == 0:
                    events.append(_KEEP_ALIVE)
                    continue
                if length > self._max_length:
                    raise RemoteProtocolError(
                        Violation.MESSAGE_TOO_LONG, f"{length}-byte message, the limit is {self._max_length}"
                    )
                self._length = length
                self._header_checked = False
            if not self._header_checked:
                if buf.size < 1:
                    return
                # Checked before the body arrives, so a bad header is refused
                # without buffering up to the length it announces.
                self._check_header(buf.peek_byte(), length)
                self._header_checked = True
            if buf.size < length:
                return
            self._length = None
            events.append(self._read_message(length))

    def _parse_handshake(self, events: list[Event]) -> bool:
        buf = self._buffer
        if buf.size < HANDSHAKE_LENGTH:
            parse_handshake(buf.peek(len(PROTOCOL)))  # refuse a bad protocol string early
            return False
        handshake = parse_handshake(buf.take(HANDSHAKE_LENGTH))
        assert handshake is not None
        if handshake.info_hash != self.info_hash:
            raise RemoteProtocolError(
                Violation.WRONG_INFO_HASH, f"the peer wants {handshake.info_hash.hex()}, not {self.info_hash.hex()}"
            )
        self.remote = handshake
        self._max_length = max(13, 9 + self.max_block, 1 + self._bitfield_length)
        if self.extension_protocol_enabled:
            self._max_length = max(self._max_length, self.max_extension_message)
        # The fixed-size messages legal on this connection, and their lengths.
        self._fixed_lengths = {
            msg_id: size for msg_id, size in FIXED_LENGTH.items() if self.fast_enabled or msg_id not in FAST_IDS
        }
        events.append(handshake)
        return True

    def _check_header(self, msg_id: int, length: int) -> None:
        fixed = self._fixed_lengths.get(msg_id)
        if fixed is not None:
            if msg_id in _FIRST_IDS and self._remote_started:
                raise RemoteProtocolError(Violation.NOT_FIRST_MESSAGE, f"{_name(msg_id)} after other messages")
            if length != fixed:
                raise RemoteProtocolError(
                    Violation.WRONG_MESSAGE_LENGTH, f"{_name(msg_id)} of length {length}, not {fixed}"
                )
        elif msg_id == _PIECE:
            if length < 9:
                raise RemoteProtocolError(Violation.WRONG_MESSAGE_LENGTH, f"piece of length {length}")
            if length - 9 > self.max_block:
                raise RemoteProtocolError(
                    Violation.MESSAGE_TOO_LONG, f"a block of {length - 9} bytes, the limit is {self.max_block}"
                )
        elif msg_id == _BITFIELD:
            if self._remote_started:
                raise RemoteProtocolError(Violation.NOT_FIRST_MESSAGE, "bitfield after other messages")
            if length != 1 + self._bitfield_length:
                raise RemoteProtocolError(
                    Violation.BITFIELD_WRONG_LENGTH,
                    f"{length - 1} bytes for {self.num_pieces} pieces, not {self._bitfield_length}",
                )
        elif msg_id == _EXTENDED and self.extension_protocol_enabled:
            if length < 2:
                raise RemoteProtocolError(Violation.WRONG_MESSAGE_LENGTH, "extended message without an extended id")
        elif msg_id in FAST_IDS:
            raise RemoteProtocolError(Violation.FAST_NOT_NEGOTIATED, f"{_name(msg_id)} message")
        elif msg_id == _EXTENDED:
            raise RemoteProtocolError(Violation.EXTENSION_PROTOCOL_NOT_NEGOTIATED, "extended message")
        else:
            raise RemoteProtocolError(Violation.UNKNOWN_MESSAGE_ID, f"message id {msg_id}")

    def _read_message(self, length: int) -> Message:
        buf = self._buffer
        msg_id = buf.peek_byte()
        # Piece and extended messages are cut in two so that their payload
        # is copied once, straight out of the received chunks.
        if msg_id == _PIECE:
            self._remote_started = True
            index, begin = _PIECE_HEAD.unpack(buf.take(9))
            return self._on_piece(index, begin, buf.take(length - 9))
        if msg_id == _EXTENDED:
            ext_id = buf.take(2)[1]
            return self._on_extended(ext_id, buf.take(length - 2))
        if msg_id != _PORT:
            self._remote_started = True
        return _READERS[msg_id](self, buf.take(length))

    def _on_choke(self) -> Choke:
        self.peer_choking = True
        if not self.fast_enabled:
            # BEP 3: a choke drops our requests, but pieces already on the
            # way may still arrive; BEP 6 instead answers each one.
            for key, count in self._requested.items():
                self._tolerate(key, count)
            self._requested.clear()
        return _CHOKE

    def _on_piece(self, index: int, begin: int, block: bytes) -> Piece:
        key = (index, begin, len(block))
        if not self._answer(key):
            raise RemoteProtocolError(
                Violation.PIECE_NOT_REQUESTED, f"piece {index} offset {begin} length {len(block)}"
            )
        return Piece(index, begin, block)

    def _on_reject(self, key: _BlockKey) -> Reject:
        if not self._answer(key):
            index, begin, length = key
            raise RemoteProtocolError(
                Violation.REJECT_NOT_REQUESTED, f"reject of piece {index} offset {begin} length {length}"
            )
        return Reject(*key)

    def _on_extended(self, ext_id: int, payload: bytes) -> ExtensionHandshake | Extended:
        if ext_id == EXTENSION_HANDSHAKE_ID:
            handshake = decode_extension_handshake(payload)
            # BEP 10: a later handshake changes only the names it lists; 0 disables.
            for name, remote_id in handshake.m.items():
                if remote_id:
                    self._remote_extensions[name] = remote_id
                else:
                    self._remote_extensions.pop(name, None)
            return handshake
        # Ids we advertised once stay accepted: an extension message may
        # cross the handshake that disabled it.
        if ext_id not in self._advertised_ids:
            raise RemoteProtocolError(Violation.EXTENDED_ID_NOT_ADVERTISED, f"extended message id {ext_id}")
        return Extended(ext_id, payload)

    # -- shared checks ------------------------------------------------------

    def _tolerate(self, key: _BlockKey, times: int) -> None:
        self._tolerated[key] = self._tolerated.pop(key, 0) + times
        if len(self._tolerated) > _MAX_TOLERATED:
            del self._tolerated[next(iter(self._tolerated))]

    def _answer(self, key: _BlockKey) -> bool:
        """Count a piece or reject against our requests; False if none expected it."""
        for expected in (self._requested, self._tolerated):
            count = expected.get(key)
            if count is not None:
                if count == 1:
                    del expected[key]
                else:
                    expected[key] = count - 1
                return True
        return False

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_pieces:
            raise RemoteProtocolError(Violation.INDEX_OUT_OF_RANGE, f"piece {index} of {self.num_pieces}")

    def _check_bitfield(self, bits: bytes) -> None:
        if len(bits) != self._bitfield_length:
            raise RemoteProtocolError(
                Violation.BITFIELD_WRONG_LENGTH,
                f"{len(bits)} bytes for {self.num_pieces} pieces, not {self._bitfield_length}",
            )
        spare = self._bitfield_length * 8 - self.num_pieces
        if spare and bits[-1] & ((1 << spare) - 1):
            raise RemoteProtocolError(Violation.BITFIELD_SPARE_BITS, f"last byte {bits[-1]:#04x}")

    def _check_block(self, index: int, begin: int, length: int) -> _BlockKey:
        self._check_index(index)
        if not 0 < length <= self.max_block:
            raise RemoteProtocolError(Violation.BAD_BLOCK_LENGTH, f"{length} bytes, the limit is {self.max_block}")
        if begin < 0 or begin + length > self.piece_size(index):
            raise RemoteProtocolError(
                Violation.BLOCK_OUT_OF_RANGE,
                f"bytes {begin}..{begin + length} of piece {index}, which has {self.piece_size(index)}",
            )
        return index, begin, length


def _name(msg_id: int) -> str:
    return MessageId(msg_id).name.lower().replace("_", " ")


# Decoders of the messages other than piece and extended, by id: each takes
# the whole body (id byte first) once its header has passed _check_header.
_Reader = Callable[[PeerConnection, bytes], Message]


def _flag(event: Message, attr: str, value: bool) -> _Reader:
    def read(conn: PeerConnection, _: bytes) -> Message:
        setattr(conn, attr, value)
        return event

    return read


def _indexed(kind: Callable[[int], Message]) -> _Reader:
    def read(conn: PeerConnection, body: bytes) -> Message:
        (index,) = _INDEX_BODY.unpack(body)
        conn._check_index(index)
        return kind(index)

    return read


def _block(kind: Callable[[int, int, int], Message]) -> _Reader:
    def read(conn: PeerConnection, body: bytes) -> Message:
        return kind(*conn._check_block(*_BLOCK_BODY.unpack(body)))

    return read


def _bitfield(conn: PeerConnection, body: bytes) -> Message:
    bits = body[1:]
    conn._check_bitfield(bits)
    return Bitfield(bits)


_READERS: dict[int, _Reader] = {
    MessageId.CHOKE: lambda conn, _: conn._on_choke(),
    MessageId.UNCHOKE: _flag(_UNCHOKE, "peer_choking", False),
    MessageId.INTERESTED: _flag(_INTERESTED, "peer_interested", True),
    MessageId.NOT_INTERESTED: _flag(_NOT_INTERESTED, "peer_interested", False),
    MessageId.HAVE: _indexed(Have),
    MessageId.BITFIELD: _bitfield,
    MessageId.REQUEST: _block(Request),
    MessageId.CANCEL: _block(Cancel),
    MessageId.PORT: lambda _, body: Port(*_PORT_BODY.unpack(body)),
    MessageId.SUGGEST: _indexed(Suggest),
    MessageId.HAVE_ALL: lambda conn, _: _HAVE_ALL,
    MessageId.HAVE_NONE: lambda conn, _: _HAVE_NONE,
    MessageId.REJECT: lambda conn, body: conn._on_reject(conn._check_block(*_BLOCK_BODY.unpack(body))),
    MessageId.ALLOWED_FAST: _indexed(AllowedFast),
}
