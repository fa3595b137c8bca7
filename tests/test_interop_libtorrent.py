"""Interoperability with libtorrent, run for real: torrents made by each side are read and checked by the other.

1. A torrent ``pyowtorrent.storage.create`` makes loads in libtorrent with the same
   info-hash, files, piece length and piece hashes, and libtorrent's own check
   of the payload finds every piece (it seeds).  When a byte is damaged,
   libtorrent and ``verify_payload`` agree on exactly which piece is bad.
2. A torrent libtorrent makes (v1-only, and hybrid v1+v2 with pad files) is
   read by ``parse_metainfo`` the way libtorrent reads it, and
   ``verify_payload`` clears its payload; a flipped byte fails exactly the
   piece libtorrent maps that byte to, naming the damaged file.
3. ``python -m pyowtorrent.verify`` on libtorrent-made torrents: exit 0 and
   ``DATA INTEGRITY CLEARED!`` for a good payload, exit 1 naming the damaged
   file for a bad one.

libtorrent is a test-only dependency; pyowtorrent never imports it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest

from pyowtorrent.storage.create import auto_piece_length, create_torrent
from pyowtorrent.storage.verifier import verify_payload
from pyowtorrent.metainfo.torrent_file import Metainfo, load_metainfo, parse_metainfo

from .conftest import REPO

import libtorrent as lt  # noqa: E402  (test-only reference implementation)

from .engine_util import make_payload
from .lt_util import LT_SETTINGS, lt_make_torrent

KiB = 1 << 10
MiB = 1 << 20

# How long libtorrent gets to check a payload of a few MiB.  It takes well
# under a second; the deadline only turns a hang into a clear failure.
CHECK_DEADLINE = 60.0

V1_ONLY = lt.create_torrent.v1_only
HYBRID = 0  # libtorrent's default: v1 + v2, files aligned to pieces with pad files
# v1-only, but files aligned to pieces with pad files as in a hybrid torrent.
V1_PADDED = lt.create_torrent.v1_only | lt.create_torrent.canonical_files

# A tree that exercises the layout: a file smaller than a piece, an empty
# file, nested directories, and file boundaries in the middle of pieces
# (no size but the last is a multiple of 16 KiB).
TREE = {
    "0-empty-first": 0,
    "big.bin": 2_300_001,
    "small.txt": 1_000,
    "empty.dat": 0,
    "nested/deeper/mid.bin": 70_001,
    "nested/deeper/empty-too": 0,
    "nested/tail.bin": 33_333,
    "zzz/last.bin": 3 * 16 * KiB,
    "zzz/zz-empty-last": 0,
}
SINGLE_SIZE = 300_001


# ---------------------------------------------------------------------------
# Helpers


def write_single(path: Path, size: int, seed: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


@pytest.fixture(params=["single", "multi"])
def payload(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A payload under ``tmp_path/data``: one file, or the directory ``TREE``."""
    if request.param == "single":
        return write_single(tmp_path / "data" / "payload.bin", SINGLE_SIZE)
    return make_payload(tmp_path / "data" / "dataset", TREE)


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def lt_storage(ti: Any) -> Any:
    """libtorrent's files as it saves them: ``files()``, with clashing names renamed.

    (``layout()``/``orig_files()`` give the names as written in the torrent;
    pyowtorrent's ``Metainfo.files`` are where the files live, like ``files()``.)
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return ti.files()


def lt_files(ti: Any) -> list[tuple[str, int, bool]]:
    """libtorrent's files as ``(path with '/', size, is pad file)``."""
    fs = lt_storage(ti)
    pad = int(lt.file_storage.flag_pad_file)
    return [
        (fs.file_path(i).replace(os.sep, "/"), fs.file_size(i), bool(int(fs.file_flags(i)) & pad))
        for i in range(fs.num_files())
    ]


def our_files(meta: Metainfo) -> list[tuple[str, int, bool]]:
    return [(f.path_str, f.length, f.pad) for f in meta.files]


