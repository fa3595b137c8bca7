"""Verifying a payload against its torrent, and the report of what failed.

:func:`verify_payload` checks which files are missing or short (their
pieces fail unread), hashes the rest with :func:`~.hasher.hash_pieces` and
reports failures as runs of consecutive pieces, so a missing file of a huge
torrent is one line, not a million.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Sequence

from ..metainfo.layout import FileEntry, Layout
from ..metainfo.torrent_file import Metainfo, load_metainfo
from .hasher import Progress, hash_pieces

__all__ = ["FailedRun", "FileProblem", "PieceFailure", "VerifyReport", "check_files", "payload_paths", "verify_payload"]

# Records without dataclasses: see layout.py (the verify command's start-up).


class FileProblem(NamedTuple):
    """A payload file that is not there, or is shorter than the torrent says."""

    file_index: int
    path: str
    kind: str  # "missing" | "short" | "unreadable" | "not a file"
    expected: int
    actual: int | None

    def describe(self) -> str:
        if self.kind == "short":
            return f"{self.path}: short file ({self.actual} of {self.expected} bytes)"
        return f"{self.path}: {self.kind}"


class PieceFailure:
    """A piece that failed, and the file byte ranges ``(path, start, end)`` it covers."""

    # Not a NamedTuple: its field ``index`` would shadow tuple.index.
    __slots__ = ("index", "reason", "spans")

    def __init__(self, index: int, reason: str, spans: tuple[tuple[str, int, int], ...]) -> None:
        self.index = index
        self.reason = reason
        self.spans = spans

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PieceFailure):
            return NotImplemented
        return (self.index, self.reason, self.spans) == (other.index, other.reason, other.spans)

    def __hash__(self) -> int:
        return hash((self.index, self.reason, self.spans))

    def __repr__(self) -> str:
        return f"PieceFailure(index={self.index}, reason={self.reason!r}, spans={self.spans!r})"


class FailedRun(NamedTuple):
    """Pieces ``first`` to ``last`` (inclusive), consecutive, all failed for ``reason``."""

    first: int
    last: int
    reason: str


class VerifyReport:
    """The outcome of :func:`verify_payload`.

    Failures are kept as runs of consecutive pieces with one reason, so a
    report stays small however many pieces fail (a missing file of a 1 TiB
    torrent is one run); per-piece views are made on demand.
    """

    __slots__ = ("layout", "failed_runs", "file_problems")

    def __init__(self, layout: Layout, failed_runs: list[FailedRun], file_problems: list[FileProblem]) -> None:
        self.layout = layout
        self.failed_runs = failed_runs
        self.file_problems = file_problems

    @property
    def passed(self) -> bytearray:
        """1 per good piece, 0 per failed one."""
        return _outside(self.num_pieces, self.failed_runs)

    @property
    def num_pieces(self) -> int:
        return self.layout.num_pieces

    @property
    def piece_length(self) -> int:
        return self.layout.piece_length

    @property
    def total_length(self) -> int:
        return self.layout.total_length

    @property
    def ok(self) -> bool:
        return not self.failed_runs and not self.file_problems

    @property
    def pieces_failed(self) -> int:
        return sum(r.last - r.first + 1 for r in self.failed_runs)

    @property
    def pieces_passed(self) -> int:
        return self.num_pieces - self.pieces_failed

    @property
    def failures(self) -> list[PieceFailure]:
        """One entry per failed piece (built on each call: for a big failure, prefer ``failed_runs``)."""
        return [
            PieceFailure(i, run.reason, self.spans(i, i))
            for run in self.failed_runs
            for i in range(run.first, run.last + 1)
        ]

    def spans(self, first: int, last: int) -> tuple[tuple[str, int, int], ...]:
        """The file byte ranges ``(path, start, end)`` that pieces ``first`` to ``last`` cover (pad files left out)."""
        layout = self.layout
        start = first * layout.piece_length
        end = min((last + 1) * layout.piece_length, layout.total_length)
        return tuple(
            (layout.files[s.file_index].path_str, s.file_offset, s.file_offset + s.length)
            for s in layout.slices(start, end - start)
            if not layout.files[s.file_index].pad
        )

    def __repr__(self) -> str:
        return (
            f"VerifyReport({self.pieces_passed} of {self.num_pieces} pieces passed,"
            f" {len(self.file_problems)} file problems)"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "num_pieces": self.num_pieces,
            "pieces_passed": self.pieces_passed,
            "piece_length": self.piece_length,
            "total_length": self.total_length,
            "failed_runs": [
                {
                    "first": r.first,
                    "last": r.last,
                    "reason": r.reason,
                    "files": [{"path": p, "start": a, "end": b} for p, a, b in self.spans(r.first, r.last)],
                }
                for r in self.failed_runs
            ],
            "file_problems": [
                {"path": p.path, "problem": p.kind, "expected_length": p.expected, "actual_length": p.actual}
                for p in self.file_problems
            ],
        }


def payload_paths(files: Sequence[FileEntry], multi_file: bool, payload: Path) -> list[Path | None]:
    """Where each file of a torrent lives, given its payload.

    ``payload`` is the file itself for a single-file torrent and the torrent's
    top directory for a multi-file one (the file paths then start with the
    torrent's name, which ``payload`` stands for).  Pad files and symlinks
    have no bytes on disk to read.
    """
    out: list[Path | None] = []
    for f in files:
        if f.pad or f.symlink is not None:
            out.append(None)
        elif multi_file:
            out.append(payload.joinpath(*f.path[1:]))
        else:
            out.append(payload)
    return out


def check_files(files: Sequence[FileEntry], paths: Sequence[Path | None]) -> list[FileProblem]:
    problems = []
    for i, (f, p) in enumerate(zip(files, paths)):
        if p is None:
            continue
        try:
            st = os.stat(p)
        except FileNotFoundError:
            problems.append(FileProblem(i, f.path_str, "missing", f.length, None))
            continue
        except OSError:
            problems.append(FileProblem(i, f.path_str, "unreadable", f.length, None))
            continue
        if not os.path.isfile(p):
            problems.append(FileProblem(i, f.path_str, "not a file", f.length, None))
        elif st.st_size < f.length:
            problems.append(FileProblem(i, f.path_str, "short", f.length, st.st_size))
    return problems


def verify_payload(
    torrent: Metainfo | str | os.PathLike[str],
    payload: str | os.PathLike[str],
    *,
    threads: int | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check every piece of ``payload`` against ``torrent`` (a :class:`Metainfo` or a .torrent's path).

    ``payload`` is the file itself for a single-file torrent, the directory
    named after the torrent for a multi-file one.  ``report.ok`` is true when
    every piece matched.
    """
    meta = torrent if isinstance(torrent, Metainfo) else load_metainfo(torrent)
    layout: Layout = meta.layout
    n = layout.num_pieces
    paths = payload_paths(layout.files, meta.multi_file, Path(payload))
    problems = check_files(layout.files, paths)
    # Pieces that touch bytes a file does not have fail unread: a missing
    # file of a huge torrent costs nothing, and its failure is one run.
    absent = _absent_runs(layout, problems)
    wanted = _outside(n, absent)
    hashes = hash_pieces(layout, paths, threads=threads, progress=progress, wanted=wanted if absent else None)
    expected = meta.piece_hashes
    if not absent and not hashes.unreadable and hashes.digests == expected:
        return VerifyReport(layout, [], problems)
    runs: list[FailedRun] = []
    j = 0  # into absent, which is in stream order
    for i in range(n):
        while j < len(absent) and absent[j].last < i:
            j += 1
        if j < len(absent) and absent[j].first <= i:
            reason: str | None = absent[j].reason
        else:
            reason = hashes.unreadable.get(i)
            if reason is None and hashes.digests[20 * i : 20 * i + 20] != expected[20 * i : 20 * i + 20]:
                reason = "hash mismatch"
        if reason is None:
            continue
        if runs and runs[-1].last == i - 1 and runs[-1].reason == reason:
            runs[-1] = runs[-1]._replace(last=i)
        else:
            runs.append(FailedRun(i, i, reason))
    return VerifyReport(layout, runs, problems)


def _outside(n: int, runs: Sequence[FailedRun]) -> bytearray:
    """1 for each of ``n`` pieces outside every run, 0 inside one."""
    marks = bytearray(b"\x01") * n
    for first, last, _ in runs:
        marks[first : last + 1] = bytes(last + 1 - first)
    return marks


def _absent_runs(layout: Layout, problems: Sequence[FileProblem]) -> list[FailedRun]:
    """The pieces that touch the missing part of each problem file, in stream order."""
    runs = []
    for p in problems:
        f = layout.files[p.file_index]
        have = p.actual if p.kind == "short" and p.actual is not None else 0
        start = f.offset + have
        end = f.offset + f.length
        if end > start:
            runs.append(FailedRun(start // layout.piece_length, (end - 1) // layout.piece_length, p.describe()))
    return runs
