"""One peer connection's wire protocol, sans I/O (in the style of h11).

Bytes from the socket go into :meth:`PeerConnection.receive_data`, which
returns events; events go into :meth:`PeerConnection.send`, which returns
the bytes to write.  The connection reads no socket and no clock: the driver
(``peer.py``) does the I/O, the timers and the keep-alives.

It is strict where a broken rule could hurt us (sizes, bounds, the index of
a ``have``, blocks that would land in the wrong place, what was negotiated)
and fails on the first such break with a :class:`RemoteProtocolError` naming
it.  Where real clients break the letter of BEP 3, 6 and 10 and libtorrent
lets them, so do we, logging each at debug level: a bitfield's spare bits are
cleared; a suggest, allowed fast, cancel or reject out of range, a reject of
nothing we asked, and an extension handshake that does not decode or comes
after the eighth are ignored (and counted in :attr:`PeerConnection.ignored_messages`
for the driver to charge); an invalid request becomes an
:class:`~pyowtorrent.wire.events.InvalidRequest` for the driver to reject and
count; a piece in range that we did not ask for becomes an
:class:`~pyowtorrent.wire.events.UnrequestedPiece` (its bytes dropped); a
piece of 0 bytes is a reject (BitComet).
What we send is held to the strict rules (:class:`LocalProtocolError`), so a
bug of ours shows up here and not as a peer hanging up on us.

The rules live beside it, one concern each: ``_limits`` (piece indices,
blocks, bitfields, message headers), ``_requests`` (what we asked for and may
still be answered), ``_extensions`` (BEP 10 ids), ``pex`` (BEP 11's message).
This module ties them to the byte stream, and keeps receiving a piece to a
handful of calls.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import get_args

from ..metainfo.layout import BLOCK_SIZE
from ._buffer import ByteQueue
from ._extensions import ExtensionIds
from ._limits import BlockKey, HeaderRules, make_bounds
from ._requests import RequestLedger
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
    InvalidRequest,
    KeepAlive,
    Message,
    MetadataData,
    MetadataMessage,
    MetadataReject,
    MetadataRequest,
    NotInterested,
    Pex,
    Piece,
    Port,
    Reject,
    Request,
    Suggest,
    Unchoke,
    UnrequestedPiece,
)
from .handshake import HANDSHAKE_LENGTH, PROTOCOL, encode_handshake, parse_handshake
from .messages import EXTENSION_HANDSHAKE_ID, MessageId, decode_extension_handshake, encode_message
from .metadata import METADATA_EXTENSION, decode_metadata_message, encode_metadata_message
from .pex import PEX_EXTENSION, decode_pex, encode_pex

# parse_handshake is re-exported: the accepting side needs it next to PeerConnection.
__all__ = ["DEFAULT_MAX_BLOCK", "DEFAULT_MAX_EXTENSION_MESSAGE", "PeerConnection", "parse_handshake"]

log = logging.getLogger(__name__)

# BEP 3: "All current implementations use 2^14 (16 kiB), and close
# connections which request an amount greater than that."
DEFAULT_MAX_BLOCK = BLOCK_SIZE
# Extension messages carry metadata pieces (16 KiB) and peer lists; 1 MiB
# is far above any legitimate one and bounds what a peer makes us buffer.
DEFAULT_MAX_EXTENSION_MESSAGE = 1 << 20
# A BEP 10 handshake is a small dictionary (well under 1 KiB from every client
# we know); decoding bencode costs ~0.4 µs a byte, so a bound keeps a peer from
# spending the event loop's time.  BEP 10 lets a peer send it again to change
# its ids; a handful of times is plenty (later ones are ignored).
MAX_EXTENSION_HANDSHAKE = 16 << 10
MAX_EXTENSION_HANDSHAKES = 8
# Invalid requests received that we may still send a reject for, oldest
# forgotten first: above the engine's bound on them (conduct.py), so a reject
# sent at once always finds its request.
_MAX_INVALID_REQUESTS = 1024

_INDEX_BODY = struct.Struct(">xI")  # id, index
_BLOCK_BODY = struct.Struct(">xIII")  # id, index, begin, length
_PIECE_HEAD = struct.Struct(">xII")  # id, index, begin
_REQUEST = struct.Struct(">IBIII")  # a whole request: its length, id, index, begin, length
_REQUEST_ID = int(MessageId.REQUEST)
_HAVE = struct.Struct(">IBI")  # a whole have: its length, id, index
_HAVE_ID = int(MessageId.HAVE)
_PIECE_HEADER = struct.Struct(">IBII")  # a piece message's head: its length, id, index, begin
_PORT_BODY = struct.Struct(">xH")
_LENGTH_PREFIX = struct.Struct(">I")

# Plain ints on the hot path: comparing with an IntEnum member costs an attribute lookup.
_PIECE, _PORT, _EXTENDED = (int(m) for m in (MessageId.PIECE, MessageId.PORT, MessageId.EXTENDED))
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
_METADATA_MESSAGES = (MetadataRequest, MetadataData, MetadataReject)


class PeerConnection:
    """The protocol state of one connection to one peer, for one torrent.

    Feed it the whole byte stream from the peer, the handshake included.
    Both sides send :meth:`handshake_bytes` first: the side that connected
    at once, the side that accepted after reading the remote's handshake
    (see :func:`~pyowtorrent.wire.parse_handshake`).  After a
    :class:`RemoteProtocolError` the connection is dead: close the socket.

    With ``pex`` the connection speaks BEP 11: once our extension handshake
    has advertised ``ut_pex``, what arrives under its id is decoded into
    :class:`~pyowtorrent.wire.events.Pex` events, and a ``Pex`` may be sent
    to a remote that advertised it.  Without it (a private torrent, BEP 27)
    neither happens.  ``metadata`` does the same for BEP 9's ``ut_metadata``
    (:data:`~pyowtorrent.wire.events.MetadataMessage`); an unknown
    ``msg_type`` is ignored, as BEP 9 asks (no event).  Before the metadata
    is known (a magnet link) the shape is ``None``: :meth:`without_metadata`.
    """

    def __init__(
        self,
        info_hash: bytes,
        peer_id: bytes,
        num_pieces: int | None,
        piece_length: int | None,
        total_length: int | None,
        *,
        fast: bool = True,
        extension_protocol: bool = True,
        dht: bool = False,
        pex: bool = False,
        metadata: bool = False,
        max_block: int = DEFAULT_MAX_BLOCK,
        max_extension_message: int = DEFAULT_MAX_EXTENSION_MESSAGE,
    ) -> None:
        if len(info_hash) != 20 or len(peer_id) != 20:
            raise ValueError("the info-hash and the peer id are 20 bytes each")
        if not 0 < max_block < 1 << 32 or max_extension_message < 2:
            raise ValueError("max_block and max_extension_message must be positive 32-bit sizes")
        self._bounds = make_bounds(num_pieces, piece_length, total_length, max_block)
        self.info_hash = bytes(info_hash)
        self.local = Handshake(bytes(info_hash), bytes(peer_id), fast, extension_protocol, dht)
        self.remote: Handshake | None = None
        self.num_pieces = num_pieces
        self.piece_length = piece_length
        self.total_length = total_length
        self.max_block = max_block
        self.max_extension_message = max_extension_message
        self.pex = pex
        self.metadata = metadata
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
        self._headers: HeaderRules | None = None  # set once the remote's handshake says what it speaks
        self._local_started = False  # ... or sent
        self._requests = RequestLedger()
        self._extensions = ExtensionIds()
        self._extension_handshakes = 0
        self._invalid_requests: dict[BlockKey, int] = {}  # received, and how many rejects they may get
        # Messages received and ignored (no event): the driver may charge them to the peer, as it
        # does messages that carry nothing, so that a flood of them is not free.
        self.ignored_messages = 0

    @classmethod
    def without_metadata(cls, info_hash: bytes, peer_id: bytes, *, pex: bool = False, fast: bool = True) -> PeerConnection:
        """A connection that fetches the metadata (BEP 9) of a torrent whose shape is not known yet."""
        return cls(info_hash, peer_id, None, None, None, fast=fast, pex=pex, metadata=True)

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
        return MappingProxyType(self._extensions.remote)

    @property
    def outstanding_requests(self) -> frozenset[Request]:
        """Requests we sent that the remote has not yet answered, rejected, or had cancelled."""
        return frozenset(Request(*key) for key in self._requests.outstanding)

    def piece_size(self, index: int) -> int:
        return self._bounds.piece_size(index)

    # -- sending ------------------------------------------------------------

    def handshake_bytes(self) -> bytes:
        """Our handshake: the first bytes we send, once."""
        if self._handshake_sent:
            raise LocalProtocolError("the handshake was already sent")
        self._handshake_sent = True
        return encode_handshake(self.local)

    def send(self, message: Message | Pex | MetadataMessage) -> bytes:
        """The bytes that send ``message``, after checking it is legal now."""
        if isinstance(message, _METADATA_MESSAGES):
            if not self.metadata:
                raise LocalProtocolError("this connection does not speak ut_metadata")
            message = Extended(self._extensions.remote_id(METADATA_EXTENSION), encode_metadata_message(message))
        elif isinstance(message, Pex):
            if not self.pex:
                raise LocalProtocolError("this connection does not speak ut_pex")
            message = Extended(self._extensions.remote_id(PEX_EXTENSION), encode_pex(message))
        if isinstance(message, Handshake):
            raise LocalProtocolError("send the handshake with handshake_bytes()")
        if type(message) not in _MESSAGE_TYPES:
            raise LocalProtocolError(f"{message!r} is not a peer wire message")
        if not self.handshake_done:
            # Which messages are legal depends on what the remote advertised.
            raise LocalProtocolError(f"cannot send {type(message).__name__} before both handshakes")
        self._check_outgoing(message)
        return encode_message(message)

    def send_requests(self, blocks: Iterable[tuple[int, int, int]]) -> bytes:
        """``b"".join(send(Request(*b)) for b in blocks)``, checked the same way but without an event
        object and type dispatch per block: a leecher sends a request per 16 KiB it receives."""
        if not (self.handshake_done and self._local_started):
            return b"".join(self.send(Request(*block)) for block in blocks)
        check, sent, pack = self._bounds.check_block, self._requests.sent, _REQUEST.pack
        out = bytearray()
        try:
            for block in blocks:
                sent(check(*block))
                out += pack(13, _REQUEST_ID, *block)
        except RemoteProtocolError as exc:  # the range checks are shared with receiving
            raise LocalProtocolError(exc.detail) from None
        return bytes(out)

    def send_haves(self, indices: Iterable[int]) -> bytes:
        """``b"".join(send(Have(i)) for i in indices)``, as :meth:`send_requests`: a peer in a swarm
        tells each of its peers of every piece it gets, a few at a time."""
        if not (self.handshake_done and self._local_started):
            return b"".join(self.send(Have(index)) for index in indices)
        check, pack = self._bounds.check_index, _HAVE.pack
        out = bytearray()
        try:
            for index in indices:
                check(index)
                out += pack(5, _HAVE_ID, index)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(exc.detail) from None
        return bytes(out)

    def send_pieces(self, blocks: Sequence[tuple[int, int, bytes | memoryview]]) -> bytes:
        """``b"".join(send(Piece(*b)) for b in blocks)``, as :meth:`send_requests`: the blocks of one
        disk read go out in one write, each copied once, into it."""
        if not (self.handshake_done and self._local_started):
            return b"".join(self.send(Piece(*block)) for block in blocks)
        check, pack = self._bounds.check_block, _PIECE_HEADER.pack
        parts: list[bytes | memoryview] = []
        try:
            for index, begin, block in blocks:
                check(index, begin, len(block))
                parts += (pack(9 + len(block), _PIECE, index, begin), block)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(exc.detail) from None
        return b"".join(parts)

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
            _validate_outgoing(self, message)
        except RemoteProtocolError as exc:  # the range checks are shared with receiving
            raise LocalProtocolError(exc.detail) from None
        self._local_started = self._local_started or starts

    # -- receiving ----------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """The events completed by ``data``, the next bytes from the peer.

        Incremental: however the stream is split, the same events come out.
        """
        if self._failed is not None:
            raise RemoteProtocolError(self._failed.reason, f"the connection already failed: {self._failed.detail}")
        # A caller's reusable buffer must not change under us; bytes are kept as they are.
        self._buffer.append(data if type(data) is bytes else bytes(data))
        return self._parse_events()

    def receive_borrowed(self, data: memoryview) -> list[Event]:
        """:meth:`receive_data` without copying ``data``, a view of a buffer the caller reuses after.

        The ``block`` of a :class:`~pyowtorrent.wire.events.Piece` event may be
        a view into ``data``: copy it before reusing the buffer.  Every other
        event, and what is kept of ``data`` for the next call, is copied, and
        so are the events a :class:`RemoteProtocolError` carries (they are
        handled after the call, when the buffer may hold another read).
        """
        if self._failed is not None:
            raise RemoteProtocolError(self._failed.reason, f"the connection already failed: {self._failed.detail}")
        self._buffer.append_borrowed(data)
        try:
            return self._parse_events()
        except RemoteProtocolError as exc:
            exc.events = [
                Piece(e.index, e.begin, bytes(e.block)) if type(e) is Piece and type(e.block) is memoryview else e
                for e in exc.events
            ]
            self._buffer = ByteQueue()  # failed: nothing more is read, so nothing of the read is kept
            raise
        finally:
            self._buffer.detach()

    def _parse_events(self) -> list[Event]:
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
        headers = self._headers
        if headers is None:
            headers = self._parse_handshake(events)
            if headers is None:
                return
        max_length = headers.max_length
        check_header = headers.check
        while True:
            length = self._length
            if length is None:
                # Most messages lie whole in the chunk just read: those are read in place.
                chunk, start = buf.first()
                end = self._read_whole(chunk, start, events)
                if end != start:
                    buf.skip(end - start)
                if buf.size < 4:
                    return
                length = buf.take_u32()
                if length == 0:
                    events.append(_KEEP_ALIVE)
                    continue
                if length > max_length:
                    raise RemoteProtocolError(
                        Violation.MESSAGE_TOO_LONG, f"{length}-byte message, the limit is {max_length}"
                    )
                self._length = length
                self._header_checked = False
            if not self._header_checked:
                if buf.size < 1:
                    return
                # Checked before the body arrives, so a bad header is refused
                # without buffering up to the length it announces.
                check_header(buf.peek_byte(), length)
                self._header_checked = True
            if buf.size < length:
                return
            self._length = None
            event = self._read(buf.take_view(length))
            if event is not None:
                events.append(event)

    def _read_whole(self, chunk: bytes | memoryview, pos: int, events: list[Event]) -> int:
        """Read the messages that lie whole in ``chunk`` from ``pos``, with no per-message cut
        of the byte queue: a leecher's reads hold a dozen blocks each.  Returns where the first
        one that does not (or a keep-alive, or one too long) starts: :meth:`_parse` takes it on."""
        headers = self._headers
        assert headers is not None
        max_length, check_header, read = headers.max_length, headers.check, self._read
        size = len(chunk)
        while size - pos > 4:
            (length,) = _LENGTH_PREFIX.unpack_from(chunk, pos)
            end = pos + 4 + length
            if end > size or not 0 < length <= max_length:
                break
            check_header(chunk[pos + 4], length)
            event = read(chunk[pos + 4 : end])
            if event is not None:
                events.append(event)
            pos = end
        return pos

    def _parse_handshake(self, events: list[Event]) -> HeaderRules | None:
        """The remote's handshake, if it is all here; then the rules of what may follow it."""
        buf = self._buffer
        if buf.size < HANDSHAKE_LENGTH:
            parse_handshake(buf.peek(len(PROTOCOL)))  # refuse a bad protocol string early
            return None
        handshake = parse_handshake(buf.take(HANDSHAKE_LENGTH))
        assert handshake is not None
        if handshake.info_hash != self.info_hash:
            raise RemoteProtocolError(
                Violation.WRONG_INFO_HASH, f"the peer wants {handshake.info_hash.hex()}, not {self.info_hash.hex()}"
            )
        self.remote = handshake
        self._headers = headers = HeaderRules(
            self._bounds,
            fast=self.fast_enabled,
            extension_protocol=self.extension_protocol_enabled,
            max_extension_message=self.max_extension_message,
        )
        events.append(handshake)
        return headers

    def _read(self, message: bytes | memoryview) -> Event | None:
        """One whole message, its id first (the length prefix taken off); a view only for a piece."""
        msg_id = message[0]
        if msg_id == _PIECE:
            # The block stays a view of the message (of the driver's buffer, when borrowed):
            # it is copied once, by the driver, into the piece.  A leecher does this per 16 KiB.
            index, begin = _PIECE_HEAD.unpack_from(message)
            block = message[9:] if type(message) is memoryview else memoryview(message)[9:]
            length = len(block)
            if self._requests.answer((index, begin, length)):
                return Piece(index, begin, block)
            return _unrequested_piece(self, index, begin, length)
        body = message if type(message) is bytes else bytes(message)
        if msg_id == _EXTENDED:
            return _read_extended(self, body[1], body[2:])
        return _READERS[msg_id](self, body)


