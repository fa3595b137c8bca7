"""The daemon's life: take the state directory's lock, serve, and shut down cleanly.

Order at start: lock (one daemon per state directory), session and the
torrents' records, the control socket, then the torrents start, then
"ready".  At the end: stop answering, close the session (resume data saved),
remove the socket, and only then let the lock go with the process.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable

from ..engine.loop import run as run_loop
from ..config import Config, load_config
from ..errors import DaemonError, PyowtorrentError
from .core import Daemon
from .paths import DaemonPaths, lock_holder
from .server import serve

log = logging.getLogger(__name__)

__all__ = ["DaemonOptions", "acquire_lock", "run_daemon", "run_process"]

# A client probing the lock holds it for an instant; a start that meets it tries again for this long.
LOCK_RETRY = 0.5


def acquire_lock(paths: DaemonPaths) -> int:
    """Take the state directory's lock for this process's life; write our pid in it.  Returns its fd."""
    paths.make_root()
    try:
        fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DaemonError(f"cannot open {paths.lock}: {exc.strerror or exc}") from None
    deadline = time.monotonic() + LOCK_RETRY
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                os.close(fd)
                pid = lock_holder(paths)
                raise DaemonError(
                    f"a daemon already runs for {paths.root}" + (f" (pid {pid})" if pid else "")
                ) from None
            time.sleep(0.02)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


async def run_daemon(paths: DaemonPaths, config: Config, ready: Callable[[], None] | None = None) -> int:
    """Run until SIGTERM, SIGINT or a shutdown command; ``ready`` is called once commands are answered."""
    loop = asyncio.get_running_loop()
    daemon = Daemon(paths, config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop_requested.set)
    runner = None
    try:
        await daemon.open()
        runner = await serve(daemon, paths)
        daemon.start_torrents()
        log.info("daemon %d ready on %s", os.getpid(), paths.socket)
        if ready is not None:
            ready()
        await daemon.stop_requested.wait()
        log.info("shutting down")
    finally:
        if runner is not None:
            await runner.cleanup()
        await daemon.close()
        try:
            os.unlink(paths.socket)
        except FileNotFoundError:
            pass
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("daemon %d stopped", os.getpid())
    return 0


@dataclass
class DaemonOptions:
    """How to run a daemon: its state directory, what overrides the config file, where it logs."""

    state_dir: str
    listen: list[str] | None = None
    port: int | None = None
    upload_limit: int | None = None
    max_connections: int | None = None
    log_level: str = "info"
    log_file: str | None = None  # None: STATE_DIR/daemon.log, or standard error with log_stderr
    log_stderr: bool = False
    config: str | None = None  # the config file (None: $PYOWTORRENT_CONFIG, else the platform's)

    def to_argv(self) -> list[str]:
        """The same options as ``python -m pyowtorrent.daemon`` takes them."""
        out = ["--state-dir", self.state_dir, "--log-level", self.log_level]
        for host in self.listen or ():
            out += ["--listen", host]
        for flag, value in (
            ("--port", self.port),
            ("--upload-limit", self.upload_limit),
            ("--max-connections", self.max_connections),
            ("--log-file", self.log_file),
            ("--config", self.config),
        ):
            if value is not None:
                out += [flag, str(value)]
        return out + (["--log-stderr"] if self.log_stderr else [])


def run_process(options: DaemonOptions, say: Callable[[str], None] = lambda line: None, *, detached: bool = False) -> int:
    """The whole daemon process, returning its exit status; ``say`` tells the starter "pid N", "ready" or "error: ..."."""
    paths = DaemonPaths(options.state_dir)
    try:
        lock_fd = acquire_lock(paths)
    except PyowtorrentError as exc:
        say(f"error: {exc}")
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        say(f"pid {os.getpid()}")
        try:
            _setup_logging(options, paths)
            if detached:
                os.chdir("/")  # hold no directory of whoever started us
            config = load_config(options.config).merged(
                state_dir=paths.root,
                listen=options.listen,
                port=options.port,
                upload_rate_limit=options.upload_limit,
                max_connections=options.max_connections,
            )
            return run_loop(run_daemon(paths, config, ready=lambda: say("ready")))
        except (PyowtorrentError, OSError) as exc:  # a bad config, a port taken, a log we cannot write
            log.error("cannot run: %s", exc)
            say(f"error: {exc}")
            if not detached:
                print(f"error: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            log.exception("the daemon failed")
            say(f"error: the daemon failed: {exc!r} (see {options.log_file or paths.log})")
            return 1
    finally:
        os.close(lock_fd)  # the lock goes last, after the socket is removed


def _setup_logging(options: DaemonOptions, paths: DaemonPaths) -> None:
    handler: logging.Handler
    if options.log_stderr and not options.log_file:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(options.log_file or paths.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pyowtorrent")
    root.handlers[:] = [handler]
    root.setLevel(options.log_level.upper())
    root.propagate = False
