"""One connection to a peer: the asyncio driver around the sans-IO :mod:`wire` protocol.

The driver owns the socket and the protocol state of both directions
(choked/interested, the peer's pieces, our outstanding requests, and, in its
:class:`Uploads`, its requests to us), and the BEP 6 allowed-fast pieces each
side gave the other.  Decisions that involve the whole torrent — which
blocks to ask for, what to do with a finished piece, who gets an upload slot,
what to make of a PEX or ut_metadata message — are its host's: the driver reports to a
:class:`PeerHost` and never changes the torrent's state itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from ..errors import PyowtorrentError
from ..metainfo.layout import BLOCK_SIZE
from ..strategy.allowed_fast import FastGrants, FastOffers
from ..strategy.picker import Block
from ..wire import events as ev
from ..wire.bitfield import bitfield_flags
from ..wire.connection import PeerConnection
from ..wire.errors import RemoteProtocolError
from .clock import Clock
from .conduct import Conduct, PeerMisbehaved
from .meters import RateMeter
from .net import Address
from .receiver import receive

log = logging.getLogger(__name__)

__all__ = ["OUR_REQQ", "HaveBatch", "Peer", "PeerHost", "Uploads"]

# Requests kept in flight: enough to cover this many seconds of the peer's
# measured rate, so a fast peer (loopback) keeps its pipe full.
REQUEST_QUEUE_SECONDS = 3.0
MIN_QUEUE = 4
START_QUEUE = 32
MAX_QUEUE = 500
# The longest a have waits to go out with other messages.
HAVE_DELAY = 0.1
# Requests we accept from a peer before we stop reading them (BEP 10 'reqq').
OUR_REQQ = 500
# Coalesce a peer's queued requests into disk reads of up to this many bytes.
MAX_READ = 1 << 20
RequestKey = tuple[int, int, int]  # index, begin, length


class PeerHost(Protocol):
    """What a peer driver reports to, and asks of, its torrent."""

    def have_piece(self, index: int) -> bool: ...

    def on_peer_pieces(self, peer: Peer, previous: bytearray | None = None) -> None:
        """The peer said which pieces it has (bitfield, have-all or have-none); ``previous``:
        what it had said before, when a later bitfield replaces it."""

    def on_peer_have(self, peer: Peer, index: int) -> None:
        """The peer has one more piece (the driver asks for blocks once the read is handled)."""

    def on_peer_interest(self, peer: Peer) -> None: ...

    def on_blocks(self, peer: Peer, blocks: list[tuple[Block, bytes | memoryview]]) -> None:
        """The blocks of one read, in order: each ``data`` a view valid only during the call."""

    def on_request_failed(self, peer: Peer, block: Block) -> None:
        """A request of ours will not be answered (rejected, choked away, timed out)."""

    def fill_requests(self, peer: Peer) -> None:
        """The peer can take more requests from us."""

    def on_uploaded(self, peer: Peer, nbytes: int) -> None: ...

    def on_peer_pex(self, peer: Peer, message: ev.Pex) -> None:
        """The peer sent a BEP 11 message (only on a connection that speaks ut_pex)."""

    def on_peer_metadata(self, peer: Peer, message: ev.MetadataMessage) -> None:
        """The peer sent a BEP 9 message (only on a connection that speaks ut_metadata)."""

    async def read_block(self, index: int, begin: int, length: int) -> bytes | bytearray:
        """Bytes to upload (rate-limited, read off the loop)."""
        ...

    def peer_closed(self, peer: Peer) -> None: ...


class Peer:
    def __init__(
        self,
        host: PeerHost,
        clock: Clock,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: PeerConnection,
        address: Address,
        outgoing: bool,
        num_pieces: int,
    ) -> None:
        self.host = host
        self.clock = clock
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.address = address
        self.outgoing = outgoing
        self.num_pieces = num_pieces
        self.peer_id = b""
        self.client = ""
        self.have = bytearray(num_pieces)
        self.num_have = 0
        self.wanted = 0  # of its pieces, those we want and lack: the host keeps it (interest in O(1))
        self.is_seed = False
        self.outstanding: dict[Block, float] = {}
        self.queue_target = START_QUEUE
        self.max_queue = MAX_QUEUE
        self.offers = FastOffers()  # BEP 6: pieces it lets us ask for while it chokes us
        self.extension_handshake: ev.ExtensionHandshake | None = None  # its latest (BEP 10)
        self.conduct = Conduct(clock)
        self.bytes_written = 0  # all we ever handed the transport: less what it holds, what left
        self.downloaded = RateMeter(clock)
        self.uploaded = RateMeter(clock)
        self.connected_at = clock.now()
        self.last_received = self.connected_at
        self.last_sent = self.connected_at
        self.last_block = self.connected_at
        self.snubbed = False
        self.closed = asyncio.Event()
        self.uploads = Uploads(self)
        self._refill = False
        self.haves = HaveBatch(self)
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False
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

    def __hash__(self) -> int:
        # The picker keeps peers in sets: hashing by address (not by id()) keeps
        # their order, and so a simulated run, the same from one run to the next.
        return hash(self.address)

    def __repr__(self) -> str:
        return f"<Peer {self.address[0]}:{self.address[1]} {self.client or self.peer_id[:8]!r}>"

    # -- sending -----------------------------------------------------------

    def send(self, event: ev.Message | ev.Pex | ev.MetadataMessage) -> None:
        if self.writable():
            self.write(self.conn.send(event))

    def writable(self) -> bool:
        if self.closed.is_set():
            return False
        if self.writer.is_closing():
            # The connection is gone under us: writing on would only make asyncio warn, once per write.
            self._close_soon("connection lost")
            return False
        return True

    def write(self, data: bytes) -> None:
        """Hand encoded messages to the transport (after :meth:`writable`)."""
        self.writer.write(data)
        self.bytes_written += len(data)
        self.last_sent = self.clock.now()

    def send_have(self, index: int) -> None:
        """Say we have piece ``index``: with the next requests, or within :data:`HAVE_DELAY`."""
        if not self.closed.is_set():
            self.haves.add(index)

    def _close_soon(self, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self.close_reason = self.close_reason or reason
        self._tasks.append(asyncio.get_running_loop().create_task(self.close(reason), name=f"close {self.address}"))

    def send_interest(self, interested: bool) -> None:
        if interested != self.am_interested:
            self.send(ev.Interested() if interested else ev.NotInterested())

    def set_choking(self, choke: bool) -> None:
        if choke == self.am_choking:
            return
        self.send(ev.Choke() if choke else ev.Unchoke())
        if choke:
            self.uploads.choked()
        else:
            self.conduct.unchoked()
            self.uploads.wakeup.set()

    # -- life cycle ----------------------------------------------------------

    def start(self, handshake: bytes) -> None:
        """Take the remote's handshake (already read), so that we may send."""
        self._handle(self.conn.receive_data(handshake))

    async def run(self) -> None:
        """Read and handle messages until the connection ends; then tell the host."""
        self._tasks.append(asyncio.get_running_loop().create_task(self.uploads.serve(), name=f"serve {self.address}"))
        try:
            await receive(self.reader, self.writer, self.conn, self._on_events, 4 * MAX_READ)
            self.close_reason = self.close_reason or "peer closed the connection"
        except RemoteProtocolError as exc:
            self.close_reason = f"protocol violation: {exc}"
            if not self.closed.is_set():
                try:
                    self._handle(exc.events)  # what the peer said before it broke the rules still counts
                except PyowtorrentError:
                    pass  # more misbehaviour from a peer that is going anyway
        except (ConnectionError, OSError) as exc:
            self.close_reason = self.close_reason or f"connection lost: {exc}"
        except PeerMisbehaved as exc:
            self.close_reason = str(exc)
        except PyowtorrentError as exc:
            self.close_reason = str(exc)
        finally:
            await self.close(self.close_reason or "closed")

    def _on_events(self, events: list[ev.Event]) -> None:
        if self.closed.is_set():
            return  # closed while a read waited (a ban, an eviction): what it says no longer counts
        self.last_received = self.clock.now()
        self._handle(events)
        if self.conn.ignored_messages:
            # What the wire layer tolerated and ignored (logged there) carries nothing either.
            self.conduct.idle_message("ignored", self.conn.ignored_messages)
            self.conn.ignored_messages = 0

    async def close(self, reason: str = "closed") -> None:
        if self.closed.is_set():
            return
        self.close_reason = self.close_reason or reason
        self.closed.set()
        # -v shows why each peer went: the question a user asks when a download stalls.
        log.info("%r: disconnected: %s", self, self.close_reason)
        self.uploads.wakeup.set()
        for t in self._tasks:
            if t is not asyncio.current_task():
                t.cancel()
        try:
            if self.writer.transport.get_write_buffer_size():
                # A peer that does not read would keep a gentle close (and its
                # socket, and us) waiting for the buffer to drain forever.
                self.writer.transport.abort()
            else:
                self.writer.close()
        except Exception:  # the transport may already be gone
            pass
        self.host.peer_closed(self)

    # -- receiving -----------------------------------------------------------

    def _handle(self, events: list[ev.Event]) -> None:
        host, outstanding = self.host, self.outstanding
        self._refill = False
        arrived: list[tuple[Block, bytes | memoryview]] = []
        try:
            for e in events:
                if type(e) is ev.Piece:  # first: a leecher gets one per 16 KiB
                    data = e.block
                    block = Block(e.index, e.begin, len(data))
                    outstanding.pop(block, None)
                    arrived.append((block, data))
                elif type(e) is ev.Have:
                    index = e.index
                    if not self.have[index]:
                        self.have[index] = 1
                        self.num_have += 1
                        host.on_peer_have(self, index)
                        self._refill = True  # once per read: a read may bring dozens of haves
                    else:
                        self.conduct.idle_message("have")
                elif type(e) is ev.Request:
                    self.uploads.on_request(e)
                elif type(e) is ev.InvalidRequest:
                    log.debug("%r: invalid request, refused: %s", self, e.reason)
                    self.conduct.invalid_request()  # drops a peer that keeps it up
                    if self.fast:
                        self.send(ev.Reject(e.index, e.begin, e.length))
                elif type(e) is ev.UnrequestedPiece:
                    log.debug("%r: dropped %d bytes of piece %d we did not ask for", self, e.length, e.index)
                    self.conduct.unrequested_block(e.length)
                elif type(e) is ev.Unchoke:
                    # Choke and interest changes cost us work (a refill, a rechoke): a
                    # real peer makes a few a minute, a flapping one is cut off.
                    self.conduct.idle_message("choke and unchoke")
                    self.conduct.unchoked_us()
                    self._refill = True
                elif type(e) is ev.Choke:
                    self.conduct.idle_message("choke and unchoke")
                    if not self.fast:
                        # Without BEP 6 a choke silently drops our requests.
                        self._drop_outstanding()
                elif type(e) is ev.Interested or type(e) is ev.NotInterested:
                    self.conduct.idle_message("interest")
                    host.on_peer_interest(self)
                elif type(e) is ev.Bitfield:
                    previous = self.have if self.num_have else None
                    self.have = bitfield_flags(e.bits, self.num_pieces)
                    self.num_have = sum(self.have)
                    host.on_peer_pieces(self, previous)
                elif type(e) is ev.HaveAll or type(e) is ev.HaveNone:
                    previous = self.have if self.num_have else None
                    full = type(e) is ev.HaveAll
                    self.have = bytearray(b"\x01" if full else b"\x00") * self.num_pieces
                    self.num_have = self.num_pieces if full else 0
                    host.on_peer_pieces(self, previous)
                elif type(e) is ev.Cancel:
                    if self.uploads.requests.pop((e.index, e.begin, e.length), None) is None:
                        self.conduct.idle_message("cancel")
                elif type(e) is ev.AllowedFast:
                    if not self.offers.offer(e.index):
                        self.conduct.idle_message("allowed fast")
                    self._refill = self._refill or self.peer_choking  # something to ask for while choked
                elif type(e) is ev.Reject:
                    self._on_reject(Block(e.index, e.begin, e.length))
                elif type(e) is ev.KeepAlive:
                    self.conduct.idle_message("keep-alive")
                elif type(e) is ev.Handshake:
                    self.peer_id = e.peer_id
                elif type(e) is ev.ExtensionHandshake:
                    self.extension_handshake = e
                    if e.reqq:
                        self.max_queue = max(MIN_QUEUE, min(MAX_QUEUE, e.reqq))
                    if e.v:
                        self.client = e.v[:64]
                elif type(e) is ev.Pex:
                    host.on_peer_pex(self, e)
                elif type(e) is ev.MetadataRequest or type(e) is ev.MetadataData or type(e) is ev.MetadataReject:
                    host.on_peer_metadata(self, e)
                # Port, Suggest, Extended: nothing to do yet.
        finally:
            if arrived:  # also when a later message in the read gets the peer dropped
                host.on_blocks(self, arrived)
        if arrived:
            self.downloaded.add(sum(len(data) for _, data in arrived))
            self._blocks_arrived(len(arrived))
        if self._refill:
            # Once per read, not per block: one batch of requests, one write.
            host.fill_requests(self)

    def _blocks_arrived(self, count: int) -> None:
        """What the blocks of one read change, once per read rather than per block."""
        now = self.clock.now()
        self.last_block = now
        self.snubbed = False
        self.conduct.block_received()
        # Slow start: each block received lets the queue grow until it covers
        # REQUEST_QUEUE_SECONDS of the measured rate.
        rate = self.downloaded.rate(now)
        target = int(rate * REQUEST_QUEUE_SECONDS / BLOCK_SIZE)
        self.queue_target = max(MIN_QUEUE, min(self.max_queue, max(target, self.queue_target + count)))
        self._refill = True

    def _on_reject(self, block: Block) -> None:
        if self.outstanding.pop(block, None) is None:
            return
        if self.peer_choking:
            self.offers.withdraw(block.index)  # not allowed fast after all: asking again would loop
        self.host.on_request_failed(self, block)
        # BEP 6: a choke comes with a reject of everything asked; only a reject
        # while it lets us ask is a refusal.
        if not self.peer_choking and self.conduct.rejected():
            # It will not give us these: stop asking for a while rather than
            # trade requests for rejects as fast as the link allows.
            self.snubbed = True
            return
        self.host.fill_requests(self)

    def _drop_outstanding(self) -> None:
        for block in list(self.outstanding):
            self.host.on_request_failed(self, block)
        self.outstanding.clear()

    # -- requesting ----------------------------------------------------------

    def request(self, blocks: list[Block]) -> None:
        if self.closed.is_set():
            return
        now = self.clock.now()
        for b in blocks:
            self.outstanding[b] = now
        self.write(self.haves.take() + self.conn.send_requests(blocks))  # a Block is an (index, begin, length)

    def cancel(self, block: Block) -> None:
        if self.outstanding.pop(block, None) is not None:
            self.send(ev.Cancel(block.index, block.begin, block.length))

    def check_timeouts(self, now: float, timeout: float) -> None:
        """Requests unanswered for ``timeout`` seconds go back to the pool.

        A peer that sent no block at all for that long is snubbed and loses them all; one that
        sends blocks but skips some (never answers them) loses those, oldest first.
        """
        if self.outstanding and now - self.last_block > timeout:
            self.snubbed = True
            self.queue_target = MIN_QUEUE
            self._drop_outstanding()
            self.host.fill_requests(self)
        elif self.outstanding:
            stale = []
            for block, asked in self.outstanding.items():  # in the order asked
                if now - asked <= timeout:
                    break
                stale.append(block)
            for block in stale:
                del self.outstanding[block]
                self.host.on_request_failed(self, block)
            if stale:
                self.host.fill_requests(self)
        if self.conduct.backoff_over(now):
            self.host.fill_requests(self)
        unsent = self.writer.transport.get_write_buffer_size()
        if self.conduct.writes_seen(now, self.bytes_written - unsent, unsent):
            self._close_soon("stopped reading")


