"""The SHA-1 piece hasher and verifier: the performance-critical core.

Worker threads each take a run of consecutive pieces, read it in chunks into
one reusable buffer with positional reads (``os.preadv`` straight into a
``memoryview``: no per-piece ``bytes``), and hash piece-sized slices of that
buffer.  Both the reads and ``hashlib``'s SHA-1 release the GIL, so the
threads use every core; memory is ``threads × CHUNK`` whatever the payload
or piece size.  Torrent creation, verification and (later) the download
engine all stand on :func:`hash_pieces`.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from ..metainfo.layout import FileEntry, Layout
from ..metainfo.torrent_file import Metainfo, load_metainfo

__all__ = [
    "CHUNK",
    "FailedRun",
    "FileProblem",
    "PieceFailure",
    "PieceHashes",
    "VerifyReport",
    "default_threads",
    "hash_pieces",
    "payload_paths",
    "verify_payload",
]

# One read's size: large enough that syscalls and Python overhead vanish
# against the hashing, small enough that a few of them stay in L2/L3.
CHUNK = 1 << 20
# How many bytes a worker claims at a time; several chunks so the hand-off
# between threads is rare, few enough that the threads finish together.
BATCH = 8 << 20
# Open file descriptors a worker keeps, for torrents of many small files.
_MAX_OPEN = 32

Progress = Callable[[int], None]


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 16))


class PieceHashes:
    """The SHA-1 of every piece, and the pieces that could not be read whole."""

    __slots__ = ("digests", "unreadable")

    def __init__(self, digests: bytearray, unreadable: dict[int, str] | None = None) -> None:
        self.digests = digests
        self.unreadable: dict[int, str] = {} if unreadable is None else unreadable

    def digest(self, index: int) -> bytes:
        return bytes(self.digests[20 * index : 20 * index + 20])


class _Reader:
    """One worker's view of the payload: its open files and its buffer."""

    def __init__(self, layout: Layout, paths: Sequence[Path | None], chunk: int) -> None:
        self.layout = layout
        self.paths = paths
        # Page-aligned (an anonymous mapping): a bytearray this size starts 16
        # bytes into a page, where the kernel's copy from the page cache runs
        # at half speed on some CPUs (measured: 7 vs 15 GB/s).
        self.buffer = mmap.mmap(-1, chunk)
        self.view = memoryview(self.buffer)
        self._fds: dict[int, int] = {}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self.view.release()
        self.buffer.close()

    def _fd(self, index: int) -> int:
        fd = self._fds.get(index)
        if fd is None:
            if len(self._fds) >= _MAX_OPEN:
                os.close(self._fds.pop(next(iter(self._fds))))
            path = self.paths[index]
            assert path is not None
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._fds[index] = fd
        return fd

    def read(self, start: int, length: int) -> list[tuple[int, int, str]]:
        """Fill ``view[:length]`` with stream bytes from ``start``.

        Returns the stream ranges ``(start, end, reason)`` that could not be read.
        """
        problems = []
        pos = 0
        for s in self.layout.slices(start, length):
            dest = self.view[pos : pos + s.length]
            at = start + pos
            pos += s.length
            entry = self.layout.files[s.file_index]
            if entry.pad or self.paths[s.file_index] is None:
                dest[:] = _zeros(s.length)
                continue
            try:
                got = _pread_full(self._fd(s.file_index), dest, s.file_offset)
            except FileNotFoundError:
                problems.append((at, at + s.length, f"{entry.path_str}: missing"))
                continue
            except OSError as exc:
                problems.append((at, at + s.length, f"{entry.path_str}: {exc.strerror or exc}"))
                continue
            if got < s.length:
                problems.append((at + got, at + s.length, f"{entry.path_str}: ends at byte {s.file_offset + got}"))
        return problems


_zero_cache: memoryview | None = None


def _zeros(n: int) -> memoryview:
    global _zero_cache
    if _zero_cache is None or len(_zero_cache) < n:
        _zero_cache = memoryview(bytes(max(n, CHUNK)))
    return _zero_cache[:n]


if hasattr(os, "preadv"):

    def _pread_full(fd: int, dest: memoryview, offset: int) -> int:
        done = 0
        while done < len(dest):
            n = os.preadv(fd, [dest[done:]], offset + done)
            if n == 0:
                break
            done += n
        return done

else:  # pragma: no cover - Windows and others without preadv

    def _pread_full(fd: int, dest: memoryview, offset: int) -> int:
        with open(fd, "rb", buffering=0, closefd=False) as f:
            f.seek(offset)
            done = 0
            while done < len(dest):
                n = f.readinto(dest[done:])
                if not n:
                    break
                done += n
            return done


