"""Starting a detached daemon and stopping it, waiting for each to be true.

``start_daemon`` returns once the daemon answers on its socket; it runs in
a session of its own with no terminal, its standard input and output on
``/dev/null`` and its standard error appended to its log (where a crash
before logging is set up would otherwise vanish).  ``stop_daemon`` asks it
to shut down and returns once it has exited: its lock is free.
"""

from __future__ import annotations

import os
import selectors
import signal
import site
import subprocess
import sys
import time

from ..errors import DaemonError
from .client import DaemonClient, no_daemon_message
from .paths import DaemonPaths, lock_holder
from .run import DaemonOptions

__all__ = ["start_daemon", "stop_daemon"]

START_TIMEOUT = 30.0
# A stop waits for every torrent to close: its peers (5 s) and its trackers' 'stopped' (5 s), in parallel.
STOP_TIMEOUT = 60.0
POLL = 0.05


def start_daemon(options: DaemonOptions, *, timeout: float = START_TIMEOUT) -> int:
    """Start a daemon for ``options.state_dir`` and return its pid once it answers commands.

    Raises :class:`DaemonError` when one already runs there or it cannot start
    (the message says why, from the daemon itself or from its log).
    """
    paths = DaemonPaths(options.state_dir)
    paths.socket_path()  # a path too long for a socket fails here, before anything starts
    pid = lock_holder(paths)
    if pid is not None:
        raise DaemonError(f"a daemon already runs for {paths.root}" + (f" (pid {pid})" if pid else ""))
    paths.make_root()
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-m", "pyowtorrent.daemon", *options.to_argv(), "--detach", "--notify-fd", str(write_fd)]
    try:
        with open(paths.log, "ab") as log, open(os.devnull, "r+b") as devnull:
            proc = subprocess.Popen(
                argv,
                stdin=devnull,
                stdout=devnull,
                stderr=log,
                pass_fds=(write_fd,),
                start_new_session=True,
                env=_child_env(),
            )
    except OSError as exc:
        os.close(read_fd)
        raise DaemonError(f"cannot start the daemon: {exc.strerror or exc}") from None
    finally:
        os.close(write_fd)  # ours: the pipe ends when the daemon closes its copy
    try:
        lines = _read_lines(read_fd, time.monotonic() + timeout)
    finally:
        os.close(read_fd)
        proc.wait()  # the intermediate parent, which exits at once after forking the daemon
    daemon_pid = next((int(w.split()[1]) for w in lines if w.startswith("pid ") and w.split()[1].isdigit()), 0)
    errors = [w[len("error: ") :] for w in lines if w.startswith("error: ")]
    if errors:
        raise DaemonError(errors[-1])
    if "ready" not in lines:
        if daemon_pid and lock_holder(paths) is not None:
            raise DaemonError(f"the daemon (pid {daemon_pid}) did not become ready within {timeout:g} s: see {paths.log}")
        raise DaemonError(f"the daemon exited while starting: {_last_log_line(paths) or 'no reason given'} (see {paths.log})")
    DaemonClient(paths.root).info()  # it said so; make sure it answers
    return daemon_pid


def _child_env() -> dict[str, str]:
    """Our environment, with this very pyowtorrent importable by the daemon.

    Installed, it is found anyway; from a checkout it may be importable here
    only through our working directory or a ``sys.path`` entry added at run
    time, so its directory goes on ``PYTHONPATH`` (never a site directory:
    that would put it ahead of the standard library).
    """
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if package_root not in {*site.getsitepackages(), site.getusersitepackages()}:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def _read_lines(fd: int, deadline: float) -> list[str]:
    """What the daemon says on the pipe, until it closes it or the deadline passes."""
    data = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace").splitlines()


def _last_log_line(paths: DaemonPaths) -> str:
    try:
        with open(paths.log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def stop_daemon(state_dir: str | os.PathLike[str], *, timeout: float = STOP_TIMEOUT) -> int:
    """Ask the daemon of ``state_dir`` to shut down and wait until it has exited; returns its pid."""
    paths = DaemonPaths(state_dir)
    pid = lock_holder(paths)
    if pid is None:
        raise DaemonError(no_daemon_message(paths))
    try:
        pid = DaemonClient(paths.root).shutdown()
    except DaemonError:
        # It holds the lock but does not answer (wedged, or its socket deleted): the pid in the lock
        # is its own while the lock is held, and SIGTERM takes the same clean way out.
        holder = lock_holder(paths)
        if holder is None:
            return pid  # it went by itself meanwhile
        if not holder:
            raise
        try:
            os.kill(holder, signal.SIGTERM)
        except ProcessLookupError:
            pass
        pid = holder
    deadline = time.monotonic() + timeout
    while lock_holder(paths) is not None:
        if time.monotonic() > deadline:
            raise DaemonError(f"the daemon (pid {pid}) has not exited {timeout:g} s after being asked to: see {paths.log}")
        time.sleep(POLL)
    return pid