def _validate_outgoing(conn: PeerConnection, message: Message) -> None:
    """What sending ``message`` changes on ``conn``, once checked against its bounds and state."""
    bounds = conn._bounds
    # The types are disjoint (send() takes no subclass), so the order is
    # only speed: a leecher sends a request per block.
    if isinstance(message, Request):
        conn._requests.sent(bounds.check_block(message.index, message.begin, message.length))
    elif isinstance(message, Choke):
        conn.am_choking = True
    elif isinstance(message, Unchoke):
        conn.am_choking = False
    elif isinstance(message, Interested):
        conn.am_interested = True
    elif isinstance(message, NotInterested):
        conn.am_interested = False
    elif isinstance(message, (Have, Suggest, AllowedFast)):
        bounds.check_index(message.index)
    elif isinstance(message, Bitfield):
        bounds.check_bitfield(message.bits)
    elif isinstance(message, Cancel):
        if not conn._requests.cancel(bounds.check_block(message.index, message.begin, message.length)):
            raise LocalProtocolError(f"{message} cancels no outstanding request")
    elif isinstance(message, Reject):
        key = (message.index, message.begin, message.length)
        count = conn._invalid_requests.get(key)
        if count is None:
            bounds.check_block(*key)
        elif count == 1:  # an invalid request is rejected as it came, once each
            del conn._invalid_requests[key]
        else:
            conn._invalid_requests[key] = count - 1
    elif isinstance(message, Piece):
        bounds.check_block(message.index, message.begin, len(message.block))
    elif isinstance(message, Port):
        if not conn.local.dht:
            raise LocalProtocolError("a Port message advertises a DHT node, and we did not set the DHT bit")
        if not 0 <= message.port < 1 << 16:
            raise LocalProtocolError(f"port {message.port} is not a port number")
    elif isinstance(message, ExtensionHandshake):
        conn._extensions.advertise(message.m)
    elif isinstance(message, Extended):
        conn._extensions.check_outgoing(message, conn.max_extension_message)


