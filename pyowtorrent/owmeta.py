"""The owmeta-core data loader: a data source that names a ``.torrent`` becomes a directory of verified data.

:class:`BitTorrentDataSourceDirLoader` is an
``owmeta_core.datasource_loader.DataSourceDirLoader``, registered under the
entry-point group ``owmeta_core.datasource_dir_loader``.  For a data source
with a ``torrent_file_name`` (owmeta-core's ``LocalFileDataSource`` has one)
it resolves that name through a torrent source (a directory, an ``http(s)``
base URL, ``gdrive:FOLDER`` or a source object), downloads into
``<base_directory>/<info-hash hex>/``, blocks until every piece has passed
its SHA-1 check, checks the data source's ``md5`` / ``sha256`` / ``sha512``
when they are set, and returns that directory.

A load that has been done before costs no network: the resolved ``.torrent``
is kept under ``<base_directory>/.pyowtorrent/torrents/``, and the download's
resume data vouches for the data, so a second load works with the torrent
source unreachable and no peer online.

owmeta-core is an optional dependency (the ``owmeta`` extra); only this
module imports it.  owmeta-core 0.13.5 pins ``wrapt`` 1.11, which does not
import on Python 3.11, so it is installed in two steps::

    pip install owmeta-core==0.13.5
    pip install 'wrapt>=1.14'
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterable, Iterator, Sequence, TypeVar, Union

from . import api
from .config import Config, load_config
from .engine.events import TorrentStatus
from .errors import MetainfoError, PyowtorrentError, SourceError
from .metainfo.torrent_file import Metainfo, parse_metainfo
from .sources import TorrentSource, open_source
from .storage.resume import write_atomically

__all__ = [
    "BitTorrentDataSourceDirLoader",
    "BitTorrentLoadFailed",
    "ChecksumMismatch",
    "OwmetaUnavailable",
    "LoadFailed",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

_OWMETA_REMEDY = (
    "install it in two steps: `pip install owmeta-core==0.13.5`, then `pip install 'wrapt>=1.14'` "
    "(owmeta-core 0.13.5 pins wrapt 1.11, which does not import on Python 3.11: "
    "\"cannot import name 'formatargspec'\"; pip's resolver refuses the two in one command)"
)


class OwmetaUnavailable(PyowtorrentError, ImportError):
    """owmeta-core is missing or does not import; the message says how to install it.

    An :class:`ImportError` too, so code that probes for optional modules with
    ``except ImportError`` keeps working.
    """


class ChecksumMismatch(PyowtorrentError):
    """The downloaded file's MD5 / SHA-256 / SHA-512 is not the one the data source records."""


try:
    from owmeta_core.datasource_loader import (  # type: ignore[import-untyped]
        DataSourceDirLoader,
        LoadFailed,
    )
except ImportError as _exc:
    _what = "is not installed" if getattr(_exc, "name", None) == "owmeta_core" else f"does not import ({_exc})"
    raise OwmetaUnavailable(f"pyowtorrent.owmeta needs owmeta-core, which {_what}: {_OWMETA_REMEDY}") from _exc


class BitTorrentLoadFailed(LoadFailed):  # type: ignore[misc]  # owmeta-core has no type hints
    """A :class:`LoadFailed` that carries the real reason (``reason``) through owmeta-core's ``__call__``."""

    def __init__(self, data_source: Any, loader: Any, reason: str) -> None:
        super().__init__(data_source, loader, reason)
        self.reason = reason


class _Unset(enum.Enum):
    UNSET = enum.auto()


_UNSET = _Unset.UNSET

TrackerSpec = Sequence[Union[str, Sequence[str]]]
SourceSpec = Union[str, "os.PathLike[str]", TorrentSource]

# The hashes a FileDataSource records, in the order they are checked.
DIGESTS = ("md5", "sha256", "sha512")
HASH_CHUNK = 1 << 20
# Where the loader keeps what it learnt, inside base_directory and inside each dataset's directory.
STATE_DIR = ".pyowtorrent"
# The daemon answers an add at once (it adopts the resume data); a daemon this slow is stuck.
DAEMON_TIMEOUT = 30.0


