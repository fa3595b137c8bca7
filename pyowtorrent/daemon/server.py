"""The control socket: JSON over HTTP on a Unix-domain socket, mode 0600, in the state directory.

Only the owner can connect: the socket is created 0600 (the umask is
narrowed around bind, so it is never wider) inside a 0700 directory.  Every
request and answer is JSON; nothing sent is ever executed or unpickled.  A
bad request (not JSON, a missing or mistyped field, a torrent that does not
parse, an unknown torrent) gets a 4xx answer ``{"error": "..."}``; the
daemon carries on.

Routes (all under ``/v1``): ``GET /daemon`` (pid, version), ``GET /torrents``
(status of each), ``POST /torrents`` (add: ``torrent`` base64, ``save_path``
absolute, optional ``seed``, ``paused``, ``peers``), ``POST /torrents/pause``,
``/resume``, ``/remove`` (``torrent``: info-hash, prefix or name;
``delete_data``), ``POST /shutdown``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import socket
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import MetainfoError
from ..metainfo.torrent_file import MAX_TORRENT_SIZE, parse_metainfo
from .core import CommandError, Daemon
from .paths import DaemonPaths

log = logging.getLogger(__name__)

__all__ = ["serve"]

# Room for the largest .torrent we read, base64-encoded, and the rest of the request.
MAX_REQUEST = MAX_TORRENT_SIZE * 4 // 3 + (1 << 20)
# Waiting for requests in flight at shutdown (a remove waits for its peers to close).
SHUTDOWN_TIMEOUT = 10.0

_DAEMON = web.AppKey("daemon", Daemon)


async def serve(daemon: Daemon, paths: DaemonPaths) -> web.AppRunner:
    """Answer on ``paths.socket`` (a stale socket file left by a dead daemon is replaced); returns the runner."""
    app = web.Application(client_max_size=MAX_REQUEST, middlewares=[_json_errors])
    app[_DAEMON] = daemon
    app.router.add_get("/v1/daemon", _info)
    app.router.add_get("/v1/torrents", _status)
    app.router.add_post("/v1/torrents", _add)
    app.router.add_post("/v1/torrents/pause", _pause)
    app.router.add_post("/v1/torrents/resume", _resume)
    app.router.add_post("/v1/torrents/remove", _remove)
    app.router.add_post("/v1/shutdown", _shutdown)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        await web.SockSite(runner, bind_socket(paths)).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bind_socket(paths: DaemonPaths) -> socket.socket:
    """A listening Unix socket at ``paths.socket``, mode 0600 from the moment it exists.

    The caller holds the state directory's lock, so a socket file already
    there belongs to a daemon that is gone and is removed.
    """
    path = paths.socket_path()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # bind() creates the file with 0777 & ~umask: narrow the umask for that one call.
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as ``{"error": ...}`` with its status; a bug of ours is a 500, never a dead daemon."""
    try:
        return await handler(request)
    except CommandError as exc:
        return _error(exc.status, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal error in the daemon (see its log)")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        doc = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(400, f"the request body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CommandError(400, "the request body must be a JSON object")
    return doc


def _field(doc: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = doc.get(name, default)
    # bool is an int in Python; a field that wants one must not take the other.
    if value is None or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CommandError(400, f"{name!r} must be a {kind.__name__}")
    return value


async def _info(request: web.Request) -> web.Response:
    return web.json_response(request.app[_DAEMON].info())


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[_DAEMON].status())


async def _add(request: web.Request) -> web.Response:
    doc = await _body(request)
    encoded = _field(doc, "torrent", str)
    save_path = _field(doc, "save_path", str)
    if not os.path.isabs(save_path):
        raise CommandError(400, f"save_path {save_path!r} must be absolute (the daemon does not share your directory)")
    try:
        meta = parse_metainfo(base64.b64decode(encoded, validate=True))
    except binascii.Error:
        raise CommandError(400, "'torrent' is not base64") from None
    except MetainfoError as exc:
        raise CommandError(400, f"not a usable torrent: {exc}") from None
    peers = []
    for p in _field(doc, "peers", list, []):
        if not (isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and type(p[1]) is int and 0 < p[1] < 65536):
            raise CommandError(400, f"peer {p!r} is not [host, port]")
        peers.append((p[0], p[1]))
    result = await request.app[_DAEMON].add(
        meta,
        os.path.normpath(save_path),
        seed=_field(doc, "seed", bool, True),
        paused=_field(doc, "paused", bool, False),
        peers=peers,
    )
    return web.json_response(result, status=201 if result["added"] else 200)


async def _pause(request: web.Request) -> web.Response:
    doc = await _body(request)
    return web.json_response(await request.app[_DAEMON].pause(_field(doc, "torrent", str)))


async def _resume(request: web.Request) -> web.Response:
    doc = await _body(request)
    return web.json_response(await request.app[_DAEMON].resume(_field(doc, "torrent", str)))


async def _remove(request: web.Request) -> web.Response:
    doc = await _body(request)
    daemon = request.app[_DAEMON]
    return web.json_response(
        await daemon.remove(_field(doc, "torrent", str), delete_data=_field(doc, "delete_data", bool, False))
    )


async def _shutdown(request: web.Request) -> web.Response:
    daemon = request.app[_DAEMON]
    log.info("shutdown requested over the control socket")
    daemon.stop_requested.set()
    return web.json_response({"pid": os.getpid(), "stopping": True}, status=202)
