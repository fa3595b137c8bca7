"""A torrent's announces: when, to which tracker (BEP 12), and what the answers change.

``started`` goes to each tracker the first time it is asked, ``completed``
once when the download completes, ``stopped`` to every tracker that was
told ``started`` when the torrent stops or pauses.  The next announce is
due after the tracker's ``interval``, or earlier — but never before its
``min interval`` — while the torrent is short of peers.

Two settings of the session shape every announce: ``announce_ip``, an
address the trackers are asked to hand out for us instead of the one the
announce comes from (BEP 3's ``ip``; the IPv4 field of a BEP 15 announce,
as libtorrent sends it) — for a host behind NAT; and ``source_addresses``,
the specific addresses we listen on, which UDP announces leave from (HTTP
ones leave from them through the session's HTTP client).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import TrackerError
from ..tracker.http_codec import AnnounceRequest
from ..tracker.tiers import TrackerEntry, TrackerTiers
from .events import TrackerStatus
from .services import TorrentServices, TorrentSettings
from .trackers import TrackerClient, make_client

log = logging.getLogger(__name__)

__all__ = ["AnnounceStats", "Announcer", "announce_options"]

NUMWANT = 50
# Fewer connected peers than this, while downloading, asks for an early re-announce.
WANT_PEERS = 10
# Never re-announce early more often than this, whatever 'min interval' says.
MIN_REANNOUNCE = 30.0
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class AnnounceStats:
    """What an announce reports of its torrent, asked for at each announce."""

    uploaded: int
    downloaded: int
    left: int
    finished: bool
    num_peers: int


def announce_options(settings: TorrentSettings) -> tuple[str | None, tuple[str, ...]]:
    """``settings``' ``announce_ip`` and ``source_addresses``, or ``(None, ())`` where it has none.

    Read with defaults, so that settings made without them announce as before
    (the two fields of :class:`TorrentSettings` are issue 12's; once every
    settings object has them this is plain attribute access).
    """
    announce_ip: str | None = getattr(settings, "announce_ip", None) or None
    sources: tuple[str, ...] = tuple(getattr(settings, "source_addresses", ()) or ())
    return announce_ip, sources


class Announcer:
    def __init__(
        self,
        info_hash: bytes,
        name: str,
        tiers: Sequence[Sequence[str]],
        services: TorrentServices,
        stats: Callable[[], AnnounceStats],
        on_peer: Callable[[str, int], None],
    ) -> None:
        self.info_hash = info_hash
        self.name = name
        self.services = services
        self.clock = services.clock
        self.stats = stats
        self.on_peer = on_peer
        self.tiers = TrackerTiers(tiers, services.rng)
        self._clients: dict[str, TrackerClient | None] = {}
        self._wake = asyncio.Event()
        self._completed_pending = False
        self.announce_ip, self.source_addresses = announce_options(services.settings)

    # -- what the torrent tells us -------------------------------------------------

    def completed(self) -> None:
        self._completed_pending = True
        self._wake.set()

    def want_peers(self) -> None:
        self._wake.set()

    # -- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            now = self.clock.now()
            if now >= self._next_due(now) or self._completed_pending:
                await self._announce_once()
                continue_at = self._next_due(self.clock.now())
            else:
                continue_at = self._next_due(now)
            self._wake.clear()
            delay = max(0.05, continue_at - self.clock.now())
            try:
                async with self.clock.timeout(min(delay, 3600.0)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _next_due(self, now: float) -> float:
        working = self._working()
        if working is None:
            return self.tiers.next_wakeup()
        due = working.next_announce
        stats = self.stats()
        short = not stats.finished and stats.num_peers < WANT_PEERS and working.last_success
        if short:
            early = working.last_success + max(working.min_interval, MIN_REANNOUNCE)  # type: ignore[operator]
            due = min(due, early)
        return due

    def _working(self) -> TrackerEntry | None:
        for e in self.tiers.entries:
            if e.last_success is not None and e.fails == 0:
                return e
        return None

    async def _announce_once(self) -> bool:
        """Announce to the first tracker, in BEP 12 order, that answers."""
        now = self.clock.now()
        for entry in list(self.tiers.candidates(now)):
            client = self._client(entry)
            if client is None:
                continue
            event = None
            if not entry.started:
                event = "started"
            elif self._completed_pending:
                event = "completed"
            try:
                resp = await client.announce(self._request(entry, event))
            except TrackerError as exc:
                log.info("%s: announce to %s failed: %s", self.name, entry.url, exc)
                self.tiers.failed(entry, self.clock.now(), str(exc))
                continue
            if event == "completed" or (event == "started" and self.stats().finished):
                self._completed_pending = False
            entry.started = True
            entry.warning = resp.warning_message
            if resp.tracker_id is not None:
                entry.tracker_id = resp.tracker_id
            entry.seeders, entry.leechers = resp.complete, resp.incomplete
            entry.peers_received += len(resp.peers)
            self.tiers.succeeded(entry, self.clock.now(), resp.interval, resp.min_interval)
            for host, port in resp.peers:
                self.on_peer(host, port)
            await self._scrape(entry, client)
            return True
        return False

    async def _scrape(self, entry: TrackerEntry, client: TrackerClient) -> None:
        due = entry.extra.get("next_scrape", 0.0)
        if self.clock.now() < due:  # type: ignore[operator]
            return
        entry.extra["next_scrape"] = self.clock.now() + entry.interval
        try:
            result = await client.scrape(self.info_hash)
        except TrackerError as exc:
            log.debug("%s: scrape of %s failed: %s", self.name, entry.url, exc)
            return
        if result is not None:
            entry.seeders = result.complete if result.complete is not None else entry.seeders
            entry.leechers = result.incomplete if result.incomplete is not None else entry.leechers
            entry.completed = result.downloaded

    def _request(self, entry: TrackerEntry, event: str | None) -> AnnounceRequest:
        stats = self.stats()
        settings = self.services.settings
        return AnnounceRequest(
            info_hash=self.info_hash,
            peer_id=settings.peer_id,
            port=self.services.listen_port(),
            uploaded=stats.uploaded,
            downloaded=stats.downloaded,
            left=stats.left,
            event=event,  # type: ignore[arg-type]
            numwant=0 if event == "stopped" else NUMWANT,
            key=settings.announce_key,
            trackerid=entry.tracker_id,
            ip=self.announce_ip,
        )

    def _client(self, entry: TrackerEntry) -> TrackerClient | None:
        """The entry's client, made on first use (an unusable URL is never tried again)."""
        if entry.url not in self._clients:
            settings = self.services.settings
            try:
                self._clients[entry.url] = make_client(
                    entry.url,
                    self.services.http,
                    clock=self.clock,
                    udp_retransmit_base=settings.udp_retransmit_base,
                    http_timeout=settings.tracker_timeout,
                    bind=self.source_addresses,
                )
            except TrackerError as exc:
                self._clients[entry.url] = None
                entry.last_error = str(exc)
                entry.fails = 1
                entry.next_announce = float("inf")
        return self._clients[entry.url]

    async def stop(self) -> None:
        """Tell every tracker that was told 'started' that we are gone (bounded wait)."""
        told = [e for e in self.tiers.entries if e.started and self._clients.get(e.url) is not None]
        if not told:
            return

        async def one(e: TrackerEntry) -> None:
            try:
                client = self._clients[e.url]
                assert client is not None
                async with self.clock.timeout(STOP_TIMEOUT):
                    await client.announce(self._request(e, "stopped"))
            except (TrackerError, TimeoutError) as exc:
                log.debug("%s: 'stopped' to %s failed: %s", self.name, e.url, exc)
            e.started = False
            e.last_success = None
            e.next_announce = 0.0

        await asyncio.gather(*(one(e) for e in told))

    def status(self) -> tuple[TrackerStatus, ...]:
        now = self.clock.now()
        working = self._working()
        return tuple(
            TrackerStatus(
                url=e.url,
                tier=e.tier,
                working=e is working,
                last_error=e.last_error,
                next_announce_in=max(0.0, e.next_announce - now) if e.next_announce != float("inf") else None,
                peers_received=e.peers_received,
                seeders=e.seeders,
                leechers=e.leechers,
                completed=e.completed,
                warning=e.warning,
            )
            for e in self.tiers.entries
        )
