"""Making torrents: walk a file or directory, hash it in parallel, write the metainfo."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

from .._version import __version__
from ..metainfo.bencoding import Bencached, encode
from ..errors import MetainfoError, StorageError
from .hasher import Progress, hash_pieces
from ..metainfo.layout import BLOCK_SIZE, FileEntry, Layout
from ..metainfo.torrent_file import MAX_PIECE_LENGTH, Metainfo, is_tracker_url, parse_metainfo

__all__ = ["auto_piece_length", "build_metainfo", "create_torrent", "list_files", "tracker_tiers"]

MIN_AUTO_PIECE = 16 << 10
MAX_AUTO_PIECE = 16 << 20
TARGET_PIECES = 2048


def auto_piece_length(total_length: int) -> int:
    """The smallest power of two from 16 KiB to 16 MiB that cuts the payload into at most 2048 pieces.

    Around 1500-2000 pieces keeps the .torrent small (40 KiB of hashes) while
    pieces stay small enough to spread quickly through a swarm: 1 GiB gets
    512 KiB pieces, 10 GiB gets 8 MiB.  Past 32 GiB the piece count grows
    instead of the piece size.
    """
    length = MIN_AUTO_PIECE
    while length < MAX_AUTO_PIECE and length * TARGET_PIECES < total_length:
        length *= 2
    return length


def list_files(root: Path) -> list[tuple[tuple[str, ...], int, Path]]:
    """The files under ``root`` as ``(relative parts, size, path)``, in a fixed order.

    Order is by path components, compared as text, so the same tree always
    makes the same torrent.  Symlinked files are followed; symlinked
    directories are not (they could loop or leave the tree).
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        rel = base.relative_to(root).parts
        for fn in filenames:
            p = base / fn
            try:
                st = p.stat()
            except OSError as exc:
                raise StorageError(f"{p}: cannot read: {exc.strerror or exc}") from None
            if not os.path.isfile(p):
                continue
            out.append(((*rel, fn), st.st_size, p))
    out.sort(key=lambda e: e[0])
    return out


