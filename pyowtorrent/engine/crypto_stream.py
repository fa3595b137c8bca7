"""An encrypted connection that looks like any other: RC4 under a StreamReader/StreamWriter pair.

After an encrypted handshake (:mod:`pyowtorrent.wire.mse`) the session hands
the torrent a :class:`~pyowtorrent.engine.handshake.PeerLink` as it would for
a plaintext one; :class:`CipherReader` and :class:`CipherWriter` stand in
for the connection's own reader and writer, so the peer driver cannot tell
the difference.  They subclass asyncio's (that is what the driver is typed
against) but keep nothing of their own: reads and writes go through the
real pair, one call of OpenSSL's RC4 per read or write, which returns the
deciphered bytes in one pass (the only copy encryption adds).

The reader also serves, first, bytes the handshake already received in the
clear: the receiver's initial payload (the dialler's BitTorrent handshake)
and whatever came with it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable

from ..wire.mse import MseResult

__all__ = ["CipherReader", "CipherWriter", "secure_stream"]

Transform = Callable[[bytes | bytearray | memoryview], bytes]


class CipherReader(asyncio.StreamReader):
    """Reads through ``inner``, deciphering with ``decrypt`` (none: plaintext), after ``pending``."""

    def __init__(self, inner: asyncio.StreamReader, decrypt: Transform | None, pending: bytes = b"") -> None:
        super().__init__()  # its own buffer stays empty: no protocol feeds this reader
        self._inner = inner
        self._decrypt = decrypt
        self._pending = pending

    async def read(self, n: int = -1) -> bytes:
        if self._pending and n != 0:
            data = self._pending if n < 0 else self._pending[:n]
            self._pending = self._pending[len(data) :]
            return data
        data = await self._inner.read(n)
        return self._decrypt(data) if data and self._decrypt is not None else data

    async def readexactly(self, n: int) -> bytes:
        head = self._pending[:n]
        self._pending = self._pending[len(head) :]
        if len(head) == n:
            return head
        try:
            data = await self._inner.readexactly(n - len(head))
        except asyncio.IncompleteReadError as exc:
            partial = self._decrypt(exc.partial) if exc.partial and self._decrypt is not None else exc.partial
            raise asyncio.IncompleteReadError(head + partial, n) from None
        return head + (self._decrypt(data) if self._decrypt is not None else data)

    async def readline(self) -> bytes:
        raise NotImplementedError("a peer connection is read by length, not by line")

    async def readuntil(self, *args: Any, **kwargs: Any) -> bytes:
        raise NotImplementedError("a peer connection is read by length, not by separator")

    def at_eof(self) -> bool:
        return not self._pending and self._inner.at_eof()

    def exception(self) -> Exception | None:
        return self._inner.exception()


class CipherWriter(asyncio.StreamWriter):
    """Writes through ``inner``'s transport, enciphering with ``encrypt``.

    Built on the same transport and protocol, so ``drain``, ``close``,
    ``transport`` (its buffer size, ``abort``) and ``get_extra_info`` are the
    connection's own.
    """

    def __init__(self, inner: asyncio.StreamWriter, encrypt: Transform, reader: asyncio.StreamReader) -> None:
        transport = inner.transport
        super().__init__(transport, transport.get_protocol(), reader, asyncio.get_running_loop())
        # Held on purpose: a StreamWriter collected while its transport is open closes it.
        self._inner = inner
        self._encrypt = encrypt

    def write(self, data: bytes | bytearray | memoryview) -> None:
        super().write(self._encrypt(data))

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        super().write(self._encrypt(b"".join(data)))


def secure_stream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, result: MseResult
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The connection as the peer protocol sees it after the encrypted handshake ``result``.

    A plaintext stream with nothing received ahead stays the pair it was.
    """
    if result.encrypt is None or result.decrypt is None:
        return (CipherReader(reader, None, result.payload) if result.payload else reader), writer
    return (
        CipherReader(reader, result.decrypt.update, result.payload),
        CipherWriter(writer, result.encrypt.update, reader),
    )