class HaveBatch:
    """One peer's haves waiting to go out, with the next requests or within :data:`HAVE_DELAY`.

    A write per have costs a packet each way, and a fast download verifies
    thousands of pieces a second; nothing needs a have sooner.
    """

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.pieces: list[int] = []
        # One flush at a time is scheduled, and not withdrawn when requests take the haves first:
        # a leecher takes them a few times per piece, so a timer per batch was one per piece per peer.
        self._flush_due = False

    def add(self, index: int) -> None:
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_later(HAVE_DELAY, self.flush)
        self.pieces.append(index)

    def take(self) -> bytes:
        """The haves' bytes, to write first in the next write."""
        if not self.pieces:
            return b""
        data = self.peer.conn.send_haves(self.pieces)
        self.pieces.clear()
        return data

    def flush(self) -> None:
        self._flush_due = False
        if self.pieces and self.peer.writable():
            self.peer.write(self.take())


class Uploads:
    """One peer's requests to us, and serving them: coalesced reads off the loop, writes with back-pressure.

    A request is taken while we unchoke the peer, or while we choke it if it
    is for one of the allowed-fast pieces we granted it (BEP 6), up to
    :data:`~pyowtorrent.strategy.allowed_fast.CHOKED_REQUESTS_PER_BLOCK` times
    each block; anything else is refused (a reject, with BEP 6) and a stream
    of requests while choked is the peer's :class:`Conduct` to judge.
    """

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        # In arrival order, found by key (a cancel is O(1)).
        self.requests: dict[RequestKey, ev.Request] = {}
        self.wakeup = asyncio.Event()
        self.grants: FastGrants | None = None  # the allowed-fast pieces we gave it, once we have

    def grant(self, pieces: list[int]) -> None:
        """Give the peer BEP 6 allowed-fast ``pieces``: it is told of those it lacks."""
        peer = self.peer
        self.grants = FastGrants(pieces)
        for index in pieces:
            if not peer.have[index]:
                peer.send(ev.AllowedFast(index))

    def on_request(self, e: ev.Request) -> None:
        peer = self.peer
        if peer.am_choking:
            blocks = -(-peer.conn.piece_size(e.index) // BLOCK_SIZE)
            if self.grants is None or not self.grants.take(e.index, blocks, peer.num_have):
                peer.conduct.request_while_choked()
                self._refuse(e)
                return
        if not peer.host.have_piece(e.index) or len(self.requests) >= OUR_REQQ:
            self._refuse(e)
            return
        self.requests[(e.index, e.begin, e.length)] = e
        self.wakeup.set()

    def _refuse(self, e: ev.Request) -> None:
        if self.peer.fast:
            self.peer.send(ev.Reject(e.index, e.begin, e.length))

    def choked(self) -> None:
        """We just choked the peer: BEP 6 rejects what it asked for, except its allowed-fast pieces
        (without BEP 6 the choke itself drops them, silently)."""
        grants, fast = self.grants, self.peer.fast
        kept: dict[RequestKey, ev.Request] = {}
        for key, r in self.requests.items():
            if grants is not None and r.index in grants:
                kept[key] = r
            elif fast:
                self.peer.send(ev.Reject(r.index, r.begin, r.length))
        self.requests = kept

    def _next(self) -> ev.Request:
        key = next(iter(self.requests))
        return self.requests.pop(key)

    async def serve(self) -> None:
        peer = self.peer
        while not peer.closed.is_set():
            if not self.requests:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            batch = [self._next()]
            total = batch[0].length
            # Consecutive requests in one piece become one read.
            while self.requests and total < MAX_READ:
                following = next(iter(self.requests.values()))
                if following.index != batch[-1].index or following.begin != batch[-1].begin + batch[-1].length:
                    break
                batch.append(self._next())
                total += following.length
            first = batch[0]
            try:
                data = await peer.host.read_block(first.index, first.begin, total)
            except PyowtorrentError as exc:
                log.warning("%r: cannot serve piece %d: %s", peer, first.index, exc)
                await peer.close(f"cannot serve piece {first.index}: {exc}")
                return
            if not peer.writable():
                return
            view, pos, blocks = memoryview(data), 0, []
            for r in batch:
                blocks.append((r.index, r.begin, view[pos : pos + r.length]))
                pos += r.length
            peer.write(peer.conn.send_pieces(blocks))  # one write; each block copied once, into it
            peer.uploaded.add(total)
            peer.host.on_uploaded(peer, total)
            await peer.writer.drain()
