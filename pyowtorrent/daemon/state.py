"""What the daemon keeps across restarts: each torrent's ``.torrent`` file and a list of where each goes.

``torrents/<info-hash>.torrent`` holds the torrent as it was added;
``torrents.json`` lists ``{info_hash, save_path, paused, seed, peers}`` for
each.  Both are written atomically (a temporary file, fsync, rename), before
the command that changed them is answered, so neither a restart nor a
``kill -9`` loses or tears them.  The ``.torrent`` is written before the list
names it and the list forgets it before the file goes, so a crash between
the two leaves at worst an unused file, never a name without its torrent.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..errors import MetainfoError
from ..metainfo.torrent_file import Metainfo, load_metainfo
from ..storage.resume import write_atomically
from .paths import DaemonPaths

log = logging.getLogger(__name__)

__all__ = ["TorrentRecord", "StateStore"]

STATE_VERSION = 1


@dataclass
class TorrentRecord:
    """One torrent the daemon runs, as the state file keeps it."""

    info_hash: str  # hex
    save_path: str  # absolute
    paused: bool = False
    seed: bool = True  # keep seeding once complete (False: pause then)
    peers: list[tuple[str, int]] = field(default_factory=list)  # given with `add`, tried again after a restart

    def to_json(self) -> dict[str, Any]:
        return {
            "info_hash": self.info_hash,
            "save_path": self.save_path,
            "paused": self.paused,
            "seed": self.seed,
            "peers": [[h, p] for h, p in self.peers],
        }

    @classmethod
    def from_json(cls, doc: Any) -> TorrentRecord:
        """A record from the state file; ``ValueError`` for anything malformed."""
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        ih, save = doc.get("info_hash"), doc.get("save_path")
        if not isinstance(ih, str) or len(ih) != 40 or not _is_hex(ih):
            raise ValueError(f"bad info_hash {ih!r}")
        if not isinstance(save, str) or not os.path.isabs(save):
            raise ValueError(f"bad save_path {save!r}")
        paused, seed, peers = doc.get("paused", False), doc.get("seed", True), doc.get("peers", [])
        if not isinstance(paused, bool) or not isinstance(seed, bool) or not isinstance(peers, list):
            raise ValueError("bad paused, seed or peers")
        return cls(ih.lower(), save, paused, seed, [_peer(p) for p in peers])


def _peer(doc: Any) -> tuple[str, int]:
    if not (isinstance(doc, list) and len(doc) == 2 and isinstance(doc[0], str) and type(doc[1]) is int):
        raise ValueError(f"bad peer {doc!r}")
    return doc[0], doc[1]


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


class StateStore:
    """Reads and writes the daemon's state files (blocking: call from a thread)."""

    def __init__(self, paths: DaemonPaths) -> None:
        self.paths = paths

    def load(self) -> list[tuple[TorrentRecord, Metainfo]]:
        """Every usable record with its torrent; an unusable entry is logged and skipped, never fatal."""
        try:
            text = self.paths.state_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION or not isinstance(doc.get("torrents"), list):
                raise ValueError(f"not a version {STATE_VERSION} state file")
        except ValueError as exc:
            # Never overwritten by us torn (it is written atomically): someone edited it.  Keep it for them.
            kept = self.paths.state_file.with_suffix(".json.unreadable")
            os.replace(self.paths.state_file, kept)
            log.error("%s is unreadable (%s): moved to %s, starting with no torrents", self.paths.state_file, exc, kept)
            return []
        out: list[tuple[TorrentRecord, Metainfo]] = []
        for entry in doc["torrents"]:
            try:
                record = TorrentRecord.from_json(entry)
            except ValueError as exc:
                log.error("%s: skipping an entry: %s", self.paths.state_file, exc)
                continue
            try:
                meta = load_metainfo(self.paths.torrent_file(record.info_hash))
            except MetainfoError as exc:
                log.error("skipping torrent %s: %s", record.info_hash, exc)
                continue
            if meta.info_hash.hex() != record.info_hash:
                log.error("skipping torrent %s: its .torrent file holds another torrent", record.info_hash)
                continue
            out.append((record, meta))
        return out

    def save(self, records: Iterable[TorrentRecord]) -> None:
        doc = {"version": STATE_VERSION, "torrents": [r.to_json() for r in records]}
        write_atomically(self.paths.state_file, json.dumps(doc, indent=1) + "\n")

    def store_torrent(self, meta: Metainfo) -> None:
        """Keep the ``.torrent``, so the daemon never depends on the file or URL it was added from."""
        write_atomically(self.paths.torrent_file(meta.info_hash.hex()), meta.to_bytes())

    def drop_torrent(self, info_hash_hex: str) -> None:
        self.paths.torrent_file(info_hash_hex).unlink(missing_ok=True)
