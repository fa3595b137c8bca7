"""The upload service's datasets on disk: where each thing lives, and the persisted list of them.

Layout of the data directory ``DIR`` (the ``--data`` of ``pyowtorrent serve``)::

    DIR/<name>                              each payload, under its upload name
    DIR/.pyowtorrent/catalog.json           the list of datasets (this module)
    DIR/.pyowtorrent/passkeys               the private mode's passkeys, unless --passkeys puts them elsewhere
    DIR/.pyowtorrent/torrents/<ih>.torrent  each dataset's torrent
    DIR/.pyowtorrent/resume/<ih>.resume.json   the seeding session's resume data
    DIR/.pyowtorrent/tmp/                   uploads under way

Payloads sit at the top so that an HTTP server or object store mirroring
``DIR`` serves them at ``<base>/<name>`` (``--web-seed-base``); upload names
never start with a dot, so none is ever the state directory.  Uploads are
received in ``tmp/``, on the same file system, so that moving one into place
is an atomic rename.

The catalog is the commit point: a dataset exists once the catalog that
lists it is on disk (written whole to a temporary file, fsynced, renamed).
So a crash leaves either the old list or the new one; what a crash leaves
half done (a temporary upload, a torrent or resume file nobody lists) is
swept at the next start (:func:`sweep_leftovers`).

A catalog listing a private dataset is written as version 2 (else version 1,
as before private datasets): a release that does not know the private mode
refuses to start with it rather than serve a private payload to anyone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..errors import PyowtorrentError
from ..metainfo.torrent_file import Metainfo
from ..storage.resume import ResumeData, write_atomically

log = logging.getLogger(__name__)

__all__ = [
    "Catalog",
    "CatalogError",
    "Dataset",
    "ServicePaths",
    "install_dataset",
    "remove_dataset_state",
    "sweep_leftovers",
    "unlink_quietly",
]

CATALOG_VERSION: Final = 1
#: The version of a catalog that lists a private dataset (see the module docstring).
PRIVATE_CATALOG_VERSION: Final = 2
STATE_DIR_NAME: Final = ".pyowtorrent"


class CatalogError(PyowtorrentError):
    """The catalog on disk cannot be read: the service refuses to start rather than forget datasets."""


@dataclass(frozen=True)
class ServicePaths:
    """Where the service keeps each thing under its data directory (see the module docstring)."""

    data: Path

    @property
    def state(self) -> Path:
        return self.data / STATE_DIR_NAME

    @property
    def catalog(self) -> Path:
        return self.state / "catalog.json"

    @property
    def passkeys(self) -> Path:
        """The passkeys file, unless configured elsewhere (:mod:`.passkeys`)."""
        return self.state / "passkeys"

    @property
    def torrents(self) -> Path:
        return self.state / "torrents"

    @property
    def resume(self) -> Path:
        return self.state / "resume"

    @property
    def tmp(self) -> Path:
        return self.state / "tmp"

    def payload(self, name: str) -> Path:
        return self.data / name

    def torrent(self, info_hash: bytes) -> Path:
        return self.torrents / f"{info_hash.hex()}.torrent"

    def resume_file(self, info_hash: bytes) -> Path:
        """Where the seeding session keeps a torrent's resume data (its ``resume_dir`` is :attr:`resume`)."""
        return self.resume / f"{info_hash.hex()}.resume.json"

    def make(self) -> None:
        """Create the directories; the state directory is the service's own (0700)."""
        self.data.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(mode=0o700, exist_ok=True)
        for d in (self.torrents, self.resume, self.tmp):
            d.mkdir(mode=0o700, exist_ok=True)


@dataclass(frozen=True)
class Dataset:
    """One published upload, as the catalog keeps it."""

    name: str
    size: int
    sha256: bytes
    info_hash: bytes
    piece_length: int
    added: float  # seconds since the epoch
    private: bool = False  # BEP 27, and a passkey needed for its tracker, web seed and .torrent

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256.hex(),
            "info_hash": self.info_hash.hex(),
            "piece_length": self.piece_length,
            "added": self.added,
        }
        if self.private:
            doc["private"] = True
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> Dataset:
        """A catalog entry; ``ValueError``/``KeyError``/``TypeError`` if it is not one."""
        name, size, piece_length, added = doc["name"], doc["size"], doc["piece_length"], doc["added"]
        if not isinstance(name, str) or type(size) is not int or type(piece_length) is not int:
            raise TypeError("name, size and piece_length must be a string and integers")
        if not isinstance(added, (int, float)):
            raise TypeError("added must be a number")
        private = doc.get("private", False)
        if not isinstance(private, bool):
            raise TypeError("private must be true or false")
        sha256, info_hash = bytes.fromhex(doc["sha256"]), bytes.fromhex(doc["info_hash"])
        if len(sha256) != 32 or len(info_hash) != 20:
            raise ValueError("sha256 is 32 bytes and info_hash 20")
        return cls(name, size, sha256, info_hash, piece_length, float(added), private)


