"""Smart ban: find the peer that sent the bad block of a piece that failed its hash (libtorrent's plugin).

Sans-IO.  When a piece fails, each block's SHA-1 is kept with the address
that sent it.  When the same piece later passes, every kept block that
differs from the good one convicts its sender.  A peer that alone supplied
``max_sole_failures`` failed pieces is convicted without such proof.
Evidence is bounded: at most ``max_pieces`` failed pieces are remembered,
the oldest forgotten first.
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
# Block records kept for one piece, as a multiple of its blocks: a piece that fails again and
# again keeps its latest rounds' evidence, not every one's.
EVIDENCE_ROUNDS = 8
# Peers whose sole failures are counted; past this, those with the fewest are forgotten (an
# attacker with many identities cannot grow the record without bound).
MAX_SOLE_RECORDS = 4096

Buffer = bytes | bytearray | memoryview
Sender = TypeVar("Sender", bound=Hashable)  # whoever sent a block, as the caller identifies peers


class SmartBan(Generic[Sender]):
    def __init__(self, max_pieces: int = MAX_EVIDENCE_PIECES, max_sole_failures: int = MAX_SOLE_HASH_FAILURES) -> None:
        self.max_pieces = max_pieces
        self.max_sole_failures = max_sole_failures
        self._evidence: dict[int, list[tuple[int, bytes, Sender]]] = {}  # piece -> (begin, sha1, sender)
        self._sole_failures: dict[Sender, int] = {}

    def piece_failed(self, index: int, data: Buffer, senders: Mapping[int, Sender]) -> list[tuple[Sender, str]]:
        """Remember who sent which block of a failed piece; the ``(sender, reason)`` to ban now."""
        if index not in self._evidence and len(self._evidence) >= self.max_pieces:
            self._evidence.pop(next(iter(self._evidence)))
        evidence = self._evidence.setdefault(index, [])
        for begin, sender in senders.items():
            evidence.append((begin, _block_digest(data, begin), sender))
        del evidence[: max(0, len(evidence) - EVIDENCE_ROUNDS * len(senders))]
        distinct = set(senders.values())
        if len(distinct) != 1:
            return []
        (sender,) = distinct
        n = self._sole_failures[sender] = self._sole_failures.get(sender, 0) + 1
        if len(self._sole_failures) > MAX_SOLE_RECORDS:
            kept = sorted(self._sole_failures.items(), key=lambda item: -item[1])[: MAX_SOLE_RECORDS // 2]
            self._sole_failures = dict(kept)
        if n >= self.max_sole_failures:
            return [(sender, f"sent {n} pieces that failed their hash check")]
        return []

    def piece_passed(self, index: int, good: Buffer) -> list[tuple[Sender, str]]:
        """The ``(sender, reason)`` of every remembered block of ``index`` that differs from ``good``."""
        out: list[tuple[Sender, str]] = []
        for begin, digest, sender in self._evidence.pop(index, ()):
            if _block_digest(good, begin) != digest and all(s != sender for s, _ in out):
                out.append((sender, f"sent a corrupt block of piece {index}"))
        return out

    def __len__(self) -> int:
        return len(self._evidence)


def _block_digest(data: Buffer, begin: int) -> bytes:
    return hashlib.sha1(memoryview(data)[begin : begin + BLOCK_SIZE]).digest()