def _read_extended(
    conn: PeerConnection, ext_id: int, payload: bytes
) -> ExtensionHandshake | Extended | Pex | MetadataMessage | None:
    """A BEP 10 message: the extension handshake, or one of the extensions we speak, or as it came."""
    if ext_id == EXTENSION_HANDSHAKE_ID:
        if len(payload) > MAX_EXTENSION_HANDSHAKE:
            raise RemoteProtocolError(
                Violation.EXTENSION_HANDSHAKE_TOO_LONG, f"{len(payload)} bytes, over {MAX_EXTENSION_HANDSHAKE}"
            )
        conn._extension_handshakes += 1
        if conn._extension_handshakes > MAX_EXTENSION_HANDSHAKES:
            log.debug("ignored extension handshake %d: over %d", conn._extension_handshakes, MAX_EXTENSION_HANDSHAKES)
            conn.ignored_messages += 1
            return None
        try:
            handshake = decode_extension_handshake(payload)
        except RemoteProtocolError as exc:  # libtorrent ignores it: the peer has no extensions we know
            log.debug("ignored an extension handshake: %s", exc)
            conn.ignored_messages += 1
            return None
        conn._extensions.update_remote(handshake)
        return handshake
    name = conn._extensions.check_incoming(ext_id)
    if name == PEX_EXTENSION and conn.pex:
        return decode_pex(payload)
    if name == METADATA_EXTENSION and conn.metadata:
        return decode_metadata_message(payload)
    return Extended(ext_id, payload)


