"""Infrastructure for deterministic in-memory swarm simulations.

The engine runs unchanged on top of it: a :class:`VirtualTimeLoop` whose
clock jumps from timer to timer (hours of protocol time in milliseconds,
the same events in the same order on every run), a :class:`SimNetwork` of
hosts with latency and upload/download bandwidth whose connections are real
asyncio streams, and :class:`MemoryStorage`, whose hundred peers share one
copy of each piece.
"""

from __future__ import annotations

from ..storage.memory import MemoryStorage
from .loop import SimulationStalled, VirtualTimeLoop, run_virtual
from .network import SimHost, SimNetwork
from .payload import make_payload, metainfo_for_bytes

__all__ = [
    "MemoryStorage",
    "SimHost",
    "SimNetwork",
    "SimulationStalled",
    "VirtualTimeLoop",
    "make_payload",
    "metainfo_for_bytes",
    "run_virtual",
]