def assert_same_torrent(meta: Metainfo, ti: Any) -> None:
    """What libtorrent read from a torrent is what we read from it."""
    assert meta.info_hash.hex() == str(ti.info_hashes().v1)
    assert meta.name == ti.name()
    assert our_files(meta) == lt_files(ti)
    assert meta.piece_length == ti.piece_length()
    assert meta.num_pieces == ti.num_pieces()
    assert meta.total_length == ti.total_size()
    assert [meta.piece_hash(i) for i in range(meta.num_pieces)] == [
        ti.hash_for_piece(i) for i in range(ti.num_pieces())
    ]


@pytest.fixture
def session() -> Iterator[Any]:
    ses = lt.session(LT_SETTINGS)
    try:
        yield ses
    finally:
        for h in ses.get_torrents():
            ses.remove_torrent(h)  # leaves the payload alone


def wait_checked(ses: Any, handle: Any) -> Any:
    """Wait for libtorrent to finish checking ``handle``'s files; fail clearly on an error or a hang."""
    deadline = time.monotonic() + CHECK_DEADLINE
    seen: list[str] = []
    while time.monotonic() < deadline:
        if not ses.wait_for_alert(500):
            continue
        for a in ses.pop_alerts():
            seen.append(f"{type(a).__name__}: {a.message()}")
            if isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)) and a.handle == handle:
                pytest.fail(f"libtorrent could not check the payload: {a.message()}")
            if isinstance(a, lt.torrent_checked_alert) and a.handle == handle:
                return handle.status()
    status = handle.status()
    pytest.fail(
        f"libtorrent did not finish checking within {CHECK_DEADLINE}s (state {status.state},"
        f" {status.num_pieces} pieces); alerts: {seen[-20:]}"
    )


def lt_check(ses: Any, ti: Any, save_path: Path, *, force_recheck: bool = False) -> Any:
    """Add ``ti`` to ``ses`` with its payload at ``save_path``; the status once libtorrent has checked it."""
    atp = lt.add_torrent_params()
    atp.ti = ti
    atp.save_path = str(save_path)
    handle = ses.add_torrent(atp)
    status = wait_checked(ses, handle)
    if force_recheck:
        handle.force_recheck()
        status = wait_checked(ses, handle)
    return status


def lt_piece_of(ti: Any, file_index: int, offset: int) -> int:
    """The piece libtorrent maps byte ``offset`` of file ``file_index`` to."""
    return ti.map_file(file_index, offset, 1).piece


def run_verify(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pyowtorrent.verify", *args], capture_output=True, text=True, env=env, timeout=120
    )


# ---------------------------------------------------------------------------
# 1. Our torrents in libtorrent

# 2 MiB pieces are larger than the hasher's 1 MiB reads: a piece spans several reads.
PIECE_LENGTHS = [
    pytest.param(16 * KiB, id="16KiB"),
    pytest.param(64 * KiB, id="64KiB"),
    pytest.param(2 * MiB, id="2MiB"),
    pytest.param(None, id="auto"),
]


@pytest.mark.parametrize("piece_length", PIECE_LENGTHS)
def test_our_torrent_loads_in_libtorrent_and_it_seeds_the_payload(
    payload: Path, piece_length: int | None, tmp_path: Path, session: Any
) -> None:
    meta = create_torrent(payload, piece_length=piece_length)
    total = sum(p.stat().st_size for p in payload.rglob("*") if p.is_file()) if payload.is_dir() else SINGLE_SIZE
    assert meta.piece_length == (piece_length or auto_piece_length(total))
    if payload.is_dir():
        # The tree really has pieces that straddle files, an empty file, a file under a piece.
        straddling = [i for i in range(meta.num_pieces) if len(meta.layout.piece_slices(i)) > 1]
        assert straddling
        assert any(f.length == 0 for f in meta.files)
        assert any(0 < f.length < meta.piece_length for f in meta.files)

    torrent = tmp_path / "ours.torrent"
    torrent.write_bytes(meta.to_bytes())
    from_bytes = lt.torrent_info(meta.to_bytes())
    from_file = lt.torrent_info(str(torrent))
    for ti in (from_bytes, from_file):
        assert_same_torrent(meta, ti)
        assert not ti.info_hashes().has_v2()
    # And the files libtorrent will look for are the ones on disk.
    if payload.is_dir():
        on_disk = sorted(
            f"{payload.name}/{p.relative_to(payload).as_posix()}" for p in payload.rglob("*") if p.is_file()
        )
        assert sorted(path for path, _, _ in lt_files(from_file)) == on_disk
    else:
        assert lt_files(from_file) == [(payload.name, SINGLE_SIZE, False)]

    status = lt_check(session, from_file, payload.parent)
    assert status.num_pieces == from_file.num_pieces()
    assert all(status.pieces)
    assert status.is_seeding
    assert status.state == lt.torrent_status.seeding


