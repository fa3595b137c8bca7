"""Torrent sources: a local directory and an HTTP base URL, with their limits and errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from pyowtorrent.api import resolve_torrent
from pyowtorrent.errors import SourceAccessError, SourceError, TorrentNotFound
from pyowtorrent.metainfo.torrent_file import MAX_TORRENT_SIZE
from pyowtorrent.sources import HttpSource, LocalDirectory, TorrentSource, open_source
from pyowtorrent.storage.create import create_torrent

from .engine_util import make_payload


def a_torrent(tmp: Path, name: str = "ds", seed: int = 1) -> bytes:
    make_payload(tmp / "payload" / name, {"f.bin": 40_000}, seed)
    return create_torrent(tmp / "payload" / name, piece_length=16384).to_bytes()


# -- a local directory ----------------------------------------------------------------


def test_local_directory_finds_by_name_with_or_without_the_suffix_and_by_info_hash(tmp_path: Path) -> None:
    data = a_torrent(tmp_path)
    other = a_torrent(tmp_path, "other", seed=2)
    d = tmp_path / "torrents"
    d.mkdir()
    (d / "ds.torrent").write_bytes(data)
    (d / "other.torrent").write_bytes(other)
    (d / "junk.torrent").write_bytes(b"not bencoded")  # never in the way of a lookup
    src = LocalDirectory(d)
    from pyowtorrent.metainfo.torrent_file import parse_metainfo

    async def main() -> None:
        assert await src.fetch("ds.torrent") == data
        assert await src.fetch("ds") == data
        assert await src.fetch(parse_metainfo(other).info_hash.hex()) == other
        assert await src.fetch(parse_metainfo(other).info_hash.hex().upper()) == other

    asyncio.run(main())


@pytest.mark.parametrize("ref", ["../secret.torrent", "sub/x.torrent", "..", ".", "", "/etc/passwd", "a\0b"])
def test_local_directory_never_reads_outside_itself(tmp_path: Path, ref: str) -> None:
    d = tmp_path / "torrents"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x.torrent").write_bytes(b"d4:infod4:name1:xee")
    (tmp_path / "secret.torrent").write_bytes(b"secret")
    with pytest.raises(TorrentNotFound):
        LocalDirectory(d).fetch_sync(ref)


def test_local_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        LocalDirectory(tmp_path / "nope").fetch_sync("x")
    (tmp_path / "big.torrent").write_bytes(b"x" * (MAX_TORRENT_SIZE + 1))
    with pytest.raises(SourceError, match="larger than"):
        LocalDirectory(tmp_path).fetch_sync("big.torrent")
    with pytest.raises(TorrentNotFound, match="no torrent with info-hash"):
        LocalDirectory(tmp_path).fetch_sync("ab" * 20)
    (tmp_path / "adir.torrent").mkdir()
    with pytest.raises(TorrentNotFound, match="no torrent 'adir'"):
        LocalDirectory(tmp_path).fetch_sync("adir")


def test_open_source_by_kind(tmp_path: Path) -> None:
    assert isinstance(open_source(str(tmp_path)), LocalDirectory)
    assert isinstance(open_source(tmp_path), LocalDirectory)
    h = open_source("HTTPS://example.org/t")
    assert isinstance(h, HttpSource) and h.base_url == "HTTPS://example.org/t/"
    mine = LocalDirectory(tmp_path)
    assert open_source(mine) is mine
    assert isinstance(mine, TorrentSource)


# -- an HTTP base URL ------------------------------------------------------------------


async def serve(routes: Callable[[web.Application], None]) -> AsyncIterator[str]:
    app = web.Application()
    routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


def with_server(routes: Callable[[web.Application], None], body: Callable[[str], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        gen = serve(routes)
        base = await gen.__anext__()
        try:
            return await body(base)
        finally:
            await gen.aclose()

    return asyncio.run(main())


def test_http_source_fetches_names_and_info_hashes(tmp_path: Path) -> None:
    data = a_torrent(tmp_path)
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.Response(body=data)

    def routes(app: web.Application) -> None:
        app.router.add_get("/t/{name}", handler)

    async def body(base: str) -> None:
        src = HttpSource(base + "t")
        assert await src.fetch("a dataset.zip.torrent") == data
        assert await src.fetch("AB" * 20) == data

    with_server(routes, body)
    assert seen == ["/t/a%20dataset.zip.torrent", "/t/" + "ab" * 20 + ".torrent"]


@pytest.mark.parametrize(
    "status, error, words",
    [(404, TorrentNotFound, "not found"), (403, SourceAccessError, "refused"), (401, SourceAccessError, "refused"), (500, SourceError, "HTTP 500")],
)
def test_http_source_maps_statuses_to_typed_errors(status: int, error: type[Exception], words: str) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status)

    def routes(app: web.Application) -> None:
        app.router.add_get("/{name}", answer)

    async def body(base: str) -> None:
        with pytest.raises(error, match=words):
            await HttpSource(base).fetch("x.torrent")

    with_server(routes, body)


def test_http_source_bounds_redirects_size_and_time() -> None:
    release = asyncio.Event()

    async def loop_redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def big_declared(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 2000)

    async def big_streamed(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # chunked: no length announced
        await resp.prepare(request)
        for _ in range(5):
            await resp.write(b"y" * 1000)
        return resp

    async def silent(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(body=b"late")

    def routes(app: web.Application) -> None:
        app.router.add_get("/loop", loop_redirect)
        app.router.add_get("/big", big_declared)
        app.router.add_get("/stream", big_streamed)
        app.router.add_get("/silent", silent)

    async def body(base: str) -> None:
        with pytest.raises(SourceError, match="redirects"):
            await HttpSource(base).fetch("loop")
        with pytest.raises(SourceError, match="2000 bytes, more than the 1000"):
            await HttpSource(base, max_size=1000).fetch("big")
        with pytest.raises(SourceError, match="more than the 1000 bytes"):
            await HttpSource(base, max_size=1000).fetch("stream")
        try:
            with pytest.raises(SourceError, match="timed out"):
                await HttpSource(base, timeout=0.5).fetch("silent")
        finally:
            release.set()

    with_server(routes, body)


def test_http_source_unreachable_is_a_source_error() -> None:
    from .conftest import free_port

    async def main() -> None:
        with pytest.raises(SourceError, match=r"127\.0\.0\.1"):
            await HttpSource(f"http://127.0.0.1:{free_port()}/").fetch("x.torrent")

    asyncio.run(main())


def test_bytes_that_are_no_torrent_from_a_source_are_a_source_error(tmp_path: Path) -> None:
    d = tmp_path / "t"
    d.mkdir()
    (d / "x.torrent").write_bytes(b"<html>login page</html>")

    async def main() -> None:
        with pytest.raises(SourceError, match="not a usable .torrent"):
            await resolve_torrent("x.torrent", torrent_source=d)

    asyncio.run(main())
