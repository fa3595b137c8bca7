"""Received bytes not yet parsed, kept as the chunks they arrived in.

A message is cut out of the chunks with one slice or one ``b"".join`` of
memoryview slices, so each byte of a 16 KiB block is copied exactly once
between the socket's ``bytes`` and the ``Piece`` event, however the stream
was split.  Consumed bytes are dropped by advancing an offset into the first
chunk and popping whole chunks: no ``del buf[:n]``, nothing quadratic when a
large chunk holds thousands of messages.

A chunk may also be *borrowed* (:meth:`ByteQueue.append_borrowed`): a view of
the driver's receive buffer, which it reuses once parsing returns.  Then a
block taken with :meth:`ByteQueue.take_view` is a view into that buffer (the
one copy is the driver's, into the piece's buffer), and :meth:`ByteQueue.detach`
copies what is left of borrowed chunks before the driver reuses the buffer.
"""

from __future__ import annotations

from collections import deque

# Tiny chunks (a peer trickling bytes) are merged so that the number of
# objects held stays proportional to the bytes held; merging copies at most
# this many bytes, so it costs nothing next to the per-call overhead.
_MERGE_BELOW = 512


class ByteQueue:
    __slots__ = ("_chunks", "_offset", "size")

    def __init__(self) -> None:
        self._chunks: deque[bytes | memoryview] = deque()
        self._offset = 0  # into self._chunks[0]
        self.size = 0  # bytes held and not yet taken

    def append(self, data: bytes) -> None:
        if not data:
            return
        chunks = self._chunks
        if chunks and len(chunks[-1]) + len(data) <= _MERGE_BELOW and type(chunks[-1]) is bytes:
            chunks[-1] += data
        else:
            chunks.append(data)
        self.size += len(data)

    def append_borrowed(self, view: memoryview) -> None:
        """Hold a view of a buffer the caller will reuse: :meth:`detach` before it does."""
        if len(view):
            self._chunks.append(view)
            self.size += len(view)

    def detach(self) -> None:
        """Copy what is left of the borrowed chunk, so that its buffer may be reused.

        Only the last chunk can be borrowed (one per read, detached before the
        next), so this costs what is left of it, never what is held before it:
        a peer trickling a large message a byte per read makes it no slower.
        """
        chunks = self._chunks
        if not chunks or type(chunks[-1]) is not memoryview:
            return
        view = chunks.pop()
        if not chunks:  # it is also the first: its bytes before the offset are taken
            view, self._offset = view[self._offset :], 0
        if len(view):
            self.size -= len(view)
            self.append(bytes(view))  # merged with a small chunk before it, as any append

    def first(self) -> tuple[bytes | memoryview, int]:
        """The first chunk and the offset of its first byte not taken (``b"", 0`` when empty):
        a reader may read messages in place, then :meth:`skip` them."""
        chunks = self._chunks
        return (chunks[0], self._offset) if chunks else (b"", 0)

    def skip(self, n: int) -> None:
        """Take ``n`` bytes that lie in the first chunk (after :meth:`first`)."""
        end = self._offset + n
        self.size -= n
        if end < len(self._chunks[0]):
            self._offset = end
        else:
            self._chunks.popleft()
            self._offset = 0

    def peek_byte(self) -> int:
        """The next byte, without taking it (size must be at least 1)."""
        return self._chunks[0][self._offset]

    def take_u32(self) -> int:
        """Remove and return the next 4 bytes as a big-endian integer (size must be at least 4)."""
        first, start = self._chunks[0], self._offset
        if start + 4 < len(first):  # read in place: every message starts with one
            self._offset = start + 4
            self.size -= 4
            return int.from_bytes(first[start : start + 4], "big")
        return int.from_bytes(self.take(4), "big")

    def peek(self, n: int) -> bytes:
        """Up to ``n`` of the next bytes, without taking them (for small ``n``)."""
        parts = []
        offset = self._offset
        for chunk in self._chunks:
            parts.append(chunk[offset : offset + n])
            n -= len(chunk) - offset
            offset = 0
            if n <= 0:
                break
        return b"".join(parts)

    def take(self, n: int) -> bytes:
        """Remove and return the next ``n`` bytes (size must be at least ``n``)."""
        out = self.take_view(n)
        return out if type(out) is bytes else bytes(out)

    def take_view(self, n: int) -> bytes | memoryview:
        """:meth:`take`, but a view of a borrowed chunk where the bytes lie in one: no copy."""
        if n == 0:
            return b""
        chunks = self._chunks
        first = chunks[0]
        start = self._offset
        end = start + n
        self.size -= n
        if end < len(first):
            self._offset = end
            return first[start:end]
        if end == len(first):
            chunks.popleft()
            self._offset = 0
            # A whole bytes object sliced whole is the same object: no copy.
            return first[start:]
        parts: list[bytes | memoryview] = [memoryview(first)[start:]]
        chunks.popleft()
        self._offset = 0
        need = end - len(first)
        while need:
            chunk = chunks[0]
            if len(chunk) <= need:
                parts.append(chunk)
                chunks.popleft()
                need -= len(chunk)
            else:
                parts.append(memoryview(chunk)[:need])
                self._offset = need
                need = 0
        return b"".join(parts)