def create_torrent(
    path: str | os.PathLike[str],
    *,
    piece_length: int | None = None,
    trackers: Sequence[str | Sequence[str]] = (),
    web_seeds: Sequence[str] = (),
    private: bool = False,
    comment: str | None = None,
    created_by: str | None = f"pyowtorrent/{__version__}",
    creation_date: int | None = -1,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Metainfo:
    """Make a v1 torrent of a file or a directory.

    ``trackers``: each item is a tier (a URL or a list of URLs), BEP 12.
    ``creation_date``: seconds since the epoch; -1 (the default) for now,
    ``None`` to leave it out (for byte-identical torrents of the same data).
    """
    root = Path(path)
    try:
        is_dir = root.is_dir()
        if not is_dir and not root.is_file():
            raise StorageError(f"{root}: no such file or directory")
    except OSError as exc:
        raise StorageError(f"{root}: {exc.strerror or exc}") from None
    name = root.resolve().name
    if is_dir:
        listing = list_files(root)
        files = []
        offset = 0
        for parts, size, _ in listing:
            files.append(FileEntry((name, *parts), size, offset))
            offset += size
        paths: list[Path | None] = [p for _, _, p in listing]
    else:
        size = root.stat().st_size
        files = [FileEntry((name,), size, 0)]
        paths = [root]
    total = sum(f.length for f in files)
    if total == 0:
        raise StorageError(f"{root}: nothing to share (no data in it)")
    if piece_length is None:
        piece_length = auto_piece_length(total)
    elif not BLOCK_SIZE <= piece_length <= MAX_PIECE_LENGTH or piece_length & (piece_length - 1):
        raise ValueError(f"piece length {piece_length} must be a power of two from 16 KiB")
    tiers = tracker_tiers(trackers)  # checked before hashing: a bad URL should not cost an hour

    layout = Layout(piece_length, files)
    sizes = [os.stat(p).st_size if p is not None else 0 for p in paths]
    hashes = hash_pieces(layout, paths, threads=threads, progress=progress)
    if hashes.unreadable:
        index, reason = min(hashes.unreadable.items())
        raise StorageError(f"cannot read piece {index}: {reason}")
    if [os.stat(p).st_size if p is not None else 0 for p in paths] != sizes:
        raise StorageError(f"{root}: files changed while they were being hashed")
    return build_metainfo(
        name,
        files,
        piece_length,
        bytes(hashes.digests),
        multi_file=is_dir,
        trackers=tiers,
        web_seeds=web_seeds,
        private=private,
        comment=comment,
        created_by=created_by,
        creation_date=creation_date,
    )


def tracker_tiers(trackers: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """``trackers`` as BEP 12 tiers (a URL alone is a tier), empty tiers dropped.

    Raises ``ValueError`` for a URL that BitTorrent clients would silently drop.
    """
    tiers = [[t] if isinstance(t, str) else list(t) for t in trackers]
    tiers = [t for t in tiers if t]
    for url in (u for tier in tiers for u in tier):
        if not is_tracker_url(url):
            raise ValueError(f"tracker {url!r} is not a URL BitTorrent clients accept (http, https or udp://host...)")
    return tiers


def build_metainfo(
    name: str,
    files: Sequence[FileEntry],
    piece_length: int,
    pieces: bytes,
    *,
    multi_file: bool,
    trackers: Sequence[str | Sequence[str]] = (),
    web_seeds: Sequence[str] = (),
    private: bool = False,
    comment: str | None = None,
    created_by: str | None = f"pyowtorrent/{__version__}",
    creation_date: int | None = -1,
) -> Metainfo:
    """The torrent of ``files`` (laid out as :class:`Layout` does) whose piece hashes are known already.

    :func:`create_torrent` hashes files on disk and ends here; the upload
    service hashes an upload while it arrives and comes straight here.
    ``files``' paths start with ``name`` (the torrent's directory) when
    ``multi_file``, and are ``(name,)`` for a single file.  ``pieces`` is the
    SHA-1 of each piece, concatenated.  Raises :class:`MetainfoError` for a
    name a client would save under another name.
    """
    tiers = tracker_tiers(trackers)
    total = sum(f.length for f in files)
    info: dict[bytes, Any] = {b"name": name.encode("utf-8", "surrogateescape"), b"piece length": piece_length}
    info[b"pieces"] = bytes(pieces)
    if multi_file:
        info[b"files"] = [
            {b"length": f.length, b"path": [p.encode("utf-8", "surrogateescape") for p in f.path[1:]]} for f in files
        ]
    else:
        info[b"length"] = total
    if private:
        info[b"private"] = 1
    top: dict[bytes, Any] = {b"info": Bencached(encode(info))}
    if tiers:
        top[b"announce"] = tiers[0][0].encode()
        if len(tiers) > 1 or len(tiers[0]) > 1:
            top[b"announce-list"] = [[u.encode() for u in tier] for tier in tiers]
    if web_seeds:
        top[b"url-list"] = [u.encode() for u in web_seeds]
    if comment:
        top[b"comment"] = comment.encode()
    if created_by:
        top[b"created by"] = created_by.encode()
    if creation_date is not None:
        top[b"creation date"] = int(time.time()) if creation_date == -1 else creation_date
    meta = parse_metainfo(encode(top))
    # What a client reads must be what is on disk: a name that a client would
    # sanitise or rename (control characters, case-only clashes, invalid
    # UTF-8) would make the payload fail its own torrent elsewhere.
    for made, wanted in zip(meta.files, files):
        if made.path != wanted.path:
            raise MetainfoError(
                f"cannot share {'/'.join(wanted.path)!r}: BitTorrent clients would save it as {made.path_str!r};"
                " rename it first"
            )
    return meta
