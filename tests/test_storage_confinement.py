"""Storage never reads or writes through a symbolic link below the save directory (issue 9).

Real files in temp dirs: a link at the torrent's top directory, at a sub-directory or at a file,
one made after the storage has opened other files, and a save directory that is itself a link
(allowed: only what is below it is checked).  Every refusal is a ``StorageError`` naming the link,
and nothing outside the save directory is created, written, truncated or deleted.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from pyowtorrent.engine.events import TorrentState
from pyowtorrent.engine.session import Session
from pyowtorrent.errors import PyowtorrentError, StorageError
from pyowtorrent.metainfo.torrent_file import Metainfo
from pyowtorrent.storage.files import Storage

from .engine_util import make_torrent, same_tree

PL = 16384
# Each file a whole number of pieces, so piece i lies in one file:
# 0-1 a.bin, 2-3 sub/b.bin, 4 sub/deeper/c.bin.
SIZES = {"a.bin": 2 * PL, "sub/b.bin": 2 * PL, "sub/deeper/c.bin": PL}
A, B, C = 0, 2, 4

pytestmark = pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="POSIX only")


def piece(meta: Metainfo, seed_dir: Path, index: int) -> bytes:
    """Piece ``index`` as the seeder has it."""
    layout = meta.layout
    out = bytearray()
    for s in layout.slices(index * layout.piece_length, layout.piece_size(index)):
        with open(seed_dir.joinpath(*layout.files[s.file_index].path), "rb") as f:
            f.seek(s.file_offset)
            out += f.read(s.length)
    return bytes(out)


def tree(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.fixture
def torrent(tmp_path: Path) -> tuple[Metainfo, Path]:
    return make_torrent(tmp_path, SIZES, piece_length=PL)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    return d


def test_top_directory_linked_outside_is_refused_and_nothing_written_there(
    tmp_path: Path, torrent: tuple[Metainfo, Path], outside: Path
) -> None:
    meta, seed_dir = torrent
    save = tmp_path / "save"
    save.mkdir()
    (save / "ds").symlink_to(outside, target_is_directory=True)
    st = Storage(meta, save)
    try:
        for i in range(meta.num_pieces):
            with pytest.raises(StorageError, match=str(save / "ds")) as err:
                st.write_piece_if_valid(i, bytearray(piece(meta, seed_dir, i)))
            assert "symbolic link" in str(err.value)
    finally:
        st.close()
    assert tree(outside) == []


def test_linked_file_inside_the_tree_is_not_overwritten(
    tmp_path: Path, torrent: tuple[Metainfo, Path], outside: Path
) -> None:
    meta, seed_dir = torrent
    save = tmp_path / "save"
    (save / "ds" / "sub").mkdir(parents=True)
    victim = outside / "victim"
    victim.write_bytes(b"precious")
    (save / "ds" / "a.bin").symlink_to(victim)
    (save / "ds" / "sub" / "b.bin").symlink_to(outside / "dangling")  # O_CREAT would make the target
    st = Storage(meta, save)
    try:
        with pytest.raises(StorageError, match=str(save / "ds" / "a.bin")):
            st.write_piece_if_valid(A, bytearray(piece(meta, seed_dir, A)))
        with pytest.raises(StorageError, match=str(save / "ds" / "sub" / "b.bin")):
            st.write_piece_if_valid(B, bytearray(piece(meta, seed_dir, B)))
        # A file beside them, reached without a link, is written as usual.
        assert st.write_piece_if_valid(C, bytearray(piece(meta, seed_dir, C)))
    finally:
        st.close()
    assert victim.read_bytes() == b"precious"
    assert tree(outside) == ["victim"]
    assert (save / "ds" / "sub" / "deeper" / "c.bin").read_bytes() == piece(meta, seed_dir, C)


def test_linked_sub_directory_is_refused(tmp_path: Path, torrent: tuple[Metainfo, Path], outside: Path) -> None:
    meta, seed_dir = torrent
    save = tmp_path / "save"
    (save / "ds").mkdir(parents=True)
    (save / "ds" / "sub").symlink_to(outside, target_is_directory=True)
    st = Storage(meta, save)
    try:
        assert st.write_piece_if_valid(A, bytearray(piece(meta, seed_dir, A)))
        for i in (B, C):
            with pytest.raises(StorageError, match=str(save / "ds" / "sub")):
                st.write_piece_if_valid(i, bytearray(piece(meta, seed_dir, i)))
    finally:
        st.close()
    assert tree(outside) == []
    assert (save / "ds" / "a.bin").stat().st_size == PL


@pytest.mark.parametrize("where", ["top", "sub"])
def test_link_made_after_other_files_were_opened_is_refused(
    tmp_path: Path, torrent: tuple[Metainfo, Path], outside: Path, where: str
) -> None:
    meta, seed_dir = torrent
    save = tmp_path / "save"
    st = Storage(meta, save)
    try:
        # a.bin is opened (and its fd kept) while ds/ is still a real directory.
        assert st.write_piece_if_valid(A, bytearray(piece(meta, seed_dir, A)))
        ds = save / "ds"
        if where == "top":
            ds.rename(save / "moved")
            link = ds
        else:
            link = ds / "sub"
        link.symlink_to(outside, target_is_directory=True)
        for i in (B, C):
            with pytest.raises(StorageError, match=str(link)):
                st.write_piece_if_valid(i, bytearray(piece(meta, seed_dir, i)))
        # The file opened before keeps being written where it was opened.
        assert st.write_piece_if_valid(A + 1, bytearray(piece(meta, seed_dir, A + 1)))
    finally:
        st.close()
    assert tree(outside) == []


def test_save_directory_may_itself_be_a_link_and_below_it_is_still_checked(
    tmp_path: Path, torrent: tuple[Metainfo, Path], outside: Path
) -> None:
    meta, seed_dir = torrent
    real = tmp_path / "real"
    real.mkdir()
    save = tmp_path / "data"
    save.symlink_to(real, target_is_directory=True)
    st = Storage(meta, save)
    try:
        for i in range(meta.num_pieces):
            assert st.write_piece_if_valid(i, bytearray(piece(meta, seed_dir, i)))
        assert st.read_block(B, 100, 1000) == piece(meta, seed_dir, B)[100:1100]
        assert st.check() == bytearray([1] * meta.num_pieces)
    finally:
        st.close()
    assert same_tree(seed_dir / "ds", real / "ds")
    # Below the (linked) save directory, links are refused as anywhere else.
    shutil.rmtree(real / "ds" / "sub")
    (real / "ds" / "sub").symlink_to(outside, target_is_directory=True)
    st = Storage(meta, save)
    try:
        with pytest.raises(StorageError, match=str(save / "ds" / "sub")):
            st.write_piece_if_valid(B, bytearray(piece(meta, seed_dir, B)))
    finally:
        st.close()
    assert tree(outside) == []


def test_check_and_read_refuse_a_linked_file(tmp_path: Path, torrent: tuple[Metainfo, Path], outside: Path) -> None:
    """Seeding would otherwise serve whatever the link points at (here: the right bytes, from outside)."""
    meta, seed_dir = torrent
    save = tmp_path / "save"
    (save / "ds" / "sub" / "deeper").mkdir(parents=True)
    for rel in SIZES:
        if rel != "a.bin":
            (save / "ds" / rel).write_bytes((seed_dir / "ds" / rel).read_bytes())
    (outside / "a.bin").write_bytes((seed_dir / "ds" / "a.bin").read_bytes())
    (save / "ds" / "a.bin").symlink_to(outside / "a.bin")
    st = Storage(meta, save)
    try:
        with pytest.raises(StorageError, match=str(save / "ds" / "a.bin")):
            st.check()
        with pytest.raises(StorageError, match=str(save / "ds" / "a.bin")):
            st.read_block(A, 0, 1000)
        assert st.read_block(B, 0, 1000) == piece(meta, seed_dir, B)[:1000]
        assert st.file_stamps()[0] is None  # resume data never trusts a linked file
    finally:
        st.close()


def test_a_file_served_before_it_is_written_to_can_still_be_written(
    tmp_path: Path, torrent: tuple[Metainfo, Path]
) -> None:
    """A resumed download serves a piece of a file, then writes another piece of it (read-only fd not reused)."""
    meta, seed_dir = torrent
    save = tmp_path / "save"
    st = Storage(meta, save)
    assert st.write_piece_if_valid(A, bytearray(piece(meta, seed_dir, A)))
    st.close()
    st = Storage(meta, save)
    try:
        assert st.read_block(A, 0, 1000) == piece(meta, seed_dir, A)[:1000]
        assert st.write_piece_if_valid(A + 1, bytearray(piece(meta, seed_dir, A + 1)))
        assert st.read_block(A + 1, 0, 1000) == piece(meta, seed_dir, A + 1)[:1000]
    finally:
        st.close()
    assert (save / "ds" / "a.bin").read_bytes() == (seed_dir / "ds" / "a.bin").read_bytes()


def test_create_empty_files_does_not_follow_a_linked_directory(tmp_path: Path, outside: Path) -> None:
    meta, _ = make_torrent(tmp_path, {"a.bin": PL, "sub/empty": 0}, piece_length=PL)
    save = tmp_path / "save"
    (save / "ds").mkdir(parents=True)
    (save / "ds" / "sub").symlink_to(outside, target_is_directory=True)
    st = Storage(meta, save)
    try:
        with pytest.raises(StorageError, match=str(save / "ds" / "sub")):
            st.create_empty_files()
    finally:
        st.close()
    assert tree(outside) == []


def test_delete_files_deletes_nothing_through_a_linked_directory(
    tmp_path: Path, torrent: tuple[Metainfo, Path], outside: Path
) -> None:
    meta, seed_dir = torrent
    save = tmp_path / "save"
    st = Storage(meta, save)
    assert st.write_piece_if_valid(A, bytearray(piece(meta, seed_dir, A)))
    st.close()
    # ds/sub points at a directory holding files with the torrent's names.
    (outside / "deeper").mkdir()
    (outside / "b.bin").write_bytes(b"not yours")
    (outside / "deeper" / "c.bin").write_bytes(b"not yours either")
    (save / "ds" / "sub").symlink_to(outside, target_is_directory=True)
    st.delete_files()
    assert tree(outside) == ["b.bin", "deeper", "deeper/c.bin"]
    assert (outside / "b.bin").read_bytes() == b"not yours"
    assert not (save / "ds" / "a.bin").exists()


@pytest.mark.parametrize("when", ["before the start", "while downloading"])
def test_download_into_a_linked_directory_is_an_error_state_not_a_write_outside(
    tmp_path: Path, outside: Path, when: str
) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"a.bin": 300_000, "sub/b.bin": 100_000}, piece_length=PL)
    leech = tmp_path / "leech"
    leech.mkdir()
    link = leech / "ds"

    async def main() -> None:
        async with Session(listen="127.0.0.1") as s1, Session(listen="127.0.0.1") as s2:
            if when == "before the start":
                link.symlink_to(outside, target_is_directory=True)
                await s1.add_torrent(meta, seed_dir)
                t = await s2.add_torrent(meta, leech, peers=[("127.0.0.1", s1.listen_port)])
            else:
                t = await s2.add_torrent(meta, leech)
                assert t.status().state is TorrentState.DOWNLOADING
                link.symlink_to(outside, target_is_directory=True)
                await s1.add_torrent(meta, seed_dir, peers=[("127.0.0.1", s2.listen_port)])
            with pytest.raises(PyowtorrentError, match=str(link)):
                await t.wait_done(timeout=30)
            st = t.status()
            assert st.state is TorrentState.ERROR
            assert st.error is not None and str(link) in st.error and "symbolic link" in st.error
            assert st.pieces_have == 0

    asyncio.run(main())
    assert tree(outside) == []
