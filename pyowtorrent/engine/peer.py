"""One TCP connection to a peer: the asyncio driver around the sans-IO :mod:`wire` protocol.

The peer object owns the socket and the protocol state of both directions
(choked/interested, the peer's pieces, our outstanding requests, its
requests to us).  Decisions that involve the whole torrent — which blocks to
ask for, what to do with a finished piece, who gets an upload slot — are the
torrent's; the peer calls back into it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..errors import PyowtorrentError
from ..strategy.picker import Block, unpack_bitfield
from ..wire import events as ev
from ..wire.connection import PeerConnection
from ..wire.errors import RemoteProtocolError

if TYPE_CHECKING:
    from .torrent import Torrent

log = logging.getLogger(__name__)

BLOCK = 16384
READ_SIZE = 256 << 10
# Requests kept in flight: enough to cover this many seconds of the peer's
# measured rate, so a fast peer (loopback) keeps its pipe full.
REQUEST_QUEUE_SECONDS = 3.0
MIN_QUEUE = 4
START_QUEUE = 32
MAX_QUEUE = 500
# Requests we accept from a peer before we stop reading them (BEP 10 'reqq').
OUR_REQQ = 500
# Coalesce a peer's queued requests into disk reads of up to this many bytes.
MAX_READ = 1 << 20


class RateMeter:
    """Bytes per second over a few seconds, smoothed, from a monotonic clock."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self.total = 0
        self._bytes = 0.0
        self._start = time.monotonic()
        self._rate = 0.0
        self._last = self._start

    def add(self, n: int) -> None:
        self.total += n
        self._bytes += n

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        elapsed = now - self._last
        if elapsed >= 0.5:
            # Fold the last interval into an exponential average over `window`.
            instant = self._bytes / elapsed
            weight = min(1.0, elapsed / self.window)
            if self._last == self._start:
                weight = 1.0
            self._rate += (instant - self._rate) * weight
            self._bytes = 0.0
            self._last = now
        return self._rate


