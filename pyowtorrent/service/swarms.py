"""The embedded tracker's memory: which peers each torrent has, their expiry, and the limits.

No HTTP and no event loop here: :class:`SwarmRegistry` takes announces and
scrapes already parsed (an info-hash, a peer id, the address the request came
from) and returns what to answer; the clock is injected.  The rules it keeps
(a peer is its peer id *and* its address, expiry after two intervals, the
BEP 3 events, the bounds) are written out in :mod:`pyowtorrent.service.tracker`,
the module users read.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

__all__ = [
    "HASH_LENGTH",
    "NOT_ALLOWED",
    "Address",
    "AnnounceEvent",
    "PeerEntry",
    "Refusal",
    "SwarmRegistry",
    "SwarmStats",
    "TrackedPeer",
]

HASH_LENGTH: Final = 20  # an info-hash, and a peer id

#: The failure reason for an info-hash that is not on the allow-list.
NOT_ALLOWED: Final = "torrent not allowed on this tracker"

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
# What an announce does to its entry (None: a regular announce, BEP 3's "empty").
AnnounceEvent: TypeAlias = Literal["started", "completed", "stopped"] | None


class Refusal(Exception):
    """A request the tracker answers with a ``failure reason``."""


@dataclass(frozen=True, slots=True)
class TrackedPeer:
    """One peer of a swarm as the tracker knows it (see :meth:`Tracker.peers`)."""

    peer_id: bytes
    ip: str
    port: int
    left: int
    last_seen: float


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """One entry of a swarm, as handed out in an announce's answer."""

    peer_id: bytes
    address: Address
    port: int
    left: int
    last_seen: float
    completed: bool  # this entry has announced ``completed`` (counted once)
    compact: bytes  # BEP 23 / BEP 7: address then port, network byte order

    @property
    def ipv6(self) -> bool:
        return self.address.version == 6


@dataclass(frozen=True, slots=True)
class SwarmStats:
    """A torrent's counts, as an announce or a scrape (BEP 48) reports them."""

    complete: int  # seeders
    incomplete: int  # leechers
    downloaded: int  # ``completed`` events, one per entry


_NO_SWARM = SwarmStats(0, 0, 0)

# A swarm's peers are keyed by (peer id, address): see the tracker's module docstring.
_Key = tuple[bytes, Address]


class _Swarm:
    __slots__ = ("peers", "seeders", "downloaded")

    def __init__(self) -> None:
        # Insertion order is last-announce order (an announce re-inserts), so
        # the oldest entries are first: expiry and eviction pop from the front.
        self.peers: dict[_Key, PeerEntry] = {}
        self.seeders = 0
        self.downloaded = 0

    def stats(self) -> SwarmStats:
        return SwarmStats(self.seeders, len(self.peers) - self.seeders, self.downloaded)


