"""How many peers have each piece, and the pieces we may start, rarest first.

Sans-IO, like the picker that owns it: counters and arrays in, orders out; the
only randomness is the ``random.Random`` the picker lends it.

This is libtorrent's bucketed layout. The *free* pieces (wanted, not ours and
not started) sit in one array per priority level, sorted by availability;
``bounds[a]`` is where the bucket of pieces seen by ``a`` peers starts. A peer's
``have`` swaps the piece with the last piece of its bucket and moves the
bucket's upper boundary down by one, so it is O(1) and the array stays sorted.
Picking rarest-first is then a scan from the front. Ties are broken by a
random initial order within buckets (which the swaps keep stirring).

Seeds (BEP 6 have-all, or a full bitfield the caller chooses to report as a
seed) are one counter: they have every piece, so they add the same amount to
every piece and cannot change the order.

Counts are kept for every piece, free or not; only free pieces are in the
arrays. A piece leaves them when the picker starts it or we get it, and comes
back (at a random place in its bucket) when the picker gives it up.
"""

from __future__ import annotations

import bisect
import operator
import random
from collections.abc import Callable, Iterator, Sequence
from itertools import compress

__all__ = ["DEFAULT_PRIORITY", "MAX_PRIORITY", "Availability", "Bits", "Level", "index_error"]

DEFAULT_PRIORITY = 4  # libtorrent's default, so a caller can go up or down
MAX_PRIORITY = 7

Bits = Sequence[int]
"""One item per piece, 1/True if the peer has it: ``bytes`` of 0/1, ``list[bool]``, ..."""

# Below this many set bits a bitfield is applied piece by piece; above it the
# counters are added in one C-level pass and the arrays are re-sorted lazily at
# the next pick (libtorrent's "dirty" picker): many peers connecting at once
# then cost one sort instead of millions of swaps.
_BULK_MIN = 64


def index_error(index: int, num_pieces: int) -> IndexError:
    """The error for a piece index out of range (the picker raises the same one)."""
    return IndexError(f"piece index {index} out of range 0..{num_pieces - 1}")


class Level:
    """Free pieces of one priority; bucket ``a`` is ``order[bounds[a]:bounds[a+1]]``."""

    __slots__ = ("order", "bounds")

    def __init__(self) -> None:
        self.order: list[int] = []
        self.bounds: list[int] = [0]  # bounds[-1] == len(order)


