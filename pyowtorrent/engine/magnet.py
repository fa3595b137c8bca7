"""A magnet link's metadata (BEP 9): the info dictionary fetched from the swarm, before there is a torrent.

A :class:`MetadataFetch` announces to the magnet's trackers, dials the peers
they hand out (and the magnet's ``x.pe`` peers, the caller's, and those PEX
tells of), and asks each peer that advertises ``ut_metadata`` for pieces of
the info dictionary through one sans-IO
:class:`~pyowtorrent.wire.metadata.MetadataAssembler`; what checks out
against the info-hash is the metadata.

The connections are metadata-only
(:meth:`PeerConnection.without_metadata <pyowtorrent.wire.connection.PeerConnection.without_metadata>`):
the torrent's shape is not known, so a peer's haves and bitfields are taken
and ignored, its requests rejected (we have nothing) and a block from it is
a violation (we asked for none).  When the metadata is in they close, and
the torrent dials the same peers again knowing the shape: a round trip per
peer, against a second kind of connection handed from one owner to another.

As libtorrent: a peer that rejects a request is asked nothing for a minute;
a request unanswered for the session's ``request_timeout`` goes to another
peer.  Pieces of metadata have no hashes of their own, so when the whole
fails its check and several peers sent it nobody can be blamed: from then
on the whole is fetched from one peer at a time, and a peer whose whole
fails is dropped and never dialled again.  Each fetch starts anew with the
size most peers still connected advertise.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, Sequence

from ..errors import DownloadTimeout, NoPeersError, PyowtorrentError
from ..wire import events as ev
from ..wire.connection import PeerConnection
from ..wire.errors import RemoteProtocolError
from ..wire.metadata import (
    METADATA_EXTENSION,
    MetadataAssembler,
    MetadataFailed,
    MetadataVerified,
    advertised_metadata_size,
)
from ..wire.pex import PEX_EXTENSION
from .announcer import AnnounceStats, Announcer
from .conduct import Conduct, PeerMisbehaved
from .connections import MAX_KNOWN_PEERS
from .handshake import PeerLink
from .metadata import METADATA_ID
from .net import Address
from .pex import PEX_ID
from .services import Supervisor, TorrentServices

log = logging.getLogger(__name__)

__all__ = ["MetadataFetch", "REJECT_PAUSE"]

# libtorrent asks a peer that rejected a metadata request nothing for a minute.
REJECT_PAUSE = 60.0
# A metadata-only connection that says nothing this long is no source.
IDLE_TIMEOUT = 120.0
# What announces say is left before the size is known: anything but 0, which
# says "seed"; libtorrent pretends 16 KiB.
UNKNOWN_LEFT = 16 << 10
READ_SIZE = 64 << 10
TICK = 1.0


class _Source:
    """One metadata-only connection."""

    def __init__(self, link: PeerLink, conn: PeerConnection, fetch: MetadataFetch) -> None:
        self.link = link
        self.address = link.address
        self.conn = conn
        self.fetch = fetch
        self.conduct = Conduct(fetch.clock)
        self.advertised: int | None = None  # the metadata_size of its extension handshake
        # Where it accepts connections: where we dialled, or the port its extension handshake gives.
        self.listen_address: Address | None = link.address if link.outgoing else None
        self.asked: dict[int, float] = {}  # piece -> when asked
        self.paused_until = 0.0
        self.last_received = fetch.clock.now()
        self.closed = False
        self.close_reason = ""

    def __repr__(self) -> str:
        return f"<metadata source {self.address[0]}:{self.address[1]}>"

    def send(self, message: ev.Message | ev.MetadataMessage) -> None:
        if not self.closed and not self.link.writer.is_closing():
            self.link.writer.write(self.conn.send(message))

    async def run(self) -> None:
        try:
            self.fetch.on_events(self, self.conn.receive_data(self.link.data))
            self._greet()
            while not self.closed:
                data = await self.link.reader.read(READ_SIZE)
                if not data:
                    self.close_reason = self.close_reason or "peer closed the connection"
                    break
                self.last_received = self.fetch.clock.now()
                self.fetch.on_events(self, self.conn.receive_data(data))
                if self.conn.ignored_messages:
                    self.conduct.idle_message("ignored", self.conn.ignored_messages)
                    self.conn.ignored_messages = 0
        except RemoteProtocolError as exc:
            self.close_reason = f"protocol violation: {exc}"
        except (ConnectionError, OSError) as exc:
            self.close_reason = self.close_reason or f"connection lost: {exc}"
        except (PeerMisbehaved, PyowtorrentError) as exc:
            self.close_reason = str(exc)
        finally:
            self.close(self.close_reason or "closed")

    def _greet(self) -> None:
        remote = self.conn.remote
        assert remote is not None
        if remote.fast:
            self.send(ev.HaveNone())  # BEP 6: what we have comes first
        if remote.extension_protocol:
            # The ids the torrent's connections use too; our listen port, for a peer that dialled us.
            m = {METADATA_EXTENSION: METADATA_ID, **({PEX_EXTENSION: PEX_ID} if self.conn.pex else {})}
            services = self.fetch.services
            self.send(ev.ExtensionHandshake(m=m, v=services.settings.client_name, p=services.listen_port() or None))
        else:
            self.close_reason = "no extension protocol: it cannot send metadata"
            self.closed = True

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
        self.close_reason = self.close_reason or reason
        try:
            self.link.writer.close()
        except Exception:  # the transport may already be gone
            pass
        self.fetch.source_closed(self)


class MetadataFetch:
    """Fetch the info dictionary of ``info_hash`` from the swarm; :meth:`run` returns its bytes (and keeps them in :attr:`metadata`)."""

    def __init__(
        self,
        info_hash: bytes,
        name: str | None,
        services: TorrentServices,
        trackers: Sequence[Sequence[str]] = (),
        peers: Sequence[Address] = (),
        *,
        pex: bool = True,
    ) -> None:
        self.info_hash = info_hash
        self.name = name or info_hash.hex()
        self.services = services
        self.clock = services.clock
        self.pex = pex
        self.known: dict[Address, float] = {}  # address -> not before
        self.pending: set[Address] = set()
        self.sources: dict[Address, _Source] = {}
        self.dropped: set[Address] = set()  # sent metadata that failed the check
        self.served: set[Address] = set()  # listen addresses of peers that sent metadata
        self.ever_connected = False
        self.single_source = False  # after a failed check: the whole from one peer at a time
        self._current: _Source | None = None  # ... this one
        self.assembler: MetadataAssembler | None = None
        self.metadata = b""  # the verified info dictionary, once in
        self._result: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._tasks = Supervisor(f"{self.name} metadata", self._task_failed)
        self.announcer: Announcer | None = None
        if trackers:
            self.announcer = Announcer(info_hash, self.name, trackers, services, self._announce_stats, self.add_peer)
        for host, port in peers:
            self.add_peer(host, port)

    # -- what the outside sees -------------------------------------------------

    def addresses(self) -> list[Address]:
        """Every address known, those that sent metadata first: the torrent's first peers."""
        return sorted(self.known, key=lambda a: a not in self.served)

    def describe(self) -> str:
        """How far it got, for a timeout's message."""
        with_metadata = sum(1 for s in self.sources.values() if s.advertised is not None)
        a = self.assembler
        got = f"{a.num_received} of {a.num_pieces} metadata pieces" if a is not None else "no metadata size yet"
        trackers = "; ".join(f"{t.url}: {t.last_error or 'answered'}" for t in self.announcer.status()) if self.announcer else "none"
        return (
            f"{len(self.sources)} peers connected ({with_metadata} offering metadata), {len(self.known)} known, {got};"
            f" trackers: {trackers}"
        )

    # -- life --------------------------------------------------------------------

    async def run(self, timeout: float | None = None) -> bytes:
        """The verified info dictionary; every connection is closed on the way out.

        :class:`NoPeersError` when there is nobody to ask, or nobody connected
        within ``timeout`` seconds; :class:`DownloadTimeout` when peers did
        but the metadata is not whole by then.
        """
        if self.announcer is None and not self.known:
            raise NoPeersError(f"{self.name}: the magnet link names no tracker and no peer (x.pe), and no peers were given")
        try:
            async with self.clock.timeout(timeout):
                return await self._run()
        except TimeoutError:
            kind = DownloadTimeout if self.ever_connected else NoPeersError
            raise kind(f"{self.name}: no metadata after {timeout:g} s: {self.describe()}") from None

    async def _run(self) -> bytes:
        if self.announcer is not None:
            self._tasks.spawn(self.announcer.run(), f"{self.name} metadata announce")
        self._tasks.spawn(self._tick(), f"{self.name} metadata tick")
        self._connect_more()
        try:
            return await asyncio.shield(self._result)
        finally:
            self._tasks.cancel()
            for source in list(self.sources.values()):
                source.close("metadata fetched" if self._result.done() else "stopped")
            await self._tasks.wait()

    def stop(self, why: str) -> None:
        """End :meth:`run` with a :class:`PyowtorrentError` saying ``why``."""
        if not self._result.done():
            self._result.set_exception(PyowtorrentError(f"{self.name}: metadata not fetched: {why}"))

    def _task_failed(self, name: str, exc: BaseException) -> None:
        log.error("%s: task %s failed", self.name, name, exc_info=exc)
        if not self._result.done():
            self._result.set_exception(PyowtorrentError(f"{self.name}: fetching metadata failed: {exc!r}"))

    async def _tick(self) -> None:
        timeout = self.services.settings.request_timeout
        while True:
            now = self.clock.now()
            for source in list(self.sources.values()):
                if now - source.last_received > IDLE_TIMEOUT:
                    source.close("idle")
                    continue
                expired = [piece for piece, at in source.asked.items() if now - at > timeout]
                for piece in expired:
                    del source.asked[piece]
                    if self.assembler is not None:
                        self.assembler.on_timeout(source, piece)
                if expired and self.single_source:
                    source.paused_until = now + REJECT_PAUSE  # let another peer fetch the whole
                if source.paused_until and now >= source.paused_until:
                    source.paused_until = 0.0
                    if self.assembler is not None:
                        self.assembler.resume(source)
            self._request_all()
            self._connect_more()
            await self.clock.sleep(TICK)

    def _announce_stats(self) -> AnnounceStats:
        return AnnounceStats(uploaded=0, downloaded=0, left=UNKNOWN_LEFT, finished=False, num_peers=len(self.sources))

    # -- connections -----------------------------------------------------------

    def add_peer(self, host: str, port: int) -> None:
        address = (host, port)
        if len(self.known) >= MAX_KNOWN_PEERS:
            return  # trackers and PEX cannot make it remember without bound
        if address not in self.known and address not in self.dropped and 0 < port < 65536:
            self.known[address] = 0.0
            self._connect_more()

    def _connect_more(self) -> None:
        if self._result.done():
            return
        now = self.clock.now()
        limit = self.services.settings.max_connections_per_torrent
        connected = {s.listen_address for s in self.sources.values()}
        for address, not_before in list(self.known.items()):
            if len(self.sources) + len(self.pending) >= limit or not self.services.budget.can_connect():
                return
            if address in connected or address in self.pending or not_before > now:
                continue
            self.pending.add(address)
            self._tasks.spawn(self._dial(address), f"metadata dial {address}")

    def _new_connection(self) -> PeerConnection:
        return PeerConnection.without_metadata(self.info_hash, self.services.settings.peer_id, pex=self.pex)

    async def _dial(self, address: Address) -> None:
        conn = self._new_connection()
        try:
            link = await self.services.dialer.dial(address, conn)
        finally:
            self.pending.discard(address)
        if link is None:
            self.known[address] = self.clock.now() + self.services.settings.reconnect_delay
            return
        self._attach(link, conn)

    def accept(self, link: PeerLink) -> None:
        """An incoming connection whose handshake named this info-hash."""
        limit = self.services.settings.max_connections_per_torrent
        if self._result.done() or link.address in self.dropped or len(self.sources) >= limit:
            link.writer.close()
            return
        conn = self._new_connection()
        link.writer.write(conn.handshake_bytes())
        self._attach(link, conn)

    def _attach(self, link: PeerLink, conn: PeerConnection) -> None:
        if link.address in self.sources or self._result.done():
            link.writer.close()
            return
        source = _Source(link, conn, self)
        self.sources[link.address] = source
        self.ever_connected = True
        if link.outgoing:  # an incoming one's port is not where it listens: its extension handshake says that
            self.known.setdefault(link.address, 0.0)
        self._tasks.spawn(source.run(), f"metadata source {link.address}")

    def source_closed(self, source: _Source) -> None:
        if self.sources.get(source.address) is not source:
            return
        del self.sources[source.address]
        log.info("%s: %r: disconnected: %s", self.name, source, source.close_reason)
        if self.assembler is not None:
            self.assembler.remove_peer(source)
        if source.address in self.known:
            self.known[source.address] = self.clock.now() + self.services.settings.reconnect_delay
        self._request_all()
        self._connect_more()

    # -- messages --------------------------------------------------------------

    def on_events(self, source: _Source, events: list[Any]) -> None:
        for e in events:
            if source.closed:
                return
            if type(e) is ev.ExtensionHandshake:
                self._on_extension_handshake(source, e)
            elif type(e) is ev.MetadataData:
                self._on_data(source, e)
            elif type(e) is ev.MetadataReject:
                source.conduct.idle_message("ut_metadata reject")
                if self.assembler is not None and e.piece in source.asked:
                    del source.asked[e.piece]
                    self.assembler.on_reject(source, e.piece)
                    source.paused_until = self.clock.now() + REJECT_PAUSE
                    self._request_all()
            elif type(e) is ev.MetadataRequest:
                source.conduct.idle_message("ut_metadata request")
                if METADATA_EXTENSION in source.conn.remote_extensions:
                    source.send(ev.MetadataReject(e.piece))  # we have none to give yet
            elif type(e) is ev.Pex:
                source.conduct.idle_message("ut_pex")  # BEP 11: one a minute; a flood is cut off
                for peer in e.added:
                    self.add_peer(peer.ip, peer.port)
            elif type(e) is ev.InvalidRequest:
                source.conduct.invalid_request()
                if source.conn.fast_enabled:
                    source.send(ev.Reject(e.index, e.begin, e.length))
            elif type(e) is not ev.Handshake:
                # Haves, bitfields, choking and interest: news about a torrent we cannot use yet.
                source.conduct.idle_message(type(e).__name__)

    def _on_extension_handshake(self, source: _Source, e: ev.ExtensionHandshake) -> None:
        if METADATA_EXTENSION not in source.conn.remote_extensions:
            source.close("it does not offer ut_metadata")
            return
        if not source.link.outgoing and e.p:
            source.listen_address = (source.address[0], e.p)
            self.known.setdefault(source.listen_address, 0.0)  # for the torrent to dial
        source.advertised = advertised_metadata_size(e)
        if self.assembler is None and source.advertised is not None:
            self._new_assembler(source.advertised)
        elif self.assembler is not None:
            self.assembler.add_peer(source, source.advertised)
        self._request_all()

    def _new_assembler(self, size: int) -> None:
        """Fetch ``size`` bytes from scratch, from every source that offers metadata."""
        self.assembler = MetadataAssembler(self.info_hash, size)
        for s in self.sources.values():
            s.asked.clear()
            if METADATA_EXTENSION in s.conn.remote_extensions:
                self.assembler.add_peer(s, s.advertised)

    def _on_data(self, source: _Source, e: ev.MetadataData) -> None:
        assembler = self.assembler
        if assembler is None or e.piece not in source.asked:
            source.conduct.idle_message("unasked ut_metadata data")
            return
        del source.asked[e.piece]
        if source.listen_address is not None:
            self.served.add(source.listen_address)
        outcome = assembler.on_data(source, e)  # RemoteProtocolError: another size than it said
        if isinstance(outcome, MetadataVerified):
            log.info("%s: metadata received (%d bytes)", self.name, len(outcome.metadata))
            if not self._result.done():
                self.metadata = outcome.metadata
                self._result.set_result(outcome.metadata)
        elif isinstance(outcome, MetadataFailed):
            self._failed(outcome)
        else:
            self._request_all()

    def _failed(self, outcome: MetadataFailed) -> None:
        senders = [s for s in outcome.senders if isinstance(s, _Source)]
        self.assembler = None  # the closes below must not give pieces back to the failed one
        if len(senders) == 1:
            liar = senders[0]
            log.warning("%s: %r sent metadata that does not match the info-hash: dropped", self.name, liar)
            for address in {liar.address, liar.listen_address} - {None}:
                assert address is not None
                self.dropped.add(address)
                self.known.pop(address, None)
            liar.close("sent metadata that does not match the info-hash")
        else:
            # Pieces cannot be checked one by one: from now on the whole comes from one peer at
            # a time, so that the next failure convicts the one that sent it.
            log.warning(
                "%s: the metadata from %d peers does not match the info-hash: asking one peer at a time",
                self.name,
                len(senders),
            )
            self.single_source = True
        # Start over with the size most of those left advertise.
        sizes = Counter(s.advertised for s in self.sources.values() if s.advertised is not None)
        if sizes:
            self._new_assembler(sizes.most_common(1)[0][0])
        self._request_all()

    def _request_all(self) -> None:
        assembler = self.assembler
        if assembler is None or self._result.done():
            return
        now = self.clock.now()
        for source in self._askable():
            for piece in assembler.next_requests(source):
                source.asked[piece] = now
                source.send(ev.MetadataRequest(piece))

    def _askable(self) -> list[_Source]:
        ready = [s for s in self.sources.values() if not s.closed and not s.paused_until]
        if not self.single_source:
            return ready
        if self._current not in ready and self.assembler is not None:
            if self._current is not None and self.assembler.num_received:
                # The one fetching the whole is gone or paused: the next fetches all of it again.
                self._new_assembler(self.assembler.metadata_size)
            assembler = self.assembler
            self._current = next((s for s in ready if assembler.add_peer(s, s.advertised)), None)
        return [self._current] if self._current is not None else []
