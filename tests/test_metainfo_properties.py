"""Property tests of the .torrent parser: hostile input, mutated torrents, and libtorrent as an oracle.

The seeds are libtorrent's own test torrents (``shared/conformance``).  Every
mutation of them must either parse or fail with :class:`MetainfoError`; for
structural mutations of the v1 ones (decode, change one value, re-encode),
libtorrent 2.1.1 must agree on whether the torrent loads and, when it does,
on its name, files, piece count, size and info-hash.

Where libtorrent 2.1.1 and pyowtorrent part, the differential test skips
exactly that class of input (:func:`_known_difference`) and a dedicated test
below pins the difference down: ``xfail(strict=True)`` where pyowtorrent
looks wrong, a plain test where the difference is pyowtorrent being
deliberately stricter than a libtorrent quirk.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import bencodepy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyowtorrent.metainfo.bencoding import decode_dict_with_spans
from pyowtorrent.errors import MetainfoError
from pyowtorrent.metainfo.torrent_file import Metainfo, parse_metainfo

from .conftest import CONFORMANCE
from .lt_util import lt_tracker_tiers

import libtorrent as lt  # noqa: E402  (test-only reference implementation)

_encode = bencodepy.BencodeEncoder().encode
_PIECES = b"\x00" * 20
_LEGACY_PAD_MARK = b"_____padding_file_"


def _load_seeds() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(every torrent we load, the v1-only ones libtorrent loads too), by file name."""
    valid: dict[str, bytes] = {}
    v1: dict[str, bytes] = {}
    for path in sorted((CONFORMANCE / "libtorrent-torrents").glob("*.torrent")):
        data = path.read_bytes()
        try:
            meta = parse_metainfo(data)
        except MetainfoError:
            continue
        valid[path.name] = data
        if meta.hybrid:
            continue
        try:
            lt.torrent_info(data)
        except RuntimeError:
            continue
        v1[path.name] = data
    return valid, v1


VALID, V1 = _load_seeds() if (CONFORMANCE / "libtorrent-torrents").is_dir() else ({}, {})
_TOP = {name: decode_dict_with_spans(data)[0] for name, data in VALID.items()}


def test_seeds_are_present(conformance_dir: Path) -> None:
    assert len(VALID) >= 50
    assert len(V1) >= 40


def _parse(data: bytes) -> Metainfo | None:
    """Our verdict: the Metainfo, or None when rejected.  Anything but MetainfoError fails the test."""
    try:
        meta = parse_metainfo(data)
    except MetainfoError:
        return None
    # Whatever loads must survive its own round trip.
    again = parse_metainfo(meta.to_bytes())
    assert again.info_hash == meta.info_hash
    assert again.files == meta.files
    return meta


def _lt(data: bytes) -> Any:
    try:
        return lt.torrent_info(data)
    except RuntimeError:
        return None


def _summary_ours(meta: Metainfo) -> tuple[Any, ...]:
    return (
        meta.name,
        [(f.path_str, f.length) for f in meta.files if not f.pad],
        sum(f.pad for f in meta.files),
        meta.num_pieces,
        meta.total_length,
        meta.info_hash.hex(),
        [list(t) for t in meta.trackers],
        meta.private,
        meta.comment or "",
        meta.created_by or "",
        meta.creation_date or 0,
    )


def _summary_lt(ti: Any) -> tuple[Any, ...]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        fs = ti.files()
    pad = [bool(fs.file_flags(i) & 1) for i in range(fs.num_files())]
    return (
        ti.name(),
        [(fs.file_path(i), fs.file_size(i)) for i in range(fs.num_files()) if not pad[i]],
        sum(pad),
        ti.num_pieces(),
        ti.total_size(),
        str(ti.info_hashes().v1),
        lt_tracker_tiers(ti),
        ti.priv(),
        ti.comment(),
        ti.creator(),
        ti.creation_date(),
    )


