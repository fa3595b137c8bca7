"""Metainfo (.torrent) parsing: BEP 3, 12, 19, 27, 47 and the v1 part of BEP 52.

libtorrent is the yardstick: what it loads we load, with the same sanitised
file paths; what it rejects we reject with a :class:`MetainfoError` that
names the rule.  Only deliberate difference: v2-only torrents (no v1 piece
hashes) are refused, since this engine speaks v1.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from .bencoding import Bencached, decode_dict_with_spans, encode
from ..errors import BencodeError, MetainfoError
from .layout import BLOCK_SIZE, FileEntry, Layout
from .paths import decode_text, resolve_duplicates, sanitize_element, sanitize_name
from .urls import ANNOUNCE_SCHEMES, is_tracker_url, web_seed_url

__all__ = [
    "Metainfo",
    "is_tracker_url",
    "load_metainfo",
    "metainfo_from_info",
    "parse_metainfo",
    "MAX_TORRENT_SIZE",
    "MAX_PIECES",
]

# A .torrent larger than this is not one we will read (libtorrent: 10 MB by
# default; ours leaves room for 1.5 million pieces).
MAX_TORRENT_SIZE = 32 << 20
# libtorrent's default limit (load_torrent_limits::max_pieces).
MAX_PIECES = 0x200000
# libtorrent's limits: pieces of at most 32767 blocks, files under 16 TiB,
# torrents under 256 TiB (its offsets are 48-bit).
MAX_PIECE_LENGTH = 0x7FFF * 0x4000
MAX_FILE_LENGTH = 0x3FFFFFFF * 0x4000 - 1
MAX_TOTAL_LENGTH = (1 << 48) - 1
# Legacy (pre-BEP 47) pad files are recognised by name, as libtorrent does.
_LEGACY_PAD_MARK = "_____padding_file_"


class Metainfo:
    """A parsed torrent.  ``info_bytes`` is the info dictionary exactly as it was in the file.

    Read-only.  A plain class, not a dataclass: ``python -m pyowtorrent.verify``
    imports this module and every millisecond of its start-up counts.
    """

    __slots__ = (
        "info_hash",
        "info_bytes",
        "name",
        "piece_length",
        "piece_hashes",
        "layout",
        "multi_file",
        "trackers",
        "web_seeds",
        "http_seeds",
        "private",
        "creation_date",
        "comment",
        "created_by",
        "nodes",
        "info_hash_v2",
        "raw_top",
    )

    info_hash: bytes
    info_bytes: bytes
    name: str
    piece_length: int
    piece_hashes: bytes
    layout: Layout
    multi_file: bool
    trackers: tuple[tuple[str, ...], ...]
    web_seeds: tuple[str, ...]
    http_seeds: tuple[str, ...]
    private: bool
    creation_date: int | None
    comment: str | None
    created_by: str | None
    nodes: tuple[tuple[str, int], ...]
    info_hash_v2: bytes | None  # SHA-256 of the info dict, for hybrid torrents
    # The top-level dictionary as decoded, less 'info': what to_bytes() writes back.
    raw_top: dict[bytes, Any]

    def __init__(
        self,
        *,
        info_hash: bytes,
        info_bytes: bytes,
        name: str,
        piece_length: int,
        piece_hashes: bytes,
        layout: Layout,
        multi_file: bool,
        trackers: tuple[tuple[str, ...], ...] = (),
        web_seeds: tuple[str, ...] = (),
        http_seeds: tuple[str, ...] = (),
        private: bool = False,
        creation_date: int | None = None,
        comment: str | None = None,
        created_by: str | None = None,
        nodes: tuple[tuple[str, int], ...] = (),
        info_hash_v2: bytes | None = None,
        raw_top: dict[bytes, Any] | None = None,
    ) -> None:
        values = dict(locals())  # every parameter becomes the attribute of its name
        del values["self"]
        if values["raw_top"] is None:
            values["raw_top"] = {}
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"Metainfo is read-only (cannot set {key!r})")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"Metainfo is read-only (cannot delete {key!r})")

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        # Copies (copy.copy, deepcopy, multiprocessing) are made from the
        # torrent's bytes: the info dictionary is kept byte for byte.
        return parse_metainfo, (self.to_bytes(),)

    def __repr__(self) -> str:
        return (
            f"<Metainfo {self.name!r} info_hash={self.info_hash.hex()}"
            f" {self.num_pieces} pieces of {self.piece_length}>"
        )

    @property
    def files(self) -> tuple[FileEntry, ...]:
        return self.layout.files

    @property
    def num_pieces(self) -> int:
        return self.layout.num_pieces

    @property
    def total_length(self) -> int:
        return self.layout.total_length

    @property
    def hybrid(self) -> bool:
        return self.info_hash_v2 is not None

    def piece_hash(self, index: int) -> bytes:
        return self.piece_hashes[20 * index : 20 * index + 20]

    def magnet(self) -> str:
        from .magnet import Magnet

        return Magnet(
            info_hash=self.info_hash,
            info_hash_v2=self.info_hash_v2,
            display_name=self.name,
            trackers=tuple(t for tier in self.trackers for t in tier),
            web_seeds=self.web_seeds,
        ).uri()

    def to_bytes(self) -> bytes:
        """The .torrent file: the info dictionary byte for byte, the rest re-encoded."""
        return encode({**self.raw_top, b"info": Bencached(self.info_bytes)})


def load_metainfo(path: str | os.PathLike[str]) -> Metainfo:
    """Read and parse a .torrent file."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TORRENT_SIZE + 1)
    except OSError as exc:
        raise MetainfoError(f"{os.fspath(path)}: cannot read: {exc.strerror or exc}") from None
    try:
        return parse_metainfo(data)
    except MetainfoError as exc:
        raise MetainfoError(f"{os.fspath(path)}: {exc}") from None


