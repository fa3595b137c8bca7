"""Bencoding, through the ``bencode.py`` package.

We do not write our own codec.  One thing the package's ``bdecode`` cannot
give us is *where* a value sits in the input, and the info-hash must be the
SHA-1 of the info dictionary's bytes exactly as they appear in the file (a
re-encoding sorts the keys and changes the hash of torrents written with
unsorted keys).  So :func:`decode_dict_with_spans` walks the top-level
dictionary itself, key by key, asking the package's decoder to decode each
value and to say where it ended.
"""

from __future__ import annotations

from typing import Any

from bencodepy import Bencached, BencodeDecodeError, BencodeDecoder, BencodeEncoder  # type: ignore[import-untyped]

from ..errors import BencodeError

__all__ = ["Bencached", "decode", "decode_dict_with_spans", "encode", "MAX_DEPTH"]

# Deeper nesting than this is hostile: no torrent or tracker message needs it,
# and libtorrent's own limit is of the same order.
MAX_DEPTH = 100

# At most this many values (strings, integers, lists, dicts) in one input:
# libtorrent's limit, which bounds the memory a small hostile input can make
# us allocate (a list of a million empty lists is two megabytes of bencoding).
MAX_TOKENS = 3_000_000
MAX_INT_DIGITS = 20


class _BudgetExceeded(Exception):
    pass


class _Decoder(BencodeDecoder):  # type: ignore[misc]
    """The package's decoder, counting values against :data:`MAX_TOKENS`.

    Raw bytes everywhere (no text decoding: names are sanitised later, by
    rule); plain dicts keep the order the keys had in the input.  One per
    call, so the count is per input and threads do not share it.
    """

    def __init__(self, max_tokens: int = MAX_TOKENS) -> None:
        # The package counts the top level as depth 0 and fails past
        # max_depth; this refuses MAX_DEPTH nested containers, as libtorrent does.
        super().__init__(encoding=None, max_depth=MAX_DEPTH - 2)
        self.budget = max_tokens

    def _spend(self, n: int = 1) -> None:
        self.budget -= n
        if self.budget < 0:
            raise _BudgetExceeded

    def decode_int(self, x: bytes, f: int, **kw: Any) -> Any:
        self._spend()
        # int() alone would also take " 1", "+1" and "1_0"; libtorrent refuses
        # integers of more than 20 digits ("integer overflow").
        end = x.index(b"e", f + 1)
        digits = x[f + 1 : end]
        magnitude = digits[1:] if digits[:1] == b"-" else digits
        if not magnitude.isdigit() or len(magnitude) > MAX_INT_DIGITS:
            raise ValueError("not an integer")
        return super().decode_int(x, f, **kw)

    def decode_string(self, x: bytes, f: int, kind: str = "value", **kw: Any) -> Any:
        self._spend()
        if not x[f : x.index(b":", f)].isdigit():
            raise ValueError("not a string length")
        return super().decode_string(x, f, kind=kind, **kw)

    def decode_list(self, x: bytes, f: int, **kw: Any) -> Any:
        self._spend(2)  # a start and an end token, as libtorrent counts them
        return super().decode_list(x, f, **kw)

    def decode_dict(self, x: bytes, f: int, **kw: Any) -> Any:
        # The package's loop, except that a repeated key keeps its FIRST value:
        # libtorrent reads dictionaries that way, and two readers of one
        # .torrent must not see two different info dictionaries.
        self._spend(2)
        depth = kw.get("depth", 0)
        if depth > self.max_depth:
            raise BencodeDecodeError("exceeded maximum depth")
        f += 1
        result: dict[bytes, Any] = {}
        while x[f : f + 1] != b"e":
            key, f = self.decode_string(x, f, kind="key")
            value, f = self.decode_func[x[f : f + 1]](x, f, depth=depth + 1)
            result.setdefault(key, value)
        return result, f + 1


_encoder = BencodeEncoder()

# What the package's decoder raises on malformed input, besides its own error.
_DECODE_FAILURES = (BencodeDecodeError, IndexError, KeyError, TypeError, ValueError, RecursionError)


def encode(value: Any) -> bytes:
    """Bencode ``value`` (dict keys are sorted, as BEP 3 requires)."""
    try:
        data: bytes = _encoder.encode(value)
        return data
    except (KeyError, TypeError) as exc:
        raise BencodeError(f"cannot bencode a value of type {type(exc.args[0]).__name__ if exc.args else '?'}") from None


def decode(data: bytes) -> Any:
    """Decode one complete bencoded value; anything after it is an error."""
    value, end = _decode_value(_Decoder(), data, 0, 0)
    if end != len(data):
        raise BencodeError(f"{len(data) - end} bytes of trailing data after the bencoded value")
    return value


def decode_dict_with_spans(data: bytes) -> tuple[dict[bytes, Any], dict[bytes, tuple[int, int]]]:
    """Decode a top-level dictionary, with the byte span ``(start, end)`` of each value.

    Bytes after the dictionary's closing ``e`` are ignored, as libtorrent
    ignores them (some .torrent files in the wild end with a newline).
    """
    if data[:1] != b"d":
        raise BencodeError("not a bencoded dictionary")
    decoder = _Decoder()
    decoder._spend(2)  # the top-level dictionary itself
    result: dict[bytes, Any] = {}
    spans: dict[bytes, tuple[int, int]] = {}
    pos = 1
    while True:
        tag = data[pos : pos + 1]
        if tag == b"e":
            return result, spans
        if not tag:
            raise BencodeError("dictionary is not terminated")
        if not tag.isdigit():
            raise BencodeError(f"dictionary key at offset {pos} is not a string")
        try:
            key, pos = decoder.decode_string(data, pos, kind="key")
        except _BudgetExceeded:
            raise BencodeError(f"more than {MAX_TOKENS} values") from None
        except _DECODE_FAILURES:
            raise BencodeError(f"invalid dictionary key at offset {pos}") from None
        start = pos
        value, pos = _decode_value(decoder, data, pos, 1)
        if key not in result:  # the first of repeated keys counts, as in libtorrent
            result[key] = value
            spans[key] = (start, pos)


def _decode_value(decoder: _Decoder, data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    try:
        func = decoder.decode_func[data[pos : pos + 1]]
        value, end = func(data, pos, depth=depth)
    except _BudgetExceeded:
        raise BencodeError(f"more than {MAX_TOKENS} values") from None
    except _DECODE_FAILURES as exc:
        if isinstance(exc, RecursionError) or "depth" in str(exc):
            raise BencodeError(f"nesting deeper than {MAX_DEPTH} levels") from None
        raise BencodeError(f"invalid bencoding at offset {pos}") from None
    if end > len(data):
        # The package slices strings without checking their declared length.
        raise BencodeError("bencoded value runs past the end of the data")
    return value, end
