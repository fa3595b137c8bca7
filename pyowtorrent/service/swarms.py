"""The embedded tracker's memory: which peers each torrent has, their expiry, and the limits.

No HTTP and no event loop here: :class:`SwarmRegistry` takes announces and
scrapes already parsed (an info-hash, a peer id, the address the request came
from) and returns what to answer; the clock and the RNG are injected.  The
rules it keeps (a peer is its peer id *and* its address, expiry after two
intervals, the BEP 3 events, the bounds and how one host is kept from taking
them all) are written out in :mod:`pyowtorrent.service.tracker`, the module
users read.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from .holdings import Holder, Holdings, holder_of

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

# A full table first drops expired peers, with a pass over every torrent; a
# flood of announces at a full table would make that pass on each request,
# so it is made at most this often (seconds, by the injected clock).  The
# periodic sweep and the per-torrent expiry on each request do the rest.
_SWEEP_WHEN_FULL_EVERY: Final = 10.0

# An answer draws this many entries more than it needs, in case some carry the
# asker's own peer id (its other addresses); only if that leaves too few does
# it make a pass over the whole torrent.
_SPARE_DRAWS: Final = 2


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


def _key(peer: PeerEntry) -> _Key:
    return peer.peer_id, peer.address


class _Swarm:
    """One torrent's entries: in announce order (for expiry), at random (for answers), by holder."""

    __slots__ = ("info_hash", "order", "entries", "by_holder", "seeders", "downloaded")

    def __init__(self, info_hash: bytes) -> None:
        self.info_hash = info_hash
        # Key -> the entry's index in ``entries``.  Insertion order is
        # last-announce order (an announce re-inserts), so the oldest entries
        # come first and expiry pops from the front.
        self.order: dict[_Key, int] = {}
        # The entries in no particular order: a random one is an index away.
        self.entries: list[PeerEntry] = []
        # Each holder's keys, oldest first (the per-address cap).
        self.by_holder: dict[Holder, dict[_Key, None]] = {}
        self.seeders = 0
        self.downloaded = 0

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: _Key) -> PeerEntry | None:
        index = self.order.get(key)
        return None if index is None else self.entries[index]

    def oldest(self) -> PeerEntry | None:
        return self.entries[next(iter(self.order.values()))] if self.order else None

    def in_order(self) -> list[PeerEntry]:
        """The entries, least recently announced first."""
        return [self.entries[index] for index in self.order.values()]

    def only_holder(self) -> Holder | None:
        """The holder of every entry, if there is exactly one."""
        return next(iter(self.by_holder)) if len(self.by_holder) == 1 else None

    def add(self, key: _Key, holder: Holder, peer: PeerEntry) -> None:
        self.order[key] = len(self.entries)
        self.entries.append(peer)
        self.by_holder.setdefault(holder, {})[key] = None
        self.seeders += peer.left == 0

    def pop(self, key: _Key, holder: Holder) -> PeerEntry | None:
        index = self.order.pop(key, None)
        if index is None:
            return None
        peer = self.entries[index]
        last = self.entries.pop()
        if index < len(self.entries):  # the last entry fills the hole
            self.entries[index] = last
            self.order[_key(last)] = index  # an existing key: its place in the order stays
        mine = self.by_holder[holder]
        del mine[key]
        if not mine:
            del self.by_holder[holder]
        self.seeders -= peer.left == 0
        return peer

    def random_entry(self, rng: random.Random) -> PeerEntry:
        return self.entries[rng.randrange(len(self.entries))]

    def sample(self, rng: random.Random, k: int, asker: bytes) -> list[PeerEntry]:
        """Up to ``k`` entries drawn at random, none with the peer id ``asker``."""
        n = len(self.entries)
        if k <= 0 or n == 0:
            return []
        drawn = [self.entries[i] for i in rng.sample(range(n), min(n, k + _SPARE_DRAWS))]
        chosen = [peer for peer in drawn if peer.peer_id != asker]
        if len(chosen) >= k or len(drawn) == n:
            return chosen[:k]
        others = [peer for peer in self.entries if peer.peer_id != asker]
        return rng.sample(others, min(k, len(others)))

    def stats(self) -> SwarmStats:
        return SwarmStats(self.seeders, len(self.entries) - self.seeders, self.downloaded)


