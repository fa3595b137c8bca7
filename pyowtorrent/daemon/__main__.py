"""The daemon process: ``python -m pyowtorrent.daemon --state-dir DIR [...]``.

``pyowtorrent daemon start`` runs this with ``--detach`` and ``--notify-fd``:
the process forks once more so the daemon is nobody's child (never a
zombie of its starter), then reports on the descriptor: ``pid N``, then
``ready`` once its socket answers, or ``error: ...`` if it cannot start,
and closes it.  The starter reads until then.
"""

from __future__ import annotations

import argparse
import os
import sys

from .run import DaemonOptions, run_process


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pyowtorrent.daemon", description="The pyowtorrent background daemon.")
    p.add_argument("--state-dir", required=True, help="the daemon's state directory (one daemon per directory)")
    p.add_argument("--listen", action="append", metavar="ADDR", help="listen address for peers (default: the config's)")
    p.add_argument("--port", type=int, help="listen port for peers (default: the config's)")
    p.add_argument("--upload-limit", type=int, metavar="BYTES", help="upload cap in bytes/s (0: none)")
    p.add_argument("--max-connections", type=int, help="peer connections, all torrents together")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-file", help="where to log (default: STATE_DIR/daemon.log)")
    p.add_argument("--log-stderr", action="store_true", help="log to standard error (for a service manager)")
    p.add_argument("--config", help="the configuration file (default: $PYOWTORRENT_CONFIG, else the platform's)")
    p.add_argument("--notify-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--detach", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.detach and os.fork() > 0:
        os._exit(0)  # the starter reaps this parent at once; the daemon goes on, adopted by init
    options = DaemonOptions(
        state_dir=args.state_dir,
        listen=args.listen,
        port=args.port,
        upload_limit=args.upload_limit,
        max_connections=args.max_connections,
        log_level=args.log_level,
        # Absolute: the detached daemon leaves its working directory before it opens them.
        log_file=os.path.abspath(args.log_file) if args.log_file else None,
        log_stderr=args.log_stderr,
        config=os.path.abspath(args.config) if args.config else None,
    )
    notify = _Notifier(args.notify_fd)
    try:
        return run_process(options, notify.say, detached=args.detach)
    finally:
        notify.close()


class _Notifier:
    """Lines to the starter on the descriptor it gave; closed after "ready" or an error, so it stops reading."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def say(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (line.replace("\n", " ") + "\n").encode())
        except OSError:
            self.close()  # the starter gave up waiting: carry on without it
        if line == "ready" or line.startswith("error:"):
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


if __name__ == "__main__":
    sys.exit(main())