# ---------------------------------------------------------------------------
# Arbitrary and byte-mutated input


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: b"d" + b), st.binary(max_size=300).map(lambda b: b"d4:infod" + b)))
def test_arbitrary_bytes_only_raise_metainfo_error(data: bytes) -> None:
    _parse(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sampled_from(sorted(VALID)), st.data())
def test_byte_mutations_only_raise_metainfo_error(name: str, data: st.DataObject) -> None:
    raw = bytearray(VALID[name])
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]), label="op")
        pos = data.draw(st.integers(0, len(raw)), label="pos")
        if op == "flip" and pos < len(raw):
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and pos < len(raw):
            raw[pos] = data.draw(st.sampled_from(list(b"0123456789iedl:-x\x00\xff")))
        elif op == "insert":
            raw[pos:pos] = data.draw(st.sampled_from([b"i", b"e", b"l", b"d", b"0", b"1", b"9", b":", b"-", b"\xff", b"le", b"de", b"i0e", b"0:"]))
        elif op == "delete":
            del raw[pos : pos + data.draw(st.integers(1, 4))]
        elif op == "truncate":
            del raw[pos:]
        else:
            raw[pos:pos] = raw[pos : pos + data.draw(st.integers(1, 40))]
    _parse(bytes(raw))


# ---------------------------------------------------------------------------
# Structural mutations

_INTS = [
    0, 1, -1, 2, 3, 16383, 16384, 16385, 1 << 31, (1 << 31) - 1, 1 << 32, (1 << 48) - 1, 1 << 48,
    (1 << 63) - 1, 1 << 63, 1 << 64, -(1 << 63), 10**20, 0x3FFFFFFF * 0x4000 - 1, 0x3FFFFFFF * 0x4000,
    0x7FFF * 0x4000, 0x7FFF * 0x4000 + 1,
]
_STRS = [
    b"", b".", b"..", b"/", b"\\", b"a", b"A", b"p", b"x", b"l", b"h", b"px", b"lp", b"xh", b"\x00", b"\xff",
    b"http://a/", b"udp://b:1", b" ", _LEGACY_PAD_MARK, b"x" * 20, b"foo", b"FOO", b"bar.txt", b"Bar.TXT",
    b"bar.1.txt", b"a.b",
]
_KEYS = [
    b"length", b"path", b"path.utf-8", b"name", b"name.utf-8", b"attr", b"files", b"pieces", b"piece length",
    b"symlink path", b"meta version", b"file tree", b"private", b"announce", b"announce-list", b"url-list",
    b"info", b"mtime", b"sha1", b"x",
]


def _random_value(r: random.Random, depth: int = 0) -> Any:
    k = r.randrange(6 if depth < 2 else 2)
    if k == 0:
        return r.choice(_INTS)
    if k == 1:
        return r.choice(_STRS)
    if k == 2:
        return [_random_value(r, depth + 1) for _ in range(r.randrange(3))]
    if k == 3:
        return {r.choice(_KEYS): _random_value(r, depth + 1) for _ in range(r.randrange(3))}
    if k == 4:
        return [r.choice(_STRS) for _ in range(r.randint(1, 3))]
    return {b"length": r.choice(_INTS), b"path": [r.choice(_STRS)]}


def _nodes(v: Any, path: tuple[Any, ...] = ()) -> Any:
    yield path, v
    if isinstance(v, dict):
        for k, c in v.items():
            yield from _nodes(c, path + (k,))
    elif isinstance(v, list):
        for i, c in enumerate(v):
            yield from _nodes(c, path + (i,))


def _copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _copy(c) for k, c in v.items()}
    if isinstance(v, list):
        return [_copy(c) for c in v]
    return v


