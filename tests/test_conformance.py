"""libtorrent's own test torrents: what it loads we load, the same way; what it rejects we reject.

Two sources of truth: the verdicts and checks recorded in
``libtorrent-torrents.json``, and the libtorrent wheel itself, which we ask
for the name, files, sizes and piece count of every torrent both accept.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from pyowtorrent.errors import MetainfoError
from pyowtorrent.metainfo.torrent_file import Metainfo, load_metainfo

from .conftest import CONFORMANCE

import libtorrent as lt  # noqa: E402  (test-only reference implementation)

# Where we part from libtorrent on purpose.  This engine speaks BitTorrent v1
# only; a torrent with no v1 part cannot be downloaded by it, so it is
# refused up front with a clear message rather than loaded and left stuck.
V2_ONLY = "v2-only torrents are not supported"
DELIBERATE = {
    "v2_only.torrent": V2_ONLY,
    "v2_invalid_filename.torrent": V2_ONLY,
    "v2_multiple_files.torrent": V2_ONLY,
    "v2_invalid_filename2.torrent": V2_ONLY,
    "v2_symlinks.torrent": V2_ONLY,
    "v2_no_piece_layers.torrent": V2_ONLY,
    "v2_incomplete_piece_layer.torrent": V2_ONLY,
}


def _entries() -> list[dict[str, Any]]:
    path = CONFORMANCE / "libtorrent-torrents.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text())["torrents"]


ENTRIES = _entries()


def test_suite_is_present(conformance_dir: Path) -> None:
    assert len(ENTRIES) >= 100


def test_unlisted_files_all_load_or_fail_cleanly(conformance_dir: Path) -> None:
    listed = {e["file"] for e in ENTRIES}
    for path in sorted((conformance_dir / "libtorrent-torrents").glob("*.torrent")):
        if path.name not in listed:
            try:
                load_metainfo(path)
            except MetainfoError:
                pass


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_conformance(entry: dict[str, Any], conformance_dir: Path) -> None:
    path = conformance_dir / "libtorrent-torrents" / entry["file"]
    if entry["file"] in DELIBERATE:
        with pytest.raises(MetainfoError, match=DELIBERATE[entry["file"]]):
            load_metainfo(path)
        return
    if entry["expect"] == "error":
        with pytest.raises(MetainfoError):
            load_metainfo(path)
        return
    meta = load_metainfo(path)
    _check_recorded(meta, entry.get("checks", {}))
    _check_against_libtorrent(meta, path)


def _check_recorded(meta: Metainfo, checks: dict[str, Any]) -> None:
    paths = [f.path_str for f in meta.files]
    for key, want in checks.items():
        if key == "files":
            assert paths == want
        elif key == "files_index":
            for index, p in want.items():
                assert paths[int(index)] == p
        elif key == "num_files":
            assert len(meta.files) == want
        elif key == "name":
            assert meta.name == want
        elif key == "piece_length":
            assert meta.piece_length == want
        elif key == "creation_date":
            assert meta.creation_date == want
        elif key == "first_tracker":
            assert meta.trackers[0][0] == want
        elif key == "web_seeds":
            assert list(meta.web_seeds) == want
        elif key == "num_web_seeds":
            assert len(meta.web_seeds) == want
        elif key == "pad_files":
            assert [f.pad for f in meta.files] == want
        elif key == "dht_nodes":
            assert [list(n) for n in meta.nodes] == want
        elif key == "hybrid":
            assert meta.hybrid == want
        elif key == "v2_info_hash":
            assert meta.info_hash_v2 is not None and meta.info_hash_v2.hex() == want
        else:
            raise AssertionError(f"conformance check {key!r} is not understood by this test")


def _check_against_libtorrent(meta: Metainfo, path: Path) -> None:
    ti = lt.torrent_info(str(path))
    assert meta.info_hash.hex() == str(ti.info_hashes().v1)
    assert meta.name == ti.name()
    assert meta.total_length == ti.total_size()
    assert meta.num_pieces == ti.num_pieces()
    assert meta.piece_length == ti.piece_length()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        fs = ti.files()
    # A hybrid torrent's files in libtorrent are its v2 tree, whose pad files
    # are named differently; the real files must agree.
    theirs = [(fs.file_path(i), fs.file_size(i)) for i in range(fs.num_files()) if not fs.file_flags(i) & 1]
    ours = [(f.path_str, f.length) for f in meta.files if not f.pad]
    assert ours == theirs
    assert [f.pad for f in meta.files].count(True) == sum(1 for i in range(fs.num_files()) if fs.file_flags(i) & 1)


def test_metainfo_is_read_only_and_copies_keep_the_exact_info_bytes() -> None:
    # unordered.torrent's info dict is not in sorted order: a copy re-made by
    # re-encoding the info dict would change its info-hash.
    meta = load_metainfo(CONFORMANCE / "libtorrent-torrents" / "unordered.torrent")
    with pytest.raises(AttributeError, match="read-only"):
        meta.name = "elsewhere"
    for twin in (copy.copy(meta), copy.deepcopy(meta)):
        assert twin is not meta
        assert twin.info_bytes == meta.info_bytes and twin.info_hash == meta.info_hash
        assert twin.files == meta.files and twin.trackers == meta.trackers
    assert repr(meta) == f"<Metainfo {meta.name!r} info_hash={meta.info_hash.hex()} {meta.num_pieces} pieces of {meta.piece_length}>"