def hash_pieces(
    layout: Layout,
    paths: Sequence[Path | None],
    *,
    threads: int | None = None,
    progress: Progress | None = None,
    chunk_size: int = CHUNK,
    batch_size: int = BATCH,
    wanted: Sequence[bool] | bytearray | None = None,
) -> PieceHashes:
    """SHA-1 every piece of ``layout`` from the files at ``paths``.

    ``paths[i]`` is where file ``i`` lives, or ``None`` for a file whose bytes
    are zeros (a BEP 47 pad file).  A piece that cannot be read whole gets
    its reason in ``unreadable``; its digest is then meaningless.
    ``progress(nbytes)`` is called on the calling thread as work completes.
    ``chunk_size`` (bytes per read) and ``batch_size`` (bytes a thread claims
    at a time) are tuning knobs; memory is about ``threads × chunk_size``.
    With ``wanted``, only the pieces it marks true are hashed.
    """
    n = layout.num_pieces
    result = PieceHashes(bytearray(20 * n))
    if n == 0:
        return result
    plen = layout.piece_length
    if plen <= chunk_size:
        chunk = (chunk_size // plen) * plen  # whole pieces per read: one sha1 call each
    else:
        chunk = chunk_size
    per_batch = max(1, batch_size // plen)
    batches = _batches(n, per_batch, wanted)
    claim = iter(batches).__next__  # next() on a list iterator is atomic under the GIL
    done: queue.SimpleQueue[int | BaseException] = queue.SimpleQueue()
    threads = max(1, min(threads or default_threads(), len(batches)))

    def work() -> None:
        reader = _Reader(layout, paths, chunk)
        try:
            while True:
                try:
                    first, last = claim()
                except StopIteration:
                    return
                _hash_run(reader, first, last, result)
                done.put(min(last * plen, layout.total_length) - first * plen)
        except BaseException as exc:  # handed to the caller, raised there
            done.put(exc)
        finally:
            reader.close()

    workers = [threading.Thread(target=work, name=f"pyowtorrent-hash-{i}", daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    error: BaseException | None = None
    remaining = len(batches)
    while remaining:
        item = done.get()
        if isinstance(item, BaseException):
            error = error or item
            break
        remaining -= 1
        if progress is not None:
            progress(item)
    if error is not None:
        # Stop handing out work, let the threads drain, then raise.
        claim = iter(()).__next__  # noqa: F841 - the closure reads the new binding
        for w in workers:
            w.join()
        raise error
    for w in workers:
        w.join()
    return result


def _batches(n: int, per_batch: int, wanted: Sequence[bool] | bytearray | None) -> list[tuple[int, int]]:
    """Runs ``[first, last)`` of at most ``per_batch`` consecutive pieces to hash."""
    if wanted is None:
        return [(i, min(i + per_batch, n)) for i in range(0, n, per_batch)]
    out = []
    i = 0
    while i < n:
        if not wanted[i]:
            i += 1
            continue
        j = i
        while j < n and j - i < per_batch and wanted[j]:
            j += 1
        out.append((i, j))
        i = j
    return out


def _hash_run(reader: _Reader, first: int, last: int, result: PieceHashes) -> None:
    """Hash pieces ``[first, last)`` into ``result`` using ``reader``'s buffer."""
    layout = reader.layout
    plen = layout.piece_length
    view = reader.view
    chunk = len(reader.buffer)
    start = first * plen
    end = min(last * plen, layout.total_length)
    digests = result.digests
    unreadable = result.unreadable
    piece = first
    hasher: Any = None  # the running SHA-1 of a piece that spans reads
    digest: bytes | None
    pos = start
    while pos < end:
        n = min(chunk, end - pos)
        for bad_start, bad_end, reason in reader.read(pos, n):
            for p in range(bad_start // plen, (bad_end - 1) // plen + 1):
                unreadable.setdefault(p, reason)
        off = 0
        while off < n:
            piece_end = min((piece + 1) * plen, end)
            take = min(n - off, piece_end - (pos + off))
            complete = pos + off + take == piece_end
            if piece in unreadable:
                digest = hasher = None  # its digest would mean nothing: hash no more of it
            elif hasher is None and complete and (pos + off) == piece * plen:
                digest = hashlib.sha1(view[off : off + take]).digest()  # whole piece in one call
            else:
                if hasher is None:
                    hasher = hashlib.sha1()
                hasher.update(view[off : off + take])
                digest = hasher.digest() if complete else None
            off += take
            if complete:
                if digest is not None:
                    digests[20 * piece : 20 * piece + 20] = digest
                hasher = None
                piece += 1
        pos += n


# ---------------------------------------------------------------------------
# Verification against a metainfo


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