class SwarmRegistry:
    """The swarms of one tracker, bounded: see :class:`~pyowtorrent.service.tracker.Tracker`.

    ``interval``: seconds; a peer silent for ``2 * interval`` is dropped.
    ``clock``: seconds, read on each call that may expire peers.  The bounds
    must be positive (the tracker checks its arguments before building one).
    """

    def __init__(
        self,
        *,
        interval: int,
        clock: Callable[[], float],
        allowed_info_hashes: Iterable[bytes] | None,
        max_peers_per_torrent: int,
        max_torrents: int,
        max_peers: int,
    ) -> None:
        self.interval = interval
        self.max_peers_per_torrent = max_peers_per_torrent
        self.max_torrents = max_torrents
        self.max_peers = max_peers
        self._clock = clock
        self._rng = random.Random()
        self._allowed: set[bytes] | None = None
        self._swarms: dict[bytes, _Swarm] = {}
        self._peer_count = 0
        if allowed_info_hashes is not None:
            self._allowed = set()
            for info_hash in allowed_info_hashes:
                self.allow(info_hash)

    # ------------------------------------------------------------ torrents, peers

    def allow(self, info_hash: bytes) -> None:
        if len(info_hash) != HASH_LENGTH:
            raise ValueError(f"an info-hash is {HASH_LENGTH} bytes, not {len(info_hash)}")
        info_hash = bytes(info_hash)
        if self._allowed is not None:
            self._allowed.add(info_hash)
        self._swarms.setdefault(info_hash, _Swarm())

    def disallow(self, info_hash: bytes) -> None:
        if self._allowed is not None:
            self._allowed.discard(info_hash)
        swarm = self._swarms.pop(info_hash, None)
        if swarm is not None:
            self._peer_count -= len(swarm.peers)

    @property
    def allowed_info_hashes(self) -> frozenset[bytes] | None:
        return None if self._allowed is None else frozenset(self._allowed)

    def peers(self, info_hash: bytes) -> list[TrackedPeer]:
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            return []
        self._expire(swarm, self._clock())
        return [
            TrackedPeer(peer.peer_id, str(peer.address), peer.port, peer.left, peer.last_seen)
            for peer in swarm.peers.values()
        ]

    def sweep(self) -> None:
        now = self._clock()
        for swarm in self._swarms.values():
            self._expire(swarm, now)

    # ----------------------------------------------------------- announce, scrape

    def announce(
        self,
        info_hash: bytes,
        peer_id: bytes,
        address: Address,
        port: int,
        left: int,
        event: AnnounceEvent,
        numwant: int,
    ) -> tuple[SwarmStats, list[PeerEntry]]:
        """Record an announce; the torrent's counts after it, and up to ``numwant`` other peers.

        Raises :class:`Refusal` for a torrent off the allow-list, or when the
        tracker holds as many torrents or peers as it may.
        """
        now = self._clock()
        key: _Key = (peer_id, address)
        if event == "stopped":
            swarm = self._swarms.get(info_hash)
            if swarm is None:
                if self._allowed is not None:
                    raise Refusal(NOT_ALLOWED)
                swarm = _Swarm()  # not kept: a stopped peer does not make a torrent
            self._expire(swarm, now)
            self._remove(swarm, key)
            return swarm.stats(), []

        swarm = self._swarm_for_announce(info_hash)
        self._expire(swarm, now)
        if key not in swarm.peers and self._peer_count >= self.max_peers:
            self.sweep()
            if self._peer_count >= self.max_peers:
                raise Refusal("this tracker tracks as many peers as it can")
        previous = self._remove(swarm, key)
        completed = previous is not None and previous.completed
        if event == "completed" and not completed:
            swarm.downloaded += 1
            completed = True
        while len(swarm.peers) >= self.max_peers_per_torrent:
            self._remove(swarm, next(iter(swarm.peers)))
        compact_address = address.packed + port.to_bytes(2, "big")
        self._insert(swarm, key, PeerEntry(peer_id, address, port, left, now, completed, compact_address))

        others = [peer for peer in swarm.peers.values() if peer.peer_id != peer_id]
        chosen = others if numwant >= len(others) else self._rng.sample(others, numwant)
        return swarm.stats(), chosen

    def scrape(self, info_hashes: list[bytes]) -> dict[bytes, SwarmStats]:
        """The counts of ``info_hashes`` (all tracked torrents if empty), in that order."""
        now = self._clock()
        if not info_hashes:
            wanted = list(self._swarms)
        else:
            # Any valid info-hash gets an answer (zeros if unknown), except
            # one the allow-list leaves out.
            wanted = list(dict.fromkeys(info_hashes))
            if self._allowed is not None:
                wanted = [info_hash for info_hash in wanted if info_hash in self._allowed]
        files: dict[bytes, SwarmStats] = {}
        for info_hash in wanted:
            swarm = self._swarms.get(info_hash)
            if swarm is None:
                files[info_hash] = _NO_SWARM
                continue
            self._expire(swarm, now)
            files[info_hash] = swarm.stats()
        return files

    # ------------------------------------------------------------------ internals

    def _insert(self, swarm: _Swarm, key: _Key, peer: PeerEntry) -> None:
        swarm.peers[key] = peer
        swarm.seeders += peer.left == 0
        self._peer_count += 1

    def _remove(self, swarm: _Swarm, key: _Key) -> PeerEntry | None:
        peer = swarm.peers.pop(key, None)
        if peer is not None:
            swarm.seeders -= peer.left == 0
            self._peer_count -= 1
        return peer

    def _expire(self, swarm: _Swarm, now: float) -> None:
        deadline = now - 2 * self.interval
        while swarm.peers:
            key, oldest = next(iter(swarm.peers.items()))
            if oldest.last_seen >= deadline:
                break
            self._remove(swarm, key)

    def _swarm_for_announce(self, info_hash: bytes) -> _Swarm:
        swarm = self._swarms.get(info_hash)
        if swarm is not None:
            return swarm
        if self._allowed is not None:
            raise Refusal(NOT_ALLOWED)  # allowed torrents have their swarm from allow()
        if len(self._swarms) >= self.max_torrents:
            # Make room from torrents nobody is in any longer (their counts go).
            self.sweep()
            for empty in [h for h, s in self._swarms.items() if not s.peers]:
                del self._swarms[empty]
            if len(self._swarms) >= self.max_torrents:
                raise Refusal("this tracker tracks as many torrents as it can")
        swarm = self._swarms[info_hash] = _Swarm()
        return swarm
