"""The daemon's torrents: one session, the records that outlive it, and the commands that change them.

Every command that changes what the daemon runs writes the state files
before it returns, so an acknowledged command survives a ``kill -9``.
Commands that change the set of torrents run one at a time; ``status``
never waits for them.

A torrent is started in a task of its own: checking a large payload takes
a while, and a command (or the daemon's start) must not wait for it.  Until
the session has the torrent, its status reads ``checking``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .._version import __version__
from ..config import Config
from ..engine.events import StateChanged, TorrentEvent, TorrentState
from ..engine.session import Session, resume_file
from ..engine.torrent import Torrent
from ..errors import DaemonError
from ..metainfo.torrent_file import Metainfo
from .paths import DaemonPaths
from .state import StateStore, TorrentRecord

log = logging.getLogger(__name__)

__all__ = ["CommandError", "Daemon"]


class CommandError(DaemonError):
    """A command the daemon refuses; ``status`` is the HTTP status it answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Entry:
    record: TorrentRecord
    meta: Metainfo
    task: asyncio.Task[None] | None = None
    error: str | None = None  # the session refused to add it


class Daemon:
    def __init__(self, paths: DaemonPaths, config: Config) -> None:
        self.paths = paths
        self.config = config
        self.store = StateStore(paths)
        self.entries: dict[bytes, Entry] = {}
        self.session = Session(
            listen=list(config.listen),
            port=config.port,
            resume_dir=paths.resume,
            upload_rate_limit=config.upload_rate_limit,
            max_connections=config.max_connections,
        )
        self.stop_requested = asyncio.Event()
        self._commands = asyncio.Lock()
        self._saving = asyncio.Lock()  # one writer of the state file at a time (it has one temporary name)

    async def open(self) -> None:
        """Listen for peers and read the torrents of the last run (they start with :meth:`start_torrents`)."""
        await self.session.start()
        for record, meta in await asyncio.to_thread(self.store.load):
            self.entries[meta.info_hash] = Entry(record, meta)
        log.info("listening for peers on %s; %d torrents from %s", self.session.listen_addresses, len(self.entries), self.paths.root)

    def start_torrents(self) -> None:
        for entry in self.entries.values():
            self._spawn(entry)

    async def close(self) -> None:
        """Stop every torrent, saving resume data."""
        for entry in self.entries.values():
            if entry.task is not None and self.session.torrents.get(entry.meta.info_hash) is None:
                entry.task.cancel()  # not started yet: nothing to save
        await self.session.close()
        await asyncio.gather(*(e.task for e in self.entries.values() if e.task is not None), return_exceptions=True)

    # -- running one torrent -------------------------------------------------------

    def _spawn(self, entry: Entry) -> None:
        entry.error = None
        entry.task = asyncio.create_task(self._run(entry), name=f"start {entry.meta.name}")

    async def _run(self, entry: Entry) -> None:
        record = entry.record
        try:
            torrent = await self.session.add_torrent(entry.meta, record.save_path, peers=record.peers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one torrent that cannot start never takes the daemon down
            entry.error = str(exc)
            log.error("%s: cannot start: %s", entry.meta.name, exc)
            return
        torrent.add_listener(lambda e: self._on_event(entry, torrent, e))
        log.info("%s: %s", entry.meta.name, torrent.state.value)
        if record.paused:
            torrent.pause()
        elif not record.seed and torrent.state is TorrentState.SEEDING:
            self._pause_when_done(entry, torrent)

    def _on_event(self, entry: Entry, torrent: Torrent, event: TorrentEvent) -> None:
        if isinstance(event, StateChanged):
            log.info("%s: %s", entry.meta.name, event.state.value)
            if event.state is TorrentState.SEEDING and not entry.record.seed:
                # Not from inside the torrent's own call that emitted this: after it.
                asyncio.get_running_loop().call_soon(self._pause_when_done, entry, torrent)

    def _pause_when_done(self, entry: Entry, torrent: Torrent) -> None:
        if self.entries.get(entry.meta.info_hash) is not entry or entry.record.paused:
            return
        entry.record.paused = True
        torrent.pause()
        task = asyncio.create_task(self._save())
        task.add_done_callback(_log_failure)

    async def _save(self) -> None:
        async with self._saving:
            await asyncio.to_thread(self.store.save, [e.record for e in self.entries.values()])

    # -- commands ------------------------------------------------------------------------

    async def add(
        self, meta: Metainfo, save_path: str, *, seed: bool, paused: bool, peers: Sequence[tuple[str, int]]
    ) -> dict[str, Any]:
        async with self._commands:
            old = self.entries.get(meta.info_hash)
            if old is not None:
                if old.record.save_path != save_path:
                    raise CommandError(409, f"{meta.name} is already in the daemon, saving to {old.record.save_path}")
                return {"info_hash": meta.info_hash.hex(), "name": meta.name, "added": False}
            record = TorrentRecord(meta.info_hash.hex(), save_path, paused, seed, list(peers))
            try:
                await asyncio.to_thread(self._adopt_resume_data, meta, save_path)
                await asyncio.to_thread(self.store.store_torrent, meta)
                entry = self.entries[meta.info_hash] = Entry(record, meta)
                try:
                    await self._save()
                except BaseException:
                    del self.entries[meta.info_hash]
                    raise
            except OSError as exc:
                raise CommandError(500, f"cannot save the daemon's state in {self.paths.root}: {exc}") from None
            log.info("added %s (%s) saving to %s", meta.name, record.info_hash, save_path)
            self._spawn(entry)
            return {"info_hash": record.info_hash, "name": meta.name, "added": True}

    def _adopt_resume_data(self, meta: Metainfo, save_path: str) -> None:
        """Resume data a download left in its directory vouches for the data here too: no recheck."""
        ours = resume_file(meta, Path(save_path), self.paths.resume)
        theirs = resume_file(meta, Path(save_path))
        if not ours.exists() and theirs.is_file():
            ours.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.copyfile(theirs, ours)

    async def pause(self, ref: str) -> dict[str, Any]:
        async with self._commands:
            entry = self.find(ref)
            await self._update(entry, paused=True, seed=entry.record.seed)
            torrent = self.session.torrents.get(entry.meta.info_hash)
            if torrent is not None:
                torrent.pause()  # still checking: _run pauses it once it starts
            return self.status_of(entry)

    async def resume(self, ref: str) -> dict[str, Any]:
        async with self._commands:
            entry = self.find(ref)
            torrent = self.session.torrents.get(entry.meta.info_hash)
            # Resuming what is complete asks for seeding, even if it was added to pause once done.
            done = torrent is not None and torrent.status().bytes_done >= torrent.status().bytes_total
            await self._update(entry, paused=False, seed=entry.record.seed or done)
            if torrent is not None and torrent.state is TorrentState.ERROR:
                await self.session.remove_torrent(torrent)  # resuming a failed torrent tries it again
                torrent = None
            if torrent is None and (entry.task is None or entry.task.done()):
                self._spawn(entry)
            elif torrent is not None:
                torrent.resume()
            return self.status_of(entry)

    async def _update(self, entry: Entry, *, paused: bool, seed: bool) -> None:
        """Change a record and save it, or change nothing and refuse."""
        record = entry.record
        before = (record.paused, record.seed)
        if before == (paused, seed):
            return
        record.paused, record.seed = paused, seed
        try:
            await self._save()
        except OSError as exc:
            record.paused, record.seed = before
            raise CommandError(500, f"cannot save the daemon's state in {self.paths.root}: {exc}") from None

    async def remove(self, ref: str, *, delete_data: bool) -> dict[str, Any]:
        async with self._commands:
            entry = self.find(ref)
            ih = entry.meta.info_hash
            del self.entries[ih]
            try:
                await self._save()
            except OSError as exc:
                self.entries[ih] = entry
                raise CommandError(500, f"cannot save the daemon's state in {self.paths.root}: {exc}") from None
            await asyncio.to_thread(self.store.drop_torrent, entry.record.info_hash)
            torrent = self.session.torrents.get(ih)
            if torrent is None and entry.task is not None:
                entry.task.cancel()  # not in the session yet
            if torrent is not None:
                await self.session.remove_torrent(torrent, delete_files=delete_data)
            log.info("removed %s%s", entry.meta.name, " and its data" if delete_data else "")
            return {"info_hash": entry.record.info_hash, "name": entry.meta.name, "deleted_data": delete_data}

    def find(self, ref: str) -> Entry:
        """The torrent ``ref`` names: its info-hash, a unique prefix of it (6 hex digits or more), or its name."""
        key = ref.strip().lower()
        if len(key) >= 6 and all(c in "0123456789abcdef" for c in key):
            by_hash = [e for ih, e in self.entries.items() if ih.hex().startswith(key)]
            if len(by_hash) == 1:
                return by_hash[0]
            if len(by_hash) > 1:
                raise CommandError(409, f"{ref!r} is the start of {len(by_hash)} info-hashes: give more digits")
        by_name = [e for e in self.entries.values() if e.meta.name == ref]
        if len(by_name) == 1:
            return by_name[0]
        if len(by_name) > 1:
            hashes = ", ".join(e.record.info_hash for e in by_name)
            raise CommandError(409, f"{len(by_name)} torrents are named {ref!r} ({hashes}): give the info-hash")
        raise CommandError(404, f"no torrent {ref!r} in the daemon (give an info-hash, a prefix of one, or a name)")

    # -- status ------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        return [self.status_of(e) for e in self.entries.values()]

    def status_of(self, entry: Entry) -> dict[str, Any]:
        meta, record = entry.meta, entry.record
        torrent = self.session.torrents.get(meta.info_hash)
        doc: dict[str, Any] = {"info_hash": record.info_hash, "name": meta.name, "save_path": record.save_path}
        if torrent is None:
            doc.update(
                state="error" if entry.error else "checking",
                progress=0.0,
                bytes_done=0,
                bytes_total=meta.total_length,
                download_rate=0.0,
                upload_rate=0.0,
                peers=0,
                eta=None,
                error=entry.error,
                checked_bytes=0,
                pieces=0,
                num_pieces=meta.num_pieces,
                downloaded=0,
                uploaded=0,
            )
        else:
            st = torrent.status()
            complete = st.bytes_done >= st.bytes_total
            doc.update(
                state=st.state.value,
                progress=st.progress,
                bytes_done=st.bytes_done,
                bytes_total=st.bytes_total,
                download_rate=st.download_rate,
                upload_rate=st.upload_rate,
                peers=st.num_peers,
                # Known once complete; unknown (null) while nothing arrives.
                eta=0.0 if complete else st.eta,
                error=st.error,
                checked_bytes=st.checked_bytes,
                pieces=st.pieces_have,
                num_pieces=st.num_pieces,
                downloaded=st.downloaded,
                uploaded=st.uploaded,
            )
        doc.update(paused=record.paused, seed=record.seed)
        return doc

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "version": __version__,
            "state_dir": str(self.paths.root),
            "listen": [list(a) for a in self.session.listen_addresses],
            "torrents": len(self.entries),
        }


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("saving the daemon's state failed: %s", task.exception())
