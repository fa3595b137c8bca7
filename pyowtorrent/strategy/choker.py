"""The choker: which peers we upload to (BEP 3 tit-for-tat), sans-IO.

The caller (one torrent) owns the clock, the sockets and the rate meters; it
hands :meth:`Choker.rechoke` the time and a snapshot of its peers and gets back
the set to unchoke.  No I/O, no clock reads; randomness comes from one
``random.Random(seed)``, so a seeded choker fed the same calls makes the same
decisions — which is what lets a simulated swarm replay exactly.

Rules
-----
* Only *candidates* are ever unchoked: peers that are interested in us and are
  not seeds (a seed has every piece, so an upload slot spent on it is wasted).
* Regular slots (``upload_slots - 1``) are reassigned once per round, every
  ``rechoke_interval`` seconds.  A call between rounds keeps the regular peers
  that are still candidates and only fills vacancies, so calling early (on a
  disconnect, say) never causes fibrillation.
* Leeching: regular slots go to the best download rates (reciprocation);
  snubbed peers rank after every unsnubbed one; ties keep the peers already
  unchoked.
* Seeding: rank by upload rate, in *turns*.  A peer regularly unchoked for
  ``seeding_turn`` seconds without a break has had its turn for this cycle and
  ranks behind every candidate that has not; when every candidate has had a
  turn a new cycle starts.  Within each group the fastest taker wins, then
  the one that has waited longest since its last unchoke.  So every candidate
  gets at least one regular turn per cycle of about
  ``ceil(candidates / (upload_slots - 1)) * seeding_turn`` seconds.
* One optimistic slot, for a candidate not holding a regular slot, drawn at
  random (new connections, younger than ``new_peer_window``, weigh 3×, as in
  BEP 3) and kept for ``optimistic_interval`` seconds whatever the rates do.
  It is redrawn early only if its holder leaves or loses interest; at a
  rotation the outgoing peer is not redrawn when anyone else can be.
* With no more candidates than slots, every candidate is unchoked.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from collections.abc import Hashable, Sequence

log = logging.getLogger(__name__)

__all__ = ["ChokeDecision", "Choker", "PeerStats"]

# BEP 3: new connections are three times as likely to get the optimistic slot.
NEW_PEER_WEIGHT = 3


@dataclass(frozen=True, slots=True)
class PeerStats:
    """What the caller knows of one peer at rechoke time."""

    key: Hashable
    interested: bool  # the peer is interested in us
    download_rate: float  # bytes/s we receive from it (recent)
    upload_rate: float  # bytes/s we send to it (recent)
    snubbed: bool = False  # sent us nothing for a while although we asked
    is_seed: bool = False  # it has every piece
    connected_at: float = 0.0

    def __post_init__(self) -> None:
        # A NaN would make the ranking depend on input order, silently.
        for name in ("download_rate", "upload_rate"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"PeerStats {self.key!r}: {name} must be a number >= 0, got {value!r}")


@dataclass(frozen=True)
class ChokeDecision:
    unchoke: frozenset[Hashable]  # peers that must be unchoked after this round (all others choked)
    optimistic: Hashable | None  # the optimistic unchoke, also in ``unchoke``


class Choker:
    def __init__(
        self,
        upload_slots: int = 4,
        *,
        optimistic_interval: float = 30.0,
        rechoke_interval: float = 10.0,
        seeding_turn: float = 30.0,
        new_peer_window: float | None = None,
        seed: int | None = None,
    ) -> None:
        if upload_slots < 1:
            raise ValueError(f"upload_slots must be >= 1 (one is the optimistic slot), got {upload_slots}")
        for name, value in (
            ("optimistic_interval", optimistic_interval),
            ("rechoke_interval", rechoke_interval),
            ("seeding_turn", seeding_turn),
        ):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.upload_slots = upload_slots
        self.optimistic_interval = optimistic_interval
        self.rechoke_interval = rechoke_interval
        self.seeding_turn = seeding_turn
        # "New" means it arrived since the optimistic slot last could have moved.
        self.new_peer_window = optimistic_interval if new_peer_window is None else new_peer_window
        self._rng = random.Random(seed)

        self._now = -math.inf
        self._next_round = -math.inf
        self._seeding: bool | None = None
        self._regular: dict[Hashable, float] = {}  # key -> start of its current turn
        self._optimistic: Hashable | None = None
        self._optimistic_since = -math.inf
        self._last_unchoked: dict[Hashable, float] = {}
        self._had_turn: set[Hashable] = set()  # seeding: turn taken in this cycle

    def next_rechoke(self) -> float:
        """When the caller should call :meth:`rechoke` again (-inf before the first call)."""
        if self._optimistic is None:
            return self._next_round
        return min(self._next_round, self._optimistic_since + self.optimistic_interval)

    def rechoke(self, now: float, peers: Sequence[PeerStats], seeding: bool) -> ChokeDecision:
        """Decide who is unchoked from now on; ``peers`` is every connected peer.

        Call it at :meth:`next_rechoke`, and whenever else suits (a peer left,
        lost interest, or we finished); early calls only fill vacancies.
        """
        if not math.isfinite(now):
            raise ValueError(f"rechoke: now must be finite, got {now!r}")
        if now < self._now:
            raise ValueError(f"rechoke: time went backwards ({now} < {self._now}); pass a monotonic clock")
        keys = [p.key for p in peers]
        if len(set(keys)) != len(keys):
            raise ValueError("rechoke: two PeerStats share a key")
        self._forget_absent(set(keys))

        candidates = [p for p in peers if p.interested and not p.is_seed]
        candidate_keys = {p.key for p in candidates}
        full_round = now >= self._next_round or seeding != self._seeding
        if seeding:
            self._account_turns(now, candidate_keys)
        else:
            self._had_turn.clear()

        optimistic = self._optimistic
        if optimistic not in candidate_keys or now >= self._optimistic_since + self.optimistic_interval:
            optimistic = None

        rank = self._seed_rank if seeding else self._leech_rank
        ranked = sorted((p for p in candidates if p.key != optimistic), key=rank)
        if not full_round:
            # Between rounds the status quo wins; only vacancies are refilled.
            ranked.sort(key=lambda p: p.key not in self._regular)
        regular = [p.key for p in ranked[: self.upload_slots - 1]]

        if optimistic is None:
            optimistic = self._draw_optimistic(now, candidates, set(regular))
            self._optimistic_since = now
        self._optimistic = optimistic

        self._regular = {k: self._regular.get(k, now) for k in regular}
        unchoke = frozenset(regular if optimistic is None else [*regular, optimistic])
        for k in unchoke:
            self._last_unchoked[k] = now
        if full_round:
            self._next_round = now + self.rechoke_interval
        self._seeding = seeding
        self._now = now
        log.debug("rechoke at %.1f (seeding=%s): regular %r, optimistic %r", now, seeding, regular, optimistic)
        return ChokeDecision(unchoke, optimistic)

    def _forget_absent(self, present: set[Hashable]) -> None:
        self._regular = {k: t for k, t in self._regular.items() if k in present}
        self._last_unchoked = {k: t for k, t in self._last_unchoked.items() if k in present}
        self._had_turn &= present
        if self._optimistic not in present:
            self._optimistic = None

    def _account_turns(self, now: float, candidate_keys: set[Hashable]) -> None:
        for k, since in self._regular.items():
            if now - since >= self.seeding_turn:
                self._had_turn.add(k)
                # A fresh turn has to be earned from here, in the next cycle.
                self._regular[k] = now
        if candidate_keys and candidate_keys <= self._had_turn:
            self._had_turn.clear()

    def _leech_rank(self, p: PeerStats) -> tuple[bool, float, bool]:
        return (p.snubbed, -p.download_rate, p.key not in self._regular)

    def _seed_rank(self, p: PeerStats) -> tuple[bool, float, float]:
        return (p.key in self._had_turn, -p.upload_rate, self._last_unchoked.get(p.key, -math.inf))

    def _draw_optimistic(self, now: float, candidates: Sequence[PeerStats], regular: set[Hashable]) -> Hashable | None:
        pool = [p for p in candidates if p.key not in regular]
        if len(pool) > 1:
            pool = [p for p in pool if p.key != self._optimistic]
        if not pool:
            return None
        weights = [NEW_PEER_WEIGHT if now - p.connected_at < self.new_peer_window else 1 for p in pool]
        return self._rng.choices(pool, weights)[0].key
