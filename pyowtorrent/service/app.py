"""The upload service (``pyowtorrent serve``): a ``.zip`` goes in, a seeded torrent comes out.

One process, one HTTP port, serving:

* the JSON API: ``PUT /uploads/{name}`` (a raw body, ``curl -T``) and ``POST
  /uploads`` (a multipart form, ``curl -F``) publish a dataset; ``GET
  /uploads``, ``GET /uploads/{name}``, ``DELETE /uploads/{name}``, ``GET
  /torrents/{info_hash}.torrent``, ``GET /healthz``;
* the embedded tracker at ``<public-url>announce`` (and ``scrape``), tracking
  this service's torrents only;
* the payloads over HTTP with byte ranges, at ``<public-url>data/{name}``:
  every torrent's web seed (BEP 19);
* the page at ``/`` and its files under ``/static/``.

Beside it, a :class:`~pyowtorrent.engine.session.Session` seeds every dataset
on the peer port.  Every torrent made carries this service's tracker and web
seed, then any ``trackers`` and ``web_seed_bases`` configured (an existing
tracker; an HTTP server or object store mirroring the data directory).

An upload is hashed while it arrives (:mod:`.uploads`); its resume data is
written vouching for every piece, so seeding starts without a recheck, and a
restart seeds everything again without re-hashing what the resume data
vouches for.

The API (every answer JSON, errors too: ``{"status", "code", "error"}``):

================================================  ===================================================
``PUT /uploads/{name}[?replace=1][&private=1]``   ``201`` the dataset (below) and ``replaced``
``POST /uploads[?name=N][&replace=1][&private=1]``  the same, from a form's one file field
``GET /uploads[?pk=KEY]``                         ``{"uploads": [dataset...], "receiving": [...]}``
``GET /uploads/{name}[?pk=KEY]``                  the dataset
``DELETE /uploads/{name}``                        ``{"name", "info_hash", "deleted": true}``
``GET /torrents/{info_hash}.torrent[?pk=KEY]``    the ``.torrent`` (``application/x-bittorrent``)
``GET /data/{name}``                              the payload, byte ranges answered ``206``
``GET /data/{passkey}/{name}``                    the same, for a passkey holder (private datasets)
``GET /passkeys``                                 ``{"users": [{"user", "passkey": "3f9a..."}]}``
``POST /passkeys?user=U[&replace=1]``             ``201`` ``{"user", "passkey", "uploads_url", ...}``
``DELETE /passkeys/{user}``                       ``{"user", "revoked": true}``
``GET /healthz``                                  ``{"status": "ok", "datasets", "seeding", ...}``
================================================  ===================================================

Writes need a bearer token (:mod:`.auth`); reads too with ``private_reads``,
except the web seed, the tracker and ``/healthz``, which BitTorrent clients
and monitors use without one.  A private dataset (:mod:`.passkeys`) is
listed to token and passkey holders only, and its ``.torrent``, web seed
and tracker need a passkey (``?pk=KEY``; the web seed's in its path); the
``/passkeys`` routes need a token.  :func:`make_app` wires the routes;
:meth:`UploadService.describe` is the dataset's JSON.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote, urlsplit

from aiohttp import web

from ..engine.events import TorrentState
from ..engine.session import Session
from ..engine.torrent import Torrent
from ..errors import PyowtorrentError
from ..metainfo.layout import FileEntry
from ..metainfo.magnet import Magnet
from ..metainfo.torrent_file import Metainfo, load_metainfo
from ..storage.create import build_metainfo, tracker_tiers
from ..storage.resume import ResumeData
from . import DEFAULT_MAX_UPLOAD_SIZE
from .auth import Access, Tokens
from .catalog import (
    Catalog,
    Dataset,
    ServicePaths,
    install_dataset,
    remove_dataset_state,
    sweep_leftovers,
    unlink_quietly,
)
from .passkeys import (
    KEYED_DATA_ROUTE,
    SEEDER_LOGGERS,
    Passkeys,
    Viewer,
    check_user,
    keyed_announce,
    keyed_data,
    personal_torrent,
    redact,
    redact_logs,
)
from .tracker import Tracker
from .uploads import (
    MULTIPART_SLACK,
    ClientGone,
    Limits,
    Received,
    Reservations,
    UploadError,
    check_name,
    discard,
    file_part,
    part_reader,
    receive,
    rest_of_form,
    storage_error,
)

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_UPLOAD_SIZE", "ServiceConfig", "UploadService"]

_WILDCARDS: Final = ("", "0.0.0.0", "::")
# Escaping of a name in a URL path, as libtorrent escapes web seed paths.
_PATH_SAFE: Final = "!*()"


@dataclass(frozen=True)
class ServiceConfig:
    """What ``pyowtorrent serve`` is told (see its ``--help``)."""

    data_dir: Path
    listen: Sequence[str] = ("0.0.0.0", "::")
    port: int = 8080
    public_url: str | None = None  # default: http://<the first listen address>:<port>/, unless a wildcard
    tokens: Tokens | None = None
    allow_anonymous_uploads: bool = False  # only with every listen address on loopback
    private_reads: bool = False  # the catalog and torrents need a token too
    peer_port: int = 6881
    trackers: Sequence[str] = ()
    web_seed_bases: Sequence[str] = ()
    max_upload_size: int = DEFAULT_MAX_UPLOAD_SIZE
    max_concurrent_uploads: int = 4
    read_timeout: float = 60.0
    tracker_interval: int = 1800  # seconds between a client's announces
    passkeys: Path | None = None  # default: <data_dir>/.pyowtorrent/passkeys
    private: bool = False  # every upload private (BEP 27, passkeys), not only those with ?private=1

    def check(self) -> None:
        """Refuse a configuration that cannot work or would be unsafe; :class:`PyowtorrentError` says why."""
        if self.tokens is None and self.private_reads:
            raise PyowtorrentError("--private-reads needs --tokens: reads would need a token nobody has")
        if self.tokens is None and self.allow_anonymous_uploads and not all(_loopback(a) for a in self.listen):
            raise PyowtorrentError(
                "--allow-anonymous-uploads is for a service on loopback only (--listen 127.0.0.1):"
                " anyone who reaches it could upload; give --tokens instead"
            )
        if self.max_upload_size <= 0 or self.max_concurrent_uploads <= 0 or self.read_timeout <= 0:
            raise PyowtorrentError("the upload limits (size, concurrent uploads, read timeout) must be positive")
        if self.public_url is not None:
            _check_base_url(self.public_url, "--public-url")
        elif not self.listen or self.listen[0] in _WILDCARDS:
            # Every torrent made carries this URL for good: no guessing it.
            raise PyowtorrentError(
                "give --public-url (the URL downloaders reach this service at) when listening on all addresses:"
                " every torrent carries it as its tracker and web seed"
            )
        for base in self.web_seed_bases:
            _check_base_url(base, "--web-seed-base")
        try:
            tracker_tiers(list(self.trackers))
        except ValueError as exc:
            raise PyowtorrentError(str(exc)) from None


def _loopback(address: str) -> bool:
    return address in ("localhost", "::1") or address.startswith("127.")


def _check_base_url(url: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise PyowtorrentError(f"{what} {url!r} must be an http(s) URL with a host and no query")


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


class UploadService:
    """The service's state and its life cycle: the catalog, the seeding session, the tracker, the HTTP server."""

    def __init__(self, config: ServiceConfig) -> None:
        config.check()
        self.config = config
        self.paths = ServicePaths(config.data_dir)
        self.catalog = Catalog(self.paths.catalog)
        self.reservations = Reservations(config.max_concurrent_uploads)
        self.limits = Limits(config.max_upload_size, config.read_timeout)
        self.tracker = Tracker(interval=config.tracker_interval, allowed_info_hashes=[])
        self.passkeys = Passkeys(config.passkeys or self.paths.passkeys)
        self.session = Session(listen=list(config.listen), port=config.peer_port, resume_dir=self.paths.resume)
        # Upload writes, hashing and zip checks: at most a write and a few digests per upload at once.
        self.executor = ThreadPoolExecutor(
            max_workers=4 * config.max_concurrent_uploads, thread_name_prefix="pyowtorrent-upload"
        )
        self.torrents: dict[str, Torrent] = {}  # seeding, by dataset name
        self._metas: dict[str, Metainfo] = {}
        self._problems: dict[str, str] = {}  # datasets that cannot be seeded, and why
        self._catalog_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._public_url: str | None = None
        self.port = 0

    # -- life cycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Open the data directory, start the session and the HTTP server, seed every dataset again."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.executor, self.paths.make)
            await loop.run_in_executor(self.executor, self.passkeys.load)
            self.catalog = await loop.run_in_executor(self.executor, Catalog.load, self.paths.catalog)
            await loop.run_in_executor(self.executor, sweep_leftovers, self.paths, self.catalog)
            await self.session.start()
            await self._serve_http()
            for dataset in self.catalog:
                await self._seed_again(dataset)
        except OSError as exc:  # the data directory cannot be made or read
            await self.close()
            raise PyowtorrentError(f"cannot serve from {self.paths.data}: {exc.strerror or exc}") from None
        except BaseException:
            await self.close()
            raise
        log.info("serving %s at %s (%d datasets)", self.paths.data, self.public_url, len(self.catalog))

    async def _serve_http(self) -> None:
        access_log = logging.getLogger(f"{__name__}.access")
        for logger in (access_log, *map(logging.getLogger, SEEDER_LOGGERS)):
            redact_logs(logger)  # a request line, an announce URL may hold a passkey
        runner = web.AppRunner(
            make_app(self),
            access_log=access_log,
            handle_signals=False,
            shutdown_timeout=2.0,
            keepalive_timeout=15.0,
            # As the tracker's own server: long announce query strings reach its handler.
            max_line_size=64 * 1024,
            max_field_size=8190,
            max_headers=64,
        )
        await runner.setup()
        self._runner = runner
        port = self.config.port
        for address in self.config.listen:
            try:
                await web.TCPSite(runner, address, port).start()
            except OSError as exc:
                if address == "::" and runner.addresses:
                    log.info("no IPv6 listen socket: %s", exc)  # an IPv4-only machine
                    continue
                raise PyowtorrentError(f"cannot listen on {address} port {port}: {exc.strerror or exc}") from None
            if port == 0:
                port = int(runner.addresses[0][1])
        self.port = port
        host = self.config.listen[0]
        if self.config.public_url is not None:
            self._public_url = _with_slash(self.config.public_url)
        else:  # an address of this machine, not a wildcard (checked with the configuration)
            self._public_url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    async def close(self) -> None:
        """Stop serving (uploads under way end, their files removed), stop seeding (saving resume data)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self.session.close()
        await asyncio.to_thread(self.executor.shutdown, True)

    async def __aenter__(self) -> UploadService:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- URLs -------------------------------------------------------------------------

    @property
    def public_url(self) -> str:
        if self._public_url is None:
            raise RuntimeError("the service is not started")
        return self._public_url

    @property
    def announce_url(self) -> str:
        return self.public_url + "announce"

    def web_seed_url(self, name: str, base: str | None = None) -> str:
        return _with_slash(base if base is not None else self.public_url + "data") + quote(name, safe=_PATH_SAFE)

    def torrent_url(self, info_hash: bytes) -> str:
        return f"{self.public_url}torrents/{info_hash.hex()}.torrent"

    def _tiers(self) -> list[str]:
        return [self.announce_url, *(t for t in self.config.trackers if t != self.announce_url)]

    def _web_seeds(self, name: str) -> list[str]:
        return [self.web_seed_url(name), *(self.web_seed_url(name, base) for base in self.config.web_seed_bases)]

    # -- names --------------------------------------------------------------------------

    def check_free(self, name: str, replace: bool, *, reserved: bool = False) -> None:
        """Refuse (409) a name that is being written (unless ``reserved`` by the caller), or taken and not to be replaced."""
        if not reserved and self.reservations.busy(name):
            raise UploadError(409, "in_progress", f"{name!r} is being uploaded or deleted by another request")
        if replace:
            return
        if name in self.catalog or os.path.lexists(self.paths.payload(name)):
            raise UploadError(
                409, "exists", f"{name!r} exists already: DELETE it first, or upload with ?replace=1 to replace it"
            )

    # -- publishing, deleting -------------------------------------------------------------

    async def publish(
        self, name: str, received: Received, replace: bool, private: bool = False
    ) -> tuple[Dataset, bool]:
        """Make the torrent of a received upload, move it into place, record it, seed it.

        The name is reserved by the caller.  Returns the dataset and whether it
        replaced one.  The dataset exists once the catalog naming it is saved;
        a failure before that removes what this upload wrote.  A ``private``
        one carries this service's tracker and web seed only (:mod:`.passkeys`).
        """
        hashes = received.hashes
        length = hashes.piece_length
        try:
            # Checked again: a file may have been put in the data directory by hand meanwhile.
            self.check_free(name, replace, reserved=True)
            meta = build_metainfo(
                name,
                [FileEntry((name,), hashes.size, 0)],
                length,
                hashes.pieces[length],
                multi_file=False,
                trackers=[self.announce_url] if private else self._tiers(),
                web_seeds=[self.web_seed_url(name)] if private else self._web_seeds(name),
                private=private,
            )
        except BaseException:
            await discard(received.path, self.executor)
            raise
        dataset = Dataset(name, hashes.size, hashes.sha256, meta.info_hash, length, time.time(), private)
        # Run to its end even if the request is cancelled (the service stopping):
        # a payload moved into place that the catalog does not name would hold its name.
        old = await asyncio.shield(self._commit(dataset, meta, received))
        try:
            await self._seed(dataset, meta)
        except PyowtorrentError as exc:  # published all the same: seeded again at the next start
            self._problems[name] = f"cannot seed: {exc}"
            log.error("%s: %s", name, self._problems[name])
        replaced = " (replacing %s)" % old.info_hash.hex() if old is not None else ""
        log.info("published %s: %d bytes, info-hash %s%s", name, dataset.size, meta.info_hash.hex(), replaced)
        return dataset, old is not None

    async def _commit(self, dataset: Dataset, meta: Metainfo, received: Received) -> Dataset | None:
        """Stop the dataset this one replaces, put the new one in place and in the catalog; the old one, if any."""
        loop = asyncio.get_running_loop()
        old = self.catalog.get(dataset.name)
        if old is not None:
            # Stopped before the new resume data is written: its last save must not land after it.
            await self._retire(old)
        resume = ResumeData(meta.info_hash, bytearray([1]) * meta.num_pieces, [received.stamp])
        try:
            await loop.run_in_executor(self.executor, install_dataset, self.paths, meta, resume, received.path)
        except OSError as exc:
            if old is None or old.info_hash != meta.info_hash:
                await loop.run_in_executor(self.executor, remove_dataset_state, self.paths, meta.info_hash)
            await discard(received.path, self.executor)
            if old is not None:
                await self._seed_again(old)
            raise storage_error(exc) from None
        self.catalog.put(dataset)
        try:
            await self._save_catalog()
        except OSError as exc:
            # Not published after all.  The payload stays where it is (logged); the
            # next start removes the torrent and resume data nobody lists.
            self.catalog.remove(dataset.name)
            if old is not None:
                self.catalog.put(old)
            log.error("%s left in place: the catalog could not be saved", self.paths.payload(dataset.name))
            raise storage_error(exc) from None
        if old is not None and old.info_hash != meta.info_hash:
            await loop.run_in_executor(self.executor, remove_dataset_state, self.paths, old.info_hash)
        return old

    async def delete(self, name: str) -> Dataset:
        """Stop seeding ``name``, forget it, remove its payload, torrent and resume data (name reserved by the caller)."""
        dataset = self.catalog.get(name)
        if dataset is None:
            raise UploadError(404, "not_found", f"no dataset named {name!r}")
        await self._retire(dataset)
        self.catalog.remove(name)
        await self._save_catalog()

        def remove() -> None:
            unlink_quietly(self.paths.payload(name))
            remove_dataset_state(self.paths, dataset.info_hash)

        await asyncio.get_running_loop().run_in_executor(self.executor, remove)
        log.info("deleted %s (info-hash %s)", name, dataset.info_hash.hex())
        return dataset

    async def _save_catalog(self) -> None:
        # One save at a time, each writing the catalog as it is when it starts:
        # the last save on disk always holds every change made before it.
        async with self._catalog_lock:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.catalog.save)

    # -- seeding ------------------------------------------------------------------------------

    async def _seed(self, dataset: Dataset, meta: Metainfo) -> None:
        self._metas[dataset.name] = meta
        self._problems.pop(dataset.name, None)
        trackers = None
        if dataset.private:  # guarded before it is tracked; the seeder announces with its own passkey
            self.passkeys.guard(meta.info_hash)
            trackers = [[keyed_announce(self.public_url, self.passkeys.seeder_key)]]
        self.tracker.allow(meta.info_hash)
        self.torrents[dataset.name] = await self.session.add_torrent(meta, self.paths.data, trackers=trackers)

    async def _retire(self, dataset: Dataset) -> None:
        self._metas.pop(dataset.name, None)
        self._problems.pop(dataset.name, None)
        torrent = self.torrents.pop(dataset.name, None)
        if torrent is not None:
            await self.session.remove_torrent(torrent)
        self.tracker.disallow(dataset.info_hash)
        self.passkeys.unguard(dataset.info_hash)

    async def _seed_again(self, dataset: Dataset) -> None:
        """Seed a dataset of the catalog at start: its resume data spares the re-hash."""
        loop = asyncio.get_running_loop()
        payload = self.paths.payload(dataset.name)
        try:
            meta = await loop.run_in_executor(self.executor, load_metainfo, self.paths.torrent(dataset.info_hash))
            st = await loop.run_in_executor(self.executor, os.stat, payload)
        except (PyowtorrentError, OSError) as exc:
            self._problems[dataset.name] = f"cannot seed: {exc}"
        else:
            if meta.info_hash != dataset.info_hash or meta.private != dataset.private:
                self._problems[dataset.name] = "cannot seed: its .torrent file is another torrent's"
            elif st.st_size != dataset.size:
                self._problems[dataset.name] = f"cannot seed: {payload} is {st.st_size} bytes, not {dataset.size}"
            else:
                await self._seed(dataset, meta)
                return
        log.error("%s: %s", dataset.name, self._problems[dataset.name])

    # -- what the API shows ---------------------------------------------------------------------

    def describe(self, dataset: Dataset, passkey: str | None = None) -> dict[str, Any]:
        """A dataset as ``GET /uploads`` lists it: a private one's links for the holder of ``passkey``."""
        torrent = self.torrents.get(dataset.name)
        st = torrent.status() if torrent is not None else None
        swarm = self.tracker.peers(dataset.info_hash)
        return {
            "name": dataset.name,
            "size": dataset.size,
            "sha256": dataset.sha256.hex(),
            "info_hash": dataset.info_hash.hex(),
            "piece_length": dataset.piece_length,
            "num_pieces": -(-dataset.size // dataset.piece_length),
            "private": dataset.private,
            **self._links(dataset, passkey),
            "added": datetime.datetime.fromtimestamp(dataset.added, datetime.timezone.utc).isoformat(timespec="seconds"),
            "state": st.state.value if st is not None else "missing",
            "peers": st.num_peers if st is not None else 0,
            "uploaded": st.uploaded if st is not None else 0,
            "upload_rate": round(st.upload_rate) if st is not None else 0,
            "checked_bytes": st.checked_bytes if st is not None else 0,
            "swarm": {"seeders": sum(p.left == 0 for p in swarm), "leechers": sum(p.left > 0 for p in swarm)},
            "trackers": [
                {"url": redact(t.url), "working": t.working, "error": t.last_error and redact(t.last_error)}
                for t in (st.trackers if st else ())
            ],
            "error": (st.error if st is not None else None) or self._problems.get(dataset.name),
        }

    def _links(self, dataset: Dataset, passkey: str | None) -> dict[str, Any]:
        """The magnet, ``.torrent`` and web seed URLs; a private dataset's carry ``passkey`` (no magnet without one)."""
        name, torrent_url = dataset.name, self.torrent_url(dataset.info_hash)
        if not dataset.private:
            meta = self._metas.get(name)
            magnet = meta.magnet() if meta is not None else _magnet(dataset, self._tiers(), self._web_seeds(name))
            return {"magnet": magnet, "torrent_url": torrent_url, "web_seed_url": self.web_seed_url(name)}
        if passkey is None:
            return {"magnet": None, "torrent_url": torrent_url, "web_seed_url": self.web_seed_url(name)}
        web_seed = self.web_seed_url(name, keyed_data(self.public_url, passkey))
        magnet = _magnet(dataset, [keyed_announce(self.public_url, passkey)], [web_seed])
        return {"magnet": magnet, "torrent_url": f"{torrent_url}?pk={passkey}", "web_seed_url": web_seed}

    def health(self) -> dict[str, Any]:
        states = [t.state for t in self.torrents.values()]
        return {
            "status": "ok",
            "datasets": len(self.catalog),
            "seeding": sum(s is TorrentState.SEEDING for s in states),
            "problems": len(self._problems) + sum(s is TorrentState.ERROR for s in states),
            "uploads_in_progress": self.reservations.uploads,
        }


def _magnet(dataset: Dataset, trackers: list[str], web_seeds: list[str]) -> str:
    return Magnet(
        info_hash=dataset.info_hash, display_name=dataset.name, trackers=tuple(trackers), web_seeds=tuple(web_seeds)
    ).uri()


# -- the HTTP side ------------------------------------------------------------------------------

SERVICE: Final = web.AppKey("service", UploadService)
#: The page and its files (the page itself is ``index.html``).
STATIC_DIR: Final = Path(__file__).resolve().parent / "static"


def make_app(service: UploadService) -> web.Application:
    """The service's aiohttp application: the API, the tracker, the web seed, the page."""
    app = web.Application(middlewares=[_errors])
    app[SERVICE] = service
    app.on_response_prepare.append(_common_headers)
    service.tracker.mount(app, gate=service.passkeys)
    r = app.router
    r.add_put("/uploads/{name:.+}", _put_upload, expect_handler=_expect_put)
    r.add_post("/uploads", _post_upload, expect_handler=_expect_post)
    r.add_get("/uploads", _list_uploads)
    r.add_get("/uploads/{name:.+}", _get_upload)
    r.add_delete("/uploads/{name:.+}", _delete_upload)
    r.add_get("/torrents/{info_hash:[0-9a-fA-F]{40}}.torrent", _get_torrent)
    r.add_get("/data/{name}", _get_data)
    r.add_get(KEYED_DATA_ROUTE, _get_keyed_data)
    r.add_get("/passkeys", _list_passkeys)
    r.add_post("/passkeys", _post_passkey)
    r.add_delete("/passkeys/{user}", _delete_passkey)
    r.add_get("/healthz", _healthz)
    r.add_get("/", _index)
    if STATIC_DIR.is_dir():
        r.add_static("/static/", STATIC_DIR)
    else:
        log.warning("%s is missing: no page at / (the API works)", STATIC_DIR)
    return app


async def _common_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def _error_response(exc: UploadError) -> web.Response:
    response = web.json_response(
        {"status": exc.status, "code": exc.code, "error": exc.message}, status=exc.status, headers=exc.headers
    )
    if exc.close:
        response.force_close()
    return response


def _log_refusal(request: web.Request, exc: UploadError) -> None:
    level = logging.ERROR if exc.status >= 500 else logging.WARNING
    what = "ended, nothing kept" if isinstance(exc, ClientGone) else f"refused: {exc.status}"
    log.log(level, "%s %s from %s %s: %s", request.method, redact(request.path), request.remote, what, exc.message)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error answers JSON: the service's own refusals, aiohttp's 404s and 405s, and bugs (500)."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except UploadError as exc:
        _log_refusal(request, exc)
        return _error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        code = exc.reason.lower().replace(" ", "_")
        return _error_response(UploadError(exc.status, code, exc.reason, headers))
    except Exception:
        log.exception("%s %s failed", request.method, redact(request.path))
        return _error_response(UploadError(500, "internal", "internal error (see the service's log)"))


# -- who may do what ------------------------------------------------------------------------------


def _authorize(request: web.Request, what: str) -> None:
    """Raise 401/403 unless the request carries a token from the tokens file (see :mod:`.auth`)."""
    config = request.app[SERVICE].config
    if config.tokens is None:
        if config.allow_anonymous_uploads:
            return
        raise UploadError(403, "read_only", "this service takes no uploads: it was started without --tokens")
    access = config.tokens.check(request.headers.get("Authorization"))
    if access is Access.NO_TOKEN:
        raise UploadError(
            401,
            "token_required",
            f"{what} needs a token: send 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": 'Bearer realm="pyowtorrent"'},
        )
    if access is Access.WRONG_TOKEN:
        raise UploadError(403, "token_refused", "this token is not one of the service's")