class BitTorrentDataSourceDirLoader(DataSourceDirLoader):  # type: ignore[misc]  # owmeta-core has no type hints
    """Loads a data source's files over BitTorrent into ``<base_directory>/<info-hash hex>/``.

    Built with no arguments (owmeta-core builds plugin loaders that way), it
    reads the configuration file (:func:`pyowtorrent.config.load_config`; a
    bad file raises :class:`~pyowtorrent.errors.ConfigError` here).  Keyword
    arguments override it: ``base_directory`` (default: the configured
    ``download_dir``; owmeta-core sets its own afterwards), ``torrent_source``
    (a directory, an ``http(s)`` base URL, ``gdrive:FOLDER`` or a
    :class:`~pyowtorrent.sources.TorrentSource`), ``peers`` (``"host:port"``
    or pairs, beside the torrent's trackers), ``trackers`` (URLs, or tiers of
    them, instead of the torrent's), ``timeout`` (seconds for the whole
    download; ``None``, the default, waits as long as it takes), the session
    settings ``listen``, ``port`` and ``upload_rate_limit``, and
    ``seed_with_daemon`` (hand each loaded dataset to a running
    ``pyowtorrent daemon`` to keep seeding).
    """

    def __init__(
        self,
        base_directory: str | os.PathLike[str] | None = None,
        *,
        torrent_source: SourceSpec | None = None,
        peers: Iterable[api.PeerSpec] = (),
        timeout: float | None = None,
        trackers: TrackerSpec | None = None,
        listen: str | Sequence[str] | None | _Unset = _UNSET,
        port: int | None = None,
        upload_rate_limit: int | None = None,
        seed_with_daemon: bool | None = None,
        config: Config | None = None,
    ) -> None:
        self.config = config if config is not None else load_config()
        base = base_directory if base_directory is not None else self.config.download_dir
        super().__init__(os.fspath(Path(base).expanduser()))
        self.torrent_source: SourceSpec | None = (
            torrent_source if torrent_source is not None else self.config.torrent_source
        )
        self.peers = list(peers)
        self.timeout = timeout
        self.trackers = _tiers(trackers)
        self.listen = self.config.listen if listen is _UNSET else listen
        self.port = self.config.port if port is None else port
        self.upload_rate_limit = self.config.upload_rate_limit if upload_rate_limit is None else upload_rate_limit
        self.seed_with_daemon = self.config.owmeta_seed_with_daemon if seed_with_daemon is None else seed_with_daemon
        self._source: TorrentSource | None = None

    # -- owmeta-core's interface ------------------------------------------------------

    def can_load(self, data_source: Any) -> bool:
        """True when the data source names a ``.torrent`` (has a ``torrent_file_name`` value)."""
        return _value(data_source, "torrent_file_name") is not None

    def load(self, data_source: Any) -> str:
        """Download the data source's torrent, verified, and return its directory.

        Raises :class:`BitTorrentLoadFailed` (a ``LoadFailed``) whose message
        is the real reason, raised from the underlying
        :class:`~pyowtorrent.errors.PyowtorrentError`; the reason is logged too.
        """
        reference = _value(data_source, "torrent_file_name")
        if reference is None:
            raise self._failed(data_source, "the data source has no torrent_file_name")
        try:
            return os.fspath(self._load(data_source, reference))
        except PyowtorrentError as exc:
            reason = str(exc) if reference in str(exc) else f"{reference}: {exc}"
            raise self._failed(data_source, reason) from exc

    def __call__(self, data_source: Any) -> str:
        """owmeta-core's checks around :meth:`load`, with the real reason kept when loading fails.

        owmeta-core 0.13.5 catches a ``LoadFailed`` from ``load`` and raises a
        new one saying only "Loader erred"; that one is still in the chain
        (``__context__``), but the reason is what the user needs to read.
        """
        try:
            return str(super().__call__(data_source))
        except BitTorrentLoadFailed:
            raise  # an owmeta-core that lets ours through
        except LoadFailed as exc:
            # Only what load() raised, directly under owmeta-core's: an older failure
            # of ours deeper in the chain (a caller retrying in an except block) is not this one's reason.
            ours = exc.__cause__ or exc.__context__
            if not isinstance(ours, BitTorrentLoadFailed):
                raise
            again = BitTorrentLoadFailed(data_source, self, ours.reason)
            raise again from (ours.__cause__ or ours)

    # -- the work -------------------------------------------------------------------

    def _load(self, data_source: Any, reference: str) -> Path:
        if not self.base_directory:
            raise PyowtorrentError("the loader has no base_directory to download into")
        base = Path(self.base_directory)
        cached = self._cached_torrent(base, reference)
        if cached is not None and api.is_complete(cached, base / cached.info_hash.hex()):
            # Done before: the resume data vouches for every piece.  No source, no peer, no tracker.
            meta = cached
            log.info("%s: already verified in %s", reference, base / meta.info_hash.hex())
        else:
            meta = _run(lambda: self._resolve(base, reference, cached))
            with _directory_lock(base / meta.info_hash.hex()):
                _run(lambda: self._download(meta, base / meta.info_hash.hex()))
        directory = base / meta.info_hash.hex()
        _check_file(data_source, meta, directory)
        if self.seed_with_daemon:
            _seed_with_daemon(meta, directory, self.config)
        return directory

    def _source_spec(self) -> SourceSpec:
        if self.torrent_source is None:
            where = self.config.source_path or "the configuration file"
            raise SourceError(
                f"no torrent source to find it in: set torrent_source in the [sources] section of {where}, "
                "or give the loader torrent_source= (a directory, an http(s) base URL, or gdrive:FOLDER)"
            )
        return self.torrent_source

    def _cache_file(self, base: Path, reference: str) -> Path:
        """Where the ``.torrent`` resolved for ``reference`` from this loader's source is kept."""
        spec = self._source_spec()
        if isinstance(spec, (str, os.PathLike)):
            text = os.fspath(spec)
            # A directory is keyed by its absolute path: the cwd may change between loads.
            if not text.startswith("gdrive:") and "://" not in text:
                text = os.path.abspath(os.path.expanduser(text))
            source_key = text
        else:
            source_key = f"{type(spec).__module__}.{type(spec).__qualname__}:{spec}"
        key = hashlib.sha256(f"{source_key}\0{reference}".encode()).hexdigest()[:40]
        return base / STATE_DIR / "torrents" / f"{key}.torrent"

    def _cached_torrent(self, base: Path, reference: str) -> Metainfo | None:
        path = self._cache_file(base, reference)
        try:
            return parse_metainfo(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, MetainfoError) as exc:
            log.warning("%s: ignoring the torrent kept in %s: %s", reference, path, exc)
            return None

    async def _resolve(self, base: Path, reference: str, cached: Metainfo | None) -> Metainfo:
        """The torrent from the source (then kept for next time), or the copy kept if the source fails."""
        try:
            if self._source is None:
                self._source = open_source(self._source_spec(), self.config)
            data = await self._source.fetch(reference)
            meta = parse_metainfo(data)
        except PyowtorrentError as exc:
            # Any failure of the source (unreachable, refused, the Drive extra missing, a bad file).
            if cached is None:
                if isinstance(exc, MetainfoError):
                    raise SourceError(f"{reference!r} from {self._source} is not a usable .torrent: {exc}") from None
                raise
            # A download begun before: carry on with the torrent it began with.
            log.warning("%s: the torrent source failed (%s); using the copy fetched before", reference, exc)
            return cached
        await asyncio.to_thread(_write_atomically, self._cache_file(base, reference), data)
        return meta

    async def _download(self, meta: Metainfo, directory: Path) -> None:
        log.info("%s: downloading into %s", meta.name, directory)
        await api.adownload(
            meta,
            directory,
            timeout=self.timeout,
            peers=self.peers,
            progress=_progress_logger(meta),
            trackers=self.trackers,
            listen=self.listen,
            port=self.port,
            upload_rate_limit=self.upload_rate_limit,
        )
        log.info("%s: every piece verified in %s", meta.name, directory)

    def _failed(self, data_source: Any, reason: str) -> BitTorrentLoadFailed:
        log.error("cannot load %s with %s: %s", _describe(data_source), self, reason)
        return BitTorrentLoadFailed(data_source, self, reason)


