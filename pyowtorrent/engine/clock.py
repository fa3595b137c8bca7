"""The engine's one source of time.

Every timer, timeout and timestamp in the engine comes from a :class:`Clock`.
The default reads the running event loop's clock (``loop.time()``, which is
``time.monotonic()`` on asyncio's loops), so timestamps, ``sleep`` and
timeouts agree with each other; the swarm simulator runs the same engine on a
loop whose clock is virtual.
"""

from __future__ import annotations

import asyncio
from typing import AsyncContextManager, Protocol

__all__ = ["Clock", "LoopClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def timeout(self, seconds: float | None) -> AsyncContextManager[object]:
        """A context that cancels its body after ``seconds`` and raises ``TimeoutError``."""
        ...


class LoopClock:
    """Time as the running event loop keeps it."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def timeout(self, seconds: float | None) -> AsyncContextManager[object]:
        return asyncio.timeout(seconds)
