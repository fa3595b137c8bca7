"""Receiving an upload: the naming rules, the limits, and streaming the body to disk while it is hashed.

An upload's body goes to a temporary file in the data directory's file system
(``aiofiles``: every write on a worker thread), in batches of
:data:`BATCH` bytes.  Each batch is written and hashed at once, on worker
threads, while the next one is read from the socket; a batch is not handed
over until the previous one is done, so an upload holds at most two batches
in memory and a client faster than the disk is slowed by TCP, never buffered.
The hashes (SHA-256, and the torrent's SHA-1 pieces:
:mod:`pyowtorrent.storage.ingest`) are ready when the last byte is written;
the file is then fsynced and checked to be a whole zip (:func:`check_zip`: its
end record and central directory, not its members' data), and never read again.

Limits, each ending the upload with a JSON error and its temporary file gone:

* the size: a declared ``Content-Length`` over the limit is refused before a
  byte is read; otherwise the upload ends (``413``) the moment it passes it;
* the read timeout: no bytes for ``read_timeout`` seconds ends it (``408``),
  and so does less than :data:`MIN_BYTES_PER_WINDOW` in any such stretch: a
  stalled or trickling client cannot hold a slot;
* concurrent uploads: past ``max_concurrent``, ``503`` with ``Retry-After``;
* a client that goes away: the upload ends, nothing is kept.

Concurrent uploads of one name: :class:`Reservations` gives the name to the
first, before its body is read; the others get ``409`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import stat
import struct
import unicodedata
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import aiofiles
from aiohttp import BodyPartReader, MultipartReader
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import MetainfoError
from ..metainfo.paths import sanitize_name
from ..storage.ingest import Chunk, StreamHasher, StreamHashes, candidate_piece_lengths

log = logging.getLogger(__name__)

__all__ = [
    "BATCH",
    "MAX_NAME_BYTES",
    "MIN_BYTES_PER_WINDOW",
    "MULTIPART_SLACK",
    "ClientGone",
    "Limits",
    "Received",
    "Reservations",
    "UploadError",
    "ZipRefused",
    "check_name",
    "check_zip",
    "file_part",
    "part_reader",
    "receive",
    "rest_of_form",
    "storage_error",
]

#: Bytes written and hashed per hand-off to the worker threads.
BATCH: Final = 1 << 20
#: The longest upload name, in bytes of UTF-8 (room under NAME_MAX for a ``.torrent`` beside it).
MAX_NAME_BYTES: Final = 200
#: An upload slower than this many bytes per read timeout (60 s by default: about 1 KiB/s) is abandoned.
MIN_BYTES_PER_WINDOW: Final = 64 << 10
# A multipart body is its file plus a few hundred bytes of headers and boundaries;
# a declared Content-Length this far over the limit cannot hold a file within it.
MULTIPART_SLACK: Final = 64 << 10
# Form fields other than the file are read and ignored, up to these bounds.
_MAX_FIELD_BYTES: Final = 64 << 10
_MAX_FIELDS: Final = 16


class UploadError(Exception):
    """A request refused (most often an upload): an HTTP status, a short machine-readable code, a message for people."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None, *, close: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        # Close the connection after the answer rather than read what is left of
        # the body: the client stalled or left, there is nothing to drain.
        self.close = close


class ClientGone(UploadError):
    """The client went away mid-upload (nobody reads the answer, but the log does)."""

    def __init__(self, why: str) -> None:
        super().__init__(400, "client_gone", f"the client went away mid-upload ({why})", close=True)


def _stalled(timeout: float) -> UploadError:
    return UploadError(408, "timeout", f"no data for {timeout:g} seconds: the upload is abandoned", close=True)


@dataclass(frozen=True)
class Limits:
    max_size: int  # bytes of payload
    read_timeout: float  # seconds without a byte that end an upload


@dataclass(frozen=True)
class Received:
    """A whole upload in its temporary file: fsynced, hashed, a valid zip."""

    path: Path
    hashes: StreamHashes
    stamp: tuple[int, int]  # (size, mtime_ns): what resume data records of the file