def parse_metainfo(data: bytes) -> Metainfo:
    """Parse the bytes of a .torrent file; :class:`MetainfoError` names the rule a bad one breaks."""
    if len(data) > MAX_TORRENT_SIZE:
        raise MetainfoError(f"larger than {MAX_TORRENT_SIZE} bytes: not a torrent we will read")
    if data[:1] != b"d":
        raise MetainfoError("not a torrent: the file is not a bencoded dictionary")
    try:
        top, spans = decode_dict_with_spans(data)
    except BencodeError as exc:
        raise MetainfoError(f"invalid bencoding: {exc}") from None
    info = top.get(b"info")
    if not isinstance(info, dict):
        raise MetainfoError("missing or invalid 'info' dictionary")
    start, end = spans[b"info"]
    info_bytes = data[start:end]
    info_hash = hashlib.sha1(info_bytes).digest()

    meta_version = info.get(b"meta version")
    if type(meta_version) is int and meta_version > 2:
        raise MetainfoError(f"unknown 'meta version' {meta_version}")
    v2 = meta_version == 2
    if isinstance(info.get(b"file tree"), dict) and not v2:
        raise MetainfoError("'file tree' without 'meta version' 2")
    if v2 and not _keys_sorted(info):
        raise MetainfoError("invalid bencoding: a v2 info dictionary must have its keys sorted")
    if v2 and b"files" not in info and b"length" not in info:
        raise MetainfoError("v2-only torrents are not supported (the info dictionary has no v1 part)")

    piece_length = info.get(b"piece length")
    if type(piece_length) is not int or not 0 < piece_length <= MAX_PIECE_LENGTH:
        raise MetainfoError(f"missing or invalid 'piece length' (must be an integer in 1..{MAX_PIECE_LENGTH})")
    if v2 and (piece_length < BLOCK_SIZE or piece_length & (piece_length - 1)):
        raise MetainfoError("'piece length' of a hybrid torrent must be a power of two of at least 16 KiB")

    multi_file = isinstance(info.get(b"files"), list)
    raw_name = _string_key(info, b"name")
    if raw_name is None:
        raise MetainfoError("missing or invalid 'name' (must be a string)")
    name = sanitize_name(raw_name, info_hash, single_file=not multi_file)

    if multi_file:
        files, as_named = _parse_files(info, name)
    else:
        files = [_single_file(info, name)]
        as_named = [files[0].path]
    layout = Layout(piece_length, files)
    if layout.total_length // piece_length > (1 << 30) - 1 or layout.num_pieces > MAX_PIECES:
        raise MetainfoError(f"{layout.num_pieces} pieces is more than the limit of {MAX_PIECES}")

    pieces = info.get(b"pieces")
    if not isinstance(pieces, bytes):
        raise MetainfoError("missing or invalid 'pieces' (must be a string of SHA-1 hashes)")
    if len(pieces) != 20 * layout.num_pieces:
        raise MetainfoError(
            f"'pieces' is {len(pieces)} bytes but {layout.num_pieces} pieces of {piece_length} bytes"
            f" need {20 * layout.num_pieces}"
        )
    if layout.total_length == 0:
        raise MetainfoError("the torrent holds no data (total length is 0)")

    info_hash_v2 = None
    if v2:
        _check_hybrid(info, layout, name, multi_file, as_named)
        info_hash_v2 = hashlib.sha256(info_bytes).digest()

    comment = _string_key(top, b"comment.utf-8") or _string_key(top, b"comment")
    created_by = _string_key(top, b"created by.utf-8") or _string_key(top, b"created by")
    creation_date = top.get(b"creation date")
    return Metainfo(
        info_hash=info_hash,
        info_bytes=info_bytes,
        name=name,
        piece_length=piece_length,
        piece_hashes=pieces,
        layout=layout,
        multi_file=multi_file,
        trackers=_parse_trackers(top),
        web_seeds=_web_seeds(top.get(b"url-list"), multi_file and len(files) > 1),
        http_seeds=_web_seeds(top.get(b"httpseeds"), False),
        private=type(info.get(b"private")) is int and info[b"private"] != 0,
        creation_date=creation_date if type(creation_date) is int and creation_date >= 0 else None,
        comment=_text(comment),
        created_by=_text(created_by),
        nodes=_parse_nodes(top.get(b"nodes")),
        info_hash_v2=info_hash_v2,
        raw_top={k: v for k, v in top.items() if k != b"info"},
    )


