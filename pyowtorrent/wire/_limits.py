"""What is in range on one connection: piece indices, blocks, bitfields, message headers.

:class:`Bounds` holds the torrent's shape as the wire sees it and checks
indices, blocks and bitfields against it.  Both directions share these
checks: they raise :class:`RemoteProtocolError`, which
:meth:`PeerConnection.send <pyowtorrent.wire.PeerConnection.send>` turns into
a :class:`LocalProtocolError` for what we send.  :class:`HeaderRules` checks
the length prefix and id byte of each received message against what the two
handshakes negotiated.
"""

from __future__ import annotations

from ..metainfo.layout import BLOCK_SIZE
from ..metainfo.torrent_file import MAX_PIECES
from .bitfield import bitfield_length
from .errors import RemoteProtocolError, Violation
from .messages import FAST_IDS, FIXED_LENGTH, MessageId

__all__ = ["BlockKey", "Bounds", "HeaderRules", "UnknownShape", "make_bounds"]

BlockKey = tuple[int, int, int]  # index, begin, length

# Plain ints on the hot path: comparing with an IntEnum member costs an attribute lookup.
_PIECE, _BITFIELD, _EXTENDED = (int(m) for m in (MessageId.PIECE, MessageId.BITFIELD, MessageId.EXTENDED))


class Bounds:
    """The pieces of one torrent and the largest block either side may ask for.

    The arguments are trusted: :class:`~pyowtorrent.wire.PeerConnection`
    checks them before it builds one.
    """

    __slots__ = ("num_pieces", "piece_length", "max_block", "bitfield_length", "_last_piece_length")

    # A bitfield must be exactly bitfield_length bytes (UnknownShape: at most).
    exact_bitfield = True

    def __init__(self, num_pieces: int, piece_length: int, total_length: int, max_block: int) -> None:
        self.num_pieces = num_pieces
        self.piece_length = piece_length
        self.max_block = max_block
        self.bitfield_length = bitfield_length(num_pieces)
        self._last_piece_length = total_length - piece_length * (num_pieces - 1) if num_pieces else 0

    def piece_size(self, index: int) -> int:
        return self._last_piece_length if index == self.num_pieces - 1 else self.piece_length

    def check_index(self, index: int) -> None:
        if not 0 <= index < self.num_pieces:
            raise RemoteProtocolError(Violation.INDEX_OUT_OF_RANGE, f"piece {index} of {self.num_pieces}")

    def check_bitfield(self, bits: bytes) -> None:
        if len(bits) != self.bitfield_length:
            raise RemoteProtocolError(
                Violation.BITFIELD_WRONG_LENGTH,
                f"{len(bits)} bytes for {self.num_pieces} pieces, not {self.bitfield_length}",
            )
        spare = self.bitfield_length * 8 - self.num_pieces
        if spare and bits[-1] & ((1 << spare) - 1):
            raise RemoteProtocolError(Violation.BITFIELD_SPARE_BITS, f"last byte {bits[-1]:#04x}")

    def mask_spare_bits(self, bits: bytes) -> bytes:
        """A received bitfield (of the right length) with its spare bits cleared: libtorrent
        ignores them, and so do we."""
        spare = self.bitfield_length * 8 - self.num_pieces
        if spare and bits[-1] & ((1 << spare) - 1):
            return bits[:-1] + bytes([bits[-1] & ~((1 << spare) - 1) & 0xFF])
        return bits

    def on_block_grid(self, index: int, begin: int, length: int) -> bool:
        """True if the block is in range and is one of the ``block_size`` blocks a piece is cut into."""
        if not 0 <= index < self.num_pieces:
            return False
        size = self.piece_size(index)
        return 0 <= begin < size and begin % BLOCK_SIZE == 0 and length == min(BLOCK_SIZE, size - begin)

    def check_block(self, index: int, begin: int, length: int) -> BlockKey:
        self.check_index(index)
        if not 0 < length <= self.max_block:
            raise RemoteProtocolError(Violation.BAD_BLOCK_LENGTH, f"{length} bytes, the limit is {self.max_block}")
        if begin < 0 or begin + length > self.piece_size(index):
            raise RemoteProtocolError(
                Violation.BLOCK_OUT_OF_RANGE,
                f"bytes {begin}..{begin + length} of piece {index}, which has {self.piece_size(index)}",
            )
        return index, begin, length


