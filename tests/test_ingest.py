"""Hashing while receiving (pyowtorrent.storage.ingest): any chunking gives the pieces create_torrent makes."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyowtorrent.metainfo.layout import FileEntry
from pyowtorrent.storage.create import auto_piece_length, build_metainfo, create_torrent
from pyowtorrent.storage.ingest import (
    UNKNOWN_SIZE_PIECE_LENGTHS,
    PieceHasher,
    StreamHasher,
    candidate_piece_lengths,
    choose_piece_length,
)

PIECE = 16 << 10


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, in order)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=5 * PIECE + 7),
    cuts=st.lists(st.integers(min_value=0, max_value=10**9), max_size=20),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_pieces_of_any_chunking_are_those_create_torrent_makes(tmp_path_factory: pytest.TempPathFactory, size: int, cuts: list[int], seed: int) -> None:
    data = random.Random(seed).randbytes(size)
    path = tmp_path_factory.mktemp("ingest") / "payload.zip"
    path.write_bytes(data)
    made = create_torrent(path, piece_length=PIECE, creation_date=None)

    hasher = StreamHasher([PIECE, 2 * PIECE])
    for chunk in _chunked(data, cuts):
        hasher.update(chunk)
    result = hasher.finish()

    assert result.size == size
    assert result.sha256 == hashlib.sha256(data).digest()
    assert result.pieces[PIECE] == made.piece_hashes
    assert result.pieces[2 * PIECE] == create_torrent(path, piece_length=2 * PIECE, creation_date=None).piece_hashes


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=3 * PIECE), cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=12))
def test_sha256_of_any_chunking_is_hashlibs(data: bytes, cuts: list[int]) -> None:
    hasher = StreamHasher([PIECE])
    for chunk in _chunked(data, cuts):
        hasher.update(memoryview(chunk))
    assert hasher.finish().sha256 == hashlib.sha256(data).digest()


def test_each_digest_may_be_fed_by_its_own_updater_in_any_interleaving() -> None:
    data = random.Random(3).randbytes(3 * PIECE + 5)
    chunks = _chunked(data, [100, 20000, 40000])
    hasher = StreamHasher([PIECE])
    updaters = hasher.updaters()
    for update in reversed(updaters):  # one digest all the way, then the other: only per-digest order matters
        for chunk in chunks:
            update(chunk)
    whole = StreamHasher([PIECE])
    whole.update(data)
    got, wanted = hasher.finish(), whole.finish()
    assert (got.size, got.sha256, got.pieces) == (wanted.size, wanted.sha256, wanted.pieces)


def test_an_empty_stream_has_no_pieces() -> None:
    hasher = PieceHasher(PIECE)
    hasher.update(b"")
    assert hasher.digests() == b"" and hasher.size == 0


def test_a_declared_size_gives_the_piece_length_create_torrent_chooses() -> None:
    for size in (1, 32 << 20, (32 << 20) + 1, 1 << 30, 10 << 30):
        (length,) = candidate_piece_lengths(size)
        assert length == auto_piece_length(size)
        assert choose_piece_length(size, [length]) == length


@pytest.mark.parametrize(
    "size,expected",
    [(1, 256 << 10), (512 << 20, 256 << 10), ((512 << 20) + 1, 4 << 20), (8 << 30, 4 << 20), (100 << 30, 4 << 20)],
)
def test_an_unknown_size_is_hashed_at_two_lengths_and_the_final_size_chooses(size: int, expected: int) -> None:
    assert candidate_piece_lengths(None) == UNKNOWN_SIZE_PIECE_LENGTHS
    assert choose_piece_length(size, UNKNOWN_SIZE_PIECE_LENGTHS) == expected


def test_a_stream_hashed_while_received_makes_the_same_torrent_as_the_file(tmp_path: Path) -> None:
    data = random.Random(5).randbytes(200_000)
    path = tmp_path / "ds.zip"
    path.write_bytes(data)
    hasher = StreamHasher(candidate_piece_lengths(len(data)))
    for chunk in _chunked(data, [1, 65536, 99999]):
        hasher.update(chunk)
    result = hasher.finish()
    length = result.piece_length
    built = build_metainfo(
        "ds.zip", [FileEntry(("ds.zip",), result.size, 0)], length, result.pieces[length], multi_file=False, creation_date=None
    )
    assert built.info_hash == create_torrent(path, creation_date=None).info_hash


def test_bad_piece_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        PieceHasher(0)
    with pytest.raises(ValueError):
        StreamHasher([])
    with pytest.raises(ValueError):
        StreamHasher([PIECE, PIECE])
