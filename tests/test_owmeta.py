"""The owmeta-core loader, against the real owmeta-core 0.13.5 and real seeders on loopback.

owmeta-core is installed in two steps (``pip install owmeta-core==0.13.5``,
then ``pip install 'wrapt>=1.14'``); ``tests/run.sh`` does both.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from owmeta_core.data_trans.local_file_ds import LocalFileDataSource  # type: ignore[import-untyped]
from owmeta_core.datasource_loader import LoadFailed  # type: ignore[import-untyped]

import pyowtorrent
from pyowtorrent.metainfo.torrent_file import Metainfo
from pyowtorrent.owmeta import BitTorrentDataSourceDirLoader, BitTorrentLoadFailed, ChecksumMismatch
from pyowtorrent.storage.create import create_torrent

from .conftest import REPO
from .engine_util import make_zip
from .lt_util import lt_seeder
from .test_api import Seeder, _static_server

ENTRY_POINT_GROUP = "owmeta_core.datasource_dir_loader"
# A few hundred KB: a real zip, many pieces, quick on loopback.
MEMBERS = {"images/worm_001.tif": 300_000, "images/worm_002.tif": 150_001, "nuclei.csv": 40_000}


@pytest.fixture(autouse=True)
def no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's configuration or environment: an empty config home, no overrides."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    for var in (
        "PYOWTORRENT_CONFIG",
        "PYOWTORRENT_STATE_DIR",
        "PYOWTORRENT_DOWNLOAD_DIR",
        "PYOWTORRENT_PORT",
        "PYOWTORRENT_TORRENT_SOURCE",
    ):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def seeders() -> Iterator[Callable[[Metainfo, Path], Seeder]]:
    made: list[Seeder] = []

    def make(meta: Metainfo, directory: Path) -> Seeder:
        made.append(Seeder(meta, directory))
        return made[-1]

    yield make
    for s in made:
        s.close()


def dataset(tmp: Path, name: str = "dataset.zip", trackers: list[str] | None = None) -> tuple[Metainfo, Path, Path]:
    """A seeder directory holding the zip ``name``, its torrent, and a torrent directory holding ``name.torrent``."""
    seed_dir = tmp / "seeder"
    make_zip(seed_dir / name, MEMBERS)
    meta = create_torrent(seed_dir / name, piece_length=32768, trackers=trackers or [])
    torrents = tmp / "torrents"
    torrents.mkdir(exist_ok=True)
    (torrents / f"{name}.torrent").write_bytes(meta.to_bytes())
    return meta, seed_dir, torrents


_idents = iter(range(1 << 30))


def data_source(**values: Any) -> Any:
    """A LocalFileDataSource as owmeta's data tools declare one; each gets an identifier of its own."""
    return LocalFileDataSource(ident=f"http://example.org/pyowtorrent-test/ds{next(_idents)}", **values)


def loader_for(base: Path, torrents: Path | str, **kwargs: Any) -> BitTorrentDataSourceDirLoader:
    kwargs.setdefault("listen", "127.0.0.1")
    kwargs.setdefault("timeout", 60)
    return BitTorrentDataSourceDirLoader(base_directory=base, torrent_source=str(torrents), **kwargs)


def chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything in its chain: causes and contexts, as a traceback prints them."""
    out: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if any(e is seen for seen in out):
            continue
        out.append(e)
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
    return out


def sha(path: Path, alg: str) -> str:
    return hashlib.new(alg, path.read_bytes()).hexdigest()


# -- must show: a libtorrent seeder through opentracker, then again with the seeder gone ----------


def test_loads_from_a_libtorrent_seeder_found_through_opentracker_then_again_with_no_network(
    tmp_path: Path, opentracker: Callable[[bytes], tuple[int, int]]
) -> None:
    probe, _, _ = dataset(tmp_path / "probe")
    tcp, _udp = opentracker(probe.info_hash)
    meta, seed_dir, torrents = dataset(tmp_path, trackers=[f"http://127.0.0.1:{tcp}/announce"])
    assert meta.info_hash == probe.info_hash
    base = tmp_path / "base"
    expected = os.path.realpath(base / meta.info_hash.hex())
    loader = loader_for(base, torrents)
    ds = data_source(file_name="dataset.zip", torrent_file_name="dataset.zip.torrent")
    assert loader.can_load(ds)

    with lt_seeder(meta.to_bytes(), seed_dir):
        got = loader(ds)  # owmeta-core's __call__: load(), then its own checks
    assert got == expected
    assert (Path(got) / "dataset.zip").read_bytes() == (seed_dir / "dataset.zip").read_bytes()
    assert pyowtorrent.verify_payload(meta, Path(got) / "dataset.zip").ok

    # The seeder is gone, and so is the torrent directory.  A listening socket
    # stands in for every peer and tracker: any contact shows up as a connection.
    shutil.rmtree(torrents)
    with socket.socket() as trap:
        trap.bind(("127.0.0.1", 0))
        trap.listen()
        trap.setblocking(False)
        port = trap.getsockname()[1]
        trap_url = f"http://127.0.0.1:{port}/announce"
        offline = loader_for(base, torrents, peers=[f"127.0.0.1:{port}"], trackers=[trap_url])
        again = loader(ds)
        # Another data source naming the same torrent, through another loader: the same directory.
        other = offline(data_source(file_name="dataset.zip", torrent_file_name="dataset.zip.torrent"))
        with pytest.raises(BlockingIOError):
            trap.accept()
    assert again == expected and other == expected


# -- must show: the scenario OpenWorm's data tools documented, under their name for it ----------


def test_torrent_download(tmp_path: Path, seeders: Callable[[Metainfo, Path], Seeder]) -> None:
    name = "Merged_Nuclei_Stained_Worm.zip"
    meta, seed_dir, torrents = dataset(tmp_path, name)
    seeder = seeders(meta, seed_dir)
    ds = data_source(file_name=name, torrent_file_name=f"{name}.torrent")
    loader = loader_for(tmp_path / "base", torrents, peers=[seeder.address])

    directory = Path(loader(ds))
    assert directory.name == meta.info_hash.hex()

    out = subprocess.run(
        [sys.executable, "-m", "pyowtorrent.verify", str(torrents / f"{name}.torrent"), str(directory / name)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "DATA INTEGRITY CLEARED!" in out.stdout


# -- must show: failures carry the real reason ------------------------------------------------


def test_a_missing_torrent_fails_with_its_name_in_the_exception_chain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "torrents").mkdir()
    loader = loader_for(tmp_path / "base", tmp_path / "torrents")
    ds = data_source(file_name="nothere.zip", torrent_file_name="nothere.zip.torrent")

    with caplog.at_level(logging.ERROR, logger="pyowtorrent.owmeta"):
        with pytest.raises(LoadFailed) as caught:
            loader(ds)
    everything = chain(caught.value)
    assert any("nothere.zip.torrent" in str(e) for e in everything)
    assert any(isinstance(e, pyowtorrent.TorrentNotFound) for e in everything)
    # owmeta-core's own "Loader erred" is in the chain too, but the message the caller reads is the reason.
    assert "nothere.zip.torrent" in str(caught.value)
    assert "no torrent" in str(caught.value)
    logged = [r for r in caplog.records if r.name == "pyowtorrent.owmeta" and r.levelno == logging.ERROR]
    assert logged and "nothere.zip.torrent" in logged[0].getMessage()


def test_owmeta_cores_own_call_keeps_the_reason_in_its_chain(tmp_path: Path) -> None:
    """Through owmeta-core's ``__call__`` alone (a subclass of ours could bypass our override)."""
    from owmeta_core.datasource_loader import DataSourceDirLoader

    (tmp_path / "torrents").mkdir()
    loader = loader_for(tmp_path / "base", tmp_path / "torrents")
    ds = data_source(torrent_file_name="nothere.zip.torrent")
    with pytest.raises(LoadFailed) as caught:
        DataSourceDirLoader.__call__(loader, ds)
    assert "Loader erred" in str(caught.value)
    ours = [e for e in chain(caught.value) if isinstance(e, BitTorrentLoadFailed)]
    assert ours and "nothere.zip.torrent" in ours[0].reason
    assert isinstance(ours[0].__cause__, pyowtorrent.TorrentNotFound)