def test_libtorrent_force_recheck_of_our_torrent_still_finds_every_piece(tmp_path: Path, session: Any) -> None:
    root = make_payload(tmp_path / "data" / "dataset", TREE)
    ti = lt.torrent_info(create_torrent(root, piece_length=16 * KiB).to_bytes())
    status = lt_check(session, ti, root.parent, force_recheck=True)
    assert status.num_pieces == ti.num_pieces()
    assert status.is_seeding


# (file, offset in it): a file's first byte, its last byte (in a piece shared
# with the next file), a byte in the middle, the very last byte of the payload.
DAMAGE_SPOTS = [
    pytest.param("big.bin", 0, id="first-byte"),
    pytest.param("big.bin", 2_300_000, id="end-of-file-in-shared-piece"),
    pytest.param("nested/deeper/mid.bin", 40_000, id="middle-of-nested"),
    pytest.param("small.txt", 999, id="small-file"),
    pytest.param("zzz/last.bin", 3 * 16 * KiB - 1, id="last-byte"),
]


@pytest.mark.parametrize(("rel", "offset"), DAMAGE_SPOTS)
def test_libtorrent_and_we_agree_on_the_damaged_piece_of_our_torrent(
    tmp_path: Path, session: Any, rel: str, offset: int
) -> None:
    root = make_payload(tmp_path / "data" / "dataset", TREE)
    meta = create_torrent(root, piece_length=16 * KiB)
    flip_byte(root / rel, offset)
    ti = lt.torrent_info(meta.to_bytes())

    status = lt_check(session, ti, root.parent)
    lt_bad = [i for i, have in enumerate(status.pieces) if not have]
    report = verify_payload(meta, root)
    assert [f.index for f in report.failures] == lt_bad
    assert len(lt_bad) == 1
    assert not status.is_seeding


# ---------------------------------------------------------------------------
# 2. libtorrent's torrents in pyowtorrent

LT_PIECE_LENGTHS = [
    pytest.param(16 * KiB, id="16KiB"),
    pytest.param(64 * KiB, id="64KiB"),
    pytest.param(2 * MiB, id="2MiB"),
    pytest.param(0, id="auto"),
]
LT_FLAGS = [pytest.param(V1_ONLY, id="v1"), pytest.param(HYBRID, id="hybrid"), pytest.param(V1_PADDED, id="v1-padded")]


@pytest.mark.parametrize("flags", LT_FLAGS)
@pytest.mark.parametrize("piece_length", LT_PIECE_LENGTHS)
def test_libtorrent_torrent_parses_the_same_and_its_payload_verifies(
    payload: Path, piece_length: int, flags: int
) -> None:
    data = lt_make_torrent(payload, piece_length, flags)
    ti = lt.torrent_info(data)
    meta = parse_metainfo(data)
    assert_same_torrent(meta, ti)
    assert meta.multi_file == payload.is_dir()
    if piece_length:
        assert meta.piece_length == piece_length

    hashes = ti.info_hashes()
    assert meta.hybrid == hashes.has_v2() == (flags == HYBRID)
    if meta.hybrid:
        assert meta.info_hash_v2 == hashes.v2.to_bytes()
    pads = [f for f in meta.files if f.pad]
    if payload.is_dir() and flags != V1_ONLY:
        assert pads, "libtorrent aligns files with pad files here"
        assert all(f.path[1] == ".pad" for f in pads)
    else:
        assert not pads

    report = verify_payload(meta, payload)
    assert report.ok, report.as_dict()
    assert report.pieces_passed == ti.num_pieces()
    assert all(report.passed)


def test_torrent_from_a_file_loads_like_its_bytes(tmp_path: Path) -> None:
    root = make_payload(tmp_path / "data" / "dataset", TREE)
    path = tmp_path / "lt.torrent"
    path.write_bytes(lt_make_torrent(root, 16 * KiB, HYBRID))
    meta = load_metainfo(path)
    assert_same_torrent(meta, lt.torrent_info(str(path)))
    assert verify_payload(path, root).ok
    assert meta.to_bytes() == path.read_bytes()  # libtorrent writes canonical bencoding; we give it back as it was


