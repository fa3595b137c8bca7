"""``pyowtorrent serve``: the upload service (:mod:`pyowtorrent.service.app`) as a process.

Prints one line once it serves (``serving DIR at URL``), then runs until
Ctrl-C (exit 130) or SIGTERM (exit 0), both ending cleanly: uploads under way
are abandoned and their files removed, resume data is saved.  SIGHUP reads
the tokens file and the passkeys file again (a token or a passkey added or
revoked by hand).  A configuration it cannot
run with (a tokens file others may read, a port in use, an unreadable
catalog) is a one-line error and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from .engine import _stop_on_signals


def add_arguments(sub: Any, common: argparse.ArgumentParser) -> None:
    from ..service import DEFAULT_MAX_UPLOAD_SIZE

    from . import _size

    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the upload service: .zip datasets in, seeded torrents out",
        description="Run the upload service: an HTTP API and page where .zip datasets are uploaded, each made a"
        " torrent, seeded, tracked and served as a web seed.",
    )
    p.set_defaults(handler=run_serve)
    p.add_argument("--data", required=True, metavar="DIR", help="where the datasets and the service's state live")
    p.add_argument(
        "--listen",
        action="append",
        metavar="ADDR",
        help="address for HTTP and for peers, repeatable (default: all, IPv4 and IPv6)",
    )
    p.add_argument("--port", type=int, default=8080, help="HTTP port: API, page, tracker, web seed (default 8080)")
    p.add_argument(
        "--public-url",
        metavar="URL",
        help="the URL downloaders reach this service at; its tracker and web seed go in every torrent"
        " (default: http://ADDR:PORT/ of the first --listen)",
    )
    p.add_argument(
        "--tokens",
        metavar="FILE",
        help="bearer tokens allowed to upload and delete, one per line, the file mode 0600 (without it: no uploads)",
    )
    p.add_argument(
        "--allow-anonymous-uploads",
        action="store_true",
        help="without --tokens, let anyone who reaches the service upload: only with --listen on loopback",
    )
    p.add_argument("--private-reads", action="store_true", help="the list of datasets and the torrents need a token too")
    p.add_argument(
        "--private",
        action="store_true",
        help="make every upload private (BEP 27, passkeys), not only those sent with ?private=1",
    )
    p.add_argument(
        "--passkeys",
        metavar="FILE",
        help="the private mode's 'passkey user' lines, mode 0600 (default: DIR/.pyowtorrent/passkeys);"
        " POST/DELETE /passkeys edit it, SIGHUP reads it again",
    )
    p.add_argument("--peer-port", type=int, default=6881, help="the seeding session's peer port (default 6881)")
    p.add_argument("--tracker", action="append", default=[], metavar="URL", help="another tracker for every torrent")
    p.add_argument(
        "--web-seed-base",
        action="append",
        default=[],
        metavar="URL",
        help="an HTTP server or object store mirroring DIR: <URL>/<name> is another web seed of every torrent",
    )
    p.add_argument(
        "--max-upload-size",
        type=_size,
        default=DEFAULT_MAX_UPLOAD_SIZE,
        metavar="BYTES",
        help=f"the largest upload taken (default {DEFAULT_MAX_UPLOAD_SIZE >> 30} GiB; K, M, G suffixes)",
    )
    p.add_argument("--max-concurrent-uploads", type=int, default=4, metavar="N", help="uploads at once (default 4)")
    p.add_argument(
        "--read-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="an upload that sends nothing for this long is abandoned (default 60)",
    )


def run_serve(args: argparse.Namespace) -> int:
    from ..service.app import ServiceConfig, UploadService
    from ..service.auth import Tokens
    from ..service.passkeys import redact_logs

    redact_logs(logging.getLogger("pyowtorrent"), handlers=True)  # no passkey in full in any log line
    tokens = Tokens.load(args.tokens) if args.tokens else None
    config = ServiceConfig(
        data_dir=Path(args.data),
        listen=args.listen or ["0.0.0.0", "::"],
        port=args.port,
        public_url=args.public_url,
        tokens=tokens,
        allow_anonymous_uploads=args.allow_anonymous_uploads,
        private_reads=args.private_reads,
        peer_port=args.peer_port,
        trackers=args.tracker,
        web_seed_bases=args.web_seed_base,
        max_upload_size=args.max_upload_size,
        max_concurrent_uploads=args.max_concurrent_uploads,
        read_timeout=args.read_timeout,
        passkeys=Path(args.passkeys) if args.passkeys else None,
        private=args.private,
    )

    async def main() -> int:
        stop, outcome = _stop_on_signals()
        service = UploadService(config)
        await service.start()
        try:

            def reload() -> None:
                if tokens is not None:
                    tokens.reload()
                service.passkeys.reload()

            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
            uploads = "token holders may upload" if tokens else "no uploads (no --tokens)"
            if tokens is None and config.allow_anonymous_uploads:
                uploads = "anyone on loopback may upload"
            if config.private:
                uploads += ", every upload private"
            print(f"serving {config.data_dir} at {service.public_url} ({uploads})", flush=True)
            print(f"tracker: {service.announce_url}; peers on port {service.session.listen_port}", flush=True)
            await stop.wait()
        finally:
            await service.close()
        return outcome.get("signal", 0)

    return asyncio.run(main())  # a PyowtorrentError is the one-line error and exit 2 of run_command