def test_no_torrent_source_says_where_to_set_one(tmp_path: Path) -> None:
    loader = BitTorrentDataSourceDirLoader(base_directory=tmp_path / "base")
    with pytest.raises(LoadFailed, match=r"no torrent source .*\[sources\]"):
        loader(data_source(torrent_file_name="dataset.zip.torrent"))


def test_a_failed_download_keeps_its_torrent_and_a_later_load_finishes_with_the_source_gone(
    tmp_path: Path, seeders: Callable[[Metainfo, Path], Seeder], caplog: pytest.LogCaptureFixture
) -> None:
    meta, seed_dir, torrents = dataset(tmp_path)
    ds = data_source(file_name="dataset.zip", torrent_file_name="dataset.zip.torrent")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: connections are refused
        with pytest.raises(LoadFailed) as caught:
            loader_for(tmp_path / "base", torrents, peers=[nobody], timeout=1)(ds)
    assert any(isinstance(e, pyowtorrent.NoPeersError) for e in chain(caught.value))
    assert "no peer connected" in str(caught.value)

    shutil.rmtree(torrents)
    seeder = seeders(meta, seed_dir)
    with caplog.at_level(logging.WARNING, logger="pyowtorrent.owmeta"):
        got = loader_for(tmp_path / "base", torrents, peers=[seeder.address])(ds)
    assert (Path(got) / "dataset.zip").read_bytes() == (seed_dir / "dataset.zip").read_bytes()
    assert any("using the copy fetched before" in r.getMessage() for r in caplog.records)


# -- md5 / sha256 / sha512 -----------------------------------------------------------------


def test_the_data_sources_digests_are_checked(tmp_path: Path, seeders: Callable[[Metainfo, Path], Seeder]) -> None:
    meta, seed_dir, torrents = dataset(tmp_path)
    seeder = seeders(meta, seed_dir)
    payload = seed_dir / "dataset.zip"
    right = {alg: sha(payload, alg) for alg in ("md5", "sha256", "sha512")}
    loader = loader_for(tmp_path / "base", torrents, peers=[seeder.address])

    got = loader(data_source(file_name="dataset.zip", torrent_file_name="dataset.zip.torrent", **right))
    assert (Path(got) / "dataset.zip").read_bytes() == payload.read_bytes()

    for alg in ("md5", "sha256"):
        wrong = {**right, alg: "0" * len(right[alg])}
        with pytest.raises(LoadFailed) as caught:
            loader(data_source(file_name="dataset.zip", torrent_file_name="dataset.zip.torrent", **wrong))
        message = str(caught.value)
        assert f"its {alg} is {right[alg]}" in message and f"records {'0' * len(right[alg])}" in message
        assert any(isinstance(e, ChecksumMismatch) for e in chain(caught.value))

    # Upper case, as some tools write them, is the same digest.
    upper = {alg: v.upper() for alg, v in right.items()}
    assert loader(data_source(file_name="dataset.zip", torrent_file_name="dataset.zip.torrent", **upper)) == got


def test_a_file_name_the_torrent_does_not_hold_fails(
    tmp_path: Path, seeders: Callable[[Metainfo, Path], Seeder]
) -> None:
    meta, seed_dir, torrents = dataset(tmp_path)
    seeder = seeders(meta, seed_dir)
    loader = loader_for(tmp_path / "base", torrents, peers=[seeder.address])
    with pytest.raises(LoadFailed, match=r"'other\.zip' is not in"):
        loader(data_source(file_name="other.zip", torrent_file_name="dataset.zip.torrent"))
    with pytest.raises(LoadFailed, match="not a relative path inside the dataset"):
        loader(data_source(file_name="../../etc/passwd", torrent_file_name="dataset.zip.torrent"))


# -- sources, and being called from an event loop ----------------------------------------------