class SwarmRegistry:
    """The swarms of one tracker, bounded: see :class:`~pyowtorrent.service.tracker.Tracker`.

    ``interval``: seconds; a peer silent for ``2 * interval`` is dropped.
    ``clock``: seconds, read on each call that may expire peers.  ``rng``:
    which entry a full torrent sheds, which peers an answer gets.  The bounds
    must be positive (the tracker checks its arguments before building one).
    """

    def __init__(
        self,
        *,
        interval: int,
        clock: Callable[[], float],
        allowed_info_hashes: Iterable[bytes] | None,
        max_peers_per_torrent: int,
        max_peers_per_address: int,
        max_torrents: int,
        max_torrents_per_address: int,
        max_peers: int,
        rng: random.Random | None = None,
    ) -> None:
        self.interval = interval
        self.max_peers_per_torrent = max_peers_per_torrent
        self.max_peers_per_address = max_peers_per_address
        self.max_torrents = max_torrents
        self.max_torrents_per_address = max_torrents_per_address
        self.max_peers = max_peers
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._allowed: set[bytes] | None = None
        self._swarms: dict[bytes, _Swarm] = {}
        self._peer_count = 0
        # Every entry, by holder: who to take one from when the peer table is full.
        self._entries: Holdings[tuple[bytes, _Key]] = Holdings()
        # The torrents whose every entry has one holder: who started too many,
        # and which torrent to drop when the torrent table is full.
        self._alone: Holdings[bytes] = Holdings()
        # Torrents with no entries, the longest empty first: dropped first.
        self._empty: dict[bytes, None] = {}
        self._next_sweep_when_full = -math.inf
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
        if info_hash not in self._swarms:
            self._new_swarm(info_hash)

    def disallow(self, info_hash: bytes) -> None:
        if self._allowed is not None:
            self._allowed.discard(info_hash)
        self._drop(info_hash)

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
            for peer in swarm.in_order()
        ]

    def sweep(self) -> None:
        self._sweep(self._clock())

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
        tracker holds as many torrents or peers as it may and nobody holds
        more of them than the announcing host.
        """
        now = self._clock()
        key: _Key = (peer_id, address)
        holder = holder_of(address)
        if event == "stopped":
            swarm = self._swarms.get(info_hash)
            if swarm is None:
                if self._allowed is not None:
                    raise Refusal(NOT_ALLOWED)
                return _NO_SWARM, []  # a stopped peer does not make a torrent
            self._expire(swarm, now)
            self._remove(swarm, key)
            return swarm.stats(), []

        swarm = self._swarm_for_announce(info_hash, holder, now)
        self._expire(swarm, now)
        previous = self._remove(swarm, key)
        if previous is None:  # a new entry: make room for it
            self._make_room_in(swarm, holder)
            self._make_room_for_peer(holder, now)
        completed = previous is not None and previous.completed
        if event == "completed" and not completed:
            swarm.downloaded += 1
            completed = True
        compact_address = address.packed + port.to_bytes(2, "big")
        self._insert(swarm, key, PeerEntry(peer_id, address, port, left, now, completed, compact_address))
        return swarm.stats(), swarm.sample(self._rng, numwant, peer_id)

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

    # ------------------------------------------------------------------- limits

    def _swarm_for_announce(self, info_hash: bytes, holder: Holder, now: float) -> _Swarm:
        swarm = self._swarms.get(info_hash)
        if swarm is not None:
            return swarm
        if self._allowed is not None:
            raise Refusal(NOT_ALLOWED)  # allowed torrents have their swarm from allow()
        if self._alone.count(holder) >= self.max_torrents_per_address:
            raise Refusal(f"this address is alone in {self.max_torrents_per_address} torrents: no more torrents")
        if len(self._swarms) >= self.max_torrents:
            self._make_room_for_torrent(holder, now)
        return self._new_swarm(info_hash)

    def _make_room_for_torrent(self, holder: Holder, now: float) -> None:
        """Drop a torrent nobody is in, else one of the host alone in the most; or refuse."""
        self._sweep_when_full(now)
        if self._empty:
            self._drop(next(iter(self._empty)))
            return
        victim = self._alone.shed_for(holder)
        if victim is None:
            raise Refusal("this tracker tracks as many torrents as it can")
        self._drop(victim)

    def _make_room_in(self, swarm: _Swarm, holder: Holder) -> None:
        """Room for one more entry of ``holder`` in ``swarm``: its own oldest goes, or a random one."""
        mine = swarm.by_holder.get(holder)
        if mine is not None and len(mine) >= self.max_peers_per_address:
            self._remove(swarm, next(iter(mine)))
        elif len(swarm) >= self.max_peers_per_torrent:
            # At random, not the oldest: flooding a torrent with new entries
            # must not flush out the peers that were there first.
            self._remove(swarm, _key(swarm.random_entry(self._rng)))

    def _make_room_for_peer(self, holder: Holder, now: float) -> None:
        """Room for one more entry in all: an entry of the host holding the most goes, or refuse."""
        if self._peer_count < self.max_peers:
            return
        self._sweep_when_full(now)
        if self._peer_count < self.max_peers:
            return
        victim = self._entries.shed_for(holder)
        if victim is None:
            raise Refusal("this tracker tracks as many peers as it can")
        info_hash, key = victim
        self._remove(self._swarms[info_hash], key)

    def _sweep_when_full(self, now: float) -> None:
        if now >= self._next_sweep_when_full:
            self._next_sweep_when_full = now + _SWEEP_WHEN_FULL_EVERY
            self._sweep(now)

    # ---------------------------------------------------------------- internals

    def _new_swarm(self, info_hash: bytes) -> _Swarm:
        swarm = self._swarms[info_hash] = _Swarm(info_hash)
        self._empty[info_hash] = None
        return swarm

    def _drop(self, info_hash: bytes) -> None:
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            return
        for key in list(swarm.order):
            self._remove(swarm, key)
        del self._swarms[info_hash]
        del self._empty[info_hash]

    def _insert(self, swarm: _Swarm, key: _Key, peer: PeerEntry) -> None:
        holder = holder_of(key[1])
        alone_before = swarm.only_holder()
        swarm.add(key, holder, peer)
        self._peer_count += 1
        self._entries.add(holder, (swarm.info_hash, key))
        self._empty.pop(swarm.info_hash, None)
        self._note_alone(swarm, alone_before)

    def _remove(self, swarm: _Swarm, key: _Key) -> PeerEntry | None:
        holder = holder_of(key[1])
        alone_before = swarm.only_holder()
        peer = swarm.pop(key, holder)
        if peer is None:
            return None
        self._peer_count -= 1
        self._entries.discard(holder, (swarm.info_hash, key))
        if not swarm:
            self._empty[swarm.info_hash] = None
        self._note_alone(swarm, alone_before)
        return peer

    def _note_alone(self, swarm: _Swarm, before: Holder | None) -> None:
        after = swarm.only_holder()
        if before == after:
            return
        if before is not None:
            self._alone.discard(before, swarm.info_hash)
        if after is not None:
            self._alone.add(after, swarm.info_hash)

    def _expire(self, swarm: _Swarm, now: float) -> None:
        deadline = now - 2 * self.interval
        while (oldest := swarm.oldest()) is not None and oldest.last_seen < deadline:
            self._remove(swarm, _key(oldest))

    def _sweep(self, now: float) -> None:
        for swarm in self._swarms.values():
            self._expire(swarm, now)
