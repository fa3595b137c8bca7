"""An asyncio event loop on virtual time.

:class:`VirtualTimeLoop` is a stock ``SelectorEventLoop`` but for its clock:
``time()`` starts at 0.0 and moves only when the loop would otherwise wait.
The loop asks its selector to wait ``timeout`` seconds for the next timer;
our selector polls the real file descriptors without waiting (so the loop's
self-pipe, and with it ``call_soon_threadsafe``, still works) and, when
nothing is ready, moves the clock forward by ``timeout`` instead of sleeping.
An hour of ``asyncio.sleep`` therefore costs no real time, and every timer
fires in the same order on every run.

A loop that would wait with no timer at all can never wake up again (every
task waits on another): the selector raises :class:`SimulationStalled`
instead of hanging the test.

Work handed to ``run_in_executor`` runs inline, on the loop, taking no
virtual time: threads would finish in real time, in an order of their own,
while the virtual clock raced ahead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import selectors
from typing import Any, Callable, Coroutine, TypeVar, TypeVarTuple, Unpack

__all__ = ["SimulationStalled", "VirtualTimeLoop", "run_virtual"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# How many waiting tasks a SimulationStalled message names.
_TASKS_NAMED = 8


class SimulationStalled(RuntimeError):
    """Nothing is ready and no timer is set: the simulated world would wait forever."""


class _VirtualSelector(selectors.DefaultSelector):
    """Never blocks: a wait for ``timeout`` seconds advances the virtual clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready:
            return ready
        if timeout is None:
            raise SimulationStalled(self._stall_message())
        if timeout > 0:
            self.now += timeout
        return []

    def _stall_message(self) -> str:
        message = f"simulation stalled at t={self.now:.6f}: nothing is ready and no timer is scheduled"
        if self.loop is not None:
            waiting = [t.get_name() + ": " + _where(t) for t in asyncio.all_tasks(self.loop)]
            waiting.sort()  # all_tasks() is a set: sort for a stable message
            if waiting:
                shown = "; ".join(waiting[:_TASKS_NAMED])
                more = f" (and {len(waiting) - _TASKS_NAMED} more)" if len(waiting) > _TASKS_NAMED else ""
                message += f"; {len(waiting)} task(s) wait forever: {shown}{more}"
        return message


def _where(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    code = getattr(coro, "cr_code", None)
    return getattr(code, "co_qualname", repr(coro))


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` is virtual: it jumps to the next timer rather than sleep.

    ``rng`` is a ``random.Random`` seeded with ``seed`` (0 when ``None``), for
    simulation components that need randomness and must stay reproducible.
    """

    def __init__(self, *, seed: int | None = None) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)
        self._virtual.loop = self
        self.rng = random.Random(0 if seed is None else seed)

    def time(self) -> float:
        return self._virtual.now

    def run_in_executor(
        self, executor: concurrent.futures.Executor | None, func: Callable[[Unpack[Ts]], T], *args: Unpack[Ts]
    ) -> asyncio.Future[T]:
        """Run ``func(*args)`` now, on the loop; the future completes on the next iteration, as a thread's would."""
        if self.is_closed():
            raise RuntimeError("Event loop is closed")
        fut: asyncio.Future[T] = self.create_future()
        try:
            result = func(*args)
        except Exception as exc:
            self.call_soon(_fail, fut, exc)
        else:
            self.call_soon(_resolve, fut, result)
        return fut


def _resolve(fut: asyncio.Future[T], result: T) -> None:
    if not fut.cancelled():
        fut.set_result(result)


def _fail(fut: asyncio.Future[Any], exc: Exception) -> None:
    if not fut.cancelled():
        fut.set_exception(exc)


def run_virtual(coro: Coroutine[Any, Any, T], *, seed: int | None = None) -> T:
    """Like ``asyncio.run(coro)``, on a fresh :class:`VirtualTimeLoop` (see it for ``seed``).

    On the way out, as ``asyncio.run`` does, leftover tasks are cancelled and
    awaited, async generators shut down, and the loop closed.
    """
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(seed=seed)) as runner:
        return runner.run(coro)