def _unrequested_piece(conn: PeerConnection, index: int, begin: int, length: int) -> Reject | UnrequestedPiece | None:
    """A piece message that answers no request of ours."""
    bounds = conn._bounds
    if length == 0:
        # BitComet rejects with a piece of no bytes: the reject of the block we asked at that offset.
        if not 0 <= index < bounds.num_pieces or not 0 <= begin < bounds.piece_size(index):
            log.debug("ignored an empty piece %d offset %d: out of range", index, begin)
            conn.ignored_messages += 1
            return None
        return _read_reject(conn, index, begin, min(BLOCK_SIZE, conn.max_block, bounds.piece_size(index) - begin))
    if not bounds.on_block_grid(index, begin, length):
        # Bytes that cannot be a block of ours: the peer has the torrent's shape wrong.
        raise RemoteProtocolError(
            Violation.PIECE_NOT_REQUESTED,
            f"piece {index} offset {begin} length {length}: out of range or off the block grid",
        )
    # In range and a real block: late (a request we timed out) or a peer's mistake.  libtorrent
    # drops it and counts it as waste, so do we (the driver counts).
    return UnrequestedPiece(index, begin, length)


def _read_reject(conn: PeerConnection, index: int, begin: int, length: int) -> Reject | None:
    """A reject (or BitComet's empty piece): of a request of ours, or ignored."""
    if not conn._requests.answer((index, begin, length)):
        # libtorrent: "not in request queue" (a cancel crossed it, or a peer's mistake).
        log.debug("ignored a reject of piece %d offset %d length %d: not requested", index, begin, length)
        conn.ignored_messages += 1
        return None
    return Reject(index, begin, length)


