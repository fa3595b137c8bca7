"""Web seeds (BEP 19): HTTP servers holding the torrent's files, used as sources beside peers.

Each ``url-list`` URL is a :class:`WebSeed`, one task at a time.  It asks the
picker for a run of blocks in a row (:meth:`~pyowtorrent.strategy.picker.PiecePicker.pick_run`:
whole pieces, several of them where pieces are small, so a piece is never
given to a web seed and a peer at once outside end-game), fetches the run with
one byte-range GET per file it touches through the session's aiohttp client
(:func:`web_client_session`),
and hands each 16 KiB block to its :class:`WebSeedHost` (the swarm) as it
arrives.  From there a block goes where a peer's goes: the piece is hashed
and written only if it matches, so bad bytes from a server never reach the
disk.

A web seed holds a connection slot while it has requests going, within the
torrent's cap and the session's budget, as a peer does.  Whatever goes wrong
with one (an error status, a wrong range or length, a ``200`` with the whole
file to a range request, a redirect loop, no bytes for ``request_timeout``
seconds, a piece it alone sent failing its hash) ends that request: what it
had not delivered goes back to the picker, and the seed is tried again after
``reconnect_delay`` seconds, doubling with each failure in a row, and dropped
after :data:`MAX_FAILURES_IN_A_ROW`.  Smart ban convicting it of a corrupt
block (or of being the only source of two pieces that failed) drops it at
once, as BEP 19 asks.  :meth:`WebSeeds.status` shows each one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from ..metainfo.layout import BLOCK_SIZE
from ..metainfo.torrent_file import Metainfo
from ..metainfo.webseed import RangeRequest, answer_problem, file_urls, range_requests, run_pieces
from ..strategy.picker import Block, PiecePicker
from .events import Completed, EventBus, PieceFailed, PieceVerified, TorrentEvent, WebSeedStatus
from .net import bound_socket, source_addresses
from .services import Supervisor, TorrentServices

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

__all__ = ["MAX_FAILURES_IN_A_ROW", "WebSeed", "WebSeedError", "WebSeedHost", "WebSeeds", "web_client_session"]

Sender = tuple[str, bytes]  # as the piece assembler names who sent a block: (URL, b"") for a web seed

# A web seed failing this many times in a row is dropped: with the default
# reconnect_delay of 5 s it was retried after 5, 10, 20, 40 and 80 s.
MAX_FAILURES_IN_A_ROW = 6
# The longest wait between two tries.
MAX_BACKOFF = 300.0
# A redirect or two is a mirror; more is a loop.
MAX_REDIRECTS = 5
# Bytes asked of the body per read: each read must bring something within request_timeout.
READ_SIZE = 256 << 10
SCHEMES = ("http", "https")


def web_client_session(user_agent: str, bind: Sequence[str] = ()) -> aiohttp.ClientSession:
    """The aiohttp session a session's web seeds share: its connections leave from ``bind``'s address of their family.

    ``bind``: the session's listen addresses (or their
    :func:`~pyowtorrent.engine.net.source_addresses`).  Web seeds stream
    whole files, so they want aiohttp's pooled keep-alive connections (the
    trackers' one GET in minutes does not: :mod:`.http_client`).  Call it
    inside the running loop.
    """
    import aiohttp

    sources = source_addresses(bind)
    if not sources:
        return aiohttp.ClientSession(headers={"User-Agent": user_agent})

    def socket_factory(info: Any) -> socket.socket:
        family, kind, proto = int(info[0]), int(info[1]), int(info[2])
        return bound_socket(family, kind, proto, sources)

    # socket_factory (aiohttp 3.12): one bound socket per address family, which
    # local_addr (one address for every family) cannot give.
    connector = aiohttp.TCPConnector(socket_factory=socket_factory)
    return aiohttp.ClientSession(connector=connector, headers={"User-Agent": user_agent})


class WebSeedError(Exception):
    """One request to a web seed failed; the message says how (shown in its status)."""

    def __init__(self, message: str, *, counted: bool = False) -> None:
        super().__init__(message)
        self.counted = counted  # the failure that ends the run was counted when it was found


class WebSeedHost(Protocol):
    """What web seeds report to, and ask of, their torrent (the swarm)."""

    def take_block(self, source: Hashable, sender: Sender, block: Block, data: bytes | memoryview) -> bool:
        """A block arrived from ``source``; False if it was not wanted (had, or a late duplicate)."""
        ...

    def num_connections(self) -> int:
        """Peer connections held and being dialled: web seeds count against the same cap."""
        ...

    def refill_all(self) -> None:
        """Blocks went back to the picker: peers may take them."""
        ...


class WebSeeds:
    """The torrent's web seeds: started with trading, woken by its tick, stopped with its peers."""

    def __init__(
        self, meta: Metainfo, services: TorrentServices, picker: PiecePicker, host: WebSeedHost, events: EventBus
    ) -> None:
        self.meta = meta
        self.services = services
        self.clock = services.clock
        self.picker = picker
        self.host = host
        self.run_blocks = run_pieces(meta.piece_length, meta.total_length) * -(-meta.piece_length // BLOCK_SIZE)
        self.seeds = [WebSeed(url, self) for url in meta.web_seeds]
        self._tasks = Supervisor(f"{meta.name} web seeds")
        if self.seeds:
            events.add_listener(self._on_event)

    def connect_more(self) -> None:
        """Start the web seeds that are not running, and wake the idle ones (new work, a free slot)."""
        if self.picker.is_finished():
            return
        for seed in self.seeds:
            if seed.task is None and not seed.dropped:
                seed.task = self._tasks.spawn(seed.run(), f"web seed {seed.url}")
                seed.task.add_done_callback(seed.ended)
            seed.wake.set()

    def stop(self) -> None:
        """End every request (a pause, a stop, an error); what they had not delivered goes back."""
        self._tasks.cancel()

    async def wait_closed(self) -> None:
        await self._tasks.wait()

    def num_connected(self) -> int:
        """Web seeds holding a connection slot (a request under way, or the next one coming)."""
        return sum(s.connected for s in self.seeds)

    def may_connect(self) -> bool:
        """Whether one more web seed may hold a connection, within the torrent's and the session's limits."""
        held = self.host.num_connections() + self.num_connected()
        return held < self.services.settings.max_connections_per_torrent and self.services.budget.can_connect()

    def status(self) -> tuple[WebSeedStatus, ...]:
        now = self.clock.now()
        return tuple(s.status(now) for s in self.seeds)

    def convict(self, sender: Sender, reason: str) -> bool:
        """Smart ban convicted ``sender``: drop it if it is one of ours (True), else it is a peer's."""
        for seed in self.seeds:
            if seed.identity == sender:
                seed.drop(f"banned: {reason}")
                return True
        return False

    def _on_event(self, event: TorrentEvent) -> None:
        if isinstance(event, PieceVerified):
            for seed in self.seeds:
                seed.sent.pop(event.piece, None)
        elif isinstance(event, PieceFailed):
            size = self.meta.layout.piece_size(event.piece)
            for seed in self.seeds:
                if seed.sent.pop(event.piece, 0) >= size:  # it alone sent the piece
                    seed.hash_failed(event.piece)
                seed.wake.set()  # the piece is free again
        elif isinstance(event, Completed):
            self.stop()  # nothing left to ask for: requests still out (end-game's) end now


class WebSeed:
    """One web seed URL: a loop of runs, each fetched by range requests, with backoff on failure."""

    def __init__(self, url: str, owner: WebSeeds) -> None:
        self.url = url
        self.owner = owner
        self.identity: Sender = (url, b"")
        self.urls = file_urls(url, owner.meta.layout)
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.connected = False  # holds a connection slot (a run under way, or the next one coming)
        self.working = False
        self.downloaded = 0
        self.failures = 0
        self.in_a_row = 0
        self.last_error: str | None = None
        self.retry_at: float | None = None
        self.dropped = False
        # Bytes it delivered of each piece not yet checked: a piece it sent whole and
        # that fails its hash is its failure.
        self.sent: dict[int, int] = {}
        self._abort: str | None = None  # a failure found between its reads (a hash check): ends the run
        self._next: int | None = None  # the piece after its last run: its next run goes on from there
        if url.partition("://")[0].lower() not in SCHEMES:
            self.dropped = True
            self.last_error = "not an http(s) URL"

    def status(self, now: float) -> WebSeedStatus:
        retry = self.retry_at - now if self.retry_at is not None and self.retry_at > now and not self.dropped else None
        return WebSeedStatus(
            url=self.url,
            working=self.working and not self.dropped,
            downloaded=self.downloaded,
            failures=self.failures,
            last_error=self.last_error,
            retry_in=retry,
            dropped=self.dropped,
        )

    def ended(self, task: asyncio.Task[None]) -> None:
        self.task = None
        self.connected = False

    def drop(self, reason: str) -> None:
        if not self.dropped:
            log.warning("%s: dropping web seed %s: %s", self.owner.meta.name, self.url, reason)
        self.dropped = True
        self.working = False
        self.last_error = self._abort = reason
        self.wake.set()

    def hash_failed(self, index: int) -> None:
        """A piece it alone sent failed its hash: a failure now, and the run under way ends."""
        if self.dropped:
            return
        reason = f"piece {index} failed its hash check"
        self._failed(reason)
        self._abort = reason
        self.wake.set()

    async def run(self) -> None:
        owner, picker, clock = self.owner, self.owner.picker, self.owner.clock
        while not self.dropped and not picker.is_finished():
            if self.retry_at is not None and self.retry_at > clock.now():
                self.connected = False  # backing off after a failure
                await clock.sleep(self.retry_at - clock.now())
                continue
            blocks = picker.pick_run(self, owner.run_blocks, self._next) if self.connected or owner.may_connect() else []
            if not blocks:
                self.connected = False  # nothing to ask for now: give the slot back until woken
                self.wake.clear()
                await self.wake.wait()
                continue
            self.connected = True
            self._abort = None
            try:
                await self._fetch(blocks)
            except WebSeedError as exc:
                self.connected = False
                if not exc.counted:
                    self._failed(str(exc))
            finally:
                if picker.num_outstanding(self):
                    picker.on_peer_gone(self)  # what it had not delivered goes back
                    owner.host.refill_all()

    def _failed(self, reason: str) -> None:
        """Count a failure: back off (``reconnect_delay`` doubling with each in a row), or drop it."""
        self.working = False
        self.failures += 1
        self.in_a_row += 1
        self.last_error = reason
        if self.in_a_row >= MAX_FAILURES_IN_A_ROW:
            self.drop(f"{reason} ({self.in_a_row} failures in a row)")
            return
        delay = min(MAX_BACKOFF, self.owner.services.settings.reconnect_delay * 2 ** (self.in_a_row - 1))
        self.retry_at = self.owner.clock.now() + delay
        log.info("%s: web seed %s: %s; again in %g s", self.owner.meta.name, self.url, reason, delay)

    async def _fetch(self, blocks: list[Block]) -> None:
        meta = self.owner.meta
        start = blocks[0].index * meta.piece_length + blocks[0].begin
        feed = _BlockFeed(blocks, self._deliver)
        for req in range_requests(meta.layout, self.urls, start, sum(b.length for b in blocks)):
            if req.url is None:
                feed.add(bytes(req.length))  # a pad file: zeros, asked of no one
            else:
                await self._get(req, feed)
        self._check()
        self.working = True
        self.in_a_row = 0
        self.retry_at = None
        self._next = blocks[-1].index + 1

    def _check(self) -> None:
        if self._abort is not None:
            raise WebSeedError(self._abort, counted=True)

    def _deliver(self, block: Block, data: memoryview) -> None:
        self._check()
        if self.owner.host.take_block(self, self.identity, block, data):
            self.sent[block.index] = self.sent.get(block.index, 0) + len(data)
            self.downloaded += len(data)

    async def _get(self, req: RangeRequest, feed: _BlockFeed) -> None:
        import aiohttp
        import yarl

        assert req.url is not None
        clock, timeout = self.owner.clock, self.owner.services.settings.request_timeout
        headers = {"Range": f"bytes={req.start}-{req.start + req.length - 1}", "Accept-Encoding": "identity"}
        try:
            async with clock.timeout(timeout):
                # Sent as it is: the URL is percent-encoded already (the torrent's, then ours).
                resp = await self.owner.services.web().get(
                    yarl.URL(req.url, encoded=True),
                    headers=headers,
                    allow_redirects=True,
                    max_redirects=MAX_REDIRECTS,
                    auto_decompress=False,
                    timeout=aiohttp.ClientTimeout(total=None),  # ours below: no bytes for `timeout` s
                )
            try:
                problem = answer_problem(
                    req,
                    resp.status,
                    resp.reason or "",
                    resp.headers.get("Content-Range"),
                    resp.content_length,
                    resp.headers.get("Content-Encoding"),
                )
                if problem is not None:
                    raise WebSeedError(problem)
                left = req.length
                while left:
                    async with clock.timeout(timeout):
                        data = await resp.content.read(min(left, READ_SIZE))
                    if not data:
                        raise WebSeedError(f"the body ended after {req.length - left} of {req.length} bytes")
                    left -= len(data)
                    feed.add(data)
            except BaseException:
                resp.close()  # not read to the end: the connection cannot be reused
                raise
            resp.release()
        except TimeoutError:
            raise WebSeedError(f"no answer for {timeout:g} s") from None
        except aiohttp.TooManyRedirects:
            raise WebSeedError(f"more than {MAX_REDIRECTS} redirects") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise WebSeedError(f"{type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # a URL yarl or aiohttp cannot use (a bad port or host)
            raise WebSeedError(f"not a usable URL: {exc}") from None


class _BlockFeed:
    """A run's bytes as they arrive, cut into its blocks, each delivered once whole."""

    def __init__(self, blocks: list[Block], deliver: Callable[[Block, memoryview], None]) -> None:
        self._blocks = blocks
        self._deliver = deliver
        self._next = 0
        self._buf = bytearray()

    def add(self, data: bytes) -> None:
        buf, blocks = self._buf, self._blocks
        buf += data
        pos = 0
        with memoryview(buf) as view:
            while self._next < len(blocks) and len(buf) - pos >= blocks[self._next].length:
                n = blocks[self._next].length
                with view[pos : pos + n] as chunk:  # released before the buffer shrinks
                    self._deliver(blocks[self._next], chunk)
                pos += n
                self._next += 1
        del buf[:pos]
