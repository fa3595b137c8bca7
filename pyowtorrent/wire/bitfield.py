"""BEP 3 bitfields: piece 0 is the high bit of the first byte, spare bits zero.

Torrents have up to millions of pieces, so these go through ``int`` and
``bytes.translate`` (C loops) rather than a Python loop per bit.
"""

from __future__ import annotations

from itertools import compress
from typing import Sequence

__all__ = ["bitfield_bytes", "bitfield_flags", "bitfield_length", "bits_to_set"]

# Any non-zero flag is a "1" digit; and back again.
_FLAG_TO_DIGIT = bytes([0x30] + [0x31] * 255)
_DIGIT_TO_FLAG = bytes.maketrans(b"01", b"\x00\x01")


def bitfield_length(num_pieces: int) -> int:
    """The number of bytes in a bitfield of ``num_pieces`` pieces."""
    return (num_pieces + 7) // 8


def bitfield_bytes(have: Sequence[bool] | bytes | bytearray) -> bytes:
    """Pack one truth value per piece into a bitfield."""
    n = len(have)
    if n == 0:
        return b""
    digits = bytes(have).translate(_FLAG_TO_DIGIT)
    size = bitfield_length(n)
    return (int(digits, 2) << (size * 8 - n)).to_bytes(size, "big")


def bitfield_flags(bits: bytes, num_pieces: int) -> bytearray:
    """Unpack a bitfield into one 0/1 byte per piece (the inverse of :func:`bitfield_bytes`)."""
    if len(bits) != bitfield_length(num_pieces):
        raise ValueError(f"a bitfield for {num_pieces} pieces has {bitfield_length(num_pieces)} bytes, not {len(bits)}")
    if num_pieces == 0:
        return bytearray()
    value = int.from_bytes(bits, "big") >> (len(bits) * 8 - num_pieces)
    return bytearray(format(value, "b").zfill(num_pieces).encode("ascii").translate(_DIGIT_TO_FLAG))


def bits_to_set(bits: bytes) -> set[int]:
    """The indices of the pieces a bitfield says its sender has."""
    n = len(bits) * 8
    return set(compress(range(n), bitfield_flags(bits, n)))