# Decoders of the messages other than piece and extended, by id: each takes
# the whole body (id byte first) once its header has passed HeaderRules.check.
_Reader = Callable[[PeerConnection, bytes], Message | InvalidRequest | None]


def _flag(event: Message, attr: str, value: bool) -> _Reader:
    def read(conn: PeerConnection, _: bytes) -> Message:
        setattr(conn, attr, value)
        return event

    return read


def _have(conn: PeerConnection, body: bytes) -> Message:
    (index,) = _INDEX_BODY.unpack(body)
    conn._bounds.check_index(index)  # strict: libtorrent disconnects too
    return Have(index)


def _hint(kind: Callable[[int], Message]) -> _Reader:
    """Suggest and allowed fast: a hint out of range is ignored (libtorrent logs and ignores it)."""

    def read(conn: PeerConnection, body: bytes) -> Message | None:
        (index,) = _INDEX_BODY.unpack(body)
        if not 0 <= index < conn._bounds.num_pieces:
            log.debug("ignored %s of piece %d of %d", kind.__name__, index, conn._bounds.num_pieces)
            conn.ignored_messages += 1
            return None
        return kind(index)

    return read


def _request(conn: PeerConnection, body: bytes) -> Request | InvalidRequest:
    key: BlockKey = _BLOCK_BODY.unpack(body)
    try:
        return Request(*conn._bounds.check_block(*key))
    except RemoteProtocolError as exc:
        invalid = conn._invalid_requests
        if key not in invalid and len(invalid) >= _MAX_INVALID_REQUESTS:
            del invalid[next(iter(invalid))]
        invalid[key] = invalid.get(key, 0) + 1
        return InvalidRequest(*key, exc.detail)