def metainfo_from_info(
    info_bytes: bytes, *, trackers: tuple[str, ...] | list[str] = (), web_seeds: tuple[str, ...] | list[str] = ()
) -> Metainfo:
    """The torrent of an info dictionary fetched from peers (a magnet link), with the magnet's trackers and web seeds.

    The info dictionary is kept byte for byte (its SHA-1 is the info-hash);
    each tracker gets a tier of its own, as libtorrent gives a magnet's.
    :class:`MetainfoError` if it is not a torrent we can use.
    """
    top: dict[bytes, Any] = {b"info": Bencached(bytes(info_bytes))}
    if trackers:
        top[b"announce"] = trackers[0].encode()
        top[b"announce-list"] = [[t.encode()] for t in trackers]
    if web_seeds:
        top[b"url-list"] = [w.encode() for w in web_seeds]
    return parse_metainfo(encode(top))


def _string_key(d: dict[bytes, Any], key: bytes) -> bytes | None:
    """``key.utf-8`` when it is a string, else ``key`` when it is one (BEP 3's text keys)."""
    for k in (key + b".utf-8", key):
        v = d.get(k)
        if isinstance(v, bytes):
            return v
    return None


def _text(v: bytes | None) -> str | None:
    return decode_text(v) if v else None


def _check_length(length: Any, what: str) -> int:
    if type(length) is not int:
        raise MetainfoError(f"{what}: missing or invalid 'length' (must be an integer)")
    if not 0 <= length <= MAX_FILE_LENGTH:
        raise MetainfoError(f"{what}: 'length' {length} is out of range 0..{MAX_FILE_LENGTH}")
    return length


def _single_file(info: dict[bytes, Any], name: str) -> FileEntry:
    attr = _attr(info)
    # The same attribute rules as for an entry of 'files' (libtorrent shares them).
    length = 0 if "l" in attr else _check_length(info.get(b"length"), "single-file torrent")
    pad = "p" in attr or _LEGACY_PAD_MARK in name
    return FileEntry((name,), length, 0, pad=pad, executable="x" in attr, hidden="h" in attr, mtime=_mtime(info))


