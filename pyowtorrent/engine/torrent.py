"""One torrent: its life cycle, status and resume data; the swarm and the pieces do the trading.

A torrent is given a finished connection (:meth:`Torrent.accept`) or dials
through its :class:`~pyowtorrent.engine.services.Dialer`; it never calls the
session.  Only our own storage failing puts it in
:attr:`~pyowtorrent.engine.events.TorrentState.ERROR`: whatever a peer or a
tracker does ends that peer's connection or that tracker's announce.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import AsyncIterator, Callable, Iterable, Sequence

from ..errors import PyowtorrentError, StorageError
from ..metainfo.torrent_file import Metainfo
from ..storage.base import PieceStore
from ..strategy.picker import PiecePicker
from ..wire import events as ev
from .announcer import AnnounceStats, Announcer
from .events import (
    Completed,
    EventBus,
    PieceFailed,
    PieceVerified,
    StateChanged,
    TorrentEvent,
    TorrentFailed,
    TorrentState,
    TorrentStatus,
)
from .handshake import PeerLink
from .peer import Peer
from .pieces import PieceAssembler
from .resumes import ResumeKeeper
from .services import Supervisor, TorrentServices
from .swarm import Swarm

log = logging.getLogger(__name__)

__all__ = ["Torrent"]

KEEPALIVE_INTERVAL = 90.0
IDLE_TIMEOUT = 180.0
RESUME_SAVE_INTERVAL = 30.0
# How long a stop waits for its peers' connections to close.
CLOSE_TIMEOUT = 5.0
TICK = 1.0
TRADING = (TorrentState.DOWNLOADING, TorrentState.SEEDING)


class Torrent:
    def __init__(
        self,
        services: TorrentServices,
        meta: Metainfo,
        storage: PieceStore,
        *,
        save_path: Path | None = None,
        resume_path: Path | None = None,
        file_priorities: Sequence[int] | None = None,
        sequential: bool = False,
        trackers: Sequence[Sequence[str]] | None = None,
    ) -> None:
        self.services = services
        self.clock = services.clock
        self.meta = meta
        self.save_path = save_path
        self.storage = storage
        self.resume_path = resume_path
        self.state = TorrentState.STOPPED
        self.error: str | None = None
        self._error_kind: type[PyowtorrentError] = PyowtorrentError  # what wait_done raises for it
        self.bus = EventBus()
        self.picker = PiecePicker(meta.num_pieces, meta.piece_length, meta.total_length, seed=services.rng.getrandbits(64))
        self.priorities = _piece_priorities(meta, file_priorities)
        self.picker.set_piece_priorities(self.priorities)
        self.picker.set_sequential(sequential)
        self.assembler = PieceAssembler(meta.layout, storage, services.disk, self)
        self.swarm = Swarm(
            meta, services, self.picker, self.priorities, storage, self.assembler, self.bus, self._done_is_set, self._fail
        )
        self._tasks = Supervisor(meta.name, self._task_failed)
        self._stop_announce = Supervisor(f"{meta.name} stopped announce")
        self._stopping = False
        self._done = asyncio.Event()
        self._errored = asyncio.Event()
        self.resume_data = ResumeKeeper(resume_path, meta, storage, services.disk, self._have_flags)
        self._checked = 0
        layout = meta.layout
        # Wanted bytes, and how many of them are verified on disk (kept as pieces pass).
        self._wanted_total = sum(layout.piece_size(i) for i, p in enumerate(self.priorities) if p > 0)
        self._wanted_done = 0
        tiers = meta.trackers if trackers is None else trackers
        self.announcer: Announcer | None = None
        if tiers:
            self.announcer = Announcer(
                meta.info_hash, meta.name, tiers, services, self._announce_stats, self.swarm.connections.add
            )

    # -- what the outside sees -----------------------------------------------------

    @property
    def peers(self) -> dict[tuple[str, int], Peer]:
        return self.swarm.peers

    @property
    def banned(self) -> set[str]:
        """Addresses banned whole (two peers convicted there)."""
        return self.swarm.connections.banned

    @property
    def banned_peers(self) -> set[tuple[str, bytes]]:
        """(IP, peer id) of every peer convicted of sending bad data."""
        return self.swarm.connections.banned_peers

    @property
    def uploaded_bytes(self) -> int:
        return self.swarm.uploaded_bytes

    @property
    def downloaded_bytes(self) -> int:
        return self.swarm.downloaded_bytes

    def have_piece(self, index: int) -> bool:
        """Whether piece ``index`` is verified on disk."""
        return self.picker.has(index)

    def add_peer(self, host: str, port: int) -> None:
        """A peer to connect to (from the user, a tracker, or PEX later)."""
        self.swarm.connections.add(host, port)

    def accept(self, link: PeerLink) -> None:
        """An incoming connection whose handshake named this torrent (the session read it)."""
        self.swarm.connections.accept(link)

    def add_listener(self, callback: Callable[[TorrentEvent], None]) -> Callable[[], None]:
        """Call ``callback`` (on the event loop) for every event; returns a function that unsubscribes."""
        return self.bus.add_listener(callback)

    def events(self) -> AsyncIterator[TorrentEvent]:
        """The torrent's events as an async iterator (from now on)."""
        return self.bus.events()

    def status(self) -> TorrentStatus:
        wanted_total, done = self._wanted_total, self._wanted_done
        down = self.swarm.download_meter.rate()
        up = self.swarm.upload_meter.rate()
        eta = None if self._done.is_set() else ((wanted_total - done) / down if down > 0 else None)
        trackers = self.announcer.status() if self.announcer is not None else ()
        return TorrentStatus(
            state=self.state,
            progress=done / wanted_total if wanted_total else 1.0,
            bytes_done=done,
            bytes_total=wanted_total,
            download_rate=down,
            upload_rate=up,
            downloaded=self.swarm.downloaded_bytes,
            uploaded=self.swarm.uploaded_bytes,
            num_peers=len(self.peers),
            pieces_have=self.picker.num_have(),
            num_pieces=self.meta.num_pieces,
            eta=eta,
            error=self.error,
            checked_bytes=self._checked,
            trackers=trackers,
            seeders=_most(t.seeders for t in trackers),
            leechers=_most(t.leechers for t in trackers),
            completed=_most(t.completed for t in trackers),
            web_seeds=self.swarm.web_seeds.status(),
        )

    async def wait_done(self, timeout: float | None = None) -> None:
        """Wait until every wanted piece is verified on disk; raise if the torrent fails first."""
        waiter = asyncio.ensure_future(self._done.wait())
        failed = asyncio.ensure_future(self._errored.wait())
        try:
            async with self.clock.timeout(timeout):
                await asyncio.wait({waiter, failed}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        finally:
            waiter.cancel()
            failed.cancel()
        if self.state is TorrentState.ERROR:
            raise self._error_kind(f"{self.meta.name}: {self.error}")
        if not self._done.is_set():
            raise TimeoutError(f"{self.meta.name}: not done after {timeout} s")

    # -- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        """Check what is stored (trusting resume data that still matches), then start trading."""
        self._set_state(TorrentState.CHECKING)
        try:
            have = await self.services.disk.run(self._check)
            await self.services.disk.run(self.storage.create_empty_files)
        except (StorageError, OSError) as exc:
            self._fail(f"checking files failed: {exc}", StorageError)
            return
        if self._stopping:
            return  # removed (or its session closed) while checking
        for i, v in enumerate(have):
            if v:
                self.picker.we_have(i)
                self._count_had(i)
        self._enter_trading_state()
        self.resume_data.dirty = True
        self._save_resume()
        self._start_trading()

    def _check(self) -> bytearray:
        return self.storage.check(self.resume_data.trusted_pieces(), progress=self._count_checked)

    def _count_checked(self, nbytes: int) -> None:
        self._checked += nbytes

    def _start_trading(self) -> None:
        self.swarm.connections.active = True
        self._tasks.spawn(self._tick(), f"{self.meta.name} tick")
        if self.announcer is not None:
            self._tasks.spawn(self._announce(self.announcer), f"{self.meta.name} announce")
        self.swarm.connect_more()

    async def _announce(self, announcer: Announcer) -> None:
        await self._stop_announce.wait()  # a pause's 'stopped' goes out before a resume's 'started'
        await announcer.run()

    def _enter_trading_state(self) -> None:
        if self.picker.is_finished():
            self._done.set()
            self._set_state(TorrentState.SEEDING)
        else:
            self._set_state(TorrentState.DOWNLOADING)

    def pause(self) -> None:
        if self.state not in TRADING:
            return
        self._tasks.cancel()
        self.swarm.stop("paused")
        if self.announcer is not None:
            # Not one of the torrent's tasks: a stop right after must still let it reach the tracker.
            self._stop_announce.spawn(self.announcer.stop(), f"{self.meta.name} stopped announce")
        self._save_resume()
        self._set_state(TorrentState.PAUSED)

    def resume(self) -> None:
        if self.state is not TorrentState.PAUSED:
            return
        self._enter_trading_state()
        self._start_trading()

    async def stop(self) -> None:
        """Disconnect everything and save resume data (the session calls this on close)."""
        self._stopping = True
        self._tasks.cancel()
        if self.announcer is not None and self.state in TRADING:
            await self.announcer.stop()
        await self._stop_announce.wait()
        self.swarm.stop("shutting down")
        try:
            async with self.clock.timeout(CLOSE_TIMEOUT):
                await self.swarm.wait_closed()
        except TimeoutError:
            log.warning("%s: peers still closing after %g s", self.meta.name, CLOSE_TIMEOUT)
        # No peer can complete a piece now: finish those being hashed and written, then take no more.
        await self.assembler.close()
        self._save_resume()
        await self.resume_data.wait()
        self.storage.close()
        if self.state is not TorrentState.ERROR:
            self._set_state(TorrentState.STOPPED)

    def _fail(self, message: str, kind: type[PyowtorrentError] = PyowtorrentError) -> None:
        if self.state is TorrentState.ERROR:
            return
        log.error("%s: %s", self.meta.name, message)
        self.error = message
        self._error_kind = kind
        self._tasks.cancel()
        self.swarm.stop("torrent error")
        self._set_state(TorrentState.ERROR)
        self._errored.set()
        self.bus.emit(TorrentFailed(at=self.clock.now(), message=message))

    def _task_failed(self, name: str, exc: BaseException) -> None:
        # The torrent's own tasks (its tick, its announcer) failing is a bug of ours.
        log.error("%s: task %s failed", self.meta.name, name, exc_info=exc)
        self._fail(f"internal error: {exc!r}")

    def _set_state(self, state: TorrentState) -> None:
        if state is not self.state:
            self.state = state
            self.bus.emit(StateChanged(at=self.clock.now(), state=state))

    def _done_is_set(self) -> bool:
        return self._done.is_set()

    # -- PieceResults: what became of each piece ---------------------------------

    def piece_passed(self, index: int) -> None:
        self.picker.on_piece_passed(index)
        self._count_had(index)
        self.resume_data.dirty = True
        self.swarm.announce_piece(index)
        self.bus.emit(PieceVerified(at=self.clock.now(), piece=index))
        if self.picker.is_finished() and not self._done.is_set():
            self._done.set()
            self._save_resume()
            if self.state in TRADING:  # paused: resume() will find it finished
                self._set_state(TorrentState.SEEDING)
            self.bus.emit(Completed(at=self.clock.now()))
            if self.announcer is not None:
                self.announcer.completed()
            self.swarm.reconsider_interest()

    def piece_failed(self, index: int) -> None:
        self.picker.on_piece_failed(index)
        self.bus.emit(PieceFailed(at=self.clock.now(), piece=index))
        self.swarm.refill_all()

    def storage_failed(self, index: int, error: StorageError) -> None:
        self.picker.on_piece_failed(index)
        self._fail(f"cannot save piece {index}: {error}", StorageError)

    def ban(self, peer: tuple[str, bytes], reason: str) -> None:
        self.swarm.ban(peer, reason)  # a web seed's identity is its URL

    def _count_had(self, index: int) -> None:
        if self.priorities[index] > 0:
            self._wanted_done += self.meta.layout.piece_size(index)

    # -- housekeeping ---------------------------------------------------------------

    async def _tick(self) -> None:
        settings = self.services.settings
        next_resume = self.clock.now() + RESUME_SAVE_INTERVAL
        while True:
            now = self.clock.now()
            for p in list(self.peers.values()):
                p.check_timeouts(now, settings.request_timeout)
                if now - p.last_sent > KEEPALIVE_INTERVAL:
                    p.send(ev.KeepAlive())
                if now - p.last_received > IDLE_TIMEOUT:
                    self.swarm.connections.close(p, "idle")
            self.swarm.refill_idle()
            if now >= self.swarm.choker.next_rechoke():
                self.swarm.rechoke()
            if now >= next_resume:
                self._save_resume()
                next_resume = now + RESUME_SAVE_INTERVAL
            self.swarm.connect_more()  # peers to dial, web seeds to wake
            await self.clock.sleep(TICK)

    def _announce_stats(self) -> AnnounceStats:
        return AnnounceStats(
            uploaded=self.swarm.uploaded_bytes,
            downloaded=self.swarm.downloaded_bytes,
            left=self._wanted_total - self._wanted_done,
            finished=self.picker.is_finished(),
            num_peers=len(self.peers),
        )

    def _save_resume(self) -> None:
        if self.state is not TorrentState.CHECKING:  # what a check has not finished is no news
            self.resume_data.save()

    def _have_flags(self) -> bytearray:
        return bytearray(self.picker.have_flags)


def _piece_priorities(meta: Metainfo, file_priorities: Sequence[int] | None) -> list[int]:
    """Per-piece priority: the highest of the files it touches (a piece shared with a wanted file is wanted)."""
    if file_priorities is None:
        return [1] * meta.num_pieces
    if len(file_priorities) != len(meta.files):
        raise ValueError(f"{len(file_priorities)} file priorities for {len(meta.files)} files")
    out = [0] * meta.num_pieces
    for i, prio in enumerate(file_priorities):
        for p in meta.layout.pieces_of_file(i):
            out[p] = max(out[p], prio)
    return out


def _most(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None