def _cancel(conn: PeerConnection, body: bytes) -> Message | None:
    key: BlockKey = _BLOCK_BODY.unpack(body)
    try:
        return Cancel(*conn._bounds.check_block(*key))
    except RemoteProtocolError as exc:  # it cancels nothing we could be serving
        log.debug("ignored a cancel: %s", exc.detail)
        conn.ignored_messages += 1
        return None


def _bitfield(conn: PeerConnection, body: bytes) -> Message:
    # Its length was checked with the header; spare bits set are cleared (libtorrent ignores them).
    return Bitfield(conn._bounds.mask_spare_bits(body[1:]))


def _choke(conn: PeerConnection, _: bytes) -> Message:
    conn.peer_choking = True
    if not conn.fast_enabled:
        # BEP 3: a choke drops our requests, but pieces already on the
        # way may still arrive; BEP 6 instead answers each one.
        conn._requests.drop_all()
    return _CHOKE


def _reject(conn: PeerConnection, body: bytes) -> Message | None:
    # Out of range it answers none of our requests, which are all in range: ignored as well.
    return _read_reject(conn, *_BLOCK_BODY.unpack(body))


_READERS: dict[int, _Reader] = {
    MessageId.CHOKE: _choke,
    MessageId.UNCHOKE: _flag(_UNCHOKE, "peer_choking", False),
    MessageId.INTERESTED: _flag(_INTERESTED, "peer_interested", True),
    MessageId.NOT_INTERESTED: _flag(_NOT_INTERESTED, "peer_interested", False),
    MessageId.HAVE: _have,
    MessageId.BITFIELD: _bitfield,
    MessageId.REQUEST: _request,
    MessageId.CANCEL: _cancel,
    MessageId.PORT: lambda _, body: Port(*_PORT_BODY.unpack(body)),
    MessageId.SUGGEST: _hint(Suggest),
    MessageId.HAVE_ALL: lambda conn, _: _HAVE_ALL,
    MessageId.HAVE_NONE: lambda conn, _: _HAVE_NONE,
    MessageId.REJECT: _reject,
    MessageId.ALLOWED_FAST: _hint(AllowedFast),
}