def _parse_files(info: dict[bytes, Any], name: str) -> tuple[list[FileEntry], list[tuple[str, ...]]]:
    """The files, and their paths as named before clashing names were renamed."""
    raw_files = info[b"files"]
    if not raw_files:
        raise MetainfoError("'files' is empty: the torrent has no files")
    entries: list[dict[str, Any]] = []
    offset = 0
    for i, f in enumerate(raw_files):
        what = f"files[{i}]"
        if not isinstance(f, dict):
            raise MetainfoError(f"{what} is not a dictionary")
        attr = _attr(f)
        symlink = None
        if "l" in attr:
            length = 0  # a symlink holds no bytes of the torrent, whatever 'length' says
            symlink = _symlink_target(f.get(b"symlink path"), what)
        else:
            length = _check_length(f.get(b"length"), what)
        raw_path = f.get(b"path.utf-8")
        if not isinstance(raw_path, list):
            raw_path = f.get(b"path")
        pad = "p" in attr
        if not isinstance(raw_path, list) or not raw_path:
            if not pad:
                raise MetainfoError(f"{what}: missing 'path'")
            path: tuple[str, ...] = (".pad", str(length))  # outside the torrent's directory, as in libtorrent
        else:
            if not all(isinstance(e, bytes) for e in raw_path):
                raise MetainfoError(f"{what}: 'path' must be a list of strings")
            path = (name, *(sanitize_element(e) for e in raw_path))
            pad = pad or any(_LEGACY_PAD_MARK in e for e in path)
        entries.append(dict(path=path, length=length, offset=offset, pad=pad, attr=attr, symlink=symlink, f=f))
        offset += length
        if offset > MAX_TOTAL_LENGTH:
            raise MetainfoError(f"total length passes {MAX_TOTAL_LENGTH} bytes at {what}")
    as_named = [e["path"] for e in entries]
    paths = resolve_duplicates(as_named, [e["pad"] for e in entries], [e["length"] for e in entries])
    files = [
        FileEntry(
            p,
            e["length"],
            e["offset"],
            pad=e["pad"],
            executable="x" in e["attr"],
            hidden="h" in e["attr"],
            symlink=e["symlink"],
            mtime=_mtime(e["f"]),
        )
        for p, e in zip(paths, entries)
    ]
    return files, as_named


def _symlink_target(value: Any, what: str) -> tuple[str, ...] | None:
    """A symlink's target, relative to the torrent's directory; ``None`` when there is none.

    Elements that sanitise to nothing (``..`` among them) vanish, so a target
    can never climb out of the torrent.
    """
    if not isinstance(value, list):
        return None
    if not all(isinstance(e, bytes) for e in value):
        raise MetainfoError(f"{what}: 'symlink path' must be a list of strings")
    target = tuple(t for t in (sanitize_element(e, force=False) for e in value) if t)
    return target or None


def _attr(d: dict[bytes, Any]) -> str:
    a = d.get(b"attr")
    return a.decode("latin-1") if isinstance(a, bytes) else ""


def _mtime(d: dict[bytes, Any]) -> int | None:
    v = d.get(b"mtime")
    return v if type(v) is int else None


def _keys_sorted(value: Any) -> bool:
    if isinstance(value, dict):
        keys = list(value)
        return keys == sorted(keys) and all(_keys_sorted(v) for v in value.values())
    if isinstance(value, list):
        return all(_keys_sorted(v) for v in value)
    return True


def _parse_trackers(top: dict[bytes, Any]) -> tuple[tuple[str, ...], ...]:
    """BEP 12: the ``announce-list`` tiers when they name a tracker we keep, else ``announce``.

    Tiers keep the file's order here; shuffling them is the tracker client's job.
    URLs libtorrent would drop are dropped (:func:`is_tracker_url`), and so
    are schemes we cannot announce to.
    """
    announce_list = top.get(b"announce-list")
    tiers = _tracker_tiers(announce_list if isinstance(announce_list, list) else [])
    announce = top.get(b"announce")
    return tiers or _tracker_tiers([[announce]] if isinstance(announce, bytes) else [])


def _tracker_tiers(candidates: list[Any]) -> tuple[tuple[str, ...], ...]:
    """The tiers of URLs we keep, each URL once, from a decoded list of lists."""
    tiers: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for tier in candidates:
        if not isinstance(tier, list):
            continue  # a tier is a list of URLs; libtorrent ignores anything else
        urls = []
        for raw in tier:
            if not isinstance(raw, bytes):
                continue
            # libtorrent trims leading whitespace (C's isspace) here, not trailing.
            u = raw.decode("utf-8", "replace").lstrip(" \t\n\r\f\v")
            if u not in seen and is_tracker_url(u) and u.partition(":")[0].lower() in ANNOUNCE_SCHEMES:
                seen.add(u)
                urls.append(u)
        if urls:
            tiers.append(tuple(urls))
    return tuple(tiers)


def _web_seeds(value: Any, directory: bool) -> tuple[str, ...]:
    """BEP 19 ``url-list`` (or BEP 17 ``httpseeds``) as peers use them: each URL once.

    Each entry is read as libtorrent does (:func:`~.urls.web_seed_url`: unsafe
    path characters percent-encoded), and the URLs of a torrent with several
    files name a directory (end in ``/``).  Duplicates are dropped after that,
    where libtorrent compares the entries as written: ``a b`` and ``a%20b``
    are one server to us, two to it.
    """
    if isinstance(value, bytes):
        value = [value]
    out: list[str] = []
    for raw in value if isinstance(value, list) else ():
        url = web_seed_url(raw) if isinstance(raw, bytes) else None
        if url is None:
            continue
        if directory and not url.endswith("/"):
            url += "/"
        if url not in out:
            out.append(url)
    return tuple(out)


