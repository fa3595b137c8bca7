"""Smart ban: find the peer that sent the bad block of a piece that failed its hash (libtorrent's plugin).

Sans-IO.  When a piece fails, each block's SHA-1 is kept with the address
that sent it.  When the same piece later passes, every kept block that
differs from the good one convicts its sender.  A peer that alone supplied
``max_sole_failures`` failed pieces is convicted without such proof.
Evidence is bounded: at most ``max_pieces`` failed pieces are remembered,
the oldest forgotten first.

Proof needs the piece to pass, and a liar that corrupts the blocks it sends
of a piece and never answers for the rest can keep it from passing for ever
(the rest comes from honest peers, so it is never the sole sender).  So every
peer also has libtorrent's trust points: each failed piece it sent a block
of costs it :data:`TRUST_PENALTY`, each piece that passed with a block of
its earns one back, up to :data:`TRUST_MAX`; at :data:`TRUST_BAN` it is
convicted.  An honest peer in the same failures earns its points back with
every good piece it sends; the liar does not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

from ..metainfo.layout import BLOCK_SIZE

__all__ = ["SmartBan"]

# A peer that was the only source of this many pieces that failed their hash is banned.
MAX_SOLE_HASH_FAILURES = 2
MAX_EVIDENCE_PIECES = 256
# libtorrent's trust points: -2 per failed piece a peer took part in, +1 per passed one, at most
# 8 (a long good record buys only a few failures), banned at -7: four failures from a clean start.
TRUST_PENALTY = 2
TRUST_MAX = 8
TRUST_BAN = -7
# Peers whose trust (and sole failures) are remembered; past this, the half under the least
# suspicion is forgotten (an attacker with many addresses cannot grow them without bound).
MAX_TRUST_ENTRIES = 4096

Buffer = bytes | bytearray | memoryview
Sender = TypeVar("Sender", bound=Hashable)  # whoever sent a block, as the caller identifies peers


class SmartBan(Generic[Sender]):
    def __init__(self, max_pieces: int = MAX_EVIDENCE_PIECES, max_sole_failures: int = MAX_SOLE_HASH_FAILURES) -> None:
        self.max_pieces = max_pieces
        self.max_sole_failures = max_sole_failures
        self._evidence: dict[int, list[tuple[int, bytes, Sender]]] = {}  # piece -> (begin, sha1, sender)
        self._sole_failures: dict[Sender, int] = {}
        self._trust: dict[Sender, int] = {}

    def piece_failed(self, index: int, data: Buffer, senders: Mapping[int, Sender]) -> list[tuple[Sender, str]]:
        """Remember who sent which block of a failed piece; the ``(sender, reason)`` to ban now."""
        if index not in self._evidence and len(self._evidence) >= self.max_pieces:
            self._evidence.pop(next(iter(self._evidence)))
        evidence = self._evidence.setdefault(index, [])
        for begin, sender in senders.items():
            evidence.append((begin, _block_digest(data, begin), sender))
        distinct = set(senders.values())
        out: list[tuple[Sender, str]] = []
        if len(distinct) == 1:
            (sender,) = distinct
            n = self._sole_failures[sender] = self._sole_failures.get(sender, 0) + 1
            if n >= self.max_sole_failures:
                out.append((sender, f"sent {n} pieces that failed their hash check"))
        for sender in distinct:
            trust = self._trust[sender] = self._trust.get(sender, 0) - TRUST_PENALTY
            if trust <= TRUST_BAN and all(s != sender for s, _ in out):
                out.append((sender, f"took part in too many pieces that failed their hash check (trust {trust})"))
        if len(self._trust) > MAX_TRUST_ENTRIES:  # keep the half under the most suspicion
            self._trust = dict(sorted(self._trust.items(), key=lambda item: item[1])[: MAX_TRUST_ENTRIES // 2])
        if len(self._sole_failures) > MAX_TRUST_ENTRIES:
            kept = sorted(self._sole_failures.items(), key=lambda item: -item[1])[: MAX_TRUST_ENTRIES // 2]
            self._sole_failures = dict(kept)
        return out

    def piece_passed(self, index: int, good: Buffer, senders: Mapping[int, Sender]) -> list[tuple[Sender, str]]:
        """The ``(sender, reason)`` of every remembered block of ``index`` that differs from ``good``.

        Each of the good piece's senders earns a trust point back."""
        for sender in set(senders.values()):
            trust = self._trust.get(sender)
            if trust is None:
                if len(self._trust) < MAX_TRUST_ENTRIES:
                    self._trust[sender] = 1
            elif trust < TRUST_MAX:
                self._trust[sender] = trust + 1
        out: list[tuple[Sender, str]] = []
        for begin, digest, sender in self._evidence.pop(index, ()):
            if _block_digest(good, begin) != digest and all(s != sender for s, _ in out):
                out.append((sender, f"sent a corrupt block of piece {index}"))
        return out

    def trust(self, sender: Sender) -> int:
        """``sender``'s trust points (0 for a peer not heard of)."""
        return self._trust.get(sender, 0)

    def __len__(self) -> int:
        return len(self._evidence)


def _block_digest(data: Buffer, begin: int) -> bytes:
    return hashlib.sha1(memoryview(data)[begin : begin + BLOCK_SIZE]).digest()