# -- helpers ----------------------------------------------------------------------------


def _value(data_source: Any, name: str) -> str | None:
    """The data source's ``name`` (an owmeta property's value, or a plain attribute), ``None`` if unset."""
    prop = getattr(data_source, name, None)
    if prop is None:
        return None
    one = getattr(prop, "one", None)
    value = one() if callable(one) else prop
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _describe(data_source: Any) -> str:
    try:
        return str(data_source.identifier)
    except Exception:  # noqa: BLE001 - owmeta raises its own error for an object without one
        return type(data_source).__name__


def _tiers(trackers: TrackerSpec | None) -> list[list[str]] | None:
    """Tracker tiers: a plain URL is a tier of its own (a list of strings is not a list of tiers of characters)."""
    if trackers is None:
        return None
    if isinstance(trackers, str):
        return [[trackers]]
    return [[t] if isinstance(t, str) else list(t) for t in trackers]


def _progress_logger(meta: Metainfo) -> Callable[[TorrentStatus], None]:
    """Logs each tenth of the way: a long load says where it is without flooding the log."""
    last = [-1]

    def progress(status: TorrentStatus) -> None:
        tenth = int(status.progress * 10)
        if tenth > last[0]:
            last[0] = tenth
            log.info(
                "%s: %.0f%% (%d of %d pieces), %d peers, %.0f KiB/s",
                meta.name,
                status.progress * 100,
                status.pieces_have,
                status.num_pieces,
                status.num_peers,
                status.download_rate / 1024,
            )

    return progress