def _viewer(request: web.Request) -> Viewer:
    """Who reads: a passkey in force (``?pk=``), a token holder, or anyone (a token needed with ``private_reads``)."""
    service = request.app[SERVICE]
    passkey = request.query.get("pk")
    if passkey is not None:
        service.passkeys.require(passkey)
        return Viewer(admin=False, passkey=passkey)
    config = service.config
    if config.private_reads:
        _authorize(request, "reading this service's catalog")
        return Viewer(admin=True)
    if config.tokens is None:
        return Viewer(admin=config.allow_anonymous_uploads)
    return Viewer(admin=config.tokens.check(request.headers.get("Authorization")) is Access.GRANTED)


def _private_refusal(dataset: Dataset) -> UploadError:
    return UploadError(
        403, "passkey_required", f"{dataset.name!r} is private: add ?pk=YOUR_PASSKEY, or use your own .torrent's URLs"
    )


def _flag(request: web.Request, name: str, default: bool = False) -> bool:
    value = request.query.get(name, "1" if default else "0").lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no", ""):
        return False
    raise UploadError(400, "bad_query", f"{name} must be 1 or 0")


def _replace_flag(request: web.Request) -> bool:
    return _flag(request, "replace")


def _private_flag(request: web.Request) -> bool:
    """``?private=1``: a private dataset (always, with the service's ``private``; ``?private=0`` is then refused)."""
    always = request.app[SERVICE].config.private
    private = _flag(request, "private", always)
    if always and not private:
        raise UploadError(400, "private_only", "this service publishes private datasets only (--private)")
    return private


