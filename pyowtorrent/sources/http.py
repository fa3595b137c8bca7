"""A web server holding ``.torrent`` files as a torrent source, and fetching one ``.torrent`` URL."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..errors import SourceAccessError, SourceError, TorrentNotFound
from ..metainfo.torrent_file import MAX_TORRENT_SIZE
from .base import is_info_hash

if TYPE_CHECKING:
    import aiohttp

__all__ = ["HttpSource", "fetch_url"]

MAX_REDIRECTS = 5
TIMEOUT = 60.0


class HttpSource:
    """``.torrent`` files under one HTTP(S) base URL: ``BASE/NAME`` (an info-hash is ``BASE/HEX.torrent``)."""

    def __init__(self, base_url: str, *, timeout: float = TIMEOUT, max_size: int = MAX_TORRENT_SIZE) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.timeout = timeout
        self.max_size = max_size

    def __repr__(self) -> str:
        return f"HttpSource({self.base_url!r})"

    def __str__(self) -> str:
        return self.base_url

    def url_of(self, reference: str) -> str:
        if is_info_hash(reference):
            reference = reference.lower() + ".torrent"
        if not reference or reference in (".", ".."):
            raise TorrentNotFound(f"{reference!r} is not a file name")
        return self.base_url + quote(reference, safe="")

    async def fetch(self, reference: str) -> bytes:
        return await fetch_url(self.url_of(reference), timeout=self.timeout, max_size=self.max_size)


async def fetch_url(
    url: str,
    *,
    timeout: float = TIMEOUT,
    max_size: int = MAX_TORRENT_SIZE,
    client: aiohttp.ClientSession | None = None,
) -> bytes:
    """GET ``url``: at most ``max_size`` bytes, at most five redirects, within ``timeout`` seconds."""
    import aiohttp

    own = client is None
    http = client or aiohttp.ClientSession()
    try:
        async with http.get(
            url, max_redirects=MAX_REDIRECTS, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            if resp.status == 404 or resp.status == 410:
                raise TorrentNotFound(f"{url}: not found (HTTP {resp.status})")
            if resp.status in (401, 403):
                raise SourceAccessError(f"{url}: access refused (HTTP {resp.status})")
            if resp.status != 200:
                raise SourceError(f"{url}: HTTP {resp.status} {resp.reason or ''}".rstrip())
            if resp.content_length is not None and resp.content_length > max_size:
                raise SourceError(f"{url}: {resp.content_length} bytes, more than the {max_size} a .torrent may have")
            data = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):
                data += chunk
                if len(data) > max_size:
                    raise SourceError(f"{url}: more than the {max_size} bytes a .torrent may have")
            return bytes(data)
    except aiohttp.TooManyRedirects:
        raise SourceError(f"{url}: more than {MAX_REDIRECTS} redirects") from None
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        what = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc) or type(exc).__name__
        raise SourceError(f"{url}: {what}") from None
    finally:
        if own:
            await http.close()