def _mutated_value(r: random.Random, v: Any) -> Any:
    ops: list[Any]
    if type(v) is int:
        ops = [-v, v + 1, v - 1, v * 2, v * 16384, 0, r.choice(_INTS), str(v).encode(), [v]]
        return r.choice(ops)
    if isinstance(v, bytes):
        ops = [v[: r.randrange(len(v) + 1)], v + r.choice(_STRS), r.choice(_STRS), len(v), [v], {v: v}, v * 2]
        return r.choice(ops)
    if isinstance(v, list):
        ops = [[], v[:-1], v[1:], v + v[-1:], v + [_random_value(r)], b"", 0, {b"x": v}, v[::-1]]
        if v:
            i = r.randrange(len(v))
            ops.append(v[:i] + [_copy(v[i])] + v[i:])
        ops.append([r.choice(_STRS) for _ in range(r.randint(1, 3))])
        return r.choice(ops)
    d = dict(v)
    choice = r.randrange(7)
    if choice < 2 and d:
        d.pop(r.choice(list(d)))
        return d
    if choice < 4:
        d[r.choice(_KEYS)] = _random_value(r)
        return d
    return r.choice([{}, [v], b"", d])


def _mutate(r: random.Random, top: dict[bytes, Any]) -> Any:
    top = _copy(top)
    for _ in range(r.randint(1, 3)):
        nodes = list(_nodes(top))
        in_info = [n for n in nodes if n[0][:1] == (b"info",)]
        path, v = r.choice(in_info if in_info and r.random() < 0.85 else nodes)
        new = _mutated_value(r, v)
        if not path:
            if isinstance(new, dict):
                top = new
            continue
        parent = top
        for k in path[:-1]:
            parent = parent[k]
        parent[path[-1]] = new
    return top


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(VALID)), st.randoms(use_true_random=False))
def test_structural_mutations_only_raise_metainfo_error(name: str, r: random.Random) -> None:
    top = _mutate(r, _TOP[name])
    _parse(_encode(top))


def _ints(v: Any) -> Any:
    if type(v) is int:
        yield v
    elif isinstance(v, dict):
        for c in v.values():
            yield from _ints(c)
    elif isinstance(v, list):
        for c in v:
            yield from _ints(c)


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _known_difference(top: Any) -> str | None:
    """Which known difference (each pinned by a test below) this torrent runs into, if any."""
    info = top.get(b"info") if isinstance(top, dict) else None
    if not isinstance(info, dict):
        return None
    if any(abs(i) >= 1 << 63 for i in _ints(top)):
        return "libtorrent reads integers outside int64 as 0, or refuses them (test_integers_outside_int64)"
    announce_list = top.get(b"announce-list")
    tiers = [t for t in announce_list if isinstance(t, list)] if isinstance(announce_list, list) else []
    urls = [u for u in [top.get(b"announce"), *(u for t in tiers for u in t)] if isinstance(u, bytes)]
    if any(not _is_utf8(u) for u in urls):
        return "a tracker URL that is not UTF-8: libtorrent's Python binding cannot show it"
    if any(u.lstrip().lower().startswith((b"ws://", b"wss://")) for u in urls):
        return "WebTorrent trackers are dropped on purpose (tests/test_tracker_urls.py)"
    mv = info.get(b"meta version")
    if type(mv) is int and not -(1 << 31) <= mv < 1 << 31:
        return "libtorrent truncates 'meta version' to 32 bits (test_meta_version_is_not_truncated)"
    if b"file tree" in info and not isinstance(info[b"file tree"], dict) and mv != 2:
        return "BUG: a v1 torrent with a non-dict 'file tree' (test_v1_torrent_with_stray_file_tree_key)"
    files = info.get(b"files")
    if not isinstance(files, list):
        name_utf8 = info.get(b"name.utf-8")
        name = name_utf8 if isinstance(name_utf8, bytes) else info.get(b"name")
        if name == b"":
            return "BUG: single-file torrent named '' (test_paths.py::test_single_file_with_empty_name_is_rejected)"
        attr = info.get(b"attr")
        if isinstance(attr, bytes) and (b"p" in attr or b"l" in attr):
            return "single-file 'attr' p/l (test_single_file_attr_like_libtorrent)"
        if isinstance(name, bytes) and _LEGACY_PAD_MARK in name:
            return "single file named like a pad file (test_single_file_named_like_a_pad_file)"
    elif files and isinstance(files[0], dict):
        f = files[0]
        attr = f.get(b"attr")
        path = f.get(b"path.utf-8") if isinstance(f.get(b"path.utf-8"), list) else f.get(b"path")
        if isinstance(attr, bytes) and b"p" in attr and not (isinstance(path, list) and path):
            return "first file is a pad file with no path (test_first_file_pad_without_path_names_the_torrent)"
    return None


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(V1)), st.randoms(use_true_random=False))
def test_structural_mutations_agree_with_libtorrent(name: str, r: random.Random) -> None:
    top = _mutate(r, _TOP[name])
    if not isinstance(top, dict):
        return
    data = _encode(top)
    meta = _parse(data)
    ti = _lt(data)
    if meta is None and ti is None:
        return
    if meta is not None and ti is not None and _summary_ours(meta) == _summary_lt(ti):
        return
    if _known_difference(top):
        return
    if meta is None:
        with pytest.raises(MetainfoError) as exc:
            parse_metainfo(data)
        pytest.fail(f"libtorrent loads it, we reject it: {exc.value}\n{data[:600]!r}")
    if ti is None:
        with pytest.raises(RuntimeError) as lt_exc:
            lt.torrent_info(data)
        pytest.fail(f"libtorrent rejects it ({lt_exc.value}), we load it\n{data[:600]!r}")
    assert _summary_ours(meta) == _summary_lt(ti), data[:600]