def _admit_put(request: web.Request) -> tuple[str, bool, bool]:
    """Every check a raw upload passes before a byte of its body is read; the name, replace, private."""
    service = request.app[SERVICE]
    _authorize(request, "uploading")
    name = check_name(request.match_info["name"])
    replace = _replace_flag(request)
    private = _private_flag(request)
    service.check_free(name, replace)
    declared = request.content_length
    if declared is not None and declared > service.limits.max_size:
        raise UploadError(413, "too_large", f"{declared} bytes is over the limit of {service.limits.max_size}")
    service.reservations.check_room()
    return name, replace, private


def _admit_post(request: web.Request) -> tuple[bool, bool]:
    """Every check a form upload passes before its body is read (its name is in the body); replace, private."""
    service = request.app[SERVICE]
    _authorize(request, "uploading")
    replace = _replace_flag(request)
    private = _private_flag(request)
    if request.content_type != "multipart/form-data":
        raise UploadError(
            415, "not_a_form", "POST a multipart/form-data body with one file, or PUT the raw file to /uploads/{name}"
        )
    declared = request.content_length
    if declared is not None and declared > service.limits.max_size + MULTIPART_SLACK:
        raise UploadError(413, "too_large", f"{declared} bytes is over the limit of {service.limits.max_size}")
    service.reservations.check_room()
    return replace, private


