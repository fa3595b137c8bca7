"""Which event loop the long-running commands run on: uvloop's when it is installed, else asyncio's.

uvloop (the ``fast`` extra) runs the same engine with less CPU per byte: in
``benchmarks/bench_swarm.py``'s loopback case a leecher on it spent about 10 %
less CPU per GiB and finished 8-10 % sooner.  ``PYOWTORRENT_EVENT_LOOP=asyncio``
keeps asyncio's loop even where uvloop is installed.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Coroutine, TypeVar

__all__ = ["EVENT_LOOP_VARIABLE", "run", "uses_uvloop"]

T = TypeVar("T")
EVENT_LOOP_VARIABLE = "PYOWTORRENT_EVENT_LOOP"


def uses_uvloop() -> bool:
    """Whether :func:`run` runs on uvloop here."""
    if os.environ.get(EVENT_LOOP_VARIABLE, "").strip().lower() == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, on uvloop's loop when :func:`uses_uvloop`."""
    if not uses_uvloop():
        return asyncio.run(coro)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
