"""Smart ban, sans I/O: proof from a piece that passes, the sole-sender rule, and trust points."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyowtorrent.metainfo.layout import BLOCK_SIZE
from pyowtorrent.strategy import smartban
from pyowtorrent.strategy.smartban import MAX_TRUST_ENTRIES, TRUST_BAN, TRUST_MAX, TRUST_PENALTY, SmartBan

GOOD = bytes(range(256)) * (2 * BLOCK_SIZE // 256)  # a piece of two blocks
BAD = b"\xff" * BLOCK_SIZE + GOOD[BLOCK_SIZE:]  # its first block corrupt


def test_a_block_that_differs_from_the_piece_that_passed_convicts_its_sender() -> None:
    ban: SmartBan[str] = SmartBan()
    assert ban.piece_failed(0, BAD, {0: "liar", BLOCK_SIZE: "honest"}) == []
    assert ban.piece_passed(0, GOOD, {0: "honest", BLOCK_SIZE: "honest"}) == [("liar", "sent a corrupt block of piece 0")]


def test_the_sole_sender_of_two_failed_pieces_is_convicted() -> None:
    ban: SmartBan[str] = SmartBan()
    assert ban.piece_failed(0, BAD, {0: "liar", BLOCK_SIZE: "liar"}) == []
    assert [who for who, _ in ban.piece_failed(1, BAD, {0: "liar", BLOCK_SIZE: "liar"})] == ["liar"]


def test_a_liar_that_is_never_alone_and_never_lets_the_piece_pass_is_convicted_on_trust() -> None:
    """Bug C: the piece fails again and again, each time with the honest peer's blocks beside the liar's.

    The honest peer sends good pieces in between and keeps its trust; the liar does not."""
    ban: SmartBan[str] = SmartBan()
    failures = 0
    while True:
        failures += 1
        convicted = ban.piece_failed(7, BAD, {0: "liar", BLOCK_SIZE: "honest"})
        for index in range(2):  # the honest peer's other pieces pass meanwhile
            ban.piece_passed(100 + 2 * failures + index, GOOD, {0: "honest", BLOCK_SIZE: "honest"})
        if convicted:
            break
    assert [who for who, _ in convicted] == ["liar"]
    assert failures == -(-(-TRUST_BAN) // TRUST_PENALTY)  # four failures from a clean start
    assert ban.trust("honest") > TRUST_BAN


def test_a_long_good_record_buys_only_a_few_failures() -> None:
    ban: SmartBan[str] = SmartBan()
    for index in range(1000):
        ban.piece_passed(index, GOOD, {0: "peer"})
    assert ban.trust("peer") == TRUST_MAX
    failures = 0
    while "peer" not in {who for who, _ in ban.piece_failed(5000 + failures, BAD, {0: "peer", BLOCK_SIZE: f"o{failures}"})}:
        failures += 1
    assert failures + 1 == -(-(TRUST_MAX - TRUST_BAN) // TRUST_PENALTY)  # 8 → -8: eight failures


def test_what_is_remembered_is_bounded_and_the_worst_suspects_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """An attacker with many identities, each failing a piece once, cannot grow the record without bound."""
    monkeypatch.setattr(smartban, "MAX_TRUST_ENTRIES", 50)
    ban: SmartBan[str] = SmartBan()
    for _ in range(3):
        ban.piece_failed(0, BAD, {0: "suspect", BLOCK_SIZE: "suspect2"})
    for n in range(300):
        ban.piece_passed(n + 1, GOOD, {0: f"peer{n}"})
        ban.piece_failed(1000 + n, BAD, {0: f"other{n}"})
        assert len(ban._trust) <= 51 and len(ban._sole_failures) <= 51
    assert ban.trust("suspect") == -3 * TRUST_PENALTY


@given(
    st.lists(
        st.tuples(st.booleans(), st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=4)),
        max_size=60,
    )
)
def test_only_a_sender_of_failed_pieces_is_ever_convicted_and_trust_stays_in_bounds(
    events: list[tuple[bool, list[str]]],
) -> None:
    """Whatever the order of passes and failures: nobody who never sent a block of a failed piece is
    convicted, and a sender's trust stays within [floor of a penalty below the ban, TRUST_MAX]."""
    ban: SmartBan[str] = SmartBan()
    failed_senders: set[str] = set()
    for index, (passed, who) in enumerate(events):
        senders = {n * BLOCK_SIZE: s for n, s in enumerate(who)}
        piece = GOOD * 2
        if passed:
            convicted = ban.piece_passed(index, piece, senders)
        else:
            failed_senders.update(who)
            convicted = ban.piece_failed(index, piece, senders)
        assert {s for s, _ in convicted} <= failed_senders
        for s in "abcd":
            assert ban.trust(s) <= TRUST_MAX
    assert len(ban._trust) <= MAX_TRUST_ENTRIES