@pytest.mark.parametrize("flags", LT_FLAGS)
@pytest.mark.parametrize(("rel", "offset"), DAMAGE_SPOTS)
def test_flipped_byte_fails_exactly_the_piece_libtorrent_maps_it_to(
    tmp_path: Path, rel: str, offset: int, flags: int
) -> None:
    root = make_payload(tmp_path / "data" / "dataset", TREE)
    data = lt_make_torrent(root, 16 * KiB, flags)
    ti = lt.torrent_info(data)
    meta = parse_metainfo(data)
    assert verify_payload(meta, root).ok

    path_str = f"{root.name}/{rel}"
    file_index = [p for p, _, _ in lt_files(ti)].index(path_str)
    piece = lt_piece_of(ti, file_index, offset)
    flip_byte(root / rel, offset)

    report = verify_payload(meta, root)
    assert not report.ok
    assert [f.index for f in report.failures] == [piece]
    assert report.passed.count(0) == 1 and report.passed[piece] == 0
    failure = report.failures[0]
    assert failure.reason == "hash mismatch"
    # The damaged file is named, with a byte range that holds the damage.
    assert any(p == path_str and a <= offset < b for p, a, b in failure.spans), failure.spans
    # Pad files are never blamed, and every span is a real file of the torrent.
    real = {f.path_str for f in meta.files if not f.pad}
    assert {p for p, _, _ in failure.spans} <= real


@pytest.mark.parametrize("flags", LT_FLAGS)
def test_flipped_byte_in_a_single_file_torrent(tmp_path: Path, flags: int) -> None:
    path = write_single(tmp_path / "data" / "payload.bin", SINGLE_SIZE)
    data = lt_make_torrent(path, 16 * KiB, flags)
    ti = lt.torrent_info(data)
    meta = parse_metainfo(data)
    assert not meta.multi_file and [f.pad for f in meta.files] == [False]
    assert verify_payload(meta, path).ok
    offset = 123_456
    flip_byte(path, offset)
    report = verify_payload(meta, path)
    assert [f.index for f in report.failures] == [lt_piece_of(ti, 0, offset)]
    assert report.failures[0].spans == ((path.name, 7 * 16 * KiB, 8 * 16 * KiB),)


def test_libtorrent_hybrid_keeps_pad_files_out_of_the_payload(tmp_path: Path) -> None:
    """A hybrid's pad files are zeros that exist nowhere on disk: verification must not look for them."""
    root = make_payload(tmp_path / "data" / "dataset", TREE)
    meta = parse_metainfo(lt_make_torrent(root, 64 * KiB, HYBRID))
    pads = [f for f in meta.files if f.pad]
    assert pads
    assert not any(root.joinpath(*f.path[1:]).exists() for f in pads)
    # Each real file starts on a piece boundary, as in the v2 layout.
    assert all(f.offset % meta.piece_length == 0 for f in meta.files if not f.pad and f.length)
    report = verify_payload(meta, root)
    assert report.ok and not report.file_problems


# --- Bugs found by these tests (they fail until pyowtorrent is fixed) ------


def test_libtorrent_hybrid_with_case_clashing_names_loads(tmp_path: Path) -> None:
    """BUG: libtorrent makes and loads a hybrid torrent of a directory holding ``A`` and ``a``
    (it saves the second as ``a.1``, as for a v1 torrent); ``parse_metainfo`` refuses it:
    "hybrid torrent: v2 file 'dataset/a' does not match v1 file 'dataset/a.1'".
    The duplicate renaming is applied to the v1 paths before they are compared with
    the (unrenamed) v2 file tree.
    """
    root = tmp_path / "data" / "dataset"
    make_payload(root, {"A": 5, "a": 9, "b.bin": 40_000})
    if len(list(root.iterdir())) != 3:
        pytest.skip("case-insensitive file system: cannot hold both A and a")
    data = lt_make_torrent(root, 16 * KiB, HYBRID)
    ti = lt.torrent_info(data)  # libtorrent loads it ...
    assert ("dataset/a.1", 9, False) in lt_files(ti)
    meta = parse_metainfo(data)  # ... and so must we
    assert_same_torrent(meta, ti)