class Availability:
    """Per-piece peer counts, piece priorities, and the free pieces bucketed by both.

    Every piece starts free; the owner calls :meth:`discard` when a piece stops
    being free and :meth:`put_back` when it is free again. ``priority`` and
    ``levels`` are read-only outside: ``levels[p].order`` is the free pieces of
    priority ``p``, rarest first, read directly by the picker's hot loop.
    """

    def __init__(self, num_pieces: int, rng: random.Random) -> None:
        self.num_pieces = num_pieces
        self.priority = bytearray([DEFAULT_PRIORITY]) * num_pieces
        self.bulk_min = _BULK_MIN
        self._rng = rng
        self._avail = [0] * num_pieces  # peers with the piece, seeds excluded
        self._seeds = 0
        self._dirty = False  # _avail changed in bulk: levels not sorted until clean()
        self._pos = [-1] * num_pieces  # position in its level's order, -1 if not free
        self.levels = [Level() for _ in range(MAX_PRIORITY + 1)]
        self._cursor = 0  # no free piece below this index
        self._rebuild(list(range(num_pieces)))

    # -- peers ------------------------------------------------------------------

    def add_have(self, i: int) -> None:
        """A peer announced piece ``i``: O(1)."""
        if not 0 <= i < self.num_pieces:
            raise index_error(i, self.num_pieces)
        a = self._avail[i]
        pos = self._pos
        p = pos[i]
        if self._dirty or p < 0:
            self._avail[i] = a + 1
            return
        # swap i with the last piece of its bucket, then move the bucket's end down past it
        level = self.levels[self.priority[i]]
        order, bounds = level.order, level.bounds
        if len(bounds) == a + 2:  # i is in the top bucket: open an empty one above
            bounds.append(bounds[-1])
        last = bounds[a + 1] - 1
        j = order[last]
        order[last], order[p] = i, j
        pos[j], pos[i] = p, last
        bounds[a + 1] = last
        self._avail[i] = a + 1

    def add_peer(self, have: Bits) -> None:
        self._apply(have, operator.add)

    def remove_peer(self, have: Bits) -> None:
        self._apply(have, operator.sub)

    def add_seed(self) -> None:
        self._seeds += 1

    def remove_seed(self) -> None:
        if not self._seeds:
            raise ValueError("peer_lost(is_seed=True) with no seed connected")
        self._seeds -= 1

    def count(self, i: int) -> int:
        """Peers with piece ``i``, seeds included."""
        return self._avail[i] + self._seeds

    # -- free pieces ------------------------------------------------------------

    def discard(self, i: int) -> None:
        """Piece ``i`` is ours or started: out of the arrays, if it was in them."""
        pos = self._pos
        p = pos[i]
        if p < 0:
            return
        if self._dirty:
            self.clean()
            p = pos[i]
        level = self.levels[self.priority[i]]
        order, bounds = level.order, level.bounds
        # walk up: swap with the last of each bucket from a, moving its boundary down
        for c in range(self._avail[i] + 1, len(bounds)):
            last = bounds[c] - 1
            j = order[last]
            order[last], order[p] = i, j
            pos[j] = p
            p = last
            bounds[c] = last
        order.pop()
        pos[i] = -1
        while len(bounds) > 1 and bounds[-2] == bounds[-1]:
            bounds.pop()

    def put_back(self, i: int) -> None:
        """Piece ``i`` (not ours, not free) was given up: back in the arrays if wanted."""
        if self.priority[i]:
            self.clean()
            self._insert(i)

    def by_index(self, prio: int) -> Iterator[int]:
        """The free pieces of priority ``prio``, lowest index first."""
        pos, prios, n = self._pos, self.priority, self.num_pieces
        cur = self._cursor
        while cur < n and pos[cur] < 0:
            cur += 1
        self._cursor = cur
        return (i for i in range(cur, n) if pos[i] >= 0 and prios[i] == prio)

    def is_free(self, i: int) -> bool:
        """Whether piece ``i`` may be started: wanted, not ours, not started."""
        return self._pos[i] >= 0

    def first(self, sequential: bool, prefer: int | None = None) -> int | None:
        """Where a run of pieces in a row starts (a web seed's): ``prefer`` if it is free, else the
        start of the gap of free pieces around the piece :meth:`levels` would give first (highest
        priority, then rarest, or lowest index).  BEP 19: a web seed fills a gap from its start, so
        runs are long and do not cut gaps into pieces too small for one.
        """
        if prefer is not None and 0 <= prefer < self.num_pieces and self.is_free(prefer):
            return prefer
        self.clean()
        for prio in range(MAX_PRIORITY, 0, -1):
            if self.levels[prio].order:
                i = next(self.by_index(prio)) if sequential else self.levels[prio].order[0]
                while i > 0 and self._pos[i - 1] >= 0 and self.priority[i - 1] == prio:
                    i -= 1
                return i
        return None

    def has_free(self) -> bool:
        return any(level.order for level in self.levels)

    def set_priorities(self, priorities: Sequence[int], free: list[int]) -> None:
        """New priorities (validated here); ``free`` is every piece neither ours nor started."""
        if len(priorities) != self.num_pieces:
            raise ValueError(f"{len(priorities)} priorities for {self.num_pieces} pieces")
        if priorities and not 0 <= min(priorities) <= max(priorities) <= MAX_PRIORITY:
            raise ValueError(f"piece priorities must be in 0..{MAX_PRIORITY}")
        self.priority = bytearray(priorities)
        self._dirty = False
        self._rebuild(free)

    def clean(self) -> None:
        """Sort the arrays if bitfields were added in bulk since the last sort."""
        if self._dirty:
            self._dirty = False
            for level in self.levels:
                self._sort_level(level)

    # -- the buckets ------------------------------------------------------------

    def _dec(self, i: int) -> None:
        level = self.levels[self.priority[i]]
        order, bounds, pos = level.order, level.bounds, self._pos
        a = self._avail[i]
        first = bounds[a]
        j = order[first]
        order[first], order[pos[i]] = i, j
        pos[j], pos[i] = pos[i], first
        bounds[a] = first + 1
        self._avail[i] = a - 1
        while len(bounds) > 1 and bounds[-2] == bounds[-1]:
            bounds.pop()

    def _insert(self, i: int) -> None:
        level = self.levels[self.priority[i]]
        order, bounds, pos = level.order, level.bounds, self._pos
        a = self._avail[i]
        while len(bounds) < a + 2:
            bounds.append(bounds[-1])
        p = len(order)
        order.append(i)
        bounds[-1] += 1
        # walk down: swap with the first of each bucket above a, shrinking it
        for c in range(len(bounds) - 2, a, -1):
            first = bounds[c]
            j = order[first]
            order[first], order[p] = i, j
            pos[j] = p
            p = first
            bounds[c] = first + 1
        # land at a random place in the bucket, not always at its end
        r = self._rng.randint(bounds[a], p)
        j = order[r]
        order[r], order[p] = i, j
        pos[j], pos[i] = p, r
        self._cursor = min(self._cursor, i)

    def _apply(self, have: Bits, op: Callable[[int, int], int]) -> None:
        n = self.num_pieces
        if len(have) != n:
            raise ValueError(f"bitfield of {len(have)} items for {n} pieces")
        if self._dirty or sum(have) >= self.bulk_min:
            avail = list(map(op, self._avail, have))
            if avail and min(avail) < 0:
                raise ValueError("peer_lost for pieces no peer had")
            self._avail = avail
            self._dirty = True
            return
        indices = list(compress(range(n), have))
        if op is operator.add:
            for i in indices:
                self.add_have(i)
            return
        if any(self._avail[i] == 0 for i in indices):
            raise ValueError("peer_lost for pieces no peer had")
        for i in indices:
            if self._pos[i] < 0:
                self._avail[i] -= 1
            else:
                self._dec(i)

    def _rebuild(self, free: list[int]) -> None:
        """Refill the levels with ``free`` (wanted ones only) in a fresh random order."""
        self._rng.shuffle(free)
        self._pos = [-1] * self.num_pieces
        for level in self.levels:
            level.order = []
        prio = self.priority
        for i in free:
            if prio[i]:
                self.levels[prio[i]].order.append(i)
        for level in self.levels:
            self._sort_level(level)
        self._cursor = 0

    def _sort_level(self, level: Level) -> None:
        avail, pos = self._avail, self._pos
        order = level.order
        order.sort(key=avail.__getitem__)  # stable: ties keep their random order
        for p, i in enumerate(order):
            pos[i] = p
        top = avail[order[-1]] if order else -1
        level.bounds = [bisect.bisect_left(order, a, key=avail.__getitem__) for a in range(top + 1)]
        level.bounds.append(len(order))

    def check_invariants(self, is_free: Callable[[int], bool]) -> None:
        """Assert the arrays agree with the counts and with ``is_free`` (neither ours nor started)."""
        self.clean()
        seen: set[int] = set()
        for prio, level in enumerate(self.levels):
            order, bounds = level.order, level.bounds
            assert bounds[0] == 0 and bounds[-1] == len(order), (prio, bounds, len(order))
            assert all(x <= y for x, y in zip(bounds, bounds[1:])), bounds
            for a in range(len(bounds) - 1):
                for p in range(bounds[a], bounds[a + 1]):
                    assert self._avail[order[p]] == a, (prio, p, a)
            for p, i in enumerate(order):
                assert self._pos[i] == p and self.priority[i] == prio, (i, p, prio)
                assert is_free(i), i
                seen.add(i)
        for i in range(self.num_pieces):
            free = is_free(i) and self.priority[i] > 0
            assert (i in seen) == free, i
            assert (self._pos[i] >= 0) == free, i
            assert self._avail[i] >= 0
            assert i >= self._cursor or not free, (i, self._cursor)
        assert self._seeds >= 0 and len(self.priority) == len(self._avail) == self.num_pieces
