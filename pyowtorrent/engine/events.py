"""What a torrent tells its listeners: typed states, events and status snapshots.

One small frozen class per event, in the style of ``wire.events`` (and h11):
a listener matches on the class, never on a string.  Every event carries
``at``, the engine clock's time when it happened.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from .net import Address

log = logging.getLogger(__name__)

__all__ = [
    "Completed",
    "EventBus",
    "PeerBanned",
    "PeerConnected",
    "PeerDisconnected",
    "PieceFailed",
    "PieceVerified",
    "StateChanged",
    "TorrentEvent",
    "TorrentFailed",
    "TorrentState",
    "TorrentStatus",
    "TrackerStatus",
    "WebSeedStatus",
]


class TorrentState(str, enum.Enum):
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    SEEDING = "seeding"
    PAUSED = "paused"
    ERROR = "error"
    STOPPED = "stopped"


@dataclass(frozen=True, kw_only=True, slots=True)
class TorrentEvent:
    at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class PieceVerified(TorrentEvent):
    """The piece's SHA-1 matched and it is on disk."""

    piece: int


@dataclass(frozen=True, kw_only=True, slots=True)
class PieceFailed(TorrentEvent):
    """The piece's SHA-1 did not match; it is downloaded again."""

    piece: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Completed(TorrentEvent):
    """Every wanted piece is verified on disk."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TorrentFailed(TorrentEvent):
    """The torrent went to :attr:`TorrentState.ERROR` (our own storage failed)."""

    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class StateChanged(TorrentEvent):
    state: TorrentState


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerConnected(TorrentEvent):
    peer: Address


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerDisconnected(TorrentEvent):
    peer: Address
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerBanned(TorrentEvent):
    """A peer proven to have sent bad data.  ``peer_id`` is the one banned at ``ip``; ``None``: all of ``ip``."""

    ip: str
    peer_id: bytes | None
    reason: str


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


@dataclass(frozen=True)
class WebSeedStatus:
    """One ``url-list`` web seed (BEP 19) as the torrent uses it."""

    url: str
    working: bool  # its last request succeeded, or one is under way after a success
    downloaded: int  # payload bytes it delivered this session
    failures: int  # failed requests and pieces that failed their hash, in all
    last_error: str | None
    retry_in: float | None  # seconds until it is tried again after a failure
    dropped: bool  # given up: failures in a row, bad data, or a URL we cannot use


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
    completed: int | None = None
    web_seeds: tuple[WebSeedStatus, ...] = ()


Listener = Callable[[TorrentEvent], None]


class EventBus:
    """Listeners called on the event loop, in order; one listener's bug never reaches the torrent."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def add_listener(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback`` for every event; returns a function that unsubscribes."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    async def events(self) -> AsyncIterator[TorrentEvent]:
        """The events from now on, as an async iterator."""
        queue: asyncio.Queue[TorrentEvent] = asyncio.Queue()
        unsubscribe = self.add_listener(queue.put_nowait)
        try:
            while True:
                yield await queue.get()
        finally:
            unsubscribe()

    def emit(self, event: TorrentEvent) -> None:
        for cb in list(self._listeners):
            try:
                cb(event)
            except Exception:
                log.exception("torrent event listener failed")
