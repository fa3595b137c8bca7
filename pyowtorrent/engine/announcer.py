"""A torrent's announces: when, to which tracker (BEP 12), and what the answers change.

``started`` goes to each tracker the first time it is asked, ``completed``
once when the download completes, ``stopped`` to every tracker that was
told ``started`` when the torrent stops or pauses.  The next announce is
due after the tracker's ``interval``, or earlier — but never before its
``min interval`` — while the torrent is short of peers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import TrackerError
from .trackers import TrackerClient, make_client
from ..tracker.http_codec import AnnounceRequest
from ..tracker.tiers import TrackerEntry, TrackerTiers

if TYPE_CHECKING:
    from .torrent import Torrent

log = logging.getLogger(__name__)

__all__ = ["Announcer", "TrackerStatus"]

NUMWANT = 50
# Fewer connected peers than this, while downloading, asks for an early re-announce.
WANT_PEERS = 10
# Never re-announce early more often than this, whatever 'min interval' says.
MIN_REANNOUNCE = 30.0
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class TrackerStatus:
    url: str
    tier: int
    working: bool
    last_error: str | None
    next_announce_in: float | None  # seconds
    peers_received: int
    seeders: int | None
    leechers: int | None
    completed: int | None
    warning: str | None


class Announcer:
    def __init__(
        self,
        torrent: Torrent,
        tiers: Sequence[Sequence[str]],
        *,
        http: Any,
        udp_retransmit_base: float = 15.0,
        http_timeout: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.torrent = torrent
        self.tiers = TrackerTiers(tiers, rng)
        self.clients: dict[str, TrackerClient] = {}
        for e in self.tiers.entries:
            try:
                self.clients[e.url] = make_client(
                    e.url, http, udp_retransmit_base=udp_retransmit_base, http_timeout=http_timeout
                )
            except TrackerError as exc:
                e.last_error = str(exc)
                e.fails = 1
                e.next_announce = float("inf")  # an unusable URL is never tried
        self._wake = asyncio.Event()
        self._completed_pending = False

    # -- what the torrent tells us -------------------------------------------------

    def completed(self) -> None:
        self._completed_pending = True
        self._wake.set()

    def want_peers(self) -> None:
        self._wake.set()

    # -- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            if now >= self._next_due(now) or self._completed_pending:
                await self._announce_once()
                continue_at = self._next_due(time.monotonic())
            else:
                continue_at = self._next_due(now)
            self._wake.clear()
            delay = max(0.05, continue_at - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), min(delay, 3600.0))
            except asyncio.TimeoutError:
                pass

    def _next_due(self, now: float) -> float:
        working = self._working()
        if working is None:
            return self.tiers.next_wakeup()
        due = working.next_announce
        short = (
            not self.torrent.picker.is_finished() and len(self.torrent.peers) < WANT_PEERS and working.last_success
        )
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
        now = time.monotonic()
        for entry in list(self.tiers.candidates(now)):
            client = self.clients.get(entry.url)
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
                log.info("%s: announce to %s failed: %s", self.torrent.meta.name, entry.url, exc)
                self.tiers.failed(entry, time.monotonic(), str(exc))
                continue
            if event == "completed" or (event == "started" and self.torrent.picker.is_finished()):
                self._completed_pending = False
            entry.started = True
            entry.warning = resp.warning_message
            if resp.tracker_id is not None:
                entry.tracker_id = resp.tracker_id
            entry.seeders, entry.leechers = resp.complete, resp.incomplete
            entry.peers_received += len(resp.peers)
            self.tiers.succeeded(entry, time.monotonic(), resp.interval, resp.min_interval)
            for host, port in resp.peers:
                self.torrent.add_peer(host, port)
            await self._scrape(entry, client)
            return True
        return False

    async def _scrape(self, entry: TrackerEntry, client: TrackerClient) -> None:
        due = entry.extra.get("next_scrape", 0.0)
        if time.monotonic() < due:  # type: ignore[operator]
            return
        entry.extra["next_scrape"] = time.monotonic() + entry.interval
        try:
            result = await client.scrape(self.torrent.meta.info_hash)
        except TrackerError as exc:
            log.debug("%s: scrape of %s failed: %s", self.torrent.meta.name, entry.url, exc)
            return
        if result is not None:
            entry.seeders = result.complete if result.complete is not None else entry.seeders
            entry.leechers = result.incomplete if result.incomplete is not None else entry.leechers
            entry.completed = result.downloaded

    def _request(self, entry: TrackerEntry, event: str | None) -> AnnounceRequest:
        t = self.torrent
        st = t.status()
        session = t.session
        return AnnounceRequest(
            info_hash=t.meta.info_hash,
            peer_id=session.peer_id,
            port=session.listen_port,
            uploaded=t.uploaded_bytes,
            downloaded=t.downloaded_bytes,
            left=st.bytes_total - st.bytes_done,
            event=event,  # type: ignore[arg-type]
            numwant=0 if event == "stopped" else NUMWANT,
            key=session.announce_key,
            trackerid=entry.tracker_id,
        )

    async def stop(self) -> None:
        """Tell every tracker that was told 'started' that we are gone (bounded wait)."""
        told = [e for e in self.tiers.entries if e.started and e.url in self.clients]
        if not told:
            return

        async def one(e: TrackerEntry) -> None:
            try:
                await asyncio.wait_for(self.clients[e.url].announce(self._request(e, "stopped")), STOP_TIMEOUT)
            except (TrackerError, asyncio.TimeoutError) as exc:
                log.debug("%s: 'stopped' to %s failed: %s", self.torrent.meta.name, e.url, exc)
            e.started = False
            e.last_success = None
            e.next_announce = 0.0

        await asyncio.gather(*(one(e) for e in told))

    def status(self) -> tuple[TrackerStatus, ...]:
        now = time.monotonic()
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
