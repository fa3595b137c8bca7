"""Receiving a peer's bytes: one reused buffer the kernel reads into, handed on borrowed.

:func:`receive` feeds a connection's bytes to its
:class:`~pyowtorrent.wire.connection.PeerConnection` and the events to the
peer driver until the stream ends.

asyncio's streams copy every byte three times on the way in (a new ``bytes``
per read, the reader's buffer, the ``bytes`` a read returns), pause and
resume the socket at 64 KiB, and each new 256 KiB ``bytes`` costs page
faults.  A :class:`Receiver` is a :class:`asyncio.BufferedProtocol` that
takes over a plaintext connection's transport once its handshake is read:
the socket is read into one buffer, reused, and each read goes, borrowed, to
a callback (the peer driver, which parses it with
:meth:`~pyowtorrent.wire.connection.PeerConnection.receive_borrowed` and copies
each block once, into its piece's buffer).

That buffer is the thread's, shared by all its connections
(:func:`read_buffer`): the loop reads one socket into it and hands the read
on before it reads the next, and what the parser keeps of a read is copied
before it returns.  So it can be large (a read takes whatever the socket
holds: a fast peer's read held 177 KB on average with a 256 KiB buffer per
connection, 300 KB with 1 MiB) and costs the same memory for one peer or
two hundred, and is hot in the cache for each of them.

The stream's :class:`~asyncio.StreamWriter` keeps working: the transport's
write flow control and its loss still reach the stream's protocol, so
``drain()`` and ``wait_closed()`` behave as before.  Where the transport
cannot be taken over (an encrypted connection reads through its cipher; a
reader that has already seen the end), :func:`take_over` says so and the
driver reads through the stream.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from ..wire.connection import PeerConnection
from ..wire.events import Event

__all__ = ["READ_SIZE", "Receiver", "read_buffer", "receive", "take_over"]

# The kernel is asked for up to this much per read (asyncio's own streams read 256 KiB).  In-process
# 1 GiB from libtorrent, the loop thread spent 1.03-1.26 CPU s with 256 KiB, 0.89-1.06 with 1 MiB.
READ_SIZE = 1 << 20

_per_thread = threading.local()


def read_buffer() -> memoryview:
    """This thread's receive buffer: every :class:`Receiver` of the thread's event loop reads into it."""
    view: memoryview | None = getattr(_per_thread, "view", None)
    if view is None:
        view = _per_thread.view = memoryview(bytearray(READ_SIZE))
    return view


class Receiver(asyncio.BufferedProtocol):
    """Reads into its thread's buffer (:func:`read_buffer`) and calls ``on_data(view)``; :attr:`done`
    resolves when the connection ends.

    ``on_data`` may raise: the exception ends the connection's reading and
    becomes :attr:`done`'s.  ``done`` is ``None`` for the end of the stream
    (EOF, or a close without an error) and an exception for a lost connection.
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        stream_protocol: asyncio.BaseProtocol,
        on_data: Callable[[memoryview], None],
    ) -> None:
        self.transport = transport
        self._stream_protocol = stream_protocol
        self.on_data = on_data
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- reading ----------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        # The buffer of the thread reading now (a loop may be run by another thread later);
        # buffer_updated follows on the same thread, before any other read.
        return read_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if self.done.done():
            return  # ended by an earlier read's error: what follows no longer counts
        try:
            self.on_data(read_buffer()[:nbytes])
        except Exception as exc:  # noqa: BLE001 - the driver's to judge, through done
            self._finish(exc)

    def eof_received(self) -> bool:
        self._finish(None)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc)
        self._stream_protocol.connection_lost(exc)  # drain() and wait_closed() waiters wake

    def _finish(self, exc: BaseException | None) -> None:
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(exc)
        if not self.transport.is_closing():
            self.transport.pause_reading()

    # -- writing: the stream's flow control, unchanged -----------------------------

    def pause_writing(self) -> None:
        self._stream_protocol.pause_writing()

    def resume_writing(self) -> None:
        self._stream_protocol.resume_writing()

    def pause_reading(self) -> None:
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.transport.is_closing() and not self.done.done():
            self.transport.resume_reading()


def take_over(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_data: Callable[[memoryview], None]
) -> tuple[Receiver, bytes] | None:
    """Put a :class:`Receiver` under ``writer``'s transport; with the bytes the reader already held.

    ``None`` when the connection cannot be taken over: ``reader`` is not a
    plain asyncio stream (an encrypted one decrypts as it reads), it has
    seen the end of the stream or an error, or the transport is closing.
    """
    transport: Any = writer.transport
    # Private, as the buffer below: a reader that has seen the end may still hold bytes.
    if type(reader) is not asyncio.StreamReader or getattr(reader, "_eof", True) or reader.exception() is not None:
        return None
    if transport.is_closing() or not hasattr(transport, "set_protocol"):
        return None
    # What the stream read past the handshake.  asyncio has no public way to take a
    # reader's buffered bytes without waiting; its buffer has been this bytearray since 3.4.
    buffered: bytearray = reader._buffer  # type: ignore[attr-defined]
    held = bytes(buffered)
    buffered.clear()
    receiver = Receiver(transport, transport.get_protocol(), on_data)
    transport.set_protocol(receiver)
    if not transport.is_reading():
        transport.resume_reading()  # the stream may have paused it over its limit
    return receiver, held


async def receive(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    conn: PeerConnection,
    on_events: Callable[[list[Event]], None],
    backlog: int,
) -> None:
    """Give ``on_events`` what ``conn`` makes of each read until the peer ends its stream; raise what else ends it.

    ``conn``'s protocol errors and ``on_events``' exceptions end it, as does a
    lost connection.  While more than ``backlog`` bytes of ours wait to be
    sent, nothing more is read: a peer that does not read is not read either.
    """
    transport: Any = writer.transport
    draining: set[asyncio.Task[None]] = set()

    def on_data(view: memoryview) -> None:
        on_events(conn.receive_borrowed(view))
        if transport.get_write_buffer_size() > backlog and not draining:
            receiver.pause_reading()
            task = asyncio.get_running_loop().create_task(resume_when_drained())
            draining.add(task)
            task.add_done_callback(draining.discard)

    async def resume_when_drained() -> None:
        try:
            await writer.drain()
        except (ConnectionError, OSError):
            return  # the end comes through the receiver
        receiver.resume_reading()

    taken = take_over(reader, writer, on_data)
    if taken is None:
        while data := await reader.read(READ_SIZE):
            on_events(conn.receive_data(data))
            if transport.get_write_buffer_size() > backlog:
                await writer.drain()
        return
    receiver, held = taken
    try:
        if held:
            on_events(conn.receive_data(held))
        await receiver.done
    finally:
        for task in list(draining):
            task.cancel()
