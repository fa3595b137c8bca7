"""The piece picker: which blocks to ask which peer for next.

Sans-IO: no sockets, no clock, no threads. The torrent driver feeds it events
(a peer's bitfield, a block that arrived, a request that timed out, a hash
that failed) and asks it for requests; every random choice comes from one
``random.Random(seed)``, so a run is reproducible under a seed.

Availability uses libtorrent's bucketed layout. The pieces we still want and
have not started sit in one array per priority level, sorted by availability;
``bounds[a]`` is where the bucket of pieces seen by ``a`` peers starts. A peer's
``have`` swaps the piece with the last piece of its bucket and moves the
bucket's upper boundary down by one, so it is O(1) and the array stays sorted.
Picking rarest-first is then a scan from the front. Ties are broken by a
random initial order within buckets (which the swaps keep stirring).

Seeds (BEP 6 have-all, or a full bitfield the caller chooses to report as a
seed) are one counter: they have every piece, so they add the same amount to
every piece and cannot change the order.

Pieces are downloaded in 16 KiB blocks. A piece leaves the availability array
when its first block is requested and becomes a *partial* piece with a state
per block (free / requested / received); it goes back only if every request
for it fails before anything arrived, or its hash fails.
"""

from __future__ import annotations

import bisect
import operator
import random
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress

from ..metainfo.layout import BLOCK_SIZE

__all__ = [
    "DEFAULT_PRIORITY",
    "MAX_PRIORITY",
    "Bits",
    "Block",
    "PeerHas",
    "PiecePicker",
]

DEFAULT_PRIORITY = 4  # libtorrent's default, so a caller can go up or down
MAX_PRIORITY = 7

Bits = Sequence[int]
"""One item per piece, 1/True if the peer has it: ``bytes`` of 0/1, ``list[bool]``, ..."""
PeerHas = Callable[[int], object] | Bits

_FREE, _REQUESTED, _RECEIVED = 0, 1, 2

# Below this many set bits a bitfield is applied piece by piece; above it the
# counters are added in one C-level pass and the arrays are re-sorted lazily at
# the next pick (libtorrent's "dirty" picker): many peers connecting at once
# then cost one sort instead of millions of swaps.
_BULK_MIN = 64

@dataclass(frozen=True, slots=True)
class Block:
    index: int
    begin: int
    length: int


class _Piece:
    """A started piece: per-block state and who has each requested block."""

    __slots__ = ("index", "state", "requesters", "unrequested", "received", "peers")

    def __init__(self, index: int, nblocks: int) -> None:
        self.index = index
        self.state = bytearray(nblocks)  # _FREE / _REQUESTED / _RECEIVED
        self.requesters: dict[int, list[Hashable]] = {}  # only blocks in _REQUESTED
        self.unrequested = nblocks
        self.received = 0
        self.peers: set[Hashable] = set()  # peers handed a block of it: they finish it first


class _Level:
    """Free pieces of one priority; bucket ``a`` is ``order[bounds[a]:bounds[a+1]]``."""

    __slots__ = ("order", "bounds")

    def __init__(self) -> None:
        self.order: list[int] = []
        self.bounds: list[int] = [0]  # bounds[-1] == len(order)