def _parse_nodes(value: Any) -> tuple[tuple[str, int], ...]:
    out = []
    if isinstance(value, list):
        for n in value:
            if isinstance(n, list) and len(n) == 2 and isinstance(n[0], bytes) and type(n[1]) is int:
                if 0 < n[1] < 65536:
                    out.append((n[0].decode("utf-8", "replace"), n[1]))
    return tuple(out)


def _check_hybrid(
    info: dict[bytes, Any], layout: Layout, name: str, multi_file: bool, as_named: list[tuple[str, ...]]
) -> None:
    """A hybrid torrent's v1 files and v2 file tree must describe the same files (BEP 52).

    Otherwise v1 and v2 peers could deliver different data under one
    torrent, which is why libtorrent refuses it (torrent_inconsistent_files).
    Paths are compared as the torrent names them, before clashing names are
    renamed (the v2 tree is renamed the same way afterwards).
    """
    tree = info.get(b"file tree")
    if not isinstance(tree, dict):
        raise MetainfoError("'meta version' 2 without a 'file tree' dictionary")
    leaves: list[tuple[tuple[str, ...], int]] = []
    _walk_file_tree(tree, (), leaves)
    if not leaves:
        raise MetainfoError("v2 'file tree' is empty")
    plen = layout.piece_length
    # The v2 layout: files in tree order, each padded to a piece boundary.
    v2: list[tuple[tuple[str, ...], int, int, bool]] = []
    single = not multi_file and len(leaves) == 1
    offset = 0
    for path, length in leaves:
        v2.append(((path[0],) if single else (name, *path), length, offset, False))
        offset += length
        if offset % plen:
            pad = plen - offset % plen
            v2.append(((".pad", str(pad)), pad, offset, True))
            offset += pad
    if len(v2) == len(layout.files) + 1:
        # Hybrids from libtorrent 2.0.0-2.0.7 have no tail pad in the v1 list.
        last = max((i for i, e in enumerate(v2) if e[1]), default=None)
        if last is not None and v2[last][3]:
            tail = v2.pop(last)[1]
            v2[last:] = [(p, n, o - tail, pad) for p, n, o, pad in v2[last:]]
    if len(v2) != len(layout.files) or sum(e[1] for e in v2) != layout.total_length:
        raise MetainfoError("hybrid torrent: the v1 'files' and the v2 'file tree' list different files")
    for (path, length, offset, pad), f, named in zip(v2, layout.files, as_named):
        relevant = not pad and length > 0
        if relevant != (not f.pad and f.length > 0):
            raise MetainfoError(f"hybrid torrent: v1 file {f.path_str!r} has no counterpart in the v2 'file tree'")
        if relevant and (path != named or length != f.length or offset != f.offset):
            raise MetainfoError(f"hybrid torrent: v2 file {'/'.join(path)!r} does not match v1 file {f.path_str!r}")


def _walk_file_tree(node: dict[bytes, Any], prefix: tuple[str, ...], out: list[tuple[tuple[str, ...], int]]) -> None:
    for key, child in node.items():
        if not isinstance(child, dict) or not child:
            raise MetainfoError(f"v2 'file tree' entry {'/'.join(prefix)!r} is not a dictionary")
        if key == b"":
            if not prefix:
                raise MetainfoError("v2 'file tree' has a file with no name")
            symlink = "l" in _attr(child)
            length = 0 if symlink else child.get(b"length")
            if type(length) is not int or not 0 <= length <= MAX_FILE_LENGTH:
                raise MetainfoError(f"v2 file {'/'.join(prefix)!r}: missing or invalid 'length'")
            if "p" in _attr(child):
                raise MetainfoError(f"v2 file {'/'.join(prefix)!r}: pad files have no place in a 'file tree'")
            root = child.get(b"pieces root")
            if length and (not isinstance(root, bytes) or len(root) != 32 or not any(root)):
                raise MetainfoError(f"v2 file {'/'.join(prefix)!r}: missing or invalid 'pieces root'")
            out.append((prefix, length))
        else:
            _walk_file_tree(child, prefix + (sanitize_element(key),), out)
