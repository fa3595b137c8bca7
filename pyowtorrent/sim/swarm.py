"""Whole swarms of real engine sessions in virtual time: the scenarios' runner.

Each simulated peer is a real :class:`~pyowtorrent.engine.session.Session`
on its own :class:`~pyowtorrent.sim.network.SimHost`, with the loop's
virtual clock, in-memory storage (one shared copy of each piece) and disk
work done inline, so a run is a function of its seed.  Peers find each other
as through a tracker: a peer that joins is given up to ``NUMWANT`` of the
peers already online, drawn with the simulation's RNG.  A scenario says who
joins when, with which links, who leaves when, and what to watch; the run
records every torrent event in a trace whose digest two runs can compare.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

from ..engine.events import Completed, PeerBanned, PieceFailed, PieceVerified, TorrentEvent
from ..engine.services import InlineDisk
from ..engine.session import Session
from ..engine.torrent import Torrent
from ..metainfo.torrent_file import Metainfo
from ..storage.memory import MemoryStorage, PiecePool
from .network import SimHost, SimNetwork

log = logging.getLogger(__name__)

__all__ = ["LyingStorage", "PeerSpec", "SimPeer", "SwarmSim"]

PORT = 6881
NUMWANT = 50


@dataclass(frozen=True)
class PeerSpec:
    """One peer of a scenario: its links (bytes/s, seconds one way), when it is there, what it is."""

    name: str
    up: float | None
    down: float | None
    latency: float = 0.05
    seed: bool = False
    liar: bool = False  # a seeder whose every block is corrupt
    join_at: float = 0.0
    leave_at: float | None = None
    upload_slots: int = 4
    max_connections: int = 50
    knows: tuple[str, ...] = ()  # peers it is given besides the tracker's sample (by name)


@dataclass
class SimPeer:
    spec: PeerSpec
    host: SimHost
    session: Session
    torrent: Torrent
    storage: MemoryStorage
    joined_at: float
    completed_at: float | None = None
    left_at: float | None = None
    events: list[TorrentEvent] = field(default_factory=list)

    @property
    def online(self) -> bool:
        return self.left_at is None


class LyingStorage(MemoryStorage):
    """A seeder's storage that serves every block with its first byte flipped (a liar, or a bad disk)."""

    def read_block(self, index: int, begin: int, length: int) -> bytes:
        data = bytearray(super().read_block(index, begin, length))
        if data:
            data[0] ^= 0xFF
        return bytes(data)


Monitor = Callable[["SwarmSim"], Awaitable[None]]


class SwarmSim:
    """Runs one scenario; call :meth:`run` inside a :class:`~pyowtorrent.sim.loop.VirtualTimeLoop`."""

    def __init__(self, meta: Metainfo, payload: bytes, *, seed: int = 0) -> None:
        self.meta = meta
        self.payload = payload
        self.seed = seed
        self.rng = random.Random(seed)
        self.pool: PiecePool = {}
        self.peers: dict[str, SimPeer] = {}
        self.trace: list[str] = []
        self.net: SimNetwork | None = None
        self._next_ip = 1

    # -- what scenarios look at ------------------------------------------------------

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    @property
    def leechers(self) -> list[SimPeer]:
        return [p for p in self.peers.values() if not p.spec.seed]

    def digest(self) -> str:
        """A digest of the run's event trace: the same seed must give the same digest."""
        return hashlib.sha256("\n".join(self.trace).encode()).hexdigest()

    def byte_exact(self, peer: SimPeer) -> bool:
        return peer.storage.content() == self.payload

    # -- running -------------------------------------------------------------------

    async def run(
        self, specs: Sequence[PeerSpec], *, until: float, monitors: Sequence[Monitor] = (), stop_when_done: bool = True
    ) -> None:
        """Start every peer at its time, run until every leecher that stays has completed (or ``until``)."""
        self.net = SimNetwork()
        tasks = [asyncio.ensure_future(self._life(spec)) for spec in specs]
        tasks += [asyncio.ensure_future(m(self)) for m in monitors]
        stayers = [s.name for s in specs if not s.seed and s.leave_at is None]
        try:
            async with asyncio.timeout(until):
                while True:
                    done = all(n in self.peers and self.peers[n].completed_at is not None for n in stayers)
                    if done and stop_when_done:
                        break
                    await asyncio.sleep(1.0)
        except TimeoutError:
            pass
        finally:
            for t in tasks:
                t.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            for p in self.peers.values():
                if p.online:
                    await self._leave(p)
        # A scenario's own code failing (a peer's life, a monitor) is the test's bug: say so.
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome

    async def _life(self, spec: PeerSpec) -> None:
        await asyncio.sleep(spec.join_at)
        peer = await self._join(spec)
        if spec.leave_at is not None:
            await asyncio.sleep(max(0.0, spec.leave_at - self.now()))
            await self._leave(peer)

    async def _join(self, spec: PeerSpec) -> SimPeer:
        assert self.net is not None
        ip = f"10.{self._next_ip >> 16 & 255}.{self._next_ip >> 8 & 255}.{self._next_ip & 255}"
        self._next_ip += 1
        host = self.net.add_host(ip, up=spec.up, down=spec.down, latency=spec.latency)
        session = Session(
            listen=ip,
            port=PORT,
            network=host.network,
            disk=InlineDisk(),
            seed=self.rng.getrandbits(64),
            upload_slots=spec.upload_slots,
            max_connections_per_torrent=spec.max_connections,
            max_connections=spec.max_connections + 10,
        )
        await session.start()
        kind = LyingStorage if spec.liar else MemoryStorage
        storage = kind(self.meta, pool=self.pool, payload=self.payload if spec.seed else None)
        online = [p for p in self.peers.values() if p.online]
        given = [self.peers[n] for n in spec.knows if n in self.peers]
        known = given + [p for p in self.rng.sample(online, min(NUMWANT, len(online))) if p not in given]
        torrent = await session.add_torrent(
            self.meta, storage=storage, peers=[(p.host.ip, PORT) for p in known]
        )
        peer = SimPeer(spec, host, session, torrent, storage, joined_at=self.now())
        if spec.seed:
            peer.completed_at = peer.joined_at
        self.peers[spec.name] = peer
        torrent.add_listener(lambda e: self._record(peer, e))
        self._note(f"join {spec.name} {ip} knows {len(known)}")
        return peer

    async def _leave(self, peer: SimPeer) -> None:
        if not peer.online:
            return
        peer.left_at = self.now()
        peer.host.go_offline()
        await peer.session.close()
        self._note(f"leave {peer.spec.name}")

    def _record(self, peer: SimPeer, e: TorrentEvent) -> None:
        peer.events.append(e)
        if isinstance(e, Completed):
            peer.completed_at = e.at
        # The trace keeps what the swarm did (pieces, failures, bans, completions);
        # connection churn is in it implicitly, through when each of those happened.
        if isinstance(e, (PieceVerified, PieceFailed, PeerBanned, Completed)):
            self.trace.append(f"{e.at:.6f} {peer.spec.name} {e!r}")

    def _note(self, what: str) -> None:
        self.trace.append(f"{self.now():.6f} {what}")