class PiecePicker:
    """Decides which blocks to request, rarest first, and tracks them until hashed.

    Priorities are per piece, 0 (skip) to ``MAX_PRIORITY``. The caller maps
    file priorities to pieces; a piece that straddles a wanted and an unwanted
    file must be given the wanted (highest) priority, or the wanted file can
    never complete.

    Availability and requests are separate: when a peer disconnects call both
    :meth:`peer_lost` (its pieces) and :meth:`on_peer_gone` (its requests).
    """

    def __init__(self, num_pieces: int, piece_length: int, total_length: int, *, seed: int | None = None) -> None:
        if piece_length <= 0 or total_length < 0:
            raise ValueError("piece_length must be positive and total_length not negative")
        if num_pieces != -(-total_length // piece_length):
            raise ValueError(f"{num_pieces} pieces of {piece_length} bytes cannot hold {total_length} bytes")
        self.num_pieces = num_pieces
        self.piece_length = piece_length
        self.total_length = total_length
        self._last_length = total_length - piece_length * (num_pieces - 1) if num_pieces else 0
        self._rng = random.Random(seed)
        self._bulk_min = _BULK_MIN
        self._have = bytearray(num_pieces)
        self._num_have = 0
        self._prio = bytearray([DEFAULT_PRIORITY]) * num_pieces
        self._wanted_missing = num_pieces  # pieces with priority > 0 that we lack
        self._avail = [0] * num_pieces  # peers with the piece, seeds excluded
        self._seeds = 0
        self._dirty = False  # _avail changed in bulk: levels not sorted until _clean()
        self._pos = [-1] * num_pieces  # position in its level's order, -1 if not free
        self._levels = [_Level() for _ in range(MAX_PRIORITY + 1)]
        self._partial: dict[int, _Piece] = {}
        self._open: dict[int, None] = {}  # partial pieces with unrequested blocks, oldest first
        self._outstanding: dict[Hashable, set[tuple[int, int]]] = {}  # peer -> {(piece, block)}
        self._sequential = False
        self._seq_cursor = 0  # no free piece below this index
        self._rebuild_levels(list(range(num_pieces)))

    # -- our own pieces -------------------------------------------------

    def we_have(self, index: int) -> None:
        """The piece is verified and on disk (after a hash check, or from resume data)."""
        self._check_index(index)
        if self._have[index]:
            return
        self._have[index] = 1
        self._num_have += 1
        if self._prio[index]:
            self._wanted_missing -= 1
        piece = self._partial.pop(index, None)
        if piece is not None:
            self._open.pop(index, None)
            self._forget_requests(piece)
        elif self._pos[index] >= 0:
            self._clean()
            self._remove(index)

    def has(self, index: int) -> bool:
        self._check_index(index)
        return bool(self._have[index])

    def num_have(self) -> int:
        return self._num_have

    def is_finished(self) -> bool:
        return self._wanted_missing == 0

    # -- availability -----------------------------------------------------

    def peer_have(self, index: int) -> None:
        """A peer announced ``index``: O(1)."""
        self._check_index(index)
        if self._dirty or self._pos[index] < 0:
            self._avail[index] += 1
        else:
            self._inc(index)

    def peer_bitfield(self, have: Bits) -> None:
        """A peer's pieces, one 0/1 item per piece (see :func:`~pyowtorrent.wire.bitfield.bitfield_flags`).

        A peer whose bitfield is full is better reported with
        :meth:`peer_have_all`: it then costs nothing here.
        """
        self._apply(have, operator.add)

    def peer_have_all(self) -> None:
        """A seed (BEP 6 have-all): counted once, not per piece."""
        self._seeds += 1

    def peer_lost(self, have: Bits | None, is_seed: bool = False) -> None:
        """Forget a peer's pieces; ``have`` is everything it had (ignored for a seed)."""
        if is_seed:
            if not self._seeds:
                raise ValueError("peer_lost(is_seed=True) with no seed connected")
            self._seeds -= 1
        elif have is not None:
            self._apply(have, operator.sub)

    def availability(self, index: int) -> int:
        self._check_index(index)
        return self._avail[index] + self._seeds

    # -- policy -------------------------------------------------------------

    def set_piece_priorities(self, priorities: Sequence[int]) -> None:
        """Set every piece's priority (0 = don't download, up to ``MAX_PRIORITY``).

        A piece shared by files of different priorities must get the highest
        of them; that mapping is the caller's.
        """
        if len(priorities) != self.num_pieces:
            raise ValueError(f"{len(priorities)} priorities for {self.num_pieces} pieces")
        if priorities and not 0 <= min(priorities) <= max(priorities) <= MAX_PRIORITY:
            raise ValueError(f"piece priorities must be in 0..{MAX_PRIORITY}")
        self._prio = bytearray(priorities)
        self._wanted_missing = sum(1 for p, h in zip(self._prio, self._have) if p and not h)
        self._dirty = False
        free = [i for i in range(self.num_pieces) if not self._have[i] and i not in self._partial]
        self._rebuild_levels(free)

    def set_sequential(self, on: bool) -> None:
        """Lowest index first instead of rarest first (priorities still come first)."""
        self._sequential = on
        self._seq_cursor = 0

    # -- requests -------------------------------------------------------------

    def pick(self, peer: Hashable, peer_has: PeerHas, count: int) -> list[Block]:
        """Up to ``count`` blocks to request from ``peer``; they are recorded as requested.

        Order: blocks left in started pieces (this peer's own first), then new
        pieces by priority and rarity (or index, in sequential mode), then in
        end-game blocks already requested from other peers.
        """
        if count <= 0:
            return []
        has: Callable[[int], object] = peer_has if callable(peer_has) else peer_has.__getitem__
        self._clean()
        out: list[Block] = []
        if self._open:
            self._pick_partial(peer, has, count, out)
        if len(out) < count:
            self._pick_free(peer, has, count, out)
        if len(out) < count and self.in_endgame():
            self._pick_endgame(peer, has, count, out)
        return out

    def on_block_received(self, peer: Hashable, block: Block) -> tuple[bool, list[Hashable]]:
        """Record a block's arrival.

        Returns whether its piece is now complete (hash it, then call
        :meth:`on_piece_passed` or :meth:`on_piece_failed`) and the other peers
        that still have a request out for the same block, to send Cancel to.
        A duplicate, unwanted or malformed block changes nothing and returns
        ``(False, [])``; :meth:`wants_block` tells beforehand.
        """
        if not self.wants_block(block):
            return False, []
        index, bno = block.index, block.begin // BLOCK_SIZE
        piece = self._partial.get(index)
        if piece is None:  # unrequested but welcome: start the piece
            self._clean()
            piece = self._start(index)
        requesters = piece.requesters.pop(bno, [])
        if piece.state[bno] == _FREE:
            piece.unrequested -= 1
            if not piece.unrequested:
                self._open.pop(index, None)
        piece.state[bno] = _RECEIVED
        piece.received += 1
        cancel: list[Hashable] = []
        for q in requesters:
            self._outstanding[q].discard((index, bno))
            if q != peer:
                cancel.append(q)
        return piece.received == len(piece.state), cancel

    def wants_block(self, block: Block) -> bool:
        """True if ``block`` is a well-formed block we lack and have not received yet."""
        index = block.index
        if not 0 <= index < self.num_pieces or self._have[index]:
            return False
        size = self._piece_size(index)
        begin = block.begin
        if begin < 0 or begin % BLOCK_SIZE or begin >= size or block.length != min(BLOCK_SIZE, size - begin):
            return False
        piece = self._partial.get(index)
        if piece is None:
            return bool(self._prio[index])
        return piece.state[begin // BLOCK_SIZE] != _RECEIVED

    def on_request_failed(self, peer: Hashable, block: Block) -> None:
        """A request was rejected, timed out, or lost to a choke: the block is free again."""
        key = (block.index, block.begin // BLOCK_SIZE)
        out = self._outstanding.get(peer)
        if out is None or key not in out or block.begin % BLOCK_SIZE:
            return
        out.remove(key)
        self._drop_request(peer, *key)

    def on_peer_gone(self, peer: Hashable) -> None:
        """Every request still out to ``peer`` goes back to the pool."""
        out = self._outstanding.pop(peer, None)
        for index, bno in sorted(out or ()):
            self._drop_request(peer, index, bno)
        for piece in self._partial.values():
            piece.peers.discard(peer)

    def num_outstanding(self, peer: Hashable) -> int:
        """Requests out to ``peer``: lets the caller keep its queue topped up."""
        return len(self._outstanding.get(peer, ()))

    def on_piece_passed(self, index: int) -> None:
        """The complete piece hashed correctly and is written."""
        self.we_have(index)

    def on_piece_failed(self, index: int) -> None:
        """Hash check failed: every block of the piece must be downloaded again."""
        self._check_index(index)
        piece = self._partial.pop(index, None)
        if piece is None:
            return
        self._open.pop(index, None)
        self._forget_requests(piece)
        if self._prio[index] and not self._have[index]:
            self._clean()
            self._insert(index)

    def in_endgame(self) -> bool:
        """Every wanted block we lack is requested or received (and some are missing)."""
        if self._wanted_missing == 0 or any(level.order for level in self._levels):
            return False
        return not any(self._prio[i] for i in self._open)

    # -- picking --------------------------------------------------------------

    def _pick_partial(self, peer: Hashable, has: Callable[[int], object], count: int, out: list[Block]) -> None:
        prio = self._prio
        cands = [i for i in self._open if prio[i] and has(i)]
        if self._sequential:
            cands.sort(key=lambda i: (-prio[i], i))
        else:  # stable: the oldest piece first among equals
            cands.sort(key=lambda i: (-prio[i], peer not in self._partial[i].peers))
        for i in cands:
            self._request_blocks(self._partial[i], peer, count - len(out), out)
            if len(out) >= count:
                return

    def _pick_free(self, peer: Hashable, has: Callable[[int], object], count: int, out: list[Block]) -> None:
        need = count - len(out)
        for prio in range(MAX_PRIORITY, 0, -1):
            level = self._levels[prio]
            if not level.order:
                continue
            chosen: list[int] = []
            candidates: Iterable[int] = self._sequential_candidates(prio) if self._sequential else level.order
            for i in candidates:
                if has(i):
                    chosen.append(i)
                    need -= self._num_blocks(i)
                    if need <= 0:
                        break
            # started after the scan: starting a piece moves others in the array
            for i in chosen:
                self._request_blocks(self._start(i), peer, count - len(out), out)
            if need <= 0:
                return

    def _sequential_candidates(self, prio: int) -> Iterator[int]:
        pos, prios, n = self._pos, self._prio, self.num_pieces
        cur = self._seq_cursor
        while cur < n and pos[cur] < 0:
            cur += 1
        self._seq_cursor = cur
        return (i for i in range(cur, n) if pos[i] >= 0 and prios[i] == prio)

    def _pick_endgame(self, peer: Hashable, has: Callable[[int], object], count: int, out: list[Block]) -> None:
        cands: list[tuple[int, int, int]] = []
        for index, piece in self._partial.items():
            if not self._prio[index] or not has(index):
                continue
            for bno, reqs in piece.requesters.items():
                if peer not in reqs:
                    cands.append((len(reqs), index, bno))
        cands.sort()  # least duplicated first, so the extra requests spread out
        mine = self._outstanding.setdefault(peer, set())
        for _, index, bno in cands[: count - len(out)]:
            piece = self._partial[index]
            piece.requesters[bno].append(peer)
            piece.peers.add(peer)
            mine.add((index, bno))
            out.append(self._block(index, bno))

    def _request_blocks(self, piece: _Piece, peer: Hashable, n: int, out: list[Block]) -> None:
        state, index, requesters = piece.state, piece.index, piece.requesters
        size = self._piece_size(index)
        mine = self._outstanding.setdefault(peer, set())
        taken = 0
        bno = state.find(_FREE)
        while bno >= 0 and taken < n:
            state[bno] = _REQUESTED
            requesters[bno] = [peer]
            mine.add((index, bno))
            begin = bno * BLOCK_SIZE
            out.append(Block(index, begin, BLOCK_SIZE if begin + BLOCK_SIZE <= size else size - begin))
            taken += 1
            bno = state.find(_FREE, bno + 1)
        if taken:
            piece.peers.add(peer)
            piece.unrequested -= taken
            if not piece.unrequested:
                self._open.pop(index, None)

    def _start(self, index: int) -> _Piece:
        if self._pos[index] >= 0:
            self._remove(index)
        piece = self._partial[index] = _Piece(index, self._num_blocks(index))
        self._open[index] = None
        return piece

    def _drop_request(self, peer: Hashable, index: int, bno: int) -> None:
        piece = self._partial[index]
        reqs = piece.requesters[bno]
        reqs.remove(peer)
        if reqs:
            return
        del piece.requesters[bno]
        piece.state[bno] = _FREE
        piece.unrequested += 1
        self._open[index] = None
        if not piece.received and not piece.requesters:
            # nothing of it is here or on the way: back to the rarity order
            del self._partial[index]
            del self._open[index]
            if self._prio[index]:
                self._clean()
                self._insert(index)

    def _forget_requests(self, piece: _Piece) -> None:
        for bno, reqs in piece.requesters.items():
            for q in reqs:
                self._outstanding[q].discard((piece.index, bno))

    # -- the bucketed availability array ---------------------------------------

    def _inc(self, i: int) -> None:
        level = self._levels[self._prio[i]]
        order, bounds, pos = level.order, level.bounds, self._pos
        a = self._avail[i]
        if len(bounds) == a + 2:  # i is in the top bucket: open an empty one above
            bounds.append(bounds[-1])
        last = bounds[a + 1] - 1
        j = order[last]
        order[last], order[pos[i]] = i, j
        pos[j], pos[i] = pos[i], last
        bounds[a + 1] = last
        self._avail[i] = a + 1

    def _dec(self, i: int) -> None:
        level = self._levels[self._prio[i]]
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
        level = self._levels[self._prio[i]]
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
        self._seq_cursor = min(self._seq_cursor, i)

    def _remove(self, i: int) -> None:
        level = self._levels[self._prio[i]]
        order, bounds, pos = level.order, level.bounds, self._pos
        p = pos[i]
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

    def _apply(self, have: Bits, op: Callable[[int, int], int]) -> None:
        n = self.num_pieces
        if len(have) != n:
            raise ValueError(f"bitfield of {len(have)} items for {n} pieces")
        if self._dirty or sum(have) >= self._bulk_min:
            avail = list(map(op, self._avail, have))
            if avail and min(avail) < 0:
                raise ValueError("peer_lost for pieces no peer had")
            self._avail = avail
            self._dirty = True
            return
        indices = list(compress(range(n), have))
        if op is operator.add:
            for i in indices:
                self.peer_have(i)
            return
        if any(self._avail[i] == 0 for i in indices):
            raise ValueError("peer_lost for pieces no peer had")
        for i in indices:
            if self._pos[i] < 0:
                self._avail[i] -= 1
            else:
                self._dec(i)

    def _clean(self) -> None:
        if self._dirty:
            self._dirty = False
            for level in self._levels:
                self._sort_level(level)

    def _rebuild_levels(self, free: list[int]) -> None:
        """Refill the levels with ``free`` (wanted ones only) in a fresh random order."""
        self._rng.shuffle(free)
        for level in self._levels:
            level.order = []
        for i in self._partial:
            self._pos[i] = -1
        prio = self._prio
        for i in free:
            self._pos[i] = -1
            if prio[i]:
                self._levels[prio[i]].order.append(i)
        for level in self._levels:
            self._sort_level(level)
        self._seq_cursor = 0

    def _sort_level(self, level: _Level) -> None:
        avail, pos = self._avail, self._pos
        order = level.order
        order.sort(key=avail.__getitem__)  # stable: ties keep their random order
        for p, i in enumerate(order):
            pos[i] = p
        top = avail[order[-1]] if order else -1
        level.bounds = [bisect.bisect_left(order, a, key=avail.__getitem__) for a in range(top + 1)]
        level.bounds.append(len(order))

    # -- small helpers ----------------------------------------------------------

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_pieces:
            raise IndexError(f"piece index {index} out of range 0..{self.num_pieces - 1}")

    def _piece_size(self, index: int) -> int:
        return self._last_length if index == self.num_pieces - 1 else self.piece_length

    def _num_blocks(self, index: int) -> int:
        return -(-self._piece_size(index) // BLOCK_SIZE)

    def _block(self, index: int, bno: int) -> Block:
        begin = bno * BLOCK_SIZE
        return Block(index, begin, min(BLOCK_SIZE, self._piece_size(index) - begin))

    def _check_invariants(self) -> None:
        """Assert the internal structures agree with each other (for tests)."""
        self._clean()
        seen: set[int] = set()
        for prio, level in enumerate(self._levels):
            order, bounds = level.order, level.bounds
            assert bounds[0] == 0 and bounds[-1] == len(order), (prio, bounds, len(order))
            assert all(x <= y for x, y in zip(bounds, bounds[1:])), bounds
            for a in range(len(bounds) - 1):
                for p in range(bounds[a], bounds[a + 1]):
                    assert self._avail[order[p]] == a, (prio, p, a)
            for p, i in enumerate(order):
                assert self._pos[i] == p and self._prio[i] == prio, (i, p, prio)
                assert not self._have[i] and i not in self._partial, i
                seen.add(i)
        for i in range(self.num_pieces):
            free = not self._have[i] and i not in self._partial and self._prio[i] > 0
            assert (i in seen) == free, i
            assert (self._pos[i] >= 0) == free, i
            assert self._avail[i] >= 0
        wanted_missing = sum(1 for i in range(self.num_pieces) if self._prio[i] and not self._have[i])
        assert self._wanted_missing == wanted_missing
        assert self._num_have == sum(self._have)
        requested: set[tuple[Hashable, int, int]] = set()
        for index, piece in self._partial.items():
            assert not self._have[index]
            st = piece.state
            assert piece.unrequested == st.count(_FREE) and piece.received == st.count(_RECEIVED)
            assert (index in self._open) == (piece.unrequested > 0), index
            assert set(piece.requesters) == {b for b, s in enumerate(st) if s == _REQUESTED}
            assert piece.received or piece.requesters, index
            for bno, reqs in piece.requesters.items():
                assert reqs and len(set(reqs)) == len(reqs), (index, bno, reqs)
                requested.update((q, index, bno) for q in reqs)
        assert set(self._open) <= set(self._partial)
        assert requested == {(q, i, b) for q, out in self._outstanding.items() for i, b in out}
