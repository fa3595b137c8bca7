"""Web seeds (BEP 19) without I/O: which file URLs and byte ranges hold a run of a torrent's bytes,
how many pieces a run is, and whether an answer's head is the range asked for.

A web seed is an HTTP server holding the torrent's files.  Its ``url-list``
URL names the file of a single-file torrent (or, ending in ``/``, the
directory holding it), and the directory of a multi-file torrent, under which
each file is ``<name>/<path...>``.  URLs are built as libtorrent builds them
(``web_peer_connection``): each path element percent-encoded, keeping ASCII
letters, digits and ``-_.~!*()``.  A run of the torrent's bytes becomes one
range request per file it touches; pad files (BEP 47) are zeros and asked of
no one.  The engine's :mod:`~pyowtorrent.engine.webseed` does the HTTP.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence
from urllib.parse import quote

from .layout import Layout

__all__ = ["RangeRequest", "answer_problem", "content_range", "file_urls", "range_requests", "run_pieces"]

# libtorrent's escape_path keeps these besides letters, digits and '-_.~'
# (which quote() always keeps); '/' never occurs inside a sanitised element.
_PATH_SAFE = "!*()"


class RangeRequest(NamedTuple):
    """``length`` bytes of file ``file_index`` from ``start``: one HTTP range request."""

    url: str | None  # None: a pad file, whose bytes are zeros
    file_index: int
    start: int
    length: int
    file_length: int

    @property
    def whole_file(self) -> bool:
        """Whether the range is the whole file (then a ``200`` with the whole file is the answer too)."""
        return self.start == 0 and self.length == self.file_length


def file_urls(base: str, layout: Layout) -> list[str]:
    """The URL of each of the torrent's files at the web seed ``base`` (pad files included)."""
    files = layout.files
    if len(files) == 1:
        return [base + _escape(files[0].path) if base.endswith("/") else base]
    directory = base if base.endswith("/") else base + "/"
    return [directory + _escape(f.path) for f in files]


def range_requests(layout: Layout, urls: Sequence[str], start: int, length: int) -> list[RangeRequest]:
    """The requests that fetch the torrent's bytes ``[start, start + length)``, in order.

    ``urls`` is :func:`file_urls`'s answer.  Empty files hold no bytes and get
    no request; the lengths add up to ``length`` (within the torrent).
    """
    out = []
    for s in layout.slices(start, length):
        f = layout.files[s.file_index]
        out.append(RangeRequest(None if f.pad else urls[s.file_index], s.file_index, s.file_offset, s.length, f.length))
    return out


def _escape(path: Sequence[str]) -> str:
    return "/".join(quote(element, safe=_PATH_SAFE) for element in path)


# -- sizing runs, reading answers -------------------------------------------------

# How much a web seed is asked for in one request.  BEP 19 suggests about a
# twentieth of the torrent a request (several sources share it, and each
# answer is useful to peers soon); libtorrent asks for at least 4 MiB (1 MiB
# over keep-alive) and a whole piece.  Between those bounds: one request per
# several small pieces, never one per 16 KiB block.
MIN_RUN_BYTES = 256 << 10
MAX_RUN_BYTES = 4 << 20
RUN_FRACTION = 20

_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18}|\*)")


def run_pieces(piece_length: int, total_length: int) -> int:
    """How many whole pieces a web seed is asked for in one run (at least one)."""
    want = min(MAX_RUN_BYTES, max(MIN_RUN_BYTES, total_length // RUN_FRACTION))
    return max(1, want // piece_length)


def content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``Content-Range: bytes first-last/size`` as ``(first, end, size)`` (``end`` exclusive,
    ``size`` ``None`` for ``*``); ``None`` if it is missing or not that form."""
    m = _CONTENT_RANGE.fullmatch(value.strip()) if value is not None else None
    if m is None or int(m[2]) < int(m[1]):
        return None
    return int(m[1]), int(m[2]) + 1, None if m[3] == "*" else int(m[3])


def answer_problem(
    req: RangeRequest, status: int, reason: str, range_header: str | None, length: int | None, encoding: str | None
) -> str | None:
    """What is wrong with the answer's head to ``req`` (``None``: read its body).

    A ``206`` must carry exactly the range asked for, of a file of the
    torrent's length; a ``200`` is the whole file, an answer only when the
    whole file was asked for.  The body must not be encoded (we ask for
    ``identity``: an encoded range is a range of other bytes) and its length,
    if given, must be the range's.
    """
    if status == 206:
        got = content_range(range_header)
        if got is None:
            return f"206 with no usable Content-Range ({range_header!r})"
        first, end, size = got
        if (first, end) != (req.start, req.start + req.length):
            return f"asked for bytes {req.start}-{req.start + req.length - 1}, got {first}-{end - 1}"
        if size is not None and size != req.file_length:
            return f"the file is {size} bytes, the torrent says {req.file_length}"
    elif status == 200:
        if not req.whole_file:
            return "200 with the whole file to a range request (no range support)"
    else:
        return f"HTTP {status} {reason}".rstrip()
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        return f"the body is encoded ({encoding})"
    if length is not None and length != req.length:
        return f"a body of {length} bytes for {req.length} asked"
    return None