class Catalog:
    """The datasets by name, in the order they were added; :meth:`save` persists them atomically."""

    def __init__(self, path: Path, datasets: list[Dataset] | None = None) -> None:
        self.path = path
        self._by_name: dict[str, Dataset] = {d.name: d for d in datasets or ()}

    @classmethod
    def load(cls, path: Path) -> Catalog:
        """The catalog at ``path`` (empty if there is none yet); :class:`CatalogError` if it is unreadable."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(f"{path}: cannot read the catalog: {exc}") from None
        try:
            doc = json.loads(text)
            if doc.get("version") not in (CATALOG_VERSION, PRIVATE_CATALOG_VERSION):
                raise ValueError(f"version {doc.get('version')!r}, not {CATALOG_VERSION} or {PRIVATE_CATALOG_VERSION}")
            datasets = [Dataset.from_json(entry) for entry in doc["datasets"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CatalogError(f"{path}: not a catalog this version can read ({exc}); fix or move it away") from None
        return cls(path, datasets)

    def save(self) -> None:
        """Write the catalog whole, atomically and durably (blocking: run it off the event loop)."""
        datasets = list(self._by_name.values())
        version = PRIVATE_CATALOG_VERSION if any(d.private for d in datasets) else CATALOG_VERSION
        doc = {"version": version, "datasets": [d.to_json() for d in datasets]}
        write_atomically(self.path, json.dumps(doc, indent=1))

    def __iter__(self) -> Iterator[Dataset]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Dataset | None:
        return self._by_name.get(name)

    def by_info_hash(self, info_hash: bytes) -> Dataset | None:
        return next((d for d in self._by_name.values() if d.info_hash == info_hash), None)

    def put(self, dataset: Dataset) -> None:
        """Add ``dataset``, or replace the one of its name (which then moves to the end)."""
        self._by_name.pop(dataset.name, None)
        self._by_name[dataset.name] = dataset

    def remove(self, name: str) -> Dataset | None:
        return self._by_name.pop(name, None)


def install_dataset(paths: ServicePaths, meta: Metainfo, resume: ResumeData, temp: Path) -> None:
    """Write a dataset's torrent and resume data, then move its payload into place (blocking).

    Each write is atomic, and the rename is made durable (the directory
    fsynced) before the caller saves the catalog that names the dataset.
    """
    write_atomically(paths.torrent(meta.info_hash), meta.to_bytes())
    write_atomically(paths.resume_file(meta.info_hash), resume.to_json())
    os.replace(temp, paths.payload(meta.name))
    fd = os.open(paths.data, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_dataset_state(paths: ServicePaths, info_hash: bytes) -> None:
    """Remove a dataset's torrent and resume data (blocking)."""
    unlink_quietly(paths.torrent(info_hash))
    unlink_quietly(paths.resume_file(info_hash))


def unlink_quietly(path: Path) -> None:
    """Remove a file if it is there (blocking)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def sweep_leftovers(paths: ServicePaths, catalog: Catalog) -> None:
    """Remove what an interrupted upload or delete left behind: temporary uploads, unlisted torrents and resume data.

    Payload files the catalog does not list are left alone (they may be the
    operator's), and logged.  Blocking: run it before serving, or off the loop.
    """
    for leftover in sorted(paths.tmp.iterdir()):
        log.warning("removing %s, left by an upload that did not finish", leftover)
        unlink_quietly(leftover)
    for leftover in sorted(paths.state.glob("*.tmp")):  # a catalog or passkeys write that a crash cut short
        unlink_quietly(leftover)
    listed = {d.info_hash.hex() for d in catalog}
    for directory, suffix in ((paths.torrents, ".torrent"), (paths.resume, ".resume.json")):
        for p in sorted(directory.iterdir()):
            if p.name.endswith(".tmp"):  # a write_atomically that a crash cut short
                unlink_quietly(p)
            elif p.name.endswith(suffix) and p.name[: -len(suffix)] not in listed:
                log.info("removing %s: no dataset in the catalog has this info-hash", p)
                unlink_quietly(p)
    names = {d.name for d in catalog}
    for p in sorted(paths.data.iterdir()):
        if p.name != STATE_DIR_NAME and p.name not in names:
            log.info("%s is not a dataset of this service (not in its catalog): left alone, not served", p)