# -- names ---------------------------------------------------------------------


def check_name(name: str) -> str:
    """``name`` if it can be an upload's file name; else :class:`UploadError` (400) naming the rule."""

    def refuse(why: str) -> UploadError:
        return UploadError(400, "bad_name", f"upload name {name[:80]!r} refused: {why}")

    if not name:
        raise refuse("a name is needed")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise refuse(f"longer than {MAX_NAME_BYTES} bytes (UTF-8)")
    if "/" in name or "\\" in name:
        raise refuse("it holds a path separator (/ or \\): a name is one file name")
    if ".." in name:
        raise refuse("it holds '..'")
    if any(unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp") for c in name):
        raise refuse("it holds control or invisible characters")
    if name.startswith("."):
        raise refuse("it starts with a dot (hidden files, and the service's own .pyowtorrent, are not uploads)")
    if name != name.strip():
        raise refuse("it starts or ends with white space")
    if not name.lower().endswith(".zip") or len(name) == len(".zip"):
        raise refuse("the service takes .zip datasets: the name must end in .zip")
    try:
        # As a client on any system would save it (Windows' rules included):
        # a name it would change would make the download fail its own torrent.
        saved = sanitize_name(name.encode("utf-8"), bytes(20), single_file=True, windows=True)
    except (MetainfoError, UnicodeEncodeError):
        saved = ""
    if saved != name:
        raise refuse(f"BitTorrent clients would save it as {saved!r} (characters or names Windows cannot store)")
    return name


# -- reservations ------------------------------------------------------------------


class Reservations:
    """Upload slots (at most ``max_concurrent``) and names being written, taken without awaiting.

    A name is reserved by an upload from before its body is read until it is
    published or refused, and by a delete while it runs: of two requests for
    one name, the second gets ``409`` at once.
    """

    def __init__(self, max_concurrent: int) -> None:
        if max_concurrent <= 0:
            raise ValueError(f"max_concurrent must be positive, not {max_concurrent}")
        self.max_concurrent = max_concurrent
        self.uploads = 0
        self._names: dict[str, int | None] = {}  # name -> bytes received so far (None: a delete)

    def receiving(self) -> dict[str, int]:
        """The names being uploaded now, and the bytes received of each."""
        return {name: n for name, n in self._names.items() if n is not None}

    def busy(self, name: str) -> bool:
        return name in self._names

    def check_room(self) -> None:
        if self.uploads >= self.max_concurrent:
            raise UploadError(
                503,
                "busy",
                f"{self.max_concurrent} uploads are under way, the most this service takes at once: try again later",
                {"Retry-After": "30"},
            )

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """One of the upload slots, or :class:`UploadError` 503 when all are taken."""
        self.check_room()
        self.uploads += 1
        try:
            yield
        finally:
            self.uploads -= 1

    @contextlib.contextmanager
    def name(self, name: str, *, upload: bool = True) -> Iterator[Callable[[int], None]]:
        """Hold ``name`` (or :class:`UploadError` 409); gives a function to record the bytes received so far."""
        if name in self._names:
            raise UploadError(409, "in_progress", f"{name!r} is being uploaded or deleted by another request")
        self._names[name] = 0 if upload else None

        def progress(received: int) -> None:
            self._names[name] = received

        try:
            yield progress
        finally:
            del self._names[name]


# -- the body ------------------------------------------------------------------------


_T = TypeVar("_T")


async def _read(next_read: Callable[[], Awaitable[_T]], timeout: float) -> _T:
    """The next read of the body (a chunk, ``b""`` at its end; a form's next part), under the read timeout."""
    try:
        async with asyncio.timeout(timeout):
            return await next_read()
    except TimeoutError:
        raise _stalled(timeout) from None
    except (ConnectionError, HttpProcessingError) as exc:
        # aiohttp ends a body cut short with the connection's error, or its parser's.
        raise ClientGone(str(exc) or type(exc).__name__) from None


class _Sink:
    """Writes and hashes one upload's batches on worker threads, one batch in flight at a time."""

    def __init__(self, file: Any, updaters: Sequence[Callable[[Chunk], None]], executor: Executor) -> None:
        self._file = file
        self._updaters = updaters
        self._executor = executor
        self._pending: asyncio.Future[Any] | None = None

    async def feed(self, batch: bytearray) -> None:
        await self.drain()
        loop = asyncio.get_running_loop()
        # The write and each digest run at once on their own threads (hashlib
        # and file writes release the GIL); each digest still sees the batches
        # in order, since a batch starts only when the previous one is done.
        jobs = [self._file.write(batch), *(loop.run_in_executor(self._executor, u, batch) for u in self._updaters)]
        self._pending = asyncio.gather(*jobs)

    async def drain(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                await pending
            except OSError as exc:
                raise storage_error(exc) from None

    async def settle(self) -> None:
        """Wait out a batch still in flight (after an error), so the file is never closed under a write."""
        pending, self._pending = self._pending, None
        if pending is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(pending)


def storage_error(exc: OSError) -> UploadError:
    """An upload refused because the service could not store it (logged: it is the operator's to fix)."""
    log.error("cannot store an upload: %s", exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UploadError(507, "no_space", "the service has no room left for this upload")
    return UploadError(500, "storage", "the service could not store the upload (see its log)")


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def discard(path: Path, executor: Executor) -> None:
    """Remove a temporary upload, off the loop; at once if the task is being cancelled."""
    try:
        await asyncio.shield(asyncio.get_running_loop().run_in_executor(executor, _unlink, path))
    except asyncio.CancelledError:
        _unlink(path)
        raise


class _Pace:
    """The rule against a client that trickles: at least :data:`MIN_BYTES_PER_WINDOW` every ``window`` seconds.

    A stall is the read timeout's; this catches a client that sends a byte
    now and then, just often enough to keep each read alive, and so would
    hold an upload slot for ever.
    """

    def __init__(self, window: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._window = window
        self._start = self._loop.time()
        self._bytes = 0

    def count(self, n: int) -> None:
        self._bytes += n
        now = self._loop.time()
        if now - self._start < self._window:
            return
        if self._bytes < MIN_BYTES_PER_WINDOW:
            raise UploadError(
                408,
                "too_slow",
                f"{self._bytes} bytes in {now - self._start:.0f} seconds is too slow: the upload is abandoned"
                f" (at least {MIN_BYTES_PER_WINDOW} bytes every {self._window:g} seconds)",
                close=True,
            )
        self._start, self._bytes = now, 0


async def receive(
    next_chunk: Callable[[], Awaitable[bytes]],
    *,
    declared_size: int | None,
    exact_size: bool,
    limits: Limits,
    tmp_dir: Path,
    executor: Executor,
    progress: Callable[[int], None],
) -> Received:
    """Stream a body to a new file in ``tmp_dir``, hashing it on the way; check it is a whole zip.

    ``declared_size`` picks the piece length (:mod:`~pyowtorrent.storage.ingest`);
    with ``exact_size`` it is the payload's size exactly (a raw body's
    ``Content-Length``), and a body that ends short is a client gone.  On any
    error the temporary file is removed before the error is raised.
    """
    hasher = StreamHasher(candidate_piece_lengths(declared_size))
    path = tmp_dir / f"{secrets.token_hex(8)}.upload"
    loop = asyncio.get_running_loop()
    try:
        async with aiofiles.open(path, "xb", executor=executor) as f:
            sink = _Sink(f, hasher.updaters(), executor)
            try:
                size = 0
                batch = bytearray()
                pace = _Pace(limits.read_timeout)
                while chunk := await _read(next_chunk, limits.read_timeout):
                    size += len(chunk)
                    pace.count(len(chunk))
                    if size > limits.max_size:
                        raise UploadError(413, "too_large", f"the upload is over the limit of {limits.max_size} bytes")
                    batch += chunk
                    progress(size)
                    if len(batch) >= BATCH:
                        await sink.feed(batch)
                        batch = bytearray()  # the one handed over is not touched again
                if exact_size and size != declared_size:
                    raise ClientGone(f"the body ended at byte {size} of {declared_size}")
                if batch:
                    await sink.feed(batch)
                await sink.drain()
                await f.flush()
                await loop.run_in_executor(executor, os.fsync, f.fileno())
            finally:
                await sink.settle()
        hashes = hasher.finish()
        try:
            await loop.run_in_executor(executor, check_zip, path, hashes.size)
        except ZipRefused as exc:
            raise UploadError(422, "not_a_zip", f"not a valid zip: {exc}") from None
        st = await loop.run_in_executor(executor, os.stat, path)
        return Received(path, hashes, (st.st_size, st.st_mtime_ns))
    except OSError as exc:
        await discard(path, executor)
        raise storage_error(exc) from None
    except BaseException:
        await discard(path, executor)
        raise


# -- multipart forms -------------------------------------------------------------------


def part_reader(part: BodyPartReader) -> Callable[[], Awaitable[bytes]]:
    """Reads of a form part for :func:`receive`: a malformed body (aiohttp's ``ValueError``) is a 400."""

    async def read() -> bytes:
        try:
            return await part.read_chunk(BATCH)
        except ValueError as exc:
            raise UploadError(400, "bad_form", f"malformed multipart body: {exc}") from None

    return read


async def _skip_field(part: BodyPartReader, timeout: float) -> None:
    read = 0
    while chunk := await _read(part_reader(part), timeout):
        read += len(chunk)
        if read > _MAX_FIELD_BYTES:
            raise UploadError(400, "bad_form", f"a form field other than the file is over {_MAX_FIELD_BYTES} bytes")


async def _next_part(reader: MultipartReader, timeout: float) -> BodyPartReader | None:
    try:
        part = await _read(reader.next, timeout)
    except ValueError as exc:  # aiohttp's word for a malformed body
        raise UploadError(400, "bad_form", f"malformed multipart body: {exc}") from None
    if isinstance(part, MultipartReader):
        raise UploadError(400, "bad_form", "nested multipart bodies are not taken: send one file field")
    return part


def _check_part_encoding(part: BodyPartReader) -> None:
    transfer = part.headers.get("Content-Transfer-Encoding", "binary").lower()
    if transfer not in ("binary", "8bit", "7bit") or part.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise UploadError(400, "bad_form", "the file part must be sent as it is (no transfer or content encoding)")


async def file_part(reader: MultipartReader, timeout: float) -> BodyPartReader:
    """The form's file part (the first with a file name); other fields before it are read and ignored."""
    for _ in range(_MAX_FIELDS + 1):
        part = await _next_part(reader, timeout)
        if part is None:
            raise UploadError(400, "no_file", "the form holds no file: send one file field (curl -F file=@data.zip)")
        if part.filename is not None:
            _check_part_encoding(part)
            return part
        await _skip_field(part, timeout)
    raise UploadError(400, "bad_form", f"more than {_MAX_FIELDS} form fields before the file")


async def rest_of_form(reader: MultipartReader, timeout: float) -> None:
    """Read what follows the file: fields are ignored, a second file is refused."""
    for _ in range(_MAX_FIELDS + 1):
        part = await _next_part(reader, timeout)
        if part is None:
            return
        if part.filename is not None:
            raise UploadError(400, "bad_form", "one file per upload: the form holds more than one")
        await _skip_field(part, timeout)
    raise UploadError(400, "bad_form", f"more than {_MAX_FIELDS} form fields after the file")


# -- is it a zip? ----------------------------------------------------------------------

# Zip records (PKWARE APPNOTE 6.3): signatures and fixed sizes.
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory
_EOCD_SIG: Final = b"PK\x05\x06"
_LOCATOR = struct.Struct("<4sLQL")  # zip64 end of central directory locator
_LOCATOR_SIG: Final = b"PK\x06\x07"
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory record
_EOCD64_SIG: Final = b"PK\x06\x06"
_ENTRY = struct.Struct("<4s6H3L5H2L")  # central directory file header
_ENTRY_SIG: Final = b"PK\x01\x02"
_LOCAL_SIG: Final = b"PK\x03\x04"
_MAX_COMMENT: Final = 0xFFFF
_UNIX: Final = 3  # "version made by" high byte: external attributes hold a Unix mode
_UTF8_NAMES: Final = 0x800  # general purpose flag bit 11


class ZipRefused(Exception):
    """Not a whole, safe zip: the message says what is wrong."""


def check_zip(path: Path, size: int) -> None:
    """Check that the file is a whole zip whose members are safe to extract; :class:`ZipRefused` if not.

    Reads the end record (zip64 too) and walks the central directory entry by
    entry (memory stays small however many members), but reads no member's
    data: this costs a read of the directory, not of the payload, so a 10 GB
    dataset is checked in moments (``ZipFile.testzip`` would read it all).
    Refused: no end record at the very end (not a zip, or cut short), a
    directory that is not where the end record says or holds another number of
    entries, a multi-disk archive, data before the first member, and members
    whose names hold ``..``, a backslash or a NUL, or are absolute (``/...``,
    ``C:...``), or that are symbolic links (a link then a file through it
    writes outside the extraction directory).  Blocking: run it on a thread.
    """
    with open(path, "rb") as f:
        eocd_at, entries, cd_size, cd_offset = _end_record(f, size)
        if entries and _read_at(f, 0, 4) != _LOCAL_SIG:
            raise ZipRefused("the file does not start with a zip member")
        if cd_offset + cd_size != eocd_at:
            raise ZipRefused(
                f"the central directory (bytes {cd_offset} to {cd_offset + cd_size}) does not end where the"
                f" end record is (byte {eocd_at}): the file is damaged, or has data before or inside the archive"
            )
        f.seek(cd_offset)
        for index in range(entries):
            _check_entry(f, index, cd_offset)
        if f.tell() != cd_offset + cd_size:
            raise ZipRefused(f"the central directory is {f.tell() - cd_offset} bytes, the end record says {cd_size}")


def _read_at(f: Any, offset: int, n: int) -> bytes:
    f.seek(offset)
    data: bytes = f.read(n)
    return data


def _end_record(f: Any, size: int) -> tuple[int, int, int, int]:
    """Where the (zip64) end record starts, the number of entries, the directory's size and offset."""
    if size < _EOCD.size:
        raise ZipRefused(f"{size} bytes is too short to be a zip")
    tail_start = max(0, size - _EOCD.size - _MAX_COMMENT)
    tail = _read_at(f, tail_start, size - tail_start)
    # The end record is the last one whose comment runs exactly to the end of the file.
    at = len(tail)
    while True:
        at = tail.rfind(_EOCD_SIG, 0, at)
        if at < 0:
            raise ZipRefused("no end of central directory record at the end of the file (not a zip, or cut short)")
        if at + _EOCD.size <= len(tail):
            _, disk, cd_disk, disk_entries, entries, cd_size, cd_offset, comment = _EOCD.unpack_from(tail, at)
            if at + _EOCD.size + comment == len(tail):
                break
    eocd_at = tail_start + at
    if eocd_at < _LOCATOR.size or _read_at(f, eocd_at - _LOCATOR.size, 4) != _LOCATOR_SIG:
        if disk or cd_disk or disk_entries != entries:
            raise ZipRefused("a multi-disk (split) archive: upload it as one zip")
        return eocd_at, entries, cd_size, cd_offset
    # Zip64: the real counts and offsets are in the zip64 record the locator points at.
    _, disk64, record_at, disks = _LOCATOR.unpack(_read_at(f, eocd_at - _LOCATOR.size, _LOCATOR.size))
    if disk64 or disks > 1:
        raise ZipRefused("a multi-disk (split) archive: upload it as one zip")
    record = _read_at(f, record_at, _EOCD64.size) if record_at <= size - _EOCD64.size else b""
    if len(record) != _EOCD64.size or record[:4] != _EOCD64_SIG:
        raise ZipRefused("the zip64 end record is not where its locator says")
    _, record_size, _, _, disk, cd_disk, disk_entries, entries, cd_size, cd_offset = _EOCD64.unpack(record)
    if record_at + 12 + record_size != eocd_at - _LOCATOR.size:
        raise ZipRefused("the zip64 end record's size does not reach its locator")
    if disk or cd_disk or disk_entries != entries:
        raise ZipRefused("a multi-disk (split) archive: upload it as one zip")
    return record_at, entries, cd_size, cd_offset


def _check_entry(f: Any, index: int, cd_offset: int) -> None:
    head = f.read(_ENTRY.size)
    if len(head) != _ENTRY.size or head[:4] != _ENTRY_SIG:
        raise ZipRefused(f"central directory entry {index} is damaged or missing")
    fields = _ENTRY.unpack(head)
    made_by, flags = fields[1], fields[3]
    name_length, extra_length, comment_length, disk = fields[10], fields[11], fields[12], fields[13]
    external, local_offset = fields[15], fields[16]
    raw_name = f.read(name_length)
    extra = f.read(extra_length)
    comment = f.read(comment_length)
    if len(raw_name) != name_length or len(extra) != extra_length or len(comment) != comment_length:
        raise ZipRefused(f"central directory entry {index} runs past the end of the file")
    name = raw_name.decode("utf-8" if flags & _UTF8_NAMES else "cp437", "replace")
    if local_offset == 0xFFFFFFFF or disk == 0xFFFF:
        local_offset, disk = _zip64_place(extra, fields, local_offset, disk)
    if disk:
        raise ZipRefused(f"member {name[:80]!r} is on another disk: upload the archive as one zip")
    if local_offset + 30 > cd_offset:
        raise ZipRefused(f"member {name[:80]!r} starts past the central directory")
    _check_member_name(raw_name, name)
    if made_by >> 8 == _UNIX and stat.S_ISLNK(external >> 16):
        raise ZipRefused(f"member {name[:80]!r} is a symbolic link")


def _zip64_place(extra: bytes, fields: tuple[Any, ...], local_offset: int, disk: int) -> tuple[int, int]:
    """A member's local header offset and disk from its zip64 extra field (the fields marked 0xFFFFFFFF there)."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        pos += 4 + length
        if tag != 1:
            continue
        # In this order, each present only if its 32-bit field is saturated.
        values = iter(struct.unpack_from(f"<{len(body) // 8}Q", body)) if len(body) >= 8 else iter(())
        for saturated in (fields[9] == 0xFFFFFFFF, fields[8] == 0xFFFFFFFF):  # uncompressed, compressed size
            if saturated:
                next(values, None)
        if local_offset == 0xFFFFFFFF:
            local_offset = next(values, local_offset)
        if disk == 0xFFFF and len(body) % 8 == 4:
            disk = struct.unpack_from("<L", body, len(body) - 4)[0]
        return local_offset, disk
    raise ZipRefused("a zip64 member without its zip64 extra field")


def _check_member_name(raw: bytes, name: str) -> None:
    shown = repr(name[:80])
    if not raw:
        raise ZipRefused("a member has no name")
    if b"\x00" in raw:
        raise ZipRefused(f"member {shown} has a NUL in its name")
    if b"\\" in raw:
        raise ZipRefused(f"member {shown} has a backslash in its name (a Windows path separator)")
    if name.startswith("/") or (len(name) >= 2 and name[1] == ":" and name[0].isascii() and name[0].isalpha()):
        raise ZipRefused(f"member {shown} has an absolute path")
    if ".." in name.split("/"):
        raise ZipRefused(f"member {shown} has '..' in its path")
