"""The piece assembler: blocks in any order make a piece that passes exactly when the bytes it holds are right."""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyowtorrent.engine.pieces import POPULATE_MAX, PeerIdentity, PieceAssembler
from pyowtorrent.engine.services import InlineDisk
from pyowtorrent.errors import StorageError
from pyowtorrent.metainfo.layout import BLOCK_SIZE
from pyowtorrent.metainfo.torrent_file import Metainfo
from pyowtorrent.storage.create import create_torrent
from pyowtorrent.storage.memory import MemoryStorage

PIECE = 4 * BLOCK_SIZE
LAST = 2 * BLOCK_SIZE + 100  # the last piece: two blocks and a short one


class Results:
    def __init__(self) -> None:
        self.passed: list[int] = []
        self.failed: list[int] = []

    def piece_passed(self, index: int) -> None:
        self.passed.append(index)

    def piece_failed(self, index: int) -> None:
        self.failed.append(index)

    def storage_failed(self, index: int, error: StorageError) -> None:
        raise AssertionError(error)

    def ban(self, peer: PeerIdentity, reason: str) -> None:
        pass


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Metainfo, bytes]:
    """A torrent of three pieces, the last one short, and its payload."""
    path = tmp_path_factory.mktemp("t") / "p.bin"
    payload = random.Random(5).randbytes(2 * PIECE + LAST)
    path.write_bytes(payload)
    return create_torrent(path, piece_length=PIECE, creation_date=None), payload


def blocks_of(index: int, size: int) -> list[tuple[int, int]]:
    return [(begin, min(BLOCK_SIZE, size - begin)) for begin in range(0, size, BLOCK_SIZE)]


def assemble(meta: Metainfo, payload: bytes, index: int, order: list[tuple[int, int]], corrupt: int | None) -> Results:
    """Feed piece ``index``'s blocks in ``order`` (begin, length; repeats allowed), block ``corrupt`` flipped."""
    results = Results()
    store = MemoryStorage(meta)
    assembler = PieceAssembler(meta.layout, store, InlineDisk(), results)
    start = index * PIECE

    async def main() -> None:
        for begin, length in order:
            data = bytearray(payload[start + begin : start + begin + length])
            if begin == corrupt:
                data[0] ^= 1
            assembler.add_block(index, begin, memoryview(data), ("127.0.0.1", b"p" * 20))
        assembler.finish(index)
        await assembler.close()

    asyncio.run(main())
    return results


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), index=st.sampled_from([0, 2]), corrupt_one=st.booleans(), again=st.booleans())
def test_any_order_of_blocks_gives_the_whole_piece_verdict(
    made: tuple[Metainfo, bytes], data: st.DataObject, index: int, corrupt_one: bool, again: bool
) -> None:
    meta, payload = made
    blocks = blocks_of(index, meta.layout.piece_size(index))
    order = data.draw(st.permutations(blocks))
    if again:  # one range delivered a second time (with the same bytes), anywhere after its first
        first = data.draw(st.integers(0, len(order) - 1))
        order = order[: first + 1] + [order[first]] + order[first + 1 :]
    corrupt = data.draw(st.sampled_from(blocks))[0] if corrupt_one else None
    results = assemble(meta, payload, index, order, corrupt)
    assert (results.passed, results.failed) == (([], [index]) if corrupt_one else ([index], []))


def test_a_range_hashed_then_delivered_again_with_other_bytes_is_judged_on_the_bytes_held(
    made: tuple[Metainfo, bytes],
) -> None:
    """The first copy of block 0 was good; a bad second copy overwrote it: the piece held is bad."""
    meta, payload = made
    blocks = blocks_of(0, PIECE)
    results = Results()
    store = MemoryStorage(meta)
    assembler = PieceAssembler(meta.layout, store, InlineDisk(), results)

    async def main() -> None:
        for begin, length in blocks:
            assembler.add_block(0, begin, payload[begin : begin + length], ("127.0.0.1", b"p" * 20))
        assembler.add_block(0, 0, b"\xff" * BLOCK_SIZE, ("127.0.0.2", b"q" * 20))
        assembler.finish(0)
        await assembler.close()

    asyncio.run(main())
    assert results.failed == [0] and results.passed == []


def resident_pages(address: int, length: int) -> int:
    """How many of the pages at ``address`` are in memory (mincore(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    pages = -(-length // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * pages)()
    if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(length), vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return sum(v & 1 for v in vec)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MAP_POPULATE is Linux's")
def test_a_new_piece_buffer_is_resident_before_any_block_lands(made: tuple[Metainfo, bytes]) -> None:
    # Made in one call rather than a page fault per 4 KiB as blocks are copied in.
    meta, _ = made
    assembler = PieceAssembler(meta.layout, MemoryStorage(meta), InlineDisk(), Results())
    buf = assembler._take_buffer(0)
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert resident_pages(address, meta.piece_length) == meta.piece_length // mmap.PAGESIZE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore(2) is Linux's")
def test_a_large_piece_buffer_takes_memory_only_as_blocks_land(tmp_path: Path) -> None:
    # Mapped whole at once, each of many sparse large pieces would take its full size.
    path = tmp_path / "p.bin"
    path.write_bytes(random.Random(6).randbytes(3 * BLOCK_SIZE))
    meta = create_torrent(path, piece_length=2 * POPULATE_MAX, creation_date=None)
    assembler = PieceAssembler(meta.layout, MemoryStorage(meta), InlineDisk(), Results())
    buf = assembler._take_buffer(0)
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert resident_pages(address, 2 * POPULATE_MAX) == 0
