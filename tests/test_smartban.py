"""Smart ban, sans I/O: proof from a piece that passes, the sole-sender rule, and bounded records."""

from __future__ import annotations

import pytest

from pyowtorrent.metainfo.layout import BLOCK_SIZE
from pyowtorrent.strategy import smartban
from pyowtorrent.strategy.smartban import EVIDENCE_ROUNDS, SmartBan

GOOD = bytes(range(256)) * (2 * BLOCK_SIZE // 256)  # a piece of two blocks
BAD = b"\xff" * BLOCK_SIZE + GOOD[BLOCK_SIZE:]  # its first block corrupt


def test_a_block_that_differs_from_the_piece_that_passed_convicts_its_sender() -> None:
    ban: SmartBan[str] = SmartBan()
    assert ban.piece_failed(0, BAD, {0: "liar", BLOCK_SIZE: "honest"}) == []
    assert ban.piece_passed(0, GOOD) == [("liar", "sent a corrupt block of piece 0")]


def test_the_sole_sender_of_two_failed_pieces_is_convicted() -> None:
    ban: SmartBan[str] = SmartBan()
    assert ban.piece_failed(0, BAD, {0: "liar", BLOCK_SIZE: "liar"}) == []
    assert [who for who, _ in ban.piece_failed(1, BAD, {0: "liar", BLOCK_SIZE: "liar"})] == ["liar"]


def test_a_piece_failing_again_and_again_keeps_only_its_latest_evidence_and_still_convicts() -> None:
    """Bug C's piece fails every half second for as long as the liar stays: what is kept of it is bounded."""
    ban: SmartBan[str] = SmartBan()
    for _ in range(1000):
        ban.piece_failed(0, BAD, {0: "liar", BLOCK_SIZE: "honest"})
    assert len(ban._evidence[0]) == EVIDENCE_ROUNDS * 2
    assert ban.piece_passed(0, GOOD) == [("liar", "sent a corrupt block of piece 0")]


def test_sole_failures_of_many_identities_are_bounded_and_the_worst_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smartban, "MAX_SOLE_RECORDS", 50)
    ban: SmartBan[str] = SmartBan(max_sole_failures=3)
    ban.piece_failed(0, BAD, {0: "suspect", BLOCK_SIZE: "suspect"})
    ban.piece_failed(1, BAD, {0: "suspect", BLOCK_SIZE: "suspect"})
    for n in range(300):
        ban.piece_failed(1000 + n, BAD, {0: f"other{n}", BLOCK_SIZE: f"other{n}"})
        assert len(ban._sole_failures) <= 51
    assert [who for who, _ in ban.piece_failed(2, BAD, {0: "suspect", BLOCK_SIZE: "suspect"})] == ["suspect"]