class UnknownShape(Bounds):
    """The bounds of a connection made before the torrent's metadata is known (a magnet link, BEP 9).

    Every piece index a torrent may have is in range and a bitfield may be
    as long as the largest torrent's (what a peer has is news the driver
    may ignore), but no block is: a request from the peer is invalid (we
    have nothing to give), a block from it unrequested (we asked for none),
    and we can ask for none.
    """

    __slots__ = ()
    exact_bitfield = False

    def __init__(self, max_block: int) -> None:
        super().__init__(MAX_PIECES, 1, MAX_PIECES, max_block)

    def piece_size(self, index: int) -> int:
        return 0

    def check_bitfield(self, bits: bytes) -> None:
        if len(bits) > self.bitfield_length:
            raise RemoteProtocolError(
                Violation.BITFIELD_WRONG_LENGTH, f"{len(bits)} bytes, more than any torrent's {self.bitfield_length}"
            )

    def mask_spare_bits(self, bits: bytes) -> bytes:
        return bits  # which bits are spare is not known

    def on_block_grid(self, index: int, begin: int, length: int) -> bool:
        return False

    def check_block(self, index: int, begin: int, length: int) -> BlockKey:
        raise RemoteProtocolError(
            Violation.BLOCK_OUT_OF_RANGE, f"piece {index} offset {begin}: the torrent's metadata is not known yet"
        )


def make_bounds(num_pieces: int | None, piece_length: int | None, total_length: int | None, max_block: int) -> Bounds:
    """The bounds of a torrent of this shape; all three ``None``: :class:`UnknownShape`.  ``ValueError`` if it is no shape."""
    if num_pieces is None and piece_length is None and total_length is None:
        return UnknownShape(max_block)
    if (
        num_pieces is None
        or piece_length is None
        or total_length is None
        or piece_length <= 0
        or total_length < 0
        or num_pieces != -(-total_length // piece_length)
    ):
        raise ValueError(f"{num_pieces} pieces do not cover {total_length} bytes in pieces of {piece_length}")
    return Bounds(num_pieces, piece_length, total_length, max_block)


class HeaderRules:
    """Which message headers the remote may send, fixed once both handshakes are known.

    A header is checked as soon as its length prefix and id byte arrive, so
    a bad one is refused without buffering up to the length it announces.
    """

    __slots__ = (
        "max_length",
        "_fixed_lengths",
        "_extended",
        "_max_block",
        "_num_pieces",
        "_bitfield_length",
        "_exact_bitfield",
    )

    def __init__(self, bounds: Bounds, *, fast: bool, extension_protocol: bool, max_extension_message: int) -> None:
        # The longest message legal at all: a piece with the largest block,
        # a full bitfield, a request, or (BEP 10) an extension message.
        self.max_length = max(13, 9 + bounds.max_block, 1 + bounds.bitfield_length)
        if extension_protocol:
            self.max_length = max(self.max_length, max_extension_message)
        # The fixed-size messages legal on this connection, and their lengths.
        self._fixed_lengths = {
            msg_id: size for msg_id, size in FIXED_LENGTH.items() if fast or msg_id not in FAST_IDS
        }
        self._extended = extension_protocol
        # Copied out of the bounds: one attribute lookup each on the hot path.
        self._max_block = bounds.max_block
        self._num_pieces = bounds.num_pieces
        self._bitfield_length = bounds.bitfield_length
        self._exact_bitfield = bounds.exact_bitfield

    def check(self, msg_id: int, length: int) -> None:
        """Refuse message ``msg_id`` of ``length`` bytes (id included)."""
        if msg_id == _PIECE:  # first: a leecher gets one per 16 KiB
            if length < 9:
                raise RemoteProtocolError(Violation.WRONG_MESSAGE_LENGTH, f"piece of length {length}")
            if length - 9 > self._max_block:
                raise RemoteProtocolError(
                    Violation.MESSAGE_TOO_LONG, f"a block of {length - 9} bytes, the limit is {self._max_block}"
                )
            return
        fixed = self._fixed_lengths.get(msg_id)
        if fixed is not None:
            if length != fixed:
                raise RemoteProtocolError(
                    Violation.WRONG_MESSAGE_LENGTH, f"{_name(msg_id)} of length {length}, not {fixed}"
                )
        elif msg_id == _BITFIELD:
            # BEP 3 and 6 put the bitfield (and have all, have none) first only; aria2
            # sends a whole new bitfield mid-connection instead of many haves, and a have
            # all once it completes, and libtorrent takes them as updates: so do we.
            # Only their sizes are ours to insist on.
            if length != 1 + self._bitfield_length and (self._exact_bitfield or length > 1 + self._bitfield_length):
                raise RemoteProtocolError(
                    Violation.BITFIELD_WRONG_LENGTH,
                    f"{length - 1} bytes for {self._num_pieces} pieces, not {self._bitfield_length}",
                )
        elif msg_id == _EXTENDED and self._extended:
            if length < 2:
                raise RemoteProtocolError(Violation.WRONG_MESSAGE_LENGTH, "extended message without an extended id")
        elif msg_id in FAST_IDS:
            raise RemoteProtocolError(Violation.FAST_NOT_NEGOTIATED, f"{_name(msg_id)} message")
        elif msg_id == _EXTENDED:
            raise RemoteProtocolError(Violation.EXTENSION_PROTOCOL_NOT_NEGOTIATED, "extended message")
        else:
            raise RemoteProtocolError(Violation.UNKNOWN_MESSAGE_ID, f"message id {msg_id}")


def _name(msg_id: int) -> str:
    return MessageId(msg_id).name.lower().replace("_", " ")
