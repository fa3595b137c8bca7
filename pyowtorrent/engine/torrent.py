"""One torrent in a session: its peers, piece picker, choker and storage, on one event loop."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import mmap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Sequence

from ..strategy.choker import Choker, PeerStats
from ..errors import ProtocolError, PyowtorrentError, StorageError
from ..metainfo.torrent_file import Metainfo
from .peer import OUR_REQQ, Peer, RateMeter
from ..strategy.picker import Block, PiecePicker
from ..storage.files import ResumeData, Storage, write_atomically
from .announcer import Announcer, TrackerStatus
from ..wire import events as ev
from ..wire import PeerConnection, parse_handshake

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0
KEEPALIVE_INTERVAL = 90.0
IDLE_TIMEOUT = 180.0
RESUME_SAVE_INTERVAL = 30.0
# A peer proven to have sent a bad block (smart ban), or that was the only
# source of this many pieces that failed their hash, is banned.
MAX_SOLE_HASH_FAILURES = 2
# Bounds on what peers and trackers can make a torrent remember.
MAX_KNOWN_PEERS = 2000
MAX_EVIDENCE_PIECES = 256
# At most this much memory in receive buffers kept for reuse.
SPARE_BUFFER_BYTES = 64 << 20


class TorrentState(str, enum.Enum):
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    SEEDING = "seeding"
    PAUSED = "paused"
    ERROR = "error"
    STOPPED = "stopped"


@dataclass(frozen=True)
class TorrentStatus:
    state: TorrentState
    progress: float  # of the wanted bytes, 0..1
    bytes_done: int
    bytes_total: int  # wanted bytes
    download_rate: float
    upload_rate: float
    downloaded: int  # payload bytes received this session
    uploaded: int
    num_peers: int
    pieces_have: int
    num_pieces: int
    eta: float | None  # seconds
    error: str | None = None
    checked_bytes: int = 0
    trackers: tuple[TrackerStatus, ...] = ()
    seeders: int | None = None  # the swarm as the trackers see it (announce and scrape)
    leechers: int | None = None
    completed: int | None = None  # hashed by the last check (0: resume data vouched for everything)


@dataclass(frozen=True)
class TorrentEvent:
    """What happened: 'piece_verified', 'piece_failed', 'completed', 'error', 'state_changed',
    'peer_connected', 'peer_disconnected', 'peer_banned'."""

    kind: str
    piece: int | None = None
    peer: tuple[str, int] | None = None
    message: str | None = None
    at: float = field(default_factory=time.monotonic)


class Torrent:
    def __init__(
        self,
        session: Session,
        meta: Metainfo,
        save_path: str | Path,
        *,
        resume_path: Path | None,
        file_priorities: Sequence[int] | None = None,
        sequential: bool = False,
        trackers: Sequence[Sequence[str]] | None = None,
    ) -> None:
        self.session = session
        self.meta = meta
        self.save_path = Path(save_path)
        self.storage = Storage(meta, self.save_path)
        self.picker = PiecePicker(meta.num_pieces, meta.piece_length, meta.total_length)
        self.choker = Choker(session.upload_slots)
        self.resume_path = resume_path
        self.state = TorrentState.STOPPED
        self.error: str | None = None
        self.peers: dict[tuple[str, int], Peer] = {}
        self.known_peers: dict[tuple[str, int], float] = {}  # address -> not before (monotonic)
        self.banned: set[str] = set()
        self.uploaded_bytes = 0
        self.downloaded_bytes = 0
        self.download_meter = RateMeter()
        self.upload_meter = RateMeter()
        # Receive buffers, one per piece in flight, reused: page-aligned
        # (the kernel copies to disk from them faster) and already faulted in.
        self._buffers: dict[int, memoryview] = {}
        self._spare_buffers: list[mmap.mmap] = []
        self._contributors: dict[int, dict[int, str]] = {}  # piece -> block offset -> ip
        self._failed_blocks: dict[int, list[tuple[int, bytes, str]]] = {}  # smart ban evidence
        self._sole_failures: dict[str, int] = {}
        self._listeners: list[Callable[[TorrentEvent], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        # Hash-and-write jobs run to the end even through a pause: cancelling
        # one would leave its piece neither had nor wanted.
        self._piece_jobs: set[asyncio.Task[Any]] = set()
        self._done = asyncio.Event()
        self._errored = asyncio.Event()
        self._resume_dirty = False
        self._checked = 0
        self._pending: set[tuple[str, int]] = set()
        self.priorities = list(self._piece_priorities(file_priorities))
        layout = meta.layout
        # Wanted bytes, and how many of them are verified on disk (kept as pieces pass).
        self._wanted_total = sum(layout.piece_size(i) for i, p in enumerate(self.priorities) if p > 0)
        self._wanted_done = 0
        self.picker.set_piece_priorities(self.priorities)
        self.picker.set_sequential(sequential)
        tiers = meta.trackers if trackers is None else trackers
        self.announcer: Announcer | None = None
        if tiers:
            self.announcer = Announcer(
                self,
                tiers,
                http=session.http_client(),
                udp_retransmit_base=session.udp_retransmit_base,
                http_timeout=session.tracker_timeout,
            )

    # -- policy inputs ---------------------------------------------------------

    def _piece_priorities(self, file_priorities: Sequence[int] | None) -> list[int]:
        """Per-piece priority: the highest of the files it touches (a piece shared with a wanted file is wanted)."""
        n = self.meta.num_pieces
        if file_priorities is None:
            return [1] * n
        if len(file_priorities) != len(self.meta.files):
            raise ValueError(f"{len(file_priorities)} file priorities for {len(self.meta.files)} files")
        out = [0] * n
        for i, prio in enumerate(file_priorities):
            for p in self.meta.layout.pieces_of_file(i):
                out[p] = max(out[p], prio)
        return out

    def have_piece(self, index: int) -> bool:
        return self.picker.has(index)

    # -- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        """Check what is on disk (trusting resume data that still matches), then start trading."""
        self._set_state(TorrentState.CHECKING)
        loop = asyncio.get_running_loop()
        try:
            have = await loop.run_in_executor(None, self._check)
        except (StorageError, OSError) as exc:
            self._fail(f"checking files failed: {exc}")
            return
        for i, v in enumerate(have):
            if v:
                self.picker.we_have(i)
                self._count_had(i)
        try:
            await loop.run_in_executor(self.session.executor, self.storage.create_empty_files)
        except StorageError as exc:
            self._fail(str(exc))
            return
        self._enter_trading_state()
        self._resume_dirty = True
        self._save_resume()
        self._start_trading()

    def _start_trading(self) -> None:
        self._spawn(self._tick(), "tick")
        if self.announcer is not None:
            self._spawn(self.announcer.run(), "announce")

    def _check(self) -> bytearray:
        trusted: set[int] = set()
        if self.resume_path is not None and self.resume_path.is_file():
            try:
                resume = ResumeData.from_json(self.resume_path.read_text(), self.meta)
            except (OSError, UnicodeDecodeError):
                resume = None
            if resume is not None:
                trusted = resume.trusted_pieces(self.meta, self.storage.file_stamps())
        return self.storage.check(trusted, progress=self._count_checked)

    def _count_checked(self, nbytes: int) -> None:
        self._checked += nbytes

    def _enter_trading_state(self) -> None:
        if self.picker.is_finished():
            self._done.set()
            self._set_state(TorrentState.SEEDING)
        else:
            self._set_state(TorrentState.DOWNLOADING)

    def pause(self) -> None:
        if self.state in (TorrentState.PAUSED, TorrentState.STOPPED, TorrentState.ERROR):
            return
        self._stop_tasks()
        self._disconnect_all("paused")
        if self.announcer is not None:
            self._spawn_detached(self.announcer.stop())
        self._save_resume()
        self._set_state(TorrentState.PAUSED)

    def resume(self) -> None:
        if self.state is not TorrentState.PAUSED:
            return
        self._enter_trading_state()
        self._start_trading()

    async def stop(self) -> None:
        """Disconnect everything and save resume data (the session calls this on close)."""
        self._stop_tasks()
        if self.announcer is not None and self.state in (TorrentState.DOWNLOADING, TorrentState.SEEDING):
            await self.announcer.stop()
        self._disconnect_all("shutting down")
        if self._piece_jobs:
            await asyncio.wait(list(self._piece_jobs))  # pieces being written are kept
        await asyncio.sleep(0)  # let the peers' close callbacks run
        self._save_resume()
        self.storage.close()
        if self.state is not TorrentState.ERROR:
            self._set_state(TorrentState.STOPPED)

    async def remove(self, delete_files: bool = False) -> None:
        await self.session.remove_torrent(self, delete_files=delete_files)

    def _stop_tasks(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        self._tasks.clear()

    def _disconnect_all(self, reason: str) -> None:
        for peer in list(self.peers.values()):
            self._spawn_detached(peer.close(reason))

    async def wait_done(self, timeout: float | None = None) -> None:
        """Wait until every wanted piece is verified on disk; raise if the torrent fails first."""
        waiter = asyncio.ensure_future(self._done.wait())
        failed = asyncio.ensure_future(self._errored.wait())
        try:
            done, _ = await asyncio.wait({waiter, failed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            failed.cancel()
        if self.state is TorrentState.ERROR:
            raise PyowtorrentError(f"{self.meta.name}: {self.error}")
        if not self._done.is_set():
            raise TimeoutError(f"{self.meta.name}: not done after {timeout} s")

    def _fail(self, message: str) -> None:
        log.error("%s: %s", self.meta.name, message)
        self.error = message
        self._stop_tasks()
        self._disconnect_all("torrent error")
        self._set_state(TorrentState.ERROR)
        self._errored.set()
        self._emit(TorrentEvent("error", message=message))

    def _set_state(self, state: TorrentState) -> None:
        if state is not self.state:
            self.state = state
            self._emit(TorrentEvent("state_changed", message=state.value))

    # -- events ---------------------------------------------------------------

    def add_listener(self, callback: Callable[[TorrentEvent], None]) -> Callable[[], None]:
        """Call ``callback`` (on the event loop) for every event; returns a function that unsubscribes."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    async def events(self) -> AsyncIterator[TorrentEvent]:
        """The torrent's events as an async iterator (from now on)."""
        queue: asyncio.Queue[TorrentEvent] = asyncio.Queue()
        unsubscribe = self.add_listener(queue.put_nowait)
        try:
            while True:
                yield await queue.get()
        finally:
            unsubscribe()

    def _emit(self, event: TorrentEvent) -> None:
        for cb in list(self._listeners):
            try:
                cb(event)
            except Exception:  # a listener's bug must not break the torrent
                log.exception("torrent event listener failed")

    # -- status ------------------------------------------------------------------

    def _count_had(self, index: int) -> None:
        if self.priorities[index] > 0:
            self._wanted_done += self.meta.layout.piece_size(index)

    def status(self) -> TorrentStatus:
        wanted_total, done = self._wanted_total, self._wanted_done
        down = self.download_meter.rate()
        up = self.upload_meter.rate()
        eta = None if self._done.is_set() else ((wanted_total - done) / down if down > 0 else None)
        trackers = self.announcer.status() if self.announcer is not None else ()
        return TorrentStatus(
            state=self.state,
            progress=done / wanted_total if wanted_total else 1.0,
            bytes_done=done,
            bytes_total=wanted_total,
            download_rate=down,
            upload_rate=up,
            downloaded=self.downloaded_bytes,
            uploaded=self.uploaded_bytes,
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
        )

    # -- peers ---------------------------------------------------------------------

    def add_peer(self, host: str, port: int) -> None:
        """A peer to connect to (from the user, a tracker, or PEX later)."""
        if not 0 < port < 65536:
            raise ValueError(f"bad port {port}")
        if (host, port) in self.session.own_addresses:
            return
        if len(self.known_peers) >= MAX_KNOWN_PEERS and (host, port) not in self.known_peers:
            # Forget the peer least likely to be useful: the one waiting longest to be retried.
            worst = max(self.known_peers, key=lambda a: (a not in self.peers, self.known_peers[a]))
            if worst in self.peers:
                return
            del self.known_peers[worst]
        self.known_peers.setdefault((host, port), 0.0)
        if self.state in (TorrentState.DOWNLOADING, TorrentState.SEEDING):
            self._connect_more()

    def _connect_more(self) -> None:
        now = time.monotonic()
        for addr, not_before in list(self.known_peers.items()):
            if len(self.peers) + len(self._pending) >= self.session.max_connections_per_torrent:
                return
            if not self.session.can_connect():
                return
            if addr in self.peers or addr[0] in self.banned or not_before > now or addr in self._pending:
                continue
            self._pending.add(addr)
            self._spawn(self._connect(addr), f"connect {addr}")

    async def _connect(self, addr: tuple[str, int]) -> None:
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), CONNECT_TIMEOUT)
            conn = self._new_connection()
            writer.write(conn.handshake_bytes())
            data = await asyncio.wait_for(_read_handshake(reader), HANDSHAKE_TIMEOUT)
            parse_handshake(data)  # junk (an HTTP server, MSE/PE) ends this connection only
        except (OSError, asyncio.TimeoutError, ProtocolError, asyncio.IncompleteReadError) as exc:
            log.debug("%s: connecting to %s failed: %r", self.meta.name, addr, exc)
            self.known_peers[addr] = time.monotonic() + self.session.reconnect_delay
            if writer is not None:
                writer.close()
            return
        finally:
            # Also when a pause cancels the attempt: the address must stay dialable.
            self._pending.discard(addr)
        self._attach(reader, writer, conn, addr, data, outgoing=True)

    def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> None:
        """An incoming connection whose handshake named this torrent (``data``: the bytes read so far)."""
        addr = writer.get_extra_info("peername")[:2]
        if self.state not in (TorrentState.DOWNLOADING, TorrentState.SEEDING) or addr[0] in self.banned:
            writer.close()
            return
        if len(self.peers) >= self.session.max_connections_per_torrent:
            writer.close()
            return
        conn = self._new_connection()
        writer.write(conn.handshake_bytes())
        self._attach(reader, writer, conn, addr, data, outgoing=False)

    def _new_connection(self) -> PeerConnection:
        m = self.meta
        return PeerConnection(m.info_hash, self.session.peer_id, m.num_pieces, m.piece_length, m.total_length)

    def _attach(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: PeerConnection,
        addr: tuple[str, int],
        data: bytes,
        outgoing: bool,
    ) -> None:
        hs = parse_handshake(data)
        if hs is None or hs.info_hash != self.meta.info_hash:
            log.debug("%s: %s answered for another torrent", self.meta.name, addr)
            writer.close()
            return
        if hs.peer_id == self.session.peer_id:
            log.debug("%s: %s is ourselves", self.meta.name, addr)
            if outgoing:
                self.known_peers.pop(addr, None)  # our own listen address: never again
                self.session.own_addresses.add(addr)
            writer.close()
            return
        if any(p.peer_id == hs.peer_id for p in self.peers.values()) or addr in self.peers:
            log.debug("%s: already connected to %s", self.meta.name, addr)
            writer.close()
            return
        peer = Peer(self, reader, writer, conn, addr, outgoing)
        try:
            peer.start(data)
        except ProtocolError:
            writer.close()
            return
        self.peers[addr] = peer
        self._spawn_detached(peer.run())
        # Our side of the opening: what we have, then (BEP 10) who we are.
        have = self.picker.num_have()
        if hs.fast and have == self.meta.num_pieces:
            peer.send(ev.HaveAll())
        elif hs.fast and have == 0:
            peer.send(ev.HaveNone())
        elif have:
            peer.send(ev.Bitfield(_pack(self.picker, self.meta.num_pieces)))
        if hs.extension_protocol:
            peer.send(ev.ExtensionHandshake(v=self.session.client_name, reqq=OUR_REQQ, p=self.session.listen_port or None))
        self._emit(TorrentEvent("peer_connected", peer=addr))

    def peer_closed(self, peer: Peer) -> None:
        if self.peers.get(peer.address) is not peer:
            return
        del self.peers[peer.address]
        self.picker.on_peer_gone(peer)
        if peer.is_seed:
            self.picker.peer_lost(None, is_seed=True)
        elif any(peer.have):
            self.picker.peer_lost(peer.have)
        if peer.outgoing:
            self.known_peers[peer.address] = time.monotonic() + self.session.reconnect_delay
        self._emit(TorrentEvent("peer_disconnected", peer=peer.address, message=peer.close_reason))
        if not peer.am_choking:
            self._rechoke()

    def _ban(self, ip: str, why: str) -> None:
        if ip in self.banned:
            return
        log.warning("%s: banning %s: %s", self.meta.name, ip, why)
        self.banned.add(ip)
        for p in list(self.peers.values()):
            if p.address[0] == ip:
                self._spawn_detached(p.close(f"banned: {why}"))
        self._emit(TorrentEvent("peer_banned", peer=(ip, 0), message=why))

    # -- callbacks from peers -------------------------------------------------

    def on_peer_bitfield(self, peer: Peer) -> None:
        if peer.num_have == self.meta.num_pieces:
            peer.is_seed = True
            self.picker.peer_have_all()
        elif peer.num_have:
            self.picker.peer_bitfield(peer.have)
        self._update_interest(peer)

    def on_peer_have(self, peer: Peer, index: int) -> None:
        if peer.num_have == self.meta.num_pieces and not peer.is_seed:
            # It just became a seed: count it as one, not piece by piece.
            peer.have[index] = 0
            self.picker.peer_lost(peer.have, False)
            peer.have[index] = 1
            peer.is_seed = True
            self.picker.peer_have_all()
        else:
            self.picker.peer_have(index)
        if not peer.am_interested and not self.picker.has(index) and self.priorities[index] > 0:
            peer.send_interest(True)
        self.fill_requests(peer)

    def on_peer_interest(self, peer: Peer) -> None:
        unchoked = sum(1 for p in self.peers.values() if not p.am_choking)
        if peer.peer_interested and peer.am_choking and unchoked < self.session.upload_slots:
            self._rechoke()  # a free slot: no need to wait for the next round

    def _wants_from(self, peer: Peer) -> bool:
        if self.picker.is_finished():
            return False
        return any(v and not self.picker.has(i) and self.priorities[i] > 0 for i, v in enumerate(peer.have))

    def _update_interest(self, peer: Peer) -> None:
        wanted = self._wants_from(peer)
        peer.send_interest(wanted)
        if wanted:
            self.fill_requests(peer)

    def fill_requests(self, peer: Peer) -> None:
        if peer.closed.is_set() or peer.peer_choking or not peer.am_interested:
            return
        want = peer.queue_target - len(peer.outstanding)
        if want <= 0:
            return
        blocks = self.picker.pick(peer, peer.have, want)
        if blocks:
            peer.request(blocks)
        elif not peer.outstanding:
            peer.send_interest(self._wants_from(peer))  # it may have nothing left that we want

    def on_block(self, peer: Peer, block: Block, data: bytes | memoryview) -> None:
        index = block.index
        if not self.picker.wants_block(block):
            return  # a late duplicate (end-game), or a piece we have
        self.downloaded_bytes += len(data)
        self.download_meter.add(len(data))
        buf = self._buffers.get(index)
        if buf is None:
            buf = self._buffers[index] = self._take_buffer(index)
        buf[block.begin : block.begin + len(data)] = data
        self._contributors.setdefault(index, {})[block.begin] = peer.address[0]
        complete, others = self.picker.on_block_received(peer, block)
        for other in others:
            if isinstance(other, Peer):
                other.cancel(block)
        if complete:
            job = asyncio.create_task(self._finish_piece(index), name=f"piece {index}")
            self._piece_jobs.add(job)
            job.add_done_callback(self._piece_jobs.discard)
            job.add_done_callback(self._task_done)

    def _take_buffer(self, index: int) -> memoryview:
        spare = self._spare_buffers.pop() if self._spare_buffers else mmap.mmap(-1, self.meta.piece_length)
        return memoryview(spare)[: self.meta.layout.piece_size(index)]

    def _give_back(self, buf: memoryview) -> None:
        spare = buf.obj
        buf.release()
        if isinstance(spare, mmap.mmap) and len(self._spare_buffers) * self.meta.piece_length < SPARE_BUFFER_BYTES:
            self._spare_buffers.append(spare)

    async def _finish_piece(self, index: int) -> None:
        buf = self._buffers.pop(index)
        try:
            await self._check_and_save(index, buf)
        finally:
            self._give_back(buf)

    async def _check_and_save(self, index: int, buf: memoryview) -> None:
        contributors = self._contributors.pop(index, {})
        loop = asyncio.get_running_loop()
        try:
            ok = await loop.run_in_executor(self.session.executor, self.storage.write_piece_if_valid, index, buf)
        except StorageError as exc:
            self.picker.on_piece_failed(index)
            self._fail(f"cannot save piece {index}: {exc}")
            return
        if ok:
            self.picker.on_piece_passed(index)
            self._count_had(index)
            self._resume_dirty = True
            self._smart_ban(index, buf)
            for p in list(self.peers.values()):
                p.send(ev.Have(index))
            self._emit(TorrentEvent("piece_verified", piece=index))
            if self.picker.is_finished() and not self._done.is_set():
                self._done.set()
                self._save_resume()
                self._set_state(TorrentState.SEEDING)
                self._emit(TorrentEvent("completed"))
                if self.announcer is not None:
                    self.announcer.completed()
                for p in list(self.peers.values()):
                    self._update_interest(p)
        else:
            self.picker.on_piece_failed(index)
            self._record_failure(index, buf, contributors)
            self._emit(TorrentEvent("piece_failed", piece=index))
            for p in list(self.peers.values()):
                self.fill_requests(p)

    def _record_failure(self, index: int, buf: memoryview, contributors: dict[int, str]) -> None:
        """Keep each block's hash and sender, to find the liar once the piece passes (smart ban)."""
        if index not in self._failed_blocks and len(self._failed_blocks) >= MAX_EVIDENCE_PIECES:
            self._failed_blocks.pop(next(iter(self._failed_blocks)))  # the oldest evidence goes first
        evidence = self._failed_blocks.setdefault(index, [])
        for begin, ip in contributors.items():
            length = min(16384, len(buf) - begin)
            evidence.append((begin, hashlib.sha1(buf[begin : begin + length]).digest(), ip))
        senders = set(contributors.values())
        if len(senders) == 1:
            (ip,) = senders
            self._sole_failures[ip] = self._sole_failures.get(ip, 0) + 1
            if self._sole_failures[ip] >= MAX_SOLE_HASH_FAILURES:
                self._ban(ip, f"sent {self._sole_failures[ip]} pieces that failed their hash check")

    def _smart_ban(self, index: int, good: memoryview) -> None:
        evidence = self._failed_blocks.pop(index, None)
        if not evidence:
            return
        for begin, digest, ip in evidence:
            length = min(16384, len(good) - begin)
            if hashlib.sha1(good[begin : begin + length]).digest() != digest:
                self._ban(ip, f"sent a corrupt block of piece {index}")

    # -- housekeeping ---------------------------------------------------------------

    def _rechoke(self) -> None:
        now = time.monotonic()
        stats = [
            PeerStats(
                key=p.address,
                interested=p.peer_interested,
                download_rate=p.downloaded.rate(now),
                upload_rate=p.uploaded.rate(now),
                snubbed=p.snubbed,
                is_seed=p.is_seed,
                connected_at=p.connected_at,
            )
            for p in self.peers.values()
        ]
        decision = self.choker.rechoke(now, stats, self._done.is_set())
        for p in list(self.peers.values()):
            p.set_choking(p.address not in decision.unchoke)

    async def _tick(self) -> None:
        next_resume = time.monotonic() + RESUME_SAVE_INTERVAL
        while True:
            now = time.monotonic()
            for p in list(self.peers.values()):
                p.check_timeouts(now, self.session.request_timeout)
                if now - p.last_sent > KEEPALIVE_INTERVAL:
                    p.send(ev.KeepAlive())
                if now - p.last_received > IDLE_TIMEOUT:
                    self._spawn_detached(p.close("idle"))
            if now >= self.choker.next_rechoke():
                self._rechoke()
            if now >= next_resume:
                self._save_resume()
                next_resume = now + RESUME_SAVE_INTERVAL
            self._connect_more()
            await asyncio.sleep(1.0)

    def _save_resume(self) -> None:
        if self.resume_path is None or not self._resume_dirty or self.state is TorrentState.CHECKING:
            return
        have = bytearray(1 if self.picker.has(i) else 0 for i in range(self.meta.num_pieces))
        data = ResumeData(self.meta.info_hash, have, self.storage.file_stamps())
        try:
            write_atomically(self.resume_path, data.to_json())
            self._resume_dirty = False
        except OSError as exc:
            log.warning("%s: cannot save resume data: %s", self.meta.name, exc)

    def _spawn(self, coro: Any, name: str = "") -> None:
        task = asyncio.create_task(coro, name=name or None)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _spawn_detached(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.session.track(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("%s: task %s failed", self.meta.name, task.get_name(), exc_info=exc)
            self._fail(f"internal error: {exc!r}")


def _most(values: Any) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


async def _read_handshake(reader: asyncio.StreamReader) -> bytes:
    """Read exactly the 68-byte BEP 3 handshake (the protocol string length is checked by the parser)."""
    return await reader.readexactly(68)


def _pack(picker: PiecePicker, n: int) -> bytes:
    out = bytearray((n + 7) // 8)
    for i in range(n):
        if picker.has(i):
            out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)
