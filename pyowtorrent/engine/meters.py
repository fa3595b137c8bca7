"""Rates measured and rates enforced, on the engine's clock."""

from __future__ import annotations

from .clock import Clock

__all__ = ["Allowance", "RateLimiter", "RateMeter"]


class RateMeter:
    """Bytes per second over a few seconds, smoothed."""

    def __init__(self, clock: Clock, window: float = 5.0) -> None:
        self.clock = clock
        self.window = window
        self.total = 0
        self._bytes = 0.0
        self._start = clock.now()
        self._rate = 0.0
        self._last = self._start

    def add(self, n: int) -> None:
        self.total += n
        self._bytes += n

    def rate(self, now: float | None = None) -> float:
        now = self.clock.now() if now is None else now
        elapsed = now - self._last
        if elapsed >= 0.5:
            # Fold the last interval into an exponential average over `window`.
            instant = self._bytes / elapsed
            weight = 1.0 if self._last == self._start else min(1.0, elapsed / self.window)
            self._rate += (instant - self._rate) * weight
            self._bytes = 0.0
            self._last = now
        return self._rate


class Allowance:
    """A budget that refills with time: ``spend()`` is false once a burst beyond ``burst`` outpaces ``per_second``.

    Bounds what a peer may send that costs us work and gives us nothing
    (keep-alives, repeated haves, cancels of nothing): a legitimate peer sends
    a few a minute, a flood spends the budget in a moment.
    """

    def __init__(self, clock: Clock, burst: float, per_second: float) -> None:
        self.clock = clock
        self.burst = burst
        self.per_second = per_second
        self._left = burst
        self._stamp = clock.now()

    def spend(self, n: float = 1.0) -> bool:
        now = self.clock.now()
        self._left = min(self.burst, self._left + (now - self._stamp) * self.per_second) - n
        self._stamp = now
        return self._left >= 0


class RateLimiter:
    """A token bucket shared by every peer of a session; 0 bytes/s means no limit."""

    def __init__(self, rate: int, clock: Clock) -> None:
        self.rate = rate
        self.clock = clock
        self._tokens = float(rate)
        self._stamp = 0.0

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        while True:
            now = self.clock.now()
            self._tokens = min(float(self.rate), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= min(n, self.rate):
                self._tokens -= n
                return
            await self.clock.sleep((min(n, self.rate) - self._tokens) / self.rate)
