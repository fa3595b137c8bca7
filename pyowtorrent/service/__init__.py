"""The upload service: .zip datasets in, seeded torrents out (:mod:`.app`).

What the command line needs to describe the service lives here, so that
``pyowtorrent --help`` and every other command do not import aiohttp's web
server to print a default.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_MAX_UPLOAD_SIZE"]

#: The default cap on one upload: room for the largest datasets OpenWorm ships, with margin.
DEFAULT_MAX_UPLOAD_SIZE: Final = 64 << 30