async def _expect(request: web.Request, admit: Any) -> web.StreamResponse | None:
    """``Expect: 100-continue``: a refused upload gets its answer before the client sends the body."""
    try:
        admit(request)
    except UploadError as exc:
        _log_refusal(request, exc)
        response = _error_response(exc)
        response.force_close()  # the client holds its body back: nothing to drain, close
        return response
    if request.headers.get("Expect", "").lower() != "100-continue":
        return _error_response(UploadError(417, "expectation_failed", "the only expectation taken is 100-continue"))
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # as aiohttp's own: the interim answer is not the response's size
    return None


async def _expect_put(request: web.Request) -> web.StreamResponse | None:
    return await _expect(request, _admit_put)


async def _expect_post(request: web.Request) -> web.StreamResponse | None:
    return await _expect(request, _admit_post)


# -- handlers --------------------------------------------------------------------------------------


def _created(service: UploadService, dataset: Dataset, replaced: bool) -> web.Response:
    return web.json_response(
        {**service.describe(dataset), "replaced": replaced},
        status=201,
        headers={"Location": f"/uploads/{quote(dataset.name, safe=_PATH_SAFE)}"},
    )


async def _put_upload(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    name, replace, private = _admit_put(request)
    declared = request.content_length
    with service.reservations.slot(), service.reservations.name(name) as progress:
        received = await receive(
            request.content.readany,
            declared_size=declared,
            exact_size=declared is not None,
            limits=service.limits,
            tmp_dir=service.paths.tmp,
            executor=service.executor,
            progress=progress,
        )
        dataset, replaced = await service.publish(name, received, replace, private)
    return _created(service, dataset, replaced)


async def _post_upload(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    replace, private = _admit_post(request)
    timeout = service.limits.read_timeout
    with service.reservations.slot():
        try:
            reader = await request.multipart()
        except (ValueError, KeyError, AssertionError) as exc:
            raise UploadError(400, "bad_form", f"malformed multipart body: {exc}") from None
        part = await file_part(reader, timeout)
        name = check_name(request.query.get("name") or part.filename or "")
        service.check_free(name, replace)
        with service.reservations.name(name) as progress:
            received = await receive(
                part_reader(part),
                declared_size=request.content_length,
                exact_size=False,
                limits=service.limits,
                tmp_dir=service.paths.tmp,
                executor=service.executor,
                progress=progress,
            )
            try:
                await rest_of_form(reader, timeout)
            except BaseException:
                await discard(received.path, service.executor)
                raise
            dataset, replaced = await service.publish(name, received, replace, private)
    return _created(service, dataset, replaced)


async def _list_uploads(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    viewer = _viewer(request)
    return web.json_response(
        {
            "uploads": [service.describe(d, viewer.passkey) for d in service.catalog if viewer.sees(d)],
            "receiving": [{"name": n, "received": b} for n, b in service.reservations.receiving().items()],
        }
    )


def _dataset(request: web.Request) -> Dataset:
    name = request.match_info["name"]
    dataset = request.app[SERVICE].catalog.get(name)
    if dataset is None:
        raise UploadError(404, "not_found", f"no dataset named {name[:200]!r}")
    return dataset


async def _get_upload(request: web.Request) -> web.Response:
    viewer = _viewer(request)
    dataset = _dataset(request)
    if not viewer.sees(dataset):
        raise _private_refusal(dataset)
    return web.json_response(request.app[SERVICE].describe(dataset, viewer.passkey))


async def _delete_upload(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    _authorize(request, "deleting")
    name = _dataset(request).name
    with service.reservations.name(name, upload=False):
        dataset = await service.delete(name)
    return web.json_response({"name": dataset.name, "info_hash": dataset.info_hash.hex(), "deleted": True})


async def _get_torrent(request: web.Request) -> web.StreamResponse:
    """The ``.torrent``; a private dataset's only with ``?pk=``, that user's own copy (:func:`.personal_torrent`)."""
    service = request.app[SERVICE]
    viewer = _viewer(request)
    info_hash = bytes.fromhex(request.match_info["info_hash"])
    dataset = service.catalog.by_info_hash(info_hash)
    if dataset is None:
        raise UploadError(404, "not_found", f"no torrent with info-hash {info_hash.hex()}")
    headers = {
        "Content-Type": "application/x-bittorrent",
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(dataset.name + '.torrent', safe='')}",
    }
    if not dataset.private:
        return web.FileResponse(service.paths.torrent(info_hash), headers=headers)
    if viewer.passkey is None:
        raise _private_refusal(dataset)
    path = service.paths.torrent(info_hash)
    meta = await asyncio.get_running_loop().run_in_executor(service.executor, load_metainfo, path)
    base, passkey = service.public_url, viewer.passkey
    body = personal_torrent(
        meta, keyed_announce(base, passkey), service.web_seed_url(dataset.name, keyed_data(base, passkey))
    )
    return web.Response(body=body, headers={**headers, "Cache-Control": "private, no-store"})


async def _get_data(request: web.Request) -> web.FileResponse:
    """A payload with byte ranges (``206``): every public torrent's web seed (BitTorrent clients send no token)."""
    service = request.app[SERVICE]
    dataset = _dataset(request)
    if dataset.private:
        raise _private_refusal(dataset)
    return web.FileResponse(service.paths.payload(dataset.name), headers={"Content-Type": "application/zip"})


async def _get_keyed_data(request: web.Request) -> web.FileResponse:
    """A payload for a passkey holder (``/data/{passkey}/{name}``): a private torrent's web seed."""
    service = request.app[SERVICE]
    service.passkeys.require(request.match_info["passkey"])
    dataset = _dataset(request)
    return web.FileResponse(service.paths.payload(dataset.name), headers={"Content-Type": "application/zip"})


# -- passkeys: handing out, revoking (token holders only) ------------------------------------------


async def _list_passkeys(request: web.Request) -> web.Response:
    _authorize(request, "listing passkeys")
    return web.json_response({"users": request.app[SERVICE].passkeys.users()})


async def _post_passkey(request: web.Request) -> web.Response:
    """A new passkey for ``?user=``, and where its holder finds the private datasets with it."""
    service = request.app[SERVICE]
    _authorize(request, "handing out passkeys")
    user = check_user(request.query.get("user", ""))
    passkey, replaced = await service.passkeys.issue(user, _replace_flag(request), service.executor)
    torrents = {d.name: f"{service.torrent_url(d.info_hash)}?pk={passkey}" for d in service.catalog if d.private}
    doc = {
        "user": user,
        "passkey": passkey,
        "replaced": replaced,
        "announce_url": keyed_announce(service.public_url, passkey),
        "uploads_url": f"{service.public_url}uploads?pk={passkey}",
        "torrents": torrents,
    }
    return web.json_response(doc, status=201, headers={"Cache-Control": "no-store"})


async def _delete_passkey(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    _authorize(request, "revoking passkeys")
    user = request.match_info["user"]
    await service.passkeys.revoke(user, service.executor)
    return web.json_response({"user": user, "revoked": True})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE].health())


async def _index(request: web.Request) -> web.FileResponse:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise UploadError(404, "no_page", "this installation has no page; the API is at /uploads")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})
