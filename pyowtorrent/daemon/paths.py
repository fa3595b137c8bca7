"""Where a daemon keeps its files, and who holds its state directory.

One daemon per state directory: the daemon holds an exclusive ``flock`` on
``daemon.lock`` for its whole life.  The kernel drops the lock when the
process ends, however it ends, so a lock that can be taken means no daemon,
whatever files (a socket from a ``kill -9``) are left behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from ..errors import DaemonError

__all__ = ["DaemonPaths", "lock_holder", "resolve_state_dir"]

# sun_path is 108 bytes on Linux, NUL included (104 on the BSDs and macOS).
SOCKET_PATH_MAX = 107 if os.uname().sysname == "Linux" else 103


def resolve_state_dir(
    explicit: str | os.PathLike[str] | None = None, config: str | os.PathLike[str] | None = None
) -> Path:
    """``explicit`` (``--state-dir``), else ``$PYOWTORRENT_STATE_DIR``, else the ``state_dir`` of the config file.

    ``config``: that file (default: ``$PYOWTORRENT_CONFIG``, else the platform's).
    """
    if explicit is not None:
        return Path(explicit).expanduser().absolute()
    from ..config import load_config  # applies $PYOWTORRENT_STATE_DIR over the file

    return load_config(config).state_dir


class DaemonPaths:
    """The files of the daemon that owns ``state_dir``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir).expanduser().absolute()

    @property
    def socket(self) -> Path:
        return self.root / "daemon.sock"

    @property
    def lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def log(self) -> Path:
        return self.root / "daemon.log"

    @property
    def state_file(self) -> Path:
        return self.root / "torrents.json"

    @property
    def torrents(self) -> Path:
        return self.root / "torrents"

    @property
    def resume(self) -> Path:
        return self.root / "resume"

    def torrent_file(self, info_hash_hex: str) -> Path:
        return self.torrents / f"{info_hash_hex}.torrent"

    def socket_path(self) -> str:
        """The socket's path as bind() and connect() take it; too long a path is a clear error."""
        path = os.fspath(self.socket)
        if len(os.fsencode(path)) > SOCKET_PATH_MAX:
            raise DaemonError(
                f"the control socket's path {path} is longer than a Unix socket allows "
                f"({SOCKET_PATH_MAX} bytes): use a shorter --state-dir"
            )
        return path

    def make_root(self) -> None:
        """Create the state directory, readable by its owner only (it holds the control socket)."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DaemonError(f"cannot create the state directory {self.root}: {exc.strerror or exc}") from None


def lock_holder(paths: DaemonPaths) -> int | None:
    """The pid of the daemon holding ``paths``' lock (0 if it has not written it yet); ``None``: no daemon.

    Probes by taking the lock for an instant: a daemon starting at that very
    moment retries its own attempt for a while (see ``run.acquire_lock``).
    """
    try:
        fd = os.open(paths.lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DaemonError(f"cannot open {paths.lock}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DaemonError(f"cannot lock {paths.lock}: {exc.strerror or exc}") from None
            text = os.read(fd, 32).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
