"""Reaching a torrent's files below the save directory without following symbolic links.

Lexical checks (``..``, absolute paths) cannot keep writes inside a directory
that holds links: ``DIR/name -> /elsewhere`` passes every such check and the
kernel follows it.  So every component below the save directory is opened
relative to its parent's descriptor with ``O_NOFOLLOW`` (directories with
``O_DIRECTORY`` too), missing directories are made with ``mkdir(dir_fd=...)``,
and the file is opened the same way.  A link anywhere on the way, made before
the download or while it runs, makes the open itself fail; there is no gap
between a check and an open to race.  The failure becomes :class:`LinkRefused`
naming the link.  (Renaming a directory out of the tree while a walk holds it
open is another attack, needing write access outside; a walk holds directories
only while it opens one file, and the save directory for the Storage's life.)

The save directory itself is opened as given, links and all: pointing
``-o ~/data`` at a link is the user's choice.  Only what lies below it is ours.

POSIX only (``dir_fd``, ``O_NOFOLLOW``, ``O_DIRECTORY``), like the positional
I/O of :mod:`.files`.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Sequence

from ..errors import StorageError

__all__ = [
    "DirWalk",
    "LinkRefused",
    "check_name",
    "lstat_at",
    "make_empty_file",
    "not_found",
    "open_file",
    "open_save_dir",
]

# getattr: the module must import where these are missing (Windows), though
# nothing here works there (no dir_fd), as nothing of files.py's pwrite does.
_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC
# O_NONBLOCK: a FIFO planted where a file should be must not hang a disk worker
# in open(); it is refused after the fstat, and a regular file is set back to blocking.
_FILE_FLAGS = _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
FILE_MODE = 0o644


class LinkRefused(StorageError):
    """A symbolic link where the torrent has a file or a directory below the save directory."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path}: is a symbolic link; pyowtorrent does not follow links below the save directory")
        self.path = path


def check_name(name: str) -> bool:
    """Whether ``name`` is one plain path component (the parser's rules, checked once more)."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name and not (
        os.altsep and os.altsep in name
    )


def open_save_dir(path: Path, create: bool) -> int | None:
    """A descriptor of the save directory (made if ``create``); ``None`` if it is absent and not ``create``."""
    if create:
        os.makedirs(path, exist_ok=True)
    try:
        return os.open(path, _DIR_FLAGS & ~_NOFOLLOW)
    except FileNotFoundError:
        if create:
            raise
        return None


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """``lstat`` of ``name`` in ``dir_fd``; ``None`` if it is not there."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _why(dir_fd: int, name: str, path: Path, exc: OSError, want_dir: bool) -> BaseException:
    """What a failed no-follow open of ``name`` means: a link, the wrong kind of file, or ``exc`` itself."""
    try:
        st = lstat_at(dir_fd, name)
    except OSError:
        return exc
    if st is None:
        return exc
    if stat.S_ISLNK(st.st_mode):
        return LinkRefused(path)
    if want_dir and not stat.S_ISDIR(st.st_mode):
        return StorageError(f"{path}: not a directory")
    if not want_dir and not stat.S_ISREG(st.st_mode):
        return StorageError(f"{path}: not a regular file")
    return exc


def _open_dir(parent: int, name: str, path: Path, create: bool) -> int | None:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            return None
    except OSError as exc:
        raise _why(parent, name, path, exc, want_dir=True) from None
    try:
        os.mkdir(name, dir_fd=parent)
    except FileExistsError:
        pass  # made meanwhile: by another worker, or a link planted there, which the open refuses
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        raise _why(parent, name, path, exc, want_dir=True) from None


def open_file(dir_fd: int, name: str, path: Path, *, write: bool) -> int:
    """Open the regular file ``name`` in ``dir_fd``, never through a link; ``write`` also creates it.

    Raises :class:`LinkRefused` for a link, ``StorageError`` for something
    other than a regular file, ``OSError`` for the rest (``FileNotFoundError``
    when reading a file that is not there).
    """
    flags = (os.O_RDWR | os.O_CREAT if write else os.O_RDONLY) | _FILE_FLAGS
    try:
        fd = os.open(name, flags, FILE_MODE, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _why(dir_fd, name, path, exc, want_dir=False) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StorageError(f"{path}: not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_empty_file(dir_fd: int, name: str, path: Path) -> None:
    """Make ``name`` in ``dir_fd`` if it is not there; an existing regular file is left as it is."""
    try:
        # O_EXCL never follows a link, not even a dangling one.
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FILE_FLAGS, FILE_MODE, dir_fd=dir_fd))
        return
    except FileExistsError as exc:
        err: OSError = exc
    st = lstat_at(dir_fd, name)
    if st is not None and stat.S_ISREG(st.st_mode):
        return
    raise _why(dir_fd, name, path, err, want_dir=False)


class DirWalk:
    """Descriptors of the directories on one path below the save directory, each opened without following links.

    Consecutive walks keep their common prefix open (a torrent lists a
    directory's files together), so a pass over every file opens each
    directory about once, and holds at most one path's worth of descriptors.
    """

    def __init__(self, root_fd: int, root: Path) -> None:
        self._root_fd = root_fd
        self._root = root
        self._names: list[str] = []
        self._fds: list[int] = []

    def __enter__(self) -> DirWalk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._keep(0)

    def _keep(self, n: int) -> None:
        while len(self._fds) > n:
            os.close(self._fds.pop())
            self._names.pop()

    def dir(self, parts: Sequence[str], create: bool) -> int | None:
        """The descriptor of directory ``root/parts`` (made if ``create``); ``None`` if absent and not ``create``.

        Valid until the next call.  Raises :class:`LinkRefused` for a link on
        the way, ``StorageError`` for a non-directory, ``OSError`` otherwise.
        """
        k = 0
        while k < len(self._names) and k < len(parts) and self._names[k] == parts[k]:
            k += 1
        self._keep(k)
        for i in range(k, len(parts)):
            parent = self._fds[-1] if self._fds else self._root_fd
            fd = _open_dir(parent, parts[i], self._root.joinpath(*parts[: i + 1]), create)
            if fd is None:
                return None
            self._names.append(parts[i])
            self._fds.append(fd)
        return self._fds[-1] if self._fds else self._root_fd


def not_found(path: Path) -> FileNotFoundError:
    """The error ``open`` would give for ``path``, for a directory on its way that is not there."""
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