# ---------------------------------------------------------------------------
# The known differences, one test each


def _info(extra: dict[bytes, Any] | None = None, *, files: list[dict[bytes, Any]] | None = None) -> dict[bytes, Any]:
    info: dict[bytes, Any] = {b"name": b"temp", b"piece length": 16384, b"pieces": _PIECES}
    if files is None:
        info[b"length"] = 5
    else:
        info[b"files"] = files
    info.update(extra or {})
    return info


def _agree(data: bytes) -> None:
    meta = _parse(data)
    ti = _lt(data)
    assert (meta is None) == (ti is None), f"ours: {'rejects' if meta is None else 'loads'}, libtorrent: {'rejects' if ti is None else 'loads'}"
    if meta is not None:
        assert _summary_ours(meta) == _summary_lt(ti)


@pytest.mark.parametrize("tree", [5, b"x", []], ids=["int", "str", "list"])
def test_v1_torrent_with_stray_file_tree_key(tree: Any) -> None:
    _agree(_encode({b"info": _info({b"file tree": tree})}))


def test_v1_torrent_with_dict_file_tree_is_rejected_like_libtorrent() -> None:
    _agree(_encode({b"info": _info({b"file tree": {b"a": {b"": {b"length": 5}}}})}))


@pytest.mark.parametrize("attr", [b"p", b"l"])
def test_single_file_attr_like_libtorrent(attr: bytes) -> None:
    _agree(_encode({b"info": _info({b"attr": attr})}))


def test_single_file_named_like_a_pad_file() -> None:
    _agree(_encode({b"info": _info({b"name": b"x_____padding_file_y"})}))


def test_legacy_pad_names_in_multi_file_torrents_like_libtorrent() -> None:
    for files, name in [
        ([{b"length": 5, b"path": [b"a"]}], b"x_____padding_file_"),
        ([{b"length": 5, b"path": [b"_____padding_file_", b"a"]}, {b"length": 5, b"path": [b"b"]}], b"temp"),
        ([{b"length": 5, b"path": [b"d", b"x_____padding_file_y"]}, {b"length": 5, b"path": [b"b"]}], b"temp"),
        ([{b"length": 5, b"path": [b"a"], b"path.utf-8": [_LEGACY_PAD_MARK]}, {b"length": 5, b"path": [b"b"]}], b"temp"),
    ]:
        _agree(_encode({b"info": _info({b"name": name}, files=files)}))


