"""File-path sanitising, as libtorrent does it.

Whatever a torrent says, every path we make from it stays inside the
download directory: path separators inside an element are dropped, ``.``
and ``..`` elements and elements that filter to nothing become ``_``,
control characters and invalid UTF-8 become ``_``, and over-long elements
are cut to 240 bytes (keeping a short extension).  The rules follow
libtorrent 2.x (``sanitize_append_path_element`` and
``resolve_duplicate_filenames``) so that a torrent's files land where
libtorrent would put them; ``tests/test_conformance.py`` checks it against
the real thing.
"""

from __future__ import annotations

import os

from ..errors import MetainfoError

__all__ = ["MAX_ELEMENT_BYTES", "resolve_duplicates", "sanitize_element", "sanitize_name"]

MAX_ELEMENT_BYTES = 240  # leaves room for a ".N" de-duplication suffix under NAME_MAX (255)
_MAX_EXTENSION_SEARCH = 9  # an extension is kept when truncating if it is this short
MAX_DUPLICATE_RENAMES = 500  # libtorrent's default limit before it refuses the torrent

# Code points that vanish: separators, and invisible format characters that
# could make two different names look alike (bidi overrides, zero-widths, BOM).
_DROPPED = frozenset(
    [0x00, 0x2F, 0x5C, 0x061C, 0xFEFF]
    + list(range(0x200B, 0x2010))
    + list(range(0x202A, 0x202F))
    + list(range(0x2060, 0x2065))
    + list(range(0x2066, 0x206A))
)
_WINDOWS_INVALID = frozenset(b'?<>"|*:')
_WINDOWS_RESERVED = frozenset(
    ["con", "prn", "aux", "clock$", "nul"] + [f"com{i}" for i in range(10)] + [f"lpt{i}" for i in range(10)]
)
_ON_WINDOWS = os.name == "nt"


def _utf8_unit(raw: bytes, i: int) -> tuple[int, int]:
    """The code point at ``raw[i]`` and its length; code point -1 for an invalid unit.

    An invalid unit's length is what libtorrent skips, so that one ``_``
    replaces it: a bad lead byte alone, or a whole malformed sequence.
    """
    b = raw[i]
    if b < 0x80:
        return b, 1
    if b & 0xE0 == 0xC0:
        n, cp, low = 2, b & 0x1F, 0x80
    elif b & 0xF0 == 0xE0:
        n, cp, low = 3, b & 0x0F, 0x800
    elif b & 0xF8 == 0xF0:
        n, cp, low = 4, b & 0x07, 0x10000
    elif b & 0xFC == 0xF8:
        return -1, min(5, len(raw) - i)
    else:
        return -1, 1
    if i + n > len(raw):
        return -1, len(raw) - i
    for k in range(1, n):
        c = raw[i + k]
        if c & 0xC0 != 0x80:
            return -1, n
        cp = (cp << 6) | (c & 0x3F)
    # Overlong forms, out-of-range values and surrogates are not text.
    if cp < low or cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
        return -1, n
    return cp, n


