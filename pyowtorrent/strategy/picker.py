"""The piece picker: which blocks to ask which peer for next.

Sans-IO: no sockets, no clock, no threads. The torrent driver feeds it events
(a peer's bitfield, a block that arrived, a request that timed out, a hash
that failed) and asks it for requests; every random choice comes from one
``random.Random(seed)``, so a run is reproducible under a seed.

Which piece to start next comes from :class:`~.availability.Availability`:
libtorrent's availability-ordered buckets, explained there, which also hold the
piece priorities. This module keeps everything from the moment a piece is
started, and our own pieces.

Pieces are downloaded in 16 KiB blocks. A piece leaves the availability array
when its first block is requested and becomes a *partial* piece with a state
per block (free / requested / received); it goes back only if every request
for it fails before anything arrived, or its hash fails. In end-game (no free
piece left, every missing block requested) a peer may be asked for blocks
another peer has out while it has fewer than :data:`ENDGAME_DEPTH` requests
out in all; the first copy to arrive names the others to cancel.

A source that serves byte ranges (a BEP 19 web seed) asks :meth:`PiecePicker.pick_run`
instead: blocks in a row, whole new pieces from the start of a gap of free
pieces onwards, so one HTTP request fetches several pieces and a piece is never
split between it and a peer outside end-game.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import NamedTuple

from ..metainfo.layout import BLOCK_SIZE
from .availability import DEFAULT_PRIORITY, MAX_PRIORITY, Availability, Bits, index_error

__all__ = [
    "DEFAULT_PRIORITY",
    "ENDGAME_DEPTH",
    "MAX_PRIORITY",
    "Bits",
    "Block",
    "PeerHas",
    "PiecePicker",
    "check_invariants",
]

PeerHas = Callable[[int], object] | Bits

_FREE, _REQUESTED, _RECEIVED = 0, 1, 2
# In end-game a peer is asked for blocks others have out only while it has fewer than this out
# (libtorrent's strict end-game: one, to an idle peer).  A few cover a peer that holds requests and
# never answers them; a whole queue of duplicates per peer wasted 2-30% of fast downloads.
ENDGAME_DEPTH = 4


class Block(NamedTuple):
    """A block: ``length`` bytes at ``begin`` in piece ``index``.  A tuple, because a leecher makes,
    hashes and compares one per 16 KiB received: a frozen dataclass did each in Python code."""

    index: int  # type: ignore[assignment]  # hides tuple.index(), which no one asks of a block
    begin: int
    length: int


class _Piece:
    """A started piece: per-block state and who has each requested block."""

    __slots__ = ("index", "size", "state", "requesters", "unrequested", "received", "peers")

    def __init__(self, index: int, size: int) -> None:
        nblocks = -(-size // BLOCK_SIZE)
        self.index = index
        self.size = size
        self.state = bytearray(nblocks)  # _FREE / _REQUESTED / _RECEIVED
        self.requesters: dict[int, list[Hashable]] = {}  # only blocks in _REQUESTED
        self.unrequested = nblocks
        self.received = 0
        self.peers: set[Hashable] = set()  # peers handed a block of it: they finish it first

    def request(self, peer: Hashable, n: int, mine: set[tuple[int, int]], out: list[Block]) -> None:
        """Hand up to ``n`` free blocks to ``peer``: into ``out``, and ``mine`` (its requests)."""
        state, index, requesters, size = self.state, self.index, self.requesters, self.size
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
            self.peers.add(peer)
            self.unrequested -= taken

    def request_run(self, peer: Hashable, n: int, mine: set[tuple[int, int]], out: list[Block], endgame: bool) -> bool:
        """Hand ``peer`` up to ``n`` blocks in a row, from the first it may take: free ones, and in
        end-game ones others have out.  True if the run took the piece's last block (it may go on)."""
        state, requesters, nblocks = self.state, self.requesters, len(self.state)

        def takeable(b: int) -> bool:
            return state[b] == _FREE or (endgame and state[b] == _REQUESTED and peer not in requesters[b])

        first = bno = next((b for b in range(nblocks) if takeable(b)), nblocks)
        while bno < nblocks and bno - first < n and takeable(bno):
            if state[bno] == _FREE:
                state[bno] = _REQUESTED
                requesters[bno] = [peer]
                self.unrequested -= 1
            else:
                requesters[bno].append(peer)
            mine.add((self.index, bno))
            out.append(self.block(bno))
            bno += 1
        if bno > first:
            self.peers.add(peer)
        return bno > first and bno == nblocks

    def release(self, peer: Hashable, bno: int) -> bool:
        """``peer``'s request for block ``bno`` is gone; True if no other peer has it out."""
        reqs = self.requesters[bno]
        reqs.remove(peer)
        if reqs:
            return False
        del self.requesters[bno]
        self.state[bno] = _FREE
        self.unrequested += 1
        return True

    def block(self, bno: int) -> Block:
        begin = bno * BLOCK_SIZE
        return Block(self.index, begin, min(BLOCK_SIZE, self.size - begin))

    def check_invariants(self) -> set[tuple[Hashable, int, int]]:
        """Assert the block states and counters agree; return the requests out, as (peer, piece, block)."""
        st = self.state
        assert self.unrequested == st.count(_FREE) and self.received == st.count(_RECEIVED)
        assert set(self.requesters) == {b for b, s in enumerate(st) if s == _REQUESTED}
        assert self.received or self.requesters, self.index
        for bno, reqs in self.requesters.items():
            assert reqs and len(set(reqs)) == len(reqs), (self.index, bno, reqs)
        return {(q, self.index, bno) for bno, reqs in self.requesters.items() for q in reqs}


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
        # the only random choice (where a piece lands in its bucket) is made there, with this RNG
        self._availability = Availability(num_pieces, random.Random(seed))
        self.have_flags = bytearray(num_pieces)  # 1 per piece we have; read it, never write it
        self._num_have = 0
        self._wanted_missing = num_pieces  # pieces with priority > 0 that we lack
        self._partial: dict[int, _Piece] = {}
        self._open: dict[int, None] = {}  # partial pieces with unrequested blocks, oldest first
        self._outstanding: dict[Hashable, set[tuple[int, int]]] = {}  # peer -> {(piece, block)}
        # Peer -> the pieces a scan of every free piece found none in: not scanned again until they change.
        self._barren: dict[Hashable, PeerHas] = {}
        self._sequential = False

    # -- our own pieces -------------------------------------------------

    def we_have(self, index: int) -> None:
        """The piece is verified and on disk (after a hash check, or from resume data)."""
        self._check_index(index)
        if self.have_flags[index]:
            return
        self.have_flags[index] = 1
        self._num_have += 1
        if self._availability.priority[index]:
            self._wanted_missing -= 1
        piece = self._partial.pop(index, None)
        if piece is not None:
            self._open.pop(index, None)
            self._forget_requests(piece)
        else:
            self._availability.discard(index)

    def has(self, index: int) -> bool:
        self._check_index(index)
        return bool(self.have_flags[index])

    def num_have(self) -> int:
        return self._num_have

    def is_finished(self) -> bool:
        return self._wanted_missing == 0

    # -- availability -----------------------------------------------------

    def peer_have(self, index: int, peer: Hashable | None = None) -> None:
        """``peer`` (as :meth:`pick` knows it; else every peer is rescanned) announced ``index``: O(1)."""
        self._availability.add_have(index)
        if peer is None or self._availability.is_free(index):  # else it still has no free piece
            self._gained(peer)

    def peer_bitfield(self, have: Bits, peer: Hashable | None = None) -> None:
        """A peer's pieces, one 0/1 item per piece (see :func:`~pyowtorrent.wire.bitfield.bitfield_flags`).

        A peer whose bitfield is full is better reported with
        :meth:`peer_have_all`: it then costs nothing here.
        """
        self._availability.add_peer(have)
        self._gained(peer)

    def peer_have_all(self, peer: Hashable | None = None) -> None:
        """A seed (BEP 6 have-all): counted once, not per piece."""
        self._availability.add_seed()
        self._gained(peer)

    def peer_lost(self, have: Bits | None, is_seed: bool = False) -> None:
        """Forget a peer's pieces; ``have`` is everything it had (ignored for a seed)."""
        if is_seed:
            self._availability.remove_seed()
        elif have is not None:
            self._availability.remove_peer(have)

    def availability(self, index: int) -> int:
        self._check_index(index)
        return self._availability.count(index)

    # -- policy -------------------------------------------------------------

    def set_piece_priorities(self, priorities: Sequence[int]) -> None:
        """Set every piece's priority (0 = don't download, up to ``MAX_PRIORITY``).

        A piece shared by files of different priorities must get the highest
        of them; that mapping is the caller's.
        """
        free = [i for i in range(self.num_pieces) if not self.have_flags[i] and i not in self._partial]
        self._availability.set_priorities(priorities, free)
        self._barren.clear()
        self._wanted_missing = sum(1 for p, h in zip(self._availability.priority, self.have_flags) if p and not h)

    def set_sequential(self, on: bool) -> None:
        """Lowest index first instead of rarest first (priorities still come first)."""
        self._sequential = on

    # -- requests -------------------------------------------------------------

    def pick(self, peer: Hashable, peer_has: PeerHas, count: int) -> list[Block]:
        """Up to ``count`` blocks to request from ``peer``; they are recorded as requested.

        Order: blocks left in started pieces (this peer's own first), then new pieces by priority
        and rarity (or index, in sequential mode), then (end-game) ones another peer has out.
        """
        if count <= 0:
            return []
        has: Callable[[int], object] = peer_has if callable(peer_has) else peer_has.__getitem__
        self._availability.clean()
        out: list[Block] = []
        if self._open:
            self._pick_partial(peer, has, count, out)
        if len(out) < count and self._barren.get(peer) is not peer_has and not self._pick_free(peer, has, count, out):
            self._barren[peer] = peer_has
        room = ENDGAME_DEPTH - len(self._outstanding.get(peer, ()))
        if len(out) < count and room > 0 and self.in_endgame():
            self._pick_endgame(peer, has, len(out) + min(count - len(out), room), out)
        return out

    def pick_run(self, peer: Hashable, count: int, prefer: int | None = None) -> list[Block]:
        """Up to ``count`` blocks in a row, in byte order, for a source that serves byte ranges (a
        web seed: one HTTP request a run), recorded as requested.  It starts in a started piece no
        one has requests out for, else at ``prefer`` if free, else at the start of the gap around
        the piece :meth:`pick` would start, else in a started piece with free blocks, else
        (end-game) at blocks others have out; it runs on into the free pieces that follow."""
        free, prio, partial = self._availability, self._availability.priority, self._partial
        opened = [partial[i] for i in self._open if prio[i]]
        piece = next((p for p in opened if not p.requesters), None)
        if piece is None:
            first = free.first(self._sequential, prefer)
            piece = self._start(first) if first is not None else next(iter(opened), None)
        endgame = piece is None and self.in_endgame()
        if endgame:
            piece = next((p for i, p in partial.items() if prio[i] and p.requesters and peer not in p.peers), None)
        out: list[Block] = []
        mine = self._outstanding.setdefault(peer, set())
        while piece is not None:
            more = piece.request_run(peer, count - len(out), mine, out, endgame) and len(out) < count
            if not piece.unrequested:
                self._open.pop(piece.index, None)
            nxt = piece.index + 1
            piece = self._start(nxt) if more and nxt < self.num_pieces and free.is_free(nxt) else None
        return out

    def on_block_received(self, peer: Hashable, block: Block) -> tuple[bool, list[Hashable]]:
        """:meth:`take_block`, with ``(False, [])`` for a block not wanted."""
        return self.take_block(peer, block) or (False, [])

    def take_block(self, peer: Hashable, block: Block) -> tuple[bool, list[Hashable]] | None:
        """Record a block's arrival: whether its piece is complete (hash it, then :meth:`on_piece_passed`
        or :meth:`on_piece_failed`) and the other peers with a request out for it, to cancel.  ``None``
        for a duplicate, unwanted or malformed block, which changes nothing (see :meth:`wants_block`)."""
        if not self.wants_block(block):
            return None
        index, bno = block.index, block.begin // BLOCK_SIZE
        piece = self._partial.get(index)
        if piece is None:  # unrequested but welcome: start the piece
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
        if not 0 <= index < self.num_pieces or self.have_flags[index]:
            return False
        size = self._last_length if index == self.num_pieces - 1 else self.piece_length  # _piece_size, inlined
        begin = block.begin
        if begin < 0 or begin % BLOCK_SIZE or begin >= size or block.length != min(BLOCK_SIZE, size - begin):
            return False
        piece = self._partial.get(index)
        if piece is None:
            return bool(self._availability.priority[index])
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
        self._barren.pop(peer, None)
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
        if not self.have_flags[index]:
            self._put_back(index)

    def in_endgame(self) -> bool:
        """Every wanted block we lack is requested or received (and some are missing)."""
        if self._wanted_missing == 0 or self._availability.has_free():
            return False
        return not any(map(self._availability.priority.__getitem__, self._open))

    # -- picking --------------------------------------------------------------

    def _pick_partial(self, peer: Hashable, has: Callable[[int], object], count: int, out: list[Block]) -> None:
        prio = self._availability.priority
        cands = [i for i in self._open if prio[i] and has(i)]
        if not cands:
            return
        if self._sequential:
            cands.sort(key=lambda i: (-prio[i], i))
        else:  # stable: the oldest piece first among equals
            cands.sort(key=lambda i: (-prio[i], peer not in self._partial[i].peers))
        mine = self._outstanding.setdefault(peer, set())
        for i in cands:
            piece = self._partial[i]
            piece.request(peer, count - len(out), mine, out)
            if not piece.unrequested:
                self._open.pop(i, None)
            if len(out) >= count:
                return

    def _pick_free(self, peer: Hashable, has: Callable[[int], object], count: int, out: list[Block]) -> bool:
        """Start free pieces the peer has; False if it has none of them (all were scanned)."""
        need = wanted = count - len(out)
        free = self._availability
        levels = free.levels
        for prio in range(MAX_PRIORITY, 0, -1):
            rarest = levels[prio].order
            if not rarest:
                continue
            chosen: list[int] = []
            candidates: Iterable[int] = free.by_index(prio) if self._sequential else rarest
            for i in candidates:
                if has(i):
                    chosen.append(i)
                    need -= -(-self._piece_size(i) // BLOCK_SIZE)
                    if need <= 0:
                        break
            # started after the scan: starting a piece moves others in the array
            if chosen:
                mine = self._outstanding.setdefault(peer, set())
                for i in chosen:
                    piece = self._start(i)
                    piece.request(peer, count - len(out), mine, out)
                    if not piece.unrequested:
                        self._open.pop(i, None)
            if need <= 0:
                return True
        return need != wanted

    def _pick_endgame(self, peer: Hashable, has: Callable[[int], object], count: int, out: list[Block]) -> None:
        cands: list[tuple[int, int, int]] = []
        prio = self._availability.priority
        for index, piece in self._partial.items():
            if not prio[index] or not has(index):
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
            out.append(piece.block(bno))

    def _start(self, index: int) -> _Piece:
        self._availability.discard(index)
        piece = self._partial[index] = _Piece(index, self._piece_size(index))
        self._open[index] = None
        return piece

    def _gained(self, peer: Hashable | None) -> None:  # it may have a free piece now
        if peer is None:
            self._barren.clear()
        else:
            self._barren.pop(peer, None)

    def _put_back(self, index: int) -> None:  # free again: any peer may have it
        self._availability.put_back(index)
        self._barren.clear()

    def _drop_request(self, peer: Hashable, index: int, bno: int) -> None:
        piece = self._partial[index]
        if not piece.release(peer, bno):
            return
        self._open[index] = None
        if not piece.received and not piece.requesters:
            # nothing of it is here or on the way: back to the rarity order
            del self._partial[index]
            del self._open[index]
            self._put_back(index)

    def _forget_requests(self, piece: _Piece) -> None:
        for bno, reqs in piece.requesters.items():
            for q in reqs:
                self._outstanding[q].discard((piece.index, bno))

    # -- small helpers ----------------------------------------------------------

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_pieces:
            raise index_error(index, self.num_pieces)

    def _piece_size(self, index: int) -> int:
        return self._last_length if index == self.num_pieces - 1 else self.piece_length


def check_invariants(picker: PiecePicker) -> None:
    """Assert the picker's internal structures agree with each other (for tests)."""
    have, partial, prio = picker.have_flags, picker._partial, picker._availability.priority
    picker._availability.check_invariants(lambda i: not have[i] and i not in partial)
    wanted_missing = sum(1 for i in range(picker.num_pieces) if prio[i] and not have[i])
    assert picker._wanted_missing == wanted_missing
    assert picker._num_have == sum(picker.have_flags)
    requested: set[tuple[Hashable, int, int]] = set()
    for index, piece in picker._partial.items():
        assert not have[index] and piece.index == index and piece.size == picker._piece_size(index)
        assert (index in picker._open) == (piece.unrequested > 0), index
        requested |= piece.check_invariants()
    assert set(picker._open) <= set(picker._partial)
    assert requested == {(q, i, b) for q, out in picker._outstanding.items() for i, b in out}