@pytest.mark.xfail(
    strict=True,
    reason="MISMATCH (cosmetic): when the first file is a pad file with no path, libtorrent 2.1.1 names the "
    "torrent '.pad' (the files stay under 'temp/'); ours keeps 'temp'",
)
def test_first_file_pad_without_path_names_the_torrent() -> None:
    files = [{b"length": 5, b"attr": b"p"}, {b"length": 5, b"path": [b"a"]}]
    _agree(_encode({b"info": _info(files=files)}))


def test_dht_nodes_with_unusable_ports_are_dropped() -> None:
    """Accepted difference: libtorrent keeps 'nodes' entries with port 0 or a negative port; nobody can be reached there."""
    nodes = [[b"127.0.0.1", 0], [b"10.0.0.1", -6881], [b"10.0.0.2", 65536], [b"router.example", 6881]]
    data = _encode({b"info": _info(), b"nodes": nodes})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        theirs = [tuple(n) for n in lt.torrent_info(data).nodes()]
    assert theirs == [("127.0.0.1", 0), ("10.0.0.1", -6881), ("10.0.0.2", 65536), ("router.example", 6881)]
    assert parse_metainfo(data).nodes == (("router.example", 6881),)


@pytest.mark.parametrize("text", [b"a\xffb", b"a\xc3(b", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok \xe2\x82\xac"])
def test_comment_and_creator_decode_like_libtorrent(text: bytes) -> None:
    _agree(_encode({b"info": _info(), b"comment": text, b"created by": text}))


def test_tiers_that_are_not_lists_and_an_announce_that_is_not_a_string_are_ignored() -> None:
    _agree(_encode({b"info": _info(), b"announce-list": [b"http://a/", [b"http://b/"]], b"announce": b"http://c/"}))
    _agree(_encode({b"info": _info(), b"announce-list": [b"http://a/"], b"announce": [b"http://c/"]}))


def test_integers_outside_int64() -> None:
    """Accepted difference: libtorrent reads |n| >= 2**63 as 0 (a file 'length' of 2**64 loads as an empty file); we refuse."""
    files = [{b"length": 1 << 64, b"path": [b"a"]}, {b"length": 5, b"path": [b"b"]}]
    data = _encode({b"info": _info(files=files)})
    assert _summary_lt(lt.torrent_info(data))[1] == [("temp/a", 0), ("temp/b", 5)]
    with pytest.raises(MetainfoError, match="out of range"):
        parse_metainfo(data)


@pytest.mark.parametrize("value", [10**20, -(10**20), 10**30])
def test_huge_integer_anywhere_is_refused_like_libtorrent(value: int) -> None:
    _agree(_encode({b"info": _info(), b"creation date": value}))


def test_meta_version_is_not_truncated() -> None:
    """Accepted difference: libtorrent reads 'meta version' as a 32-bit int (2**32 + 1 passes as 1); we refuse."""
    data = _encode({b"info": _info({b"meta version": (1 << 32) + 1})})
    lt.torrent_info(data)
    with pytest.raises(MetainfoError, match="meta version"):
        parse_metainfo(data)


@pytest.mark.parametrize("which", ["info", "name"])
def test_repeated_keys_read_like_libtorrent(which: str) -> None:
    one = _encode(_info({b"name": b"one"}))
    two = _encode(_info({b"name": b"two"}))
    if which == "info":
        data = b"d4:info" + one + b"4:info" + two + b"e"
    else:
        data = b"d4:info" + one[:-1] + b"4:name3:two" + b"ee"
    _agree(data)


def test_token_limit_counts_containers_like_libtorrent() -> None:
    info = _encode(_info())
    data = b"d4:info" + info + b"1:xl" + b"le" * 1_600_000 + b"ee"
    _agree(data)


def test_leading_zeros_are_refused() -> None:
    """Deliberate strictness: libtorrent reads i01e as 1; we refuse the torrent (BEP 3 forbids it)."""
    info = _encode(_info())
    data = b"d13:creation datei01e4:info" + info + b"e"
    lt.torrent_info(data)
    with pytest.raises(MetainfoError, match="bencoding"):
        parse_metainfo(data)
