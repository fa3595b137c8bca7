"""The piece hasher and verifier, on real files in a temporary directory."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyowtorrent.metainfo.bencoding import encode
from pyowtorrent.storage.create import create_torrent
from pyowtorrent.storage.hasher import hash_pieces
from pyowtorrent.storage.verifier import payload_paths, verify_payload
from pyowtorrent.metainfo.layout import FileEntry, Layout
from pyowtorrent.metainfo.torrent_file import parse_metainfo


def _layout(sizes: list[int], piece_length: int) -> Layout:
    files, offset = [], 0
    for i, n in enumerate(sizes):
        files.append(FileEntry(("t", f"f{i}"), n, offset))
        offset += n
    return Layout(piece_length, files)


def test_layout_maps_pieces_across_file_boundaries() -> None:
    lay = _layout([10, 0, 25, 5], 16)
    assert lay.total_length == 40 and lay.num_pieces == 3
    assert [(s.file_index, s.file_offset, s.length) for s in lay.piece_slices(0)] == [(0, 0, 10), (2, 0, 6)]
    assert [(s.file_index, s.file_offset, s.length) for s in lay.piece_slices(1)] == [(2, 6, 16)]
    assert [(s.file_index, s.file_offset, s.length) for s in lay.piece_slices(2)] == [(2, 22, 3), (3, 0, 5)]
    assert lay.piece_size(2) == 8
    assert list(lay.pieces_of_file(2)) == [0, 1, 2] and list(lay.pieces_of_file(1)) == []
    with pytest.raises(IndexError):
        lay.piece_size(3)


def _write_tree(root: Path, files: list[tuple[str, bytes]]) -> list[Path]:
    paths = []
    for rel, data in files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        paths.append(p)
    return paths


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("piece_length,chunk,batch", [(16, 64, 64), (16, 16, 16), (64, 16, 128), (48, 32, 100)])
def test_hash_pieces_matches_hashlib_over_the_concatenated_stream(
    tmp_path: Path, threads: int, piece_length: int, chunk: int, batch: int
) -> None:
    # Pieces smaller than, equal to and larger than a read, and batches that
    # do not divide the piece count, all hash the same bytes.
    sizes = [0, 7, 100, 1, 0, 64, 33]
    data = [os.urandom(n) for n in sizes]
    paths = _write_tree(tmp_path, [(f"f{i}", d) for i, d in enumerate(data)])
    lay = _layout(sizes, piece_length)
    stream = b"".join(data)
    want = b"".join(
        hashlib.sha1(stream[i : i + piece_length]).digest() for i in range(0, len(stream), piece_length)
    )
    got = hash_pieces(lay, list(paths), threads=threads, chunk_size=chunk, batch_size=batch)
    assert bytes(got.digests) == want and not got.unreadable


def test_progress_reports_every_byte_once_on_the_calling_thread(tmp_path: Path) -> None:
    import threading

    paths = _write_tree(tmp_path, [("a", os.urandom(1000)), ("b", os.urandom(333))])
    lay = _layout([1000, 333], 64)
    seen: list[int] = []
    callers = set()

    def progress(n: int) -> None:
        seen.append(n)
        callers.add(threading.current_thread())

    hash_pieces(lay, list(paths), threads=2, batch_size=128, progress=progress)
    assert sum(seen) == 1333
    assert callers == {threading.current_thread()}


def _single_torrent(data: bytes, piece_length: int) -> bytes:
    pieces = b"".join(hashlib.sha1(data[i : i + piece_length]).digest() for i in range(0, len(data), piece_length))
    return encode({b"info": {b"name": b"p.bin", b"length": len(data), b"piece length": piece_length, b"pieces": pieces}})


def test_short_and_missing_files_are_named_and_fail_only_their_pieces(tmp_path: Path) -> None:
    src = tmp_path / "ds"
    _write_tree(src, [("a", os.urandom(40000)), ("b", os.urandom(40000)), ("c", os.urandom(40000))])
    meta = create_torrent(src, piece_length=16384)  # 8 pieces; b is stream bytes 40000-79999
    assert verify_payload(meta, src).ok

    (src / "b").write_bytes((src / "b").read_bytes()[:20000])  # b's bytes from stream 60000 on are gone
    report = verify_payload(meta, src)
    assert [(p.path, p.kind, p.expected, p.actual) for p in report.file_problems] == [("ds/b", "short", 40000, 20000)]
    assert [f.index for f in report.failures] == [3, 4]
    assert all("ds/b" in f.reason for f in report.failures)

    (src / "c").unlink()  # stream 80000-119999: pieces 4-7
    report = verify_payload(meta, src)
    assert {p.path: p.kind for p in report.file_problems} == {"ds/b": "short", "ds/c": "missing"}
    assert [f.index for f in report.failures] == [3, 4, 5, 6, 7]
    assert "ds/c: missing" in report.failures[-1].reason
    assert bytes(report.passed[:3]) == b"\x01\x01\x01"
    assert [tuple(r) for r in report.failed_runs] == [
        (3, 4, "ds/b: short file (20000 of 40000 bytes)"),  # piece 4 lacks bytes of both: the first is named
        (5, 7, "ds/c: missing"),
    ]


def test_a_torrent_far_larger_than_its_payload_fails_in_one_run_without_reading_the_gap(tmp_path: Path) -> None:
    # A 1 TiB torrent over a 1000-byte file: nothing of the missing terabyte
    # may be read or hashed, and the report must stay one run, not 262 144 entries.
    piece_length, size = 1 << 22, 1 << 40
    num_pieces = size // piece_length
    info = {b"name": b"big.bin", b"length": size, b"piece length": piece_length, b"pieces": bytes(20) * num_pieces}
    torrent = tmp_path / "big.torrent"
    torrent.write_bytes(encode({b"info": info}))
    (tmp_path / "big.bin").write_bytes(b"x" * 1000)
    hashed: list[int] = []
    report = verify_payload(torrent, tmp_path / "big.bin", progress=hashed.append)
    assert sum(hashed) == 0
    assert [tuple(r) for r in report.failed_runs] == [
        (0, num_pieces - 1, f"big.bin: short file (1000 of {size} bytes)")
    ]
    assert report.pieces_failed == num_pieces and report.pieces_passed == 0 and not report.ok
    assert report.spans(0, num_pieces - 1) == (("big.bin", 0, size),)
    assert report.as_dict()["failed_runs"] == [
        {
            "first": 0,
            "last": num_pieces - 1,
            "reason": f"big.bin: short file (1000 of {size} bytes)",
            "files": [{"path": "big.bin", "start": 0, "end": size}],
        }
    ]


def test_pad_files_are_zeros_and_never_read(tmp_path: Path) -> None:
    # BEP 47: a pad file's bytes are zeros and are not on disk.
    a, b = os.urandom(10), os.urandom(20)
    stream = a + bytes(6) + b
    pieces = b"".join(hashlib.sha1(stream[i : i + 16]).digest() for i in range(0, len(stream), 16))
    files = [
        {b"length": 10, b"path": [b"a"]},
        {b"length": 6, b"path": [b".pad", b"6"], b"attr": b"p"},
        {b"length": 20, b"path": [b"b"]},
    ]
    meta = parse_metainfo(
        encode({b"info": {b"name": b"t", b"files": files, b"piece length": 16, b"pieces": pieces}})
    )
    _write_tree(tmp_path / "t", [("a", a), ("b", b)])
    assert [f.pad for f in meta.files] == [False, True, False]
    report = verify_payload(meta, tmp_path / "t")
    assert report.ok, report.failures
    assert payload_paths(meta.files, True, tmp_path / "t")[1] is None


trees = st.lists(
    st.tuples(
        st.lists(st.sampled_from(["a", "b", "sub", "dir2", "x.zip"]), min_size=1, max_size=3),
        st.integers(min_value=0, max_value=3000),
    ),
    min_size=1,
    max_size=6,
)


def _materialise(root: Path, tree: list[tuple[list[str], int]], seed: int) -> None:
    """Write a random tree, skipping entries whose path clashes with one already there."""
    taken: set[tuple[str, ...]] = set()
    rng = __import__("random").Random(seed)
    for parts, size in tree:
        key = tuple(parts)
        prefixes = {key[:k] for k in range(1, len(key))}
        if key in taken or any(p in taken for p in prefixes) or any(t[: len(key)] == key for t in taken):
            continue
        taken.add(key)
        p = root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees, piece_exp=st.integers(min_value=14, max_value=15), seed=st.integers(0, 2**32), data=st.data())
def test_create_then_verify_and_any_flipped_byte_fails_exactly_its_piece(
    tree: list[tuple[list[str], int]], piece_exp: int, seed: int, data: st.DataObject
) -> None:
    tmp = Path(tempfile.mkdtemp())
    try:
        root = tmp / "dataset"
        root.mkdir()
        _materialise(root, tree, seed)
        total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        if total == 0:
            return
        meta = parse_metainfo(create_torrent(root, piece_length=1 << piece_exp).to_bytes())
        report = verify_payload(meta, root)
        assert report.ok and report.pieces_passed == meta.num_pieces

        offset = data.draw(st.integers(min_value=0, max_value=total - 1), label="offset")
        target = next(f for f in meta.files if f.offset <= offset < f.offset + f.length)
        on_disk = root.joinpath(*target.path[1:])
        with open(on_disk, "r+b") as fh:
            fh.seek(offset - target.offset)
            byte = fh.read(1)
            fh.seek(offset - target.offset)
            fh.write(bytes([byte[0] ^ 0x5A]))
        report = verify_payload(meta, root)
        piece = offset // meta.piece_length
        assert [f.index for f in report.failures] == [piece]
        failure = report.failures[0]
        assert failure.reason == "hash mismatch"
        in_file = offset - target.offset
        assert any(p == target.path_str and a <= in_file < b for p, a, b in failure.spans)
        assert report.passed.count(0) == 1 and report.passed[piece] == 0
    finally:
        shutil.rmtree(tmp)