def test_an_http_source_is_not_needed_for_a_second_load(
    tmp_path: Path, seeders: Callable[[Metainfo, Path], Seeder], caplog: pytest.LogCaptureFixture
) -> None:
    meta, seed_dir, torrents = dataset(tmp_path)
    seeder = seeders(meta, seed_dir)
    ds = data_source(file_name="dataset.zip", torrent_file_name="dataset.zip.torrent")
    with _static_server(torrents) as url:
        first = loader_for(tmp_path / "base", url, peers=[seeder.address])(ds)
    seeder.close()
    with caplog.at_level(logging.INFO, logger="pyowtorrent.owmeta"):
        again = loader_for(tmp_path / "base", url)(ds)  # the server is gone
    assert again == first
    ours = [r for r in caplog.records if r.name == "pyowtorrent.owmeta"]
    assert not [r for r in ours if r.levelno >= logging.WARNING]  # no "the torrent source failed"
    assert any("already verified" in r.getMessage() for r in ours)


def test_a_loader_called_from_a_thread_running_an_event_loop_works(
    tmp_path: Path, seeders: Callable[[Metainfo, Path], Seeder]
) -> None:
    """A notebook runs an event loop; owmeta-core calls the loader there, blocking."""
    meta, seed_dir, torrents = dataset(tmp_path)
    seeder = seeders(meta, seed_dir)
    loader = loader_for(tmp_path / "base", torrents, peers=[seeder.address])

    async def in_a_loop() -> str:
        return str(loader(data_source(file_name="dataset.zip", torrent_file_name="dataset.zip.torrent")))

    got = asyncio.run(in_a_loop())
    assert (Path(got) / "dataset.zip").read_bytes() == (seed_dir / "dataset.zip").read_bytes()