def decode_text(raw: bytes) -> str:
    """Free text from a torrent (comment, creator) as libtorrent reads it: UTF-8, ``_`` per invalid unit."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out = []
    i = 0
    while i < len(raw):
        cp, n = _utf8_unit(raw, i)
        out.append("_" if cp == -1 else chr(cp))
        i += n
    return "".join(out)


def _replaced(cp: int, windows: bool) -> bool:
    if cp < 0x20 or 0x7F <= cp <= 0x9F:
        return True
    return windows and cp < 0x80 and cp in _WINDOWS_INVALID


def _sanitize(raw: bytes, force: bool, windows: bool) -> str:
    if not raw:
        return "_" if force else ""
    out = bytearray()
    added = dots = 0
    found_extension = False
    i = 0
    while i < len(raw):
        cp, n = _utf8_unit(raw, i)
        if cp == -1:
            out += b"_"
            added += 1
            i += n
            continue
        if cp in _DROPPED:
            i += n
            continue
        if _replaced(cp, windows):
            out += b"_"
            added += 1
            i += n
            continue
        out += raw[i : i + n]
        added += n
        if cp == 0x2E:
            dots += 1
        last = i + n - 1
        i += n
        if added >= MAX_ELEMENT_BYTES and not found_extension:
            # Truncate, but keep the extension when it is short.
            lower = max(len(raw) - _MAX_EXTENSION_SEARCH - 1, last)
            dot = raw.rfind(b".", lower + 1)
            if dot == -1:
                break
            found_extension = True
            i = dot
    if windows:
        while out and out[-1] in (0x20, 0x2E):  # trailing spaces and dots
            out.pop()
    if added == dots and added <= 2 or not out:
        # ".", "..", or nothing left once separators were dropped.
        return "_" if force else ""
    text = out.decode("utf-8")
    if windows and text.rsplit(".", 1)[0].lower() in _WINDOWS_RESERVED:
        text = "_" + text
    return text


def sanitize_element(raw: bytes, *, force: bool = True, windows: bool = _ON_WINDOWS) -> str:
    """One element of a file path: never ``.``/``..``, never holds a separator.

    An element that sanitises to nothing becomes ``_`` when ``force`` is set
    (file paths: every element of the torrent's path stays one), and ``""``
    otherwise (symlink targets: the element just vanishes).
    """
    return _sanitize(raw, force, windows)


def sanitize_name(raw: bytes, info_hash: bytes, *, single_file: bool, windows: bool = _ON_WINDOWS) -> str:
    """The torrent's name (its directory, or its one file).

    A name that sanitises to nothing (``..``, ``/``) becomes the info-hash in
    hex for a multi-file torrent; a single file with no usable name is an error.
    """
    if not raw:
        if single_file:
            raise MetainfoError("'name' is empty: a single-file torrent needs a file name")
        return "_"  # libtorrent's quirk: an empty directory name becomes '_', not the hash
    name = _sanitize(raw, False, windows)
    if name:
        return name
    if single_file:
        raise MetainfoError(f"'name' {raw[:64]!r} is not a usable file name")
    return info_hash.hex()


def _extension(path: str) -> str:
    last = path.rsplit("/", 1)[-1]
    dot = last.rfind(".")
    return last[dot:] if dot != -1 else ""


def _remove_extension(path: str) -> str:
    dot = path.rfind(".")
    if dot <= 0 or dot < path.rfind("/"):
        return path
    return path[:dot]


def resolve_duplicates(
    paths: list[tuple[str, ...]], pads: list[bool], sizes: list[int] | None = None
) -> list[tuple[str, ...]]:
    """Rename files whose paths clash (ignoring ASCII case), libtorrent-style: ``a.txt`` → ``a.1.txt``.

    A file also clashes with a directory of the torrent of the same name.
    As in libtorrent 2.1, pad files take part (a real file named like an
    earlier pad file is renamed), except that pad files of the same size may
    share a path: they are never written.
    """
    taken: dict[bytes, tuple[bool, int]] = {}  # path -> (is a pad file, its size)
    for path in paths:
        for k in range(1, len(path)):
            taken.setdefault("/".join(path[:k]).encode().lower(), (False, -1))
    out = []
    renames = 0
    for path, pad, size in zip(paths, pads, sizes or [0] * len(paths)):
        full = "/".join(path)
        key = full.encode().lower()
        if key not in taken:
            taken[key] = (pad, size)
            out.append(path)
            continue
        if pad and taken[key] == (True, size):
            out.append(path)
            continue
        base, ext = _remove_extension(full), _extension(full)
        count = 1
        while True:
            candidate = f"{base}.{count}{ext}"
            key = candidate.encode().lower()
            if key not in taken:
                break
            renames += 1
            if renames > MAX_DUPLICATE_RENAMES:
                raise MetainfoError(f"too many files with the same name as {full!r}")
            count += 1
        if not pad:  # libtorrent 2.1 does not reserve the new name of a renamed pad file
            taken[key] = (pad, size)
        out.append(tuple(candidate.split("/")))
    return out
