"""BEP 12 multitracker policy, sans-IO: which tracker to ask next, and when.

Tiers are shuffled once when the torrent is added; announces go to one
tracker at a time, trying each tier in order and each tracker of a tier in
order; a tracker that answers moves to the front of its tier, so it is
asked first next time.  Time is passed in, never read.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterator, Sequence

__all__ = ["TrackerEntry", "TrackerTiers"]

DEFAULT_INTERVAL = 1800.0
# A tracker that failed is retried after 60 s, doubling to at most an hour.
RETRY_BASE = 60.0
RETRY_MAX = 3600.0


@dataclass
class TrackerEntry:
    url: str
    tier: int
    last_error: str | None = None
    last_success: float | None = None
    next_announce: float = 0.0  # monotonic seconds; 0 = as soon as possible
    interval: float = DEFAULT_INTERVAL
    min_interval: float = 0.0
    fails: int = 0
    started: bool = False  # 'started' was sent and not yet balanced by 'stopped'
    peers_received: int = 0
    seeders: int | None = None
    leechers: int | None = None
    completed: int | None = None
    tracker_id: bytes | None = None
    warning: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


class TrackerTiers:
    def __init__(self, tiers: Sequence[Sequence[str]], rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        self.tiers: list[list[TrackerEntry]] = []
        for n, urls in enumerate(tiers):
            entries = [TrackerEntry(u, n) for u in urls]
            rng.shuffle(entries)  # BEP 12: shuffle each tier once, when the torrent is added
            if entries:
                self.tiers.append(entries)

    def __bool__(self) -> bool:
        return bool(self.tiers)

    @property
    def entries(self) -> list[TrackerEntry]:
        return [e for tier in self.tiers for e in tier]

    def candidates(self, now: float) -> Iterator[TrackerEntry]:
        """Trackers to try now, in BEP 12 order, skipping those backing off after a failure."""
        for tier in self.tiers:
            for e in list(tier):
                if e.fails == 0 or e.next_announce <= now:
                    yield e

    def succeeded(self, entry: TrackerEntry, now: float, interval: float, min_interval: float | None) -> None:
        entry.last_error = None
        entry.fails = 0
        entry.last_success = now
        entry.interval = max(1.0, interval)
        entry.min_interval = max(0.0, min_interval or 0.0)
        entry.next_announce = now + entry.interval
        tier = self.tiers[self._tier_index(entry)]
        tier.remove(entry)
        tier.insert(0, entry)  # BEP 12: a tracker that answers moves to the front of its tier

    def failed(self, entry: TrackerEntry, now: float, error: str) -> None:
        entry.last_error = error
        entry.fails += 1
        entry.next_announce = now + min(RETRY_MAX, RETRY_BASE * 2 ** (entry.fails - 1))

    def next_wakeup(self) -> float:
        """When an announce is next due: the working tracker's schedule, or the first retry."""
        working = [e for e in self.entries if e.last_success is not None and e.fails == 0]
        if working:
            return min(e.next_announce for e in working)
        return min((e.next_announce for e in self.entries), default=float("inf"))

    def _tier_index(self, entry: TrackerEntry) -> int:
        for i, tier in enumerate(self.tiers):
            if entry in tier:
                return i
        raise ValueError(f"{entry.url} is not one of this torrent's trackers")