# -- seeding on in the daemon ------------------------------------------------------------------


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short state directory: the daemon's control socket path must fit in a sockaddr_un."""
    path = Path(tempfile.mkdtemp(prefix="owd", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_with_no_daemon_running_the_load_warns_and_succeeds(
    tmp_path: Path, state_dir: Path, seeders: Callable[[Metainfo, Path], Seeder], caplog: pytest.LogCaptureFixture
) -> None:
    meta, seed_dir, torrents = dataset(tmp_path)
    seeder = seeders(meta, seed_dir)
    config = pyowtorrent.load_config().merged(state_dir=state_dir)
    loader = loader_for(tmp_path / "base", torrents, peers=[seeder.address], seed_with_daemon=True, config=config)
    with caplog.at_level(logging.WARNING, logger="pyowtorrent.owmeta"):
        got = loader(data_source(file_name="dataset.zip", torrent_file_name="dataset.zip.torrent"))
    assert (Path(got) / "dataset.zip").read_bytes() == (seed_dir / "dataset.zip").read_bytes()
    warned = [r.getMessage() for r in caplog.records if r.name == "pyowtorrent.owmeta" and r.levelno == logging.WARNING]
    assert len(warned) == 1 and "not handed to the daemon" in warned[0] and "no daemon running" in warned[0]


def test_a_loaded_dataset_goes_on_seeding_from_the_daemon(
    tmp_path: Path, state_dir: Path, seeders: Callable[[Metainfo, Path], Seeder]
) -> None:
    from pyowtorrent.daemon.client import DaemonClient
    from pyowtorrent.daemon.process import start_daemon, stop_daemon
    from pyowtorrent.daemon.run import DaemonOptions

    meta, seed_dir, torrents = dataset(tmp_path)
    seeder = seeders(meta, seed_dir)
    start_daemon(DaemonOptions(state_dir=str(state_dir), listen=["127.0.0.1"], log_level="debug"))
    try:
        config = pyowtorrent.load_config().merged(state_dir=state_dir, owmeta_seed_with_daemon=True)
        loader = loader_for(tmp_path / "base", torrents, peers=[seeder.address], config=config)
        assert loader.seed_with_daemon
        got = loader(data_source(file_name="dataset.zip", torrent_file_name="dataset.zip.torrent"))
        client = DaemonClient(state_dir)
        [entry] = client.status()
        assert (entry["info_hash"], entry["save_path"]) == (meta.info_hash.hex(), got)
        # A second load hands it over again: the daemon already has it, nothing changes, no warning.
        assert loader(data_source(file_name="dataset.zip", torrent_file_name="dataset.zip.torrent")) == got
        assert len(client.status()) == 1

        # Our seeder goes; a newcomer downloads the dataset from the daemon.
        seeder.close()
        host, port = client.info()["listen"][0][:2]
        fresh = pyowtorrent.download(meta, tmp_path / "newcomer", peers=[(host, port)], timeout=60)
        assert fresh.read_bytes() == (seed_dir / "dataset.zip").read_bytes()
    finally:
        stop_daemon(state_dir)


# -- can_load, construction, the entry point -----------------------------------------------------


def test_can_load_wants_a_torrent_file_name(tmp_path: Path) -> None:
    loader = BitTorrentDataSourceDirLoader(base_directory=tmp_path)
    assert loader.can_load(data_source(file_name="a.zip", torrent_file_name="a.zip.torrent"))
    assert not loader.can_load(data_source(file_name="a.zip"))
    assert not loader.can_load(object())


def test_the_class_builds_with_no_arguments_from_the_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    plain = BitTorrentDataSourceDirLoader()
    assert plain.base_directory == os.path.realpath(tmp_path)  # the default download_dir: the cwd
    assert plain.torrent_source is None and plain.seed_with_daemon is False

    config = tmp_path / "xdg-config" / "pyowtorrent" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(
        "[session]\nlisten = '127.0.0.1'\nport = 6999\n"
        f"[paths]\ndownload_dir = '{tmp_path / 'datasets'}'\n"
        f"[sources]\ntorrent_source = '{tmp_path / 'torrents'}'\n"
        "[owmeta]\nseed_with_daemon = true\n"
    )
    configured = BitTorrentDataSourceDirLoader()
    assert configured.base_directory == os.path.realpath(tmp_path / "datasets")
    assert configured.torrent_source == str(tmp_path / "torrents")
    assert (configured.listen, configured.port, configured.seed_with_daemon) == (("127.0.0.1",), 6999, True)

    overridden = BitTorrentDataSourceDirLoader(torrent_source="https://example.org/t/", port=7000, listen=None)
    assert (overridden.torrent_source, overridden.port, overridden.listen) == ("https://example.org/t/", 7000, None)

    config.write_text("[session]\nport = 'six'\n")
    with pytest.raises(pyowtorrent.ConfigError, match=r"config\.toml, line 2: session\.port"):
        BitTorrentDataSourceDirLoader()


def test_the_loader_is_registered_under_owmetas_entry_point_group() -> None:
    """Needs setup.cfg's entry point and an install (``pip install .`` or ``pip install -e .``)."""
    group = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    found = [ep for ep in group if ep.value.startswith("pyowtorrent")]
    assert found, f"no pyowtorrent entry point in {ENTRY_POINT_GROUP}: is the package installed from this setup.cfg?"
    assert [ep.load() for ep in found] == [BitTorrentDataSourceDirLoader]
    assert isinstance(found[0].load()(), BitTorrentDataSourceDirLoader)


# -- without owmeta-core -------------------------------------------------------------------------


def test_pyowtorrent_imports_without_owmeta_core_and_the_loader_says_how_to_install_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['owmeta_core'] = None  # as if it were not installed\n"
        "import pyowtorrent, pyowtorrent.api\n"
        "try:\n"
        "    import pyowtorrent.owmeta\n"
        "except pyowtorrent.PyowtorrentError as exc:\n"
        "    assert isinstance(exc, ImportError)\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert "pip install owmeta-core==0.13.5" in out.stdout
    assert "pip install 'wrapt>=1.14'" in out.stdout
    assert "formatargspec" in out.stdout and "Python 3.11" in out.stdout


def test_importing_pyowtorrent_does_not_import_owmeta_core() -> None:
    code = "import sys, pyowtorrent\npyowtorrent.download\nprint('owmeta_core' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
