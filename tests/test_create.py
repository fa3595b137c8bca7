"""Torrent creation from files and directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyowtorrent.metainfo.bencoding import decode
from pyowtorrent.storage.create import auto_piece_length, create_torrent
from pyowtorrent.errors import MetainfoError, StorageError
from pyowtorrent.storage.verifier import verify_payload
from pyowtorrent.metainfo.torrent_file import parse_metainfo


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


@pytest.mark.parametrize(
    "total,expected",
    [(1, 16 << 10), (32 << 20, 16 << 10), ((32 << 20) + 1, 32 << 10), (1 << 30, 512 << 10), (10 << 30, 8 << 20), (1 << 40, 16 << 20)],
)
def test_auto_piece_length_keeps_about_two_thousand_pieces(total: int, expected: int) -> None:
    assert auto_piece_length(total) == expected


def test_directory_torrent_lists_files_in_path_order_and_round_trips(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ds", {"z.bin": b"z" * 5, "a/b.txt": b"hello", "a/a.txt": b"", "m": os.urandom(40000)})
    meta = create_torrent(root, piece_length=16384, creation_date=None, created_by=None)
    assert meta.multi_file and meta.name == "ds"
    assert [f.path_str for f in meta.files] == ["ds/a/a.txt", "ds/a/b.txt", "ds/m", "ds/z.bin"]
    assert [f.length for f in meta.files] == [0, 5, 40000, 5]
    again = parse_metainfo(meta.to_bytes())
    assert again.info_hash == meta.info_hash and again.files == meta.files
    assert verify_payload(again, root).ok


def test_same_tree_same_bytes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ds", {"b": b"1" * 100, "a": b"2" * 100})
    one = create_torrent(root, creation_date=None).to_bytes()
    two = create_torrent(root, creation_date=None).to_bytes()
    assert one == two


def test_single_file_torrent(tmp_path: Path) -> None:
    f = tmp_path / "payload.zip"
    f.write_bytes(os.urandom(70000))
    meta = create_torrent(f, piece_length=32768)
    assert not meta.multi_file and meta.name == "payload.zip" and meta.num_pieces == 3
    info = decode(meta.info_bytes)
    assert info[b"length"] == 70000 and b"files" not in info
    assert verify_payload(meta, f).ok


def test_trackers_web_seeds_private_comment(tmp_path: Path) -> None:
    f = tmp_path / "p"
    f.write_bytes(b"x" * 1000)
    meta = create_torrent(
        f,
        trackers=["udp://t1:1/announce", ["http://t2/announce", "http://t3/announce"]],
        web_seeds=["http://seed/p"],
        private=True,
        comment="dataset v1",
        creation_date=1234,
    )
    top = decode(meta.to_bytes())
    assert top[b"announce"] == b"udp://t1:1/announce"
    assert top[b"announce-list"] == [[b"udp://t1:1/announce"], [b"http://t2/announce", b"http://t3/announce"]]
    assert top[b"url-list"] == [b"http://seed/p"]
    assert top[b"info"][b"private"] == 1 and meta.private
    assert meta.comment == "dataset v1" and meta.creation_date == 1234
    public = create_torrent(f, creation_date=1234)
    assert public.info_hash != meta.info_hash  # BEP 27: private is part of the info-hash


@pytest.mark.parametrize("url", ["http://tracker/ann ounce", "tracker.example/announce", "http://user@t/announce"])
def test_a_tracker_url_clients_would_drop_is_refused_before_hashing(tmp_path: Path, url: str) -> None:
    f = tmp_path / "p"
    f.write_bytes(b"x" * 1000)
    hashed: list[int] = []
    with pytest.raises(ValueError, match="not a URL BitTorrent clients accept"):
        create_torrent(f, trackers=["udp://t1:1/announce", url], progress=hashed.append)
    assert hashed == []  # refused before any hashing


def test_nothing_to_share_is_an_error(tmp_path: Path) -> None:
    _tree(tmp_path / "empty", {"zero": b""})
    with pytest.raises(StorageError, match="nothing to share"):
        create_torrent(tmp_path / "empty")
    with pytest.raises(StorageError, match="no such file"):
        create_torrent(tmp_path / "absent")


@pytest.mark.parametrize("bad", [1000, 16383, 3 << 14])
def test_piece_length_must_be_a_power_of_two_from_16k(tmp_path: Path, bad: int) -> None:
    f = tmp_path / "p"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="power of two"):
        create_torrent(f, piece_length=bad)


@pytest.mark.parametrize("names", [["a\x01b"], ["Data.zip", "data.zip"]])
def test_names_a_client_would_change_are_refused(tmp_path: Path, names: list[str]) -> None:
    # A control character is sanitised and a case-only clash renamed by
    # clients: the payload would then not verify against its own torrent.
    root = _tree(tmp_path / "ds", {n: b"x" * 10 for n in names})
    with pytest.raises(MetainfoError, match="rename it first"):
        create_torrent(root)


def test_symlinked_directories_are_not_followed(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ds", {"real/f": b"data"})
    os.symlink(root / "real", root / "loop")
    meta = create_torrent(root)
    assert [f.path_str for f in meta.files] == ["ds/real/f"]