class Peer:
    def __init__(
        self,
        torrent: Torrent,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: PeerConnection,
        address: tuple[str, int],
        outgoing: bool,
    ) -> None:
        self.torrent = torrent
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.address = address
        self.outgoing = outgoing
        self.peer_id = b""
        self.client = ""
        self.have = bytearray(torrent.meta.num_pieces)
        self.num_have = 0
        self.is_seed = False
        self.outstanding: dict[Block, float] = {}
        self.queue_target = START_QUEUE
        self.max_queue = MAX_QUEUE
        self.incoming_requests: deque[ev.Request] = deque()
        self.downloaded = RateMeter()
        self.uploaded = RateMeter()
        self.connected_at = time.monotonic()
        self.last_received = self.connected_at
        self.last_sent = self.connected_at
        self.last_block = self.connected_at
        self.snubbed = False
        self.closed = asyncio.Event()
        self._serve_wakeup = asyncio.Event()
        self._refill = False
        self._tasks: list[asyncio.Task[Any]] = []
        self.close_reason = ""

    # Choke and interest state lives in the protocol object, which updates it
    # as messages pass in either direction.
    @property
    def am_choking(self) -> bool:
        return self.conn.am_choking

    @property
    def am_interested(self) -> bool:
        return self.conn.am_interested

    @property
    def peer_choking(self) -> bool:
        return self.conn.peer_choking

    @property
    def peer_interested(self) -> bool:
        return self.conn.peer_interested

    @property
    def fast(self) -> bool:
        return self.conn.fast_enabled

    def __repr__(self) -> str:
        return f"<Peer {self.address[0]}:{self.address[1]} {self.client or self.peer_id[:8]!r}>"

    # -- sending -----------------------------------------------------------

    def send(self, event: Any) -> None:
        if self.closed.is_set():
            return
        self.writer.write(self.conn.send(event))
        self.last_sent = time.monotonic()

    def send_interest(self, interested: bool) -> None:
        if interested != self.am_interested:
            self.send(ev.Interested() if interested else ev.NotInterested())

    def set_choking(self, choke: bool) -> None:
        if choke == self.am_choking:
            return
        self.send(ev.Choke() if choke else ev.Unchoke())
        if choke:
            # BEP 6: a choke rejects whatever the peer had asked for (we grant no
            # allowed-fast pieces, so nothing is exempt).
            if self.fast:
                for r in self.incoming_requests:
                    self.send(ev.Reject(r.index, r.begin, r.length))
            self.incoming_requests.clear()
        else:
            self._serve_wakeup.set()

    # -- life cycle ----------------------------------------------------------

    def start(self, handshake: bytes) -> None:
        """Take the remote's handshake (already read), so that we may send."""
        self._handle(self.conn.receive_data(handshake))

    async def run(self) -> None:
        """Read and handle messages until the connection ends; then tell the torrent."""
        self._tasks.append(asyncio.create_task(self._serve(), name=f"serve {self.address}"))
        try:
            while not self.closed.is_set():
                data = await self.reader.read(READ_SIZE)
                if not data:
                    self.close_reason = self.close_reason or "peer closed the connection"
                    break
                self.last_received = time.monotonic()
                self._handle(self.conn.receive_data(data))
                if self.writer.transport.get_write_buffer_size() > 4 * MAX_READ:
                    await self.writer.drain()
        except RemoteProtocolError as exc:
            self._handle(exc.events)  # what the peer said before it broke the rules still counts
            self.close_reason = f"protocol violation: {exc}"
            log.info("%r: %s", self, self.close_reason)
        except (ConnectionError, OSError) as exc:
            self.close_reason = self.close_reason or f"connection lost: {exc}"
        except PyowtorrentError as exc:
            self.close_reason = str(exc)
        finally:
            await self.close(self.close_reason or "closed")

    async def close(self, reason: str = "closed") -> None:
        if self.closed.is_set():
            return
        self.close_reason = self.close_reason or reason
        self.closed.set()
        self._serve_wakeup.set()
        for t in self._tasks:
            if t is not asyncio.current_task():
                t.cancel()
        try:
            self.writer.close()
        except Exception:  # the transport may already be gone
            pass
        self.torrent.peer_closed(self)

    # -- receiving -----------------------------------------------------------

    def _handle(self, events: list[Any]) -> None:
        t = self.torrent
        self._refill = False
        for e in events:
            kind = type(e)
            if kind is ev.Piece:
                self._on_piece(e)
            elif kind is ev.Have:
                if not self.have[e.index]:
                    self.have[e.index] = 1
                    self.num_have += 1
                    t.on_peer_have(self, e.index)
            elif kind is ev.Request:
                self._on_request(e)
            elif kind is ev.Unchoke:
                t.fill_requests(self)
            elif kind is ev.Choke:
                if not self.fast:
                    # Without BEP 6 a choke silently drops our requests.
                    self._drop_outstanding()
            elif kind is ev.Interested or kind is ev.NotInterested:
                t.on_peer_interest(self)
            elif kind is ev.Bitfield:
                self.have = bytearray(unpack_bitfield(e.bits, t.meta.num_pieces))
                self.num_have = sum(self.have)
                t.on_peer_bitfield(self)
            elif kind is ev.HaveAll:
                self.have = bytearray(b"\x01") * t.meta.num_pieces
                self.num_have = t.meta.num_pieces
                t.on_peer_bitfield(self)
            elif kind is ev.HaveNone:
                t.on_peer_bitfield(self)
            elif kind is ev.Cancel:
                self._drop_request(e.index, e.begin, e.length)
            elif kind is ev.Reject:
                block = Block(e.index, e.begin, e.length)
                if self.outstanding.pop(block, None) is not None:
                    t.picker.on_request_failed(self, block)
                    t.fill_requests(self)
            elif kind is ev.Handshake:
                self.peer_id = e.peer_id
            elif kind is ev.ExtensionHandshake:
                if e.reqq:
                    self.max_queue = max(MIN_QUEUE, min(MAX_QUEUE, e.reqq))
                if e.v:
                    self.client = e.v[:64]
            # KeepAlive, Port, Suggest, AllowedFast, Extended: nothing to do yet.
        if self._refill:
            # Once per read, not per block: one batch of requests, one write.
            t.fill_requests(self)

    def _on_piece(self, e: ev.Piece) -> None:
        block = Block(e.index, e.begin, len(e.block))
        now = time.monotonic()
        self.outstanding.pop(block, None)
        self.downloaded.add(len(e.block))
        self.last_block = now
        self.snubbed = False
        self.torrent.on_block(self, block, e.block)
        # Slow start: each block received lets the queue grow until it covers
        # REQUEST_QUEUE_SECONDS of the measured rate.
        rate = self.downloaded.rate(now)
        target = int(rate * REQUEST_QUEUE_SECONDS / BLOCK)
        self.queue_target = max(MIN_QUEUE, min(self.max_queue, max(target, self.queue_target + 1)))
        self._refill = True

    def _on_request(self, e: ev.Request) -> None:
        if self.am_choking or not self.torrent.have_piece(e.index):
            if self.fast:
                self.send(ev.Reject(e.index, e.begin, e.length))
            return
        if len(self.incoming_requests) >= OUR_REQQ:
            if self.fast:
                self.send(ev.Reject(e.index, e.begin, e.length))
            return
        self.incoming_requests.append(e)
        self._serve_wakeup.set()

    def _drop_request(self, index: int, begin: int, length: int) -> None:
        for r in self.incoming_requests:
            if (r.index, r.begin, r.length) == (index, begin, length):
                self.incoming_requests.remove(r)
                return

    def _drop_outstanding(self) -> None:
        for block in list(self.outstanding):
            self.torrent.picker.on_request_failed(self, block)
        self.outstanding.clear()

    # -- requesting ----------------------------------------------------------

    def request(self, blocks: list[Block]) -> None:
        if self.closed.is_set():
            return
        now = time.monotonic()
        for b in blocks:
            self.outstanding[b] = now
        self.writer.write(b"".join(self.conn.send(ev.Request(b.index, b.begin, b.length)) for b in blocks))
        self.last_sent = now

    def cancel(self, block: Block) -> None:
        if self.outstanding.pop(block, None) is not None:
            self.send(ev.Cancel(block.index, block.begin, block.length))

    def check_timeouts(self, now: float, timeout: float) -> None:
        """Requests unanswered for ``timeout`` seconds go back to the pool; the peer is snubbed."""
        if self.outstanding and now - self.last_block > timeout:
            self.snubbed = True
            self.queue_target = MIN_QUEUE
            self._drop_outstanding()
            self.torrent.fill_requests(self)

    # -- uploading -----------------------------------------------------------

    async def _serve(self) -> None:
        """Answer the peer's requests: coalesced disk reads off the loop, writes with back-pressure."""
        loop = asyncio.get_running_loop()
        storage = self.torrent.storage
        while not self.closed.is_set():
            if not self.incoming_requests:
                self._serve_wakeup.clear()
                await self._serve_wakeup.wait()
                continue
            batch = [self.incoming_requests.popleft()]
            total = batch[0].length
            # Consecutive requests in one piece become one read.
            while (
                self.incoming_requests
                and self.incoming_requests[0].index == batch[-1].index
                and self.incoming_requests[0].begin == batch[-1].begin + batch[-1].length
                and total < MAX_READ
            ):
                batch.append(self.incoming_requests.popleft())
                total += batch[-1].length
            first = batch[0]
            await self.torrent.session.upload_limiter.take(total)
            data = await loop.run_in_executor(
                self.torrent.session.executor, storage.read_block, first.index, first.begin, total
            )
            view = memoryview(data)
            pos = 0
            for r in batch:
                if self.closed.is_set():
                    return
                self.send(ev.Piece(r.index, r.begin, view[pos : pos + r.length]))  # copied once, into the message
                pos += r.length
                self.uploaded.add(r.length)
                self.torrent.uploaded_bytes += r.length
                self.torrent.upload_meter.add(r.length)
            await self.writer.drain()
