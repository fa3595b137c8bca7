"""What a session hands each torrent: settings and services, so a torrent never calls its session.

A torrent gets a :class:`TorrentServices`: the settings it runs by, the
engine clock, the disk executor, the dialler, the session-wide connection
budget, the upload limiter, and the HTTP clients its trackers and its web
seeds share.  The
session implements :class:`Dialer` and :class:`ConnectionBudget`; the
simulator runs the same torrent with other implementations of the same
protocols.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Protocol, TypeVar

from ..wire.connection import PeerConnection
from .clock import Clock
from .handshake import PeerLink
from .meters import RateLimiter
from .net import Address

if TYPE_CHECKING:
    import aiohttp

    from .http_client import HttpClient

log = logging.getLogger(__name__)

__all__ = [
    "ConnectionBudget",
    "Dialer",
    "Disk",
    "InlineDisk",
    "Supervisor",
    "ThreadDisk",
    "TorrentServices",
    "TorrentSettings",
]

T = TypeVar("T")


@dataclass(frozen=True)
class TorrentSettings:
    peer_id: bytes
    client_name: str
    upload_slots: int = 8
    max_connections_per_torrent: int = 50
    # Incoming connections one address may hold in one torrent: a few clients
    # behind one NAT, not one host holding every slot.
    max_connections_per_ip: int = 8
    # Requests unanswered this long go to other peers and the peer counts as snubbed.
    request_timeout: float = 20.0
    # A peer that dropped or refused us is tried again after this long.
    reconnect_delay: float = 5.0
    # Trackers: HTTP answers within tracker_timeout; UDP retries after
    # udp_retransmit_base * 2^n seconds (BEP 15's 15 s; smaller in tests).
    tracker_timeout: float = 30.0
    udp_retransmit_base: float = 15.0
    announce_key: int = 0  # BEP 7 'key': the same for the session's life
    # The address trackers are asked to hand out for us (BEP 3 'ip'), or None: the one announces come from.
    announce_ip: str | None = None
    # The specific addresses we listen on, one per family at most: UDP announces leave from them.
    source_addresses: tuple[str, ...] = ()


class Disk(Protocol):
    """Runs blocking storage work (hashing, reads, writes) off the event loop."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T: ...


class ThreadDisk:
    """Worker threads: hashlib and file I/O release the GIL, so pieces hash on every core.

    A leecher hands over a job per piece (hash it, write it), a seeder one per
    block read.  ``run_in_executor`` costs each job a ``concurrent.futures``
    future (a lock and a condition), a second future chained to it and a
    wake-up of the loop through its self-pipe; here a job is a tuple on a
    queue, its result goes straight into the awaited future, and the loop is
    woken once for every result that finished while it was busy.
    """

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"a ThreadDisk needs at least one thread, not {threads}")
        self.threads = threads
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            # As an executor after shutdown: a job queued now could take the stop meant for a worker.
            raise RuntimeError("the disk threads are shut down")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._start(loop)
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((future, fn, args))
        return await future

    async def shutdown(self) -> None:
        """Finish the jobs queued, then end the threads (without blocking the event loop); take no more."""
        self._closed = True
        workers, self._workers = self._workers, []
        for _ in workers:
            self._jobs.put(None)
        for w in workers:
            await asyncio.to_thread(w.join)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None:
            raise RuntimeError("a ThreadDisk serves one event loop")
        self._loop = loop
        for n in range(self.threads):
            # Daemon threads: a session never closed must not keep the interpreter from exiting.
            worker = threading.Thread(target=self._work, args=(loop,), name=f"pyowtorrent-disk-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def _work(self, loop: asyncio.AbstractEventLoop) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if future.cancelled():
                continue  # its caller gave up while it waited (a peer gone before its block was read)
            try:
                outcome: tuple[asyncio.Future[Any], Any, BaseException | None] = (future, fn(*args), None)
            except BaseException as exc:  # noqa: BLE001 - it is the awaiting task's to raise
                outcome = (future, None, exc)
            with self._lock:
                self._done.append(outcome)
                first = len(self._done) == 1
            if first:
                try:
                    loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: no one awaits these results any more
                    with self._lock:
                        self._done.clear()

    def _deliver(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for future, result, exc in done:
            if future.cancelled():
                continue
            try:
                if exc is None:
                    future.set_result(result)
                else:
                    future.set_exception(exc)
            except (TypeError, ValueError) as refused:  # StopIteration: a future will not hold it
                future.set_exception(RuntimeError(f"a disk job raised {exc!r}: {refused}"))


_Job = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class InlineDisk:
    """Runs storage work on the loop itself: deterministic, for the simulator's in-memory storage."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)


class Dialer(Protocol):
    async def dial(self, address: Address, conn: PeerConnection) -> PeerLink | None:
        """Connect to ``address`` and exchange handshakes for ``conn``'s torrent.

        ``None`` when the connection cannot be had (refused, timed out, junk
        instead of a handshake, another torrent, ourselves): the reason is the
        dialler's to log, and the address is simply tried again later.
        """
        ...

    def is_self(self, address: Address) -> bool:
        """Whether ``address`` turned out to be one of our own listen addresses."""
        ...


class ConnectionBudget(Protocol):
    def can_connect(self) -> bool:
        """Whether the session may hold one more peer connection."""
        ...


@dataclass
class TorrentServices:
    settings: TorrentSettings
    clock: Clock
    disk: Disk
    dialer: Dialer
    budget: ConnectionBudget
    upload_limiter: RateLimiter
    http: HttpClient  # the trackers'
    web: Callable[[], aiohttp.ClientSession]  # the web seeds'
    listen_port: Callable[[], int]
    rng: random.Random


class Supervisor:
    """Tasks that belong to one owner; a task's failure goes to ``on_error``, never further."""

    def __init__(self, owner: str, on_error: Callable[[str, BaseException], None] | None = None) -> None:
        self.owner = owner
        self.on_error = on_error
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if self.on_error is not None:
            self.on_error(task.get_name(), exc)
        else:
            log.error("%s: task %s failed", self.owner, task.get_name(), exc_info=exc)

    def cancel(self) -> None:
        for t in list(self.tasks):
            t.cancel()

    async def wait(self) -> None:
        """Until every task has ended (bound it with the engine clock's ``timeout``)."""
        while self.tasks:
            await asyncio.wait(list(self.tasks))