def _run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine for owmeta-core's blocking interface.

    From a thread that runs an event loop (a notebook), the coroutine runs on
    a thread and loop of its own: the loader is a blocking call by contract,
    so the caller's loop waits as it would for any blocking call.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    return _run_on_thread(make)


def _run_on_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    result: concurrent.futures.Future[T] = concurrent.futures.Future()
    running: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None]
    running = concurrent.futures.Future()

    async def body() -> T:
        task = asyncio.current_task()
        assert task is not None
        running.set_result((asyncio.get_running_loop(), task))
        return await make()

    def main() -> None:
        try:
            result.set_result(asyncio.run(body()))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            result.set_exception(exc)
        finally:
            if not running.done():
                running.set_result(None)

    thread = threading.Thread(target=main, name="pyowtorrent-owmeta-load", daemon=True)
    thread.start()
    try:
        return result.result()
    except BaseException:
        # Interrupted while waiting (Ctrl-C): cancel the download and let it
        # close its session (resume data saved) before the interrupt goes on.
        if not result.done():
            started = running.result()
            if started is not None:
                loop, task = started
                loop.call_soon_threadsafe(task.cancel)
        thread.join()
        raise


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """One download per dataset directory at a time, across threads and processes.

    Two loads of the same torrent would otherwise download it twice into the
    same files; the second waits, then finds the data verified.  ``flock``
    locks belong to the open file, so threads of one process exclude each
    other too; the kernel drops the lock when the process ends.  Where there
    is no ``fcntl`` (Windows) there is no lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock_path = directory / STATE_DIR / "owmeta.lock"
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PyowtorrentError(f"cannot create {lock_path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_atomically(path: Path, data: bytes) -> None:
    """Keep a copy; a reader sees the old file or the new, never half of one."""
    try:
        write_atomically(path, data)
    except OSError as exc:
        # Only a cache: the load goes on, but a later one will need the source again.
        log.warning("cannot keep a copy in %s: %s", path, exc.strerror or exc)


# -- the data source's own checks --------------------------------------------------------


def _check_file(data_source: Any, meta: Metainfo, directory: Path) -> None:
    """The file the data source names is there, and has the MD5 / SHA-256 / SHA-512 it records."""
    wanted = {alg: v.lower() for alg in DIGESTS if (v := _value(data_source, alg)) is not None}
    file_name = _value(data_source, "file_name")
    if file_name is None:
        if not meta.multi_file:
            file_name = meta.name
        elif wanted:
            raise ChecksumMismatch(
                f"{meta.name}: the data source records {', '.join(wanted)} but no file_name to check "
                "them against, and the torrent holds several files"
            )
        else:
            return
    path = _inside(directory, file_name)
    if not path.is_file():
        holds = f"the file {meta.name!r}" if not meta.multi_file else f"the directory {meta.name!r}"
        raise PyowtorrentError(
            f"{meta.name}: the data source's file_name {file_name!r} is not in {directory} (the torrent holds {holds})"
        )
    if not wanted:
        return
    got = _digests(path, directory, file_name, sorted(wanted))
    for alg in DIGESTS:
        if alg in wanted and got[alg] != wanted[alg]:
            raise ChecksumMismatch(
                f"{file_name}: its {alg} is {got[alg]}, but the data source records {wanted[alg]}; every piece "
                f"matched the torrent {meta.name!r} ({meta.info_hash.hex()}), so that torrent is not the data "
                "this data source describes"
            )


def _inside(directory: Path, file_name: str) -> Path:
    """``directory/file_name``, refused if the name would lead outside the directory."""
    relative = Path(file_name)
    if relative.is_absolute() or ".." in relative.parts or "\\" in file_name or "\0" in file_name:
        raise PyowtorrentError(f"the data source's file_name {file_name!r} is not a relative path inside the dataset")
    path = directory / relative
    real, root = os.path.realpath(path), os.path.realpath(directory)
    if os.path.commonpath([real, root]) != root:
        raise PyowtorrentError(f"the data source's file_name {file_name!r} leads outside {directory}")
    return path


def _digests(path: Path, directory: Path, file_name: str, algorithms: list[str]) -> dict[str, str]:
    """The file's digests, hashed once per version of the file.

    Hashing a multi-gigabyte dataset on every load would undo what resume
    data saves, so the digests are kept beside the resume data with the
    file's size and modification time, the same evidence resume data trusts.
    """
    record_path = directory / STATE_DIR / "owmeta-digests.json"
    try:
        st = path.stat()
    except OSError as exc:
        raise PyowtorrentError(f"{path}: cannot read: {exc.strerror or exc}") from None
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        records = json.loads(record_path.read_text())
        if not isinstance(records, dict):
            records = {}
    except (OSError, ValueError):
        records = {}
    known = records.get(file_name)
    if not isinstance(known, dict) or {k: known.get(k) for k in stamp} != stamp:
        known = dict(stamp)
    missing = [alg for alg in algorithms if not isinstance(known.get(alg), str)]
    if missing:
        known.update(_hash_file(path, missing))
        records[file_name] = known
        _write_atomically(record_path, json.dumps(records, indent=1).encode())
    return {alg: str(known[alg]) for alg in algorithms}


def _hash_file(path: Path, algorithms: list[str]) -> dict[str, str]:
    """Every digest asked for, in one streaming pass over the file."""
    hashers = {alg: hashlib.new(alg, usedforsecurity=False) for alg in algorithms}
    try:
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                for h in hashers.values():
                    h.update(chunk)
    except OSError as exc:
        raise PyowtorrentError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return {alg: h.hexdigest() for alg, h in hashers.items()}


# -- seeding on in the daemon -----------------------------------------------------------


def _seed_with_daemon(meta: Metainfo, directory: Path, config: Config) -> None:
    """Hand the loaded dataset to the daemon of ``config.state_dir`` to keep seeding it.

    The data is loaded whatever happens here, so a daemon that is not
    running, does not answer or refuses (it already seeds this torrent from
    elsewhere) is a warning, not a failed load.  The daemon adopts the resume
    data in the directory, so it does not read the data again.  Adding a
    torrent it already has from this directory changes nothing: every load
    may ask.
    """
    from .daemon.client import AsyncDaemonClient

    async def add() -> dict[str, Any]:
        async with AsyncDaemonClient(config.state_dir, timeout=DAEMON_TIMEOUT) as client:
            return await client.add(meta.to_bytes(), directory, seed=True)

    try:
        result = _run(add)
    except PyowtorrentError as exc:
        log.warning("%s: loaded, but not handed to the daemon to seed: %s", meta.name, exc)
        return
    if result.get("added"):
        log.info("%s: the daemon of %s seeds it from %s", meta.name, config.state_dir, directory)
