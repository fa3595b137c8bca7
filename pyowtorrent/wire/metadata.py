"""BEP 9 metadata exchange (``ut_metadata``): the codec, fetching the info dictionary, serving it.

A ``ut_metadata`` message (the bytes after its extended id) is a bencoded
dictionary, and for ``data`` the block of metadata right after it::

    d8:msg_typei0e5:piecei3ee                          request piece 3
    d8:msg_typei1e5:piecei3e10:total_sizei70000ee<block>  data
    d8:msg_typei2e5:piecei3ee                          reject

The metadata (the info dictionary's bytes, whose SHA-1 is the info-hash) is
cut into 16 KiB pieces; every block is 16 KiB but the last.

:func:`decode_metadata_message` drops a peer where libtorrent does (a message
over 17 KiB, not a dictionary, no integer ``msg_type`` or ``piece``) and,
stricter, for a ``data`` message that breaks one of BEP 9's musts: no
``total_size``, one over :data:`MAX_METADATA_SIZE`, a piece out of range, a
block of the wrong length (libtorrent ignores those; a block of the wrong
length would fail the info-hash check anyway and cost every sender a redo).
An unknown ``msg_type`` is ignored, as BEP 9 requires (``None``).  A request
or reject for any piece number decodes: a request out of range is answered
with a reject (:class:`MetadataServer`), a reject for a piece never asked
is ignored (:class:`MetadataAssembler`), as libtorrent does.

:class:`MetadataAssembler` decides which piece to ask which peer for and
checks the whole against the info-hash; :class:`MetadataServer` answers
requests.  Neither knows the time: timeouts and write completions are
calls.  Peers are any hashable key the engine chooses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import BencodeError
from ..metainfo.bencoding import decode, encode
from ..metainfo.torrent_file import MAX_TORRENT_SIZE
from .errors import LocalProtocolError, RemoteProtocolError, Violation
from .events import ExtensionHandshake, MetadataData, MetadataMessage, MetadataReject, MetadataRequest

__all__ = [
    "MAX_METADATA_MESSAGE",
    "MAX_METADATA_SIZE",
    "MAX_OUTSTANDING_PER_PEER",
    "MAX_QUEUED_ANSWERS",
    "METADATA_BLOCK",
    "METADATA_EXTENSION",
    "SERVES_PER_PIECE",
    "MetadataAssembler",
    "MetadataData",
    "MetadataFailed",
    "MetadataMessage",
    "MetadataReject",
    "MetadataRequest",
    "MetadataServer",
    "MetadataVerified",
    "advertised_metadata_size",
    "decode_metadata_message",
    "encode_metadata_message",
    "metadata_block_length",
    "metadata_pieces",
]

METADATA_EXTENSION = "ut_metadata"
METADATA_BLOCK = 16 << 10
# An info dictionary is at most a whole .torrent file, and we read .torrent
# files up to MAX_TORRENT_SIZE (32 MiB).  libtorrent takes metadata up to its
# max_metadata_size setting (30 MiB by default) when a data message names the
# size, and 4 MiB when only an extension handshake does.  The assembler keeps
# only the blocks received, so an advertised size costs no memory by itself.
MAX_METADATA_SIZE = MAX_TORRENT_SIZE
# libtorrent drops a peer whose ut_metadata message is over 17 KiB: a block
# and a kilobyte of dictionary, which a real header (~50 bytes) never nears.
MAX_METADATA_MESSAGE = METADATA_BLOCK + 1024
# libtorrent keeps at most two requests outstanding at one peer.
MAX_OUTSTANDING_PER_PEER = 2
# libtorrent answers at once while its send buffer holds under 10 blocks
# (160 KiB), then queues up to 1024 requests and rejects the rest.  We answer
# at once, so we bound what is answered and not yet written at its 10 blocks.
MAX_QUEUED_ANSWERS = 10
# BEP 9 suggests rejecting after "the number of pieces of metadata times a
# factor" served; four fetches of the whole per connection covers a peer that
# retries after timeouts and a failed check, and bounds one that loops.
SERVES_PER_PIECE = 4


# -- messages -----------------------------------------------------------------------


_TYPES: dict[type[Any], int] = {MetadataRequest: 0, MetadataData: 1, MetadataReject: 2}


def metadata_pieces(metadata_size: int) -> int:
    """How many pieces metadata of ``metadata_size`` bytes is cut into."""
    return -(-metadata_size // METADATA_BLOCK)


def metadata_block_length(metadata_size: int, piece: int) -> int:
    """The length of block ``piece`` (which must be in range): 16 KiB but the last."""
    return min(METADATA_BLOCK, metadata_size - piece * METADATA_BLOCK)


def _check_block(total_size: int, piece: int, length: int) -> None:
    """Raise if (total_size, piece, length) is not a block of some metadata we accept."""
    if not 0 < total_size <= MAX_METADATA_SIZE:
        raise RemoteProtocolError(Violation.METADATA_SIZE_OUT_OF_RANGE, f"{total_size} bytes, the limit is {MAX_METADATA_SIZE}")
    count = metadata_pieces(total_size)
    if not 0 <= piece < count:
        raise RemoteProtocolError(Violation.METADATA_PIECE_OUT_OF_RANGE, f"piece {piece} of {count}")
    expected = metadata_block_length(total_size, piece)
    if length != expected:
        raise RemoteProtocolError(
            Violation.METADATA_WRONG_BLOCK_LENGTH, f"{length} bytes for piece {piece} of {total_size} bytes, not {expected}"
        )


def decode_metadata_message(payload: bytes | bytearray | memoryview) -> MetadataMessage | None:
    """One ``ut_metadata`` message; ``None`` for an unknown ``msg_type`` (BEP 9: ignore it).

    Raises only :class:`RemoteProtocolError`.
    """
    if len(payload) > MAX_METADATA_MESSAGE:
        raise RemoteProtocolError(
            Violation.METADATA_MESSAGE_TOO_LARGE, f"{len(payload)} bytes, the limit is {MAX_METADATA_MESSAGE}"
        )
    data = bytes(payload)
    end = _dict_end(data)
    try:
        d = decode(data[:end])
    except BencodeError as exc:
        raise RemoteProtocolError(Violation.INVALID_METADATA_MESSAGE, str(exc)) from None
    msg_type, piece = d.get(b"msg_type"), d.get(b"piece")
    if not isinstance(msg_type, int) or not isinstance(piece, int):
        raise RemoteProtocolError(Violation.INVALID_METADATA_MESSAGE, "no integer msg_type and piece")
    if msg_type == 0:
        return MetadataRequest(piece)  # bytes after the dictionary are ignored, as libtorrent does
    if msg_type == 2:
        return MetadataReject(piece)
    if msg_type != 1:
        return None
    total_size = d.get(b"total_size")
    if not isinstance(total_size, int):
        raise RemoteProtocolError(Violation.INVALID_METADATA_MESSAGE, "a data message without an integer total_size")
    block = data[end:]
    _check_block(total_size, piece, len(block))
    return MetadataData(piece, total_size, block)


def _dict_end(data: bytes) -> int:
    """The offset just past the bencoded dictionary ``data`` starts with.

    Only finds the end (one step per token, at most ``len(data)`` steps):
    :func:`~pyowtorrent.metainfo.bencoding.decode` then checks the
    dictionary's bytes with its own rules and bounds.
    """
    if data[:1] != b"d":
        raise RemoteProtocolError(Violation.INVALID_METADATA_MESSAGE, "not a bencoded dictionary")
    depth = pos = 0
    n = len(data)
    while pos < n:
        c = data[pos]
        if c in b"dl":
            depth += 1
            pos += 1
        elif c == ord("e"):
            depth -= 1
            pos += 1
            if depth == 0:
                return pos
        elif c == ord("i"):
            pos = data.find(b"e", pos + 1)
            if pos < 0:
                break
            pos += 1
        elif c in b"0123456789":
            colon = data.find(b":", pos, pos + 12)  # a length of more than 11 digits is beyond any message
            if colon < 0 or not data[pos:colon].isdigit():
                break
            pos = colon + 1 + int(data[pos:colon])
        else:
            break
    raise RemoteProtocolError(Violation.INVALID_METADATA_MESSAGE, "not a complete bencoded dictionary")


def encode_metadata_message(message: MetadataMessage) -> bytes:
    """The bytes of ``message`` after its extended id, framed as libtorrent frames them.

    :class:`LocalProtocolError` for a piece below 0 or a data block that breaks BEP 9.
    """
    if message.piece < 0:
        raise LocalProtocolError(f"metadata piece {message.piece} is negative")
    d: dict[bytes, int] = {b"msg_type": _TYPES[type(message)], b"piece": message.piece}
    if not isinstance(message, MetadataData):
        return encode(d)
    try:
        _check_block(message.total_size, message.piece, len(message.data))
    except RemoteProtocolError as exc:
        raise LocalProtocolError(str(exc)) from None
    d[b"total_size"] = message.total_size
    return encode(d) + bytes(message.data)


def advertised_metadata_size(handshake: ExtensionHandshake) -> int | None:
    """The ``metadata_size`` of an extension handshake: a size we accept, or ``None``.

    libtorrent reads a size of 0 or less (or none) as "has no metadata".
    """
    size = handshake.metadata_size
    if size is None:  # a handshake built by hand may carry it in raw only
        size = handshake.raw.get(b"metadata_size")
    if isinstance(size, int) and 0 < size <= MAX_METADATA_SIZE:
        return size
    return None


# -- fetching ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetadataVerified:
    """The metadata is whole and its SHA-1 is the info-hash."""

    metadata: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class MetadataFailed:
    """The whole failed the info-hash check; who sent which pieces.  The assembler has started over."""

    senders: Mapping[Hashable, tuple[int, ...]]


class MetadataAssembler:
    """Fetch the metadata of ``info_hash``, ``metadata_size`` bytes, from several peers.

    Pieces are asked for in order, each of one peer at a time, at most
    ``max_outstanding`` at each peer.  The engine calls :meth:`next_requests`
    whenever a peer may take more, :meth:`on_reject` and :meth:`on_timeout`
    to give a request back, and :meth:`on_data` for each block.

    **The size.**  ``metadata_size`` is fixed: the engine takes the first one
    a peer advertised.  A peer that advertises another size is not asked
    (:meth:`add_peer` says ``False``); one that advertised none is (it rejects
    if it has no metadata), and is dropped if its data names another size.
    libtorrent instead resizes to each new advertised size and ignores data
    whose ``total_size`` disagrees; we keep the first so that one later peer
    cannot throw away the others' blocks.  If the first size was a lie the
    check fails: the engine then drops the senders and builds a new assembler
    with a size other peers advertised.

    **The check.**  When every piece is in, SHA-1 of the whole must be the
    info-hash.  If not, :meth:`on_data` returns :class:`MetadataFailed` naming
    the senders of each piece (libtorrent penalises all of them), and the
    assembler forgets every block, request and reject and starts over.
    """

    def __init__(self, info_hash: bytes, metadata_size: int, *, max_outstanding: int = MAX_OUTSTANDING_PER_PEER) -> None:
        if len(info_hash) != 20:
            raise ValueError("a v1 info-hash is 20 bytes")
        if not 0 < metadata_size <= MAX_METADATA_SIZE:
            raise RemoteProtocolError(
                Violation.METADATA_SIZE_OUT_OF_RANGE, f"{metadata_size} bytes, the limit is {MAX_METADATA_SIZE}"
            )
        if max_outstanding < 1:
            raise ValueError("max_outstanding must be at least 1")
        self.info_hash = bytes(info_hash)
        self.metadata_size = metadata_size
        self.num_pieces = metadata_pieces(metadata_size)
        self.max_outstanding = max_outstanding
        self.done = False
        self._peers: set[Hashable] = set()
        self._reset()

    def _reset(self) -> None:
        self._blocks: dict[int, bytes] = {}
        self._senders: dict[int, Hashable] = {}
        self._outstanding: dict[Hashable, set[int]] = {peer: set() for peer in self._peers}
        self._asked: set[int] = set()  # pieces outstanding at some peer
        self._paused: set[Hashable] = set()  # rejected a request: not asked until resumed
        self._next = 0  # no piece below it is free to ask for

    @property
    def num_received(self) -> int:
        return len(self._blocks)

    def outstanding(self, peer: Hashable) -> frozenset[int]:
        return frozenset(self._outstanding.get(peer, ()))

    # -- peers ----------------------------------------------------------------

    def add_peer(self, peer: Hashable, advertised_size: int | None) -> bool:
        """Take ``peer`` as a source if its advertised size (``None``: none) agrees with ours."""
        if advertised_size is not None and advertised_size != self.metadata_size:
            return False
        if peer not in self._peers:
            self._peers.add(peer)
            self._outstanding[peer] = set()
        self._paused.discard(peer)  # a new handshake: it may have the metadata now
        return True

    def remove_peer(self, peer: Hashable) -> None:
        """Forget ``peer``; what it was asked for may be asked of others."""
        self._peers.discard(peer)
        for piece in self._outstanding.pop(peer, ()):
            self._free(piece)
        self._paused.discard(peer)

    def _free(self, piece: int) -> None:
        self._asked.discard(piece)
        self._next = min(self._next, piece)

    # -- requests -------------------------------------------------------------

    def next_requests(self, peer: Hashable) -> list[int]:
        """The pieces to ask ``peer`` for now (recorded as outstanding), first missing first."""
        mine = self._outstanding.get(peer)
        if self.done or mine is None or peer in self._paused:
            return []
        out: list[int] = []
        piece = self._next
        while piece < self.num_pieces and len(mine) < self.max_outstanding:
            if piece not in self._blocks and piece not in self._asked:
                mine.add(piece)
                self._asked.add(piece)
                out.append(piece)
            piece += 1
        while self._next < self.num_pieces and (self._next in self._blocks or self._next in self._asked):
            self._next += 1
        return out

    def on_reject(self, peer: Hashable, piece: int) -> None:
        """``peer`` rejected ``piece``: ask someone else, and ``peer`` nothing until :meth:`resume`.

        A reject mostly means "I have no metadata" (or "you ask too much"):
        libtorrent then asks that peer nothing for a minute.  The engine
        keeps that clock and calls :meth:`resume`, or :meth:`add_peer` on
        the peer's next extension handshake.  A reject for a piece not
        outstanding at ``peer`` is ignored, as libtorrent does.
        """
        mine = self._outstanding.get(peer)
        if mine is None or piece not in mine:
            return
        mine.discard(piece)
        self._paused.add(peer)
        self._free(piece)

    def resume(self, peer: Hashable) -> None:
        """Ask ``peer`` again after a reject."""
        self._paused.discard(peer)

    def paused(self, peer: Hashable) -> bool:
        return peer in self._paused

    def on_timeout(self, peer: Hashable, piece: int) -> None:
        """The engine gave up waiting for ``piece`` from ``peer``: it may be asked again, of anyone."""
        mine = self._outstanding.get(peer)
        if mine is not None and piece in mine:
            mine.discard(piece)
            self._free(piece)

    # -- data -----------------------------------------------------------------

    def on_data(self, peer: Hashable, message: MetadataData) -> MetadataVerified | MetadataFailed | None:
        """Take a block.  ``None`` until the last; then the metadata, or who sent what if the check failed.

        A block not outstanding at ``peer`` (never asked, timed out, or from
        before a failed check) is ignored, as libtorrent does.  Raises
        :class:`RemoteProtocolError` for a block that names another
        ``total_size`` or has the wrong length.
        """
        mine = self._outstanding.get(peer)
        if self.done or mine is None or message.piece not in mine:
            return None
        if message.total_size != self.metadata_size:
            raise RemoteProtocolError(
                Violation.METADATA_SIZE_MISMATCH, f"total_size {message.total_size}, advertised {self.metadata_size}"
            )
        _check_block(self.metadata_size, message.piece, len(message.data))
        mine.discard(message.piece)
        self._asked.discard(message.piece)
        self._blocks[message.piece] = bytes(message.data)
        self._senders[message.piece] = peer
        if len(self._blocks) < self.num_pieces:
            return None
        metadata = b"".join(self._blocks[i] for i in range(self.num_pieces))
        if hashlib.sha1(metadata).digest() == self.info_hash:
            self.done = True
            self._blocks.clear()
            return MetadataVerified(metadata)
        senders: dict[Hashable, list[int]] = {}
        for piece, sender in sorted(self._senders.items()):
            senders.setdefault(sender, []).append(piece)
        self._reset()
        return MetadataFailed({sender: tuple(pieces) for sender, pieces in senders.items()})


# -- serving ----------------------------------------------------------------------


class MetadataServer:
    """Answer ``ut_metadata`` requests for ``info_bytes`` (which the caller has checked).

    A request is answered with its block, or a reject for a piece out of
    range or a peer over one of two bounds: :data:`MAX_QUEUED_ANSWERS`
    answers not yet written (the engine calls :meth:`written` as each
    leaves), and :data:`SERVES_PER_PIECE` times the number of pieces in all,
    per connection.  :meth:`forget` a peer when it goes.
    """

    def __init__(
        self,
        info_bytes: bytes,
        *,
        max_queued: int = MAX_QUEUED_ANSWERS,
        serves_per_piece: int = SERVES_PER_PIECE,
    ) -> None:
        if not 0 < len(info_bytes) <= MAX_METADATA_SIZE:
            raise ValueError(f"metadata of {len(info_bytes)} bytes is out of range")
        self.metadata = bytes(info_bytes)
        self.metadata_size = len(self.metadata)
        self.num_pieces = metadata_pieces(self.metadata_size)
        self.max_queued = max_queued
        self.max_served = serves_per_piece * self.num_pieces
        self._queued: dict[Hashable, int] = {}
        self._served: dict[Hashable, int] = {}

    def answer(self, peer: Hashable, request: MetadataRequest) -> MetadataData | MetadataReject:
        piece = request.piece
        if not 0 <= piece < self.num_pieces:
            return MetadataReject(piece)
        queued = self._queued.get(peer, 0)
        served = self._served.get(peer, 0)
        if queued >= self.max_queued or served >= self.max_served:
            return MetadataReject(piece)
        self._queued[peer] = queued + 1
        self._served[peer] = served + 1
        start = piece * METADATA_BLOCK
        return MetadataData(piece, self.metadata_size, self.metadata[start : start + METADATA_BLOCK])

    def written(self, peer: Hashable) -> None:
        """One data answer to ``peer`` has been written out."""
        queued = self._queued.get(peer, 0)
        if queued:
            self._queued[peer] = queued - 1

    def forget(self, peer: Hashable) -> None:
        self._queued.pop(peer, None)
        self._served.pop(peer, None)