def test_libtorrent_hybrid_with_a_symlink_loads(tmp_path: Path) -> None:
    """BUG: with ``create_torrent.symlinks`` libtorrent writes a symlink's v2 'file tree' entry as
    ``{attr: 'l', symlink path: [...]}`` with no 'length', and loads such a torrent;
    ``parse_metainfo`` refuses it: "v2 file 'link': missing or invalid 'length'".
    (The v1-only torrent of the same tree loads and verifies fine.)
    """
    root = make_payload(tmp_path / "data" / "dataset", {"sub/real.bin": 30_000, "z.bin": 20_000})
    os.symlink(os.path.join("sub", "real.bin"), root / "link")
    flags = lt.create_torrent.symlinks

    def make(extra: int) -> bytes:
        ct = lt.create_torrent(lt.list_files(str(root), flags=flags), 16 * KiB, flags | extra)
        lt.set_piece_hashes(ct, str(root.parent))
        return lt.bencode(ct.generate())

    v1 = make(V1_ONLY)
    meta_v1 = parse_metainfo(v1)
    assert_same_torrent(meta_v1, lt.torrent_info(v1))
    assert [f.symlink for f in meta_v1.files if f.path[-1] == "link"] == [("sub", "real.bin")]
    assert verify_payload(meta_v1, root).ok

    hybrid = make(HYBRID)
    ti = lt.torrent_info(hybrid)  # libtorrent loads it ...
    meta = parse_metainfo(hybrid)  # ... and so must we
    assert_same_torrent(meta, ti)
    assert verify_payload(meta, root).ok


# ---------------------------------------------------------------------------
# 3. The verify CLI on libtorrent's torrents


@pytest.mark.parametrize("flags", [pytest.param(V1_ONLY, id="v1"), pytest.param(HYBRID, id="hybrid")])
def test_verify_cli_clears_then_names_the_damaged_file(payload: Path, tmp_path: Path, flags: int) -> None:
    torrent = tmp_path / "lt.torrent"
    torrent.write_bytes(lt_make_torrent(payload, 16 * KiB, flags))

    good = run_verify(str(torrent), str(payload))
    assert good.returncode == 0, good.stdout + good.stderr
    assert "DATA INTEGRITY CLEARED!" in good.stdout
    assert good.stderr == ""

    if payload.is_dir():
        rel, offset = "nested/deeper/mid.bin", 40_000
        damaged, named = payload / rel, f"{payload.name}/{rel}"
    else:
        offset = 123_456
        damaged, named = payload, payload.name
    flip_byte(damaged, offset)
    bad = run_verify(str(torrent), str(payload))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "CLEARED" not in bad.stdout
    failed = [line for line in bad.stdout.splitlines() if "FAILED (hash mismatch)" in line]
    assert len(failed) == 1 and named in failed[0], bad.stdout
    assert bad.stdout.splitlines()[-1].startswith("1 of ")

    ti = lt.torrent_info(str(torrent))
    index = [p for p, _, _ in lt_files(ti)].index(named)
    js = run_verify("--json", str(torrent), str(payload))
    assert js.returncode == 1
    doc = json.loads(js.stdout)
    assert doc["ok"] is False
    assert doc["info_hash"] == str(ti.info_hashes().v1)
    piece = lt_piece_of(ti, index, offset)
    assert [(r["first"], r["last"]) for r in doc["failed_runs"]] == [(piece, piece)]
    assert any(
        f["path"] == named and f["start"] <= offset < f["end"] for f in doc["failed_runs"][0]["files"]
    ), doc


def test_verify_cli_names_a_missing_file_of_a_libtorrent_torrent(tmp_path: Path) -> None:
    root = make_payload(tmp_path / "data" / "dataset", TREE)
    torrent = tmp_path / "lt.torrent"
    torrent.write_bytes(lt_make_torrent(root, 16 * KiB, HYBRID))
    (root / "nested" / "tail.bin").unlink()
    r = run_verify(str(torrent), str(root))
    assert r.returncode == 1
    assert "file dataset/nested/tail.bin: missing" in r.stdout
    assert "CLEARED" not in r.stdout
