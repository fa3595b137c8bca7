"""The configuration file: defaults, the TOML file, environment overrides, flags, and errors naming the line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyowtorrent.config import Config, default_config_path, load_config
from pyowtorrent.errors import ConfigError

GOOD = """\
[session]
listen = ["127.0.0.1"]
port = 6881
upload_rate_limit = 1000000
max_connections = 40

[paths]
download_dir = "~/datasets"
state_dir = "/var/lib/pyowtorrent"

[sources]
torrent_source = "https://example.org/torrents/"

[gdrive]
folder_id = "1AbC"
client_secrets = "~/creds.json"

[owmeta]
seed_with_daemon = true
"""


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp), "XDG_CONFIG_HOME": str(tmp / "cfg"), "XDG_STATE_HOME": str(tmp / "state"), **extra}


def test_the_file_lives_at_the_platform_config_path(tmp_path: Path) -> None:
    assert default_config_path(env_for(tmp_path)) == tmp_path / "cfg" / "pyowtorrent" / "config.toml"
    assert default_config_path({"HOME": str(tmp_path)}).parts[-3:] == (".config", "pyowtorrent", "config.toml")


def test_no_file_means_the_defaults(tmp_path: Path) -> None:
    cfg = load_config(env=env_for(tmp_path))
    assert cfg.port == 0 and cfg.listen == ("0.0.0.0", "::")
    assert cfg.state_dir == tmp_path / "state" / "pyowtorrent"
    assert cfg.source_path is None and cfg.owmeta_seed_with_daemon is False


def test_every_setting_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    env = env_for(tmp_path)
    path = Path(env["XDG_CONFIG_HOME"]) / "pyowtorrent" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text(GOOD)
    cfg = load_config(env=env)
    assert cfg.source_path == path
    assert cfg.listen == ("127.0.0.1",) and cfg.port == 6881
    assert cfg.upload_rate_limit == 1_000_000 and cfg.max_connections == 40
    assert cfg.download_dir == tmp_path / "datasets"  # ~ expanded
    assert cfg.state_dir == Path("/var/lib/pyowtorrent")
    assert cfg.torrent_source == "https://example.org/torrents/"
    assert cfg.gdrive_folder_id == "1AbC" and cfg.gdrive_client_secrets == tmp_path / "creds.json"
    assert cfg.owmeta_seed_with_daemon is True


def test_the_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    env = env_for(tmp_path, PYOWTORRENT_CONFIG=str(path), PYOWTORRENT_STATE_DIR=str(tmp_path / "st"), PYOWTORRENT_PORT="7000")
    cfg = load_config(env=env)
    assert cfg.source_path == path
    assert cfg.state_dir == tmp_path / "st" and cfg.port == 7000
    flagged = cfg.merged(state_dir=tmp_path / "flag", port=None)
    assert flagged.state_dir == tmp_path / "flag" and flagged.port == 7000  # None: the flag was not given


def test_an_explicit_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "nope.toml", env=env_for(tmp_path))
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(env=env_for(tmp_path, PYOWTORRENT_CONFIG=str(tmp_path / "nope.toml")))


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("[session]\nport = 6881\nport = 2\n", 3, "not valid TOML"),
        ("[session]\n\nport = \"many\"\n", 3, "session.port: must be a whole number"),
        ("[session]\nport = 70000\n", 2, "port number"),
        ("[paths]\nstate_dir = 3\n", 2, "paths.state_dir: must be a path"),
        ("[session]\nlisten = [1, 2]\n", 2, "list of addresses"),
        ("[owmeta]\nseed_with_daemon = \"yes\"\n", 2, "true or false"),
        ("[session]\nport = 1\nlisen = [\"::\"]\n", 3, "unknown setting session.lisen (known in [session]: listen"),
        ("\n[nonsense]\nx = 1\n", 3, "no section [nonsense]"),
        ("port = 1\n", 1, "'port' is not a [section]"),
        ("[session]\nmax_connections = 0\n", 2, "1 or more"),
    ],
)
def test_a_bad_file_is_an_error_naming_the_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env_for(tmp_path))
    message = str(info.value)
    assert str(path) in message and words in message
    assert f"line {line}" in message


def test_a_bad_environment_value_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PYOWTORRENT_PORT='http'"):
        load_config(env=env_for(tmp_path, PYOWTORRENT_PORT="http"))


def test_unknown_flag_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="no such setting: colour"):
        Config().merged(colour="blue")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.toml"
        path.write_text(text, encoding="utf-8")
        try:
            cfg = load_config(path, env={"HOME": d})
        except ConfigError:
            return
        assert isinstance(cfg, Config)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["session", "paths", "sources", "gdrive", "owmeta", "other"]),
        st.dictionaries(
            st.sampled_from(["listen", "port", "state_dir", "folder_id", "seed_with_daemon", "torrent_source", "x"]),
            st.one_of(st.integers(-5, 70000), st.text(max_size=8), st.booleans(), st.lists(st.text(max_size=4), max_size=3)),
            max_size=4,
        ),
        max_size=4,
    )
)
def test_well_formed_toml_with_any_values_is_a_config_or_a_config_error(doc: dict[str, dict[str, object]]) -> None:
    import json
    import tempfile

    lines = []
    for section, table in doc.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{key} = {json.dumps(value)}")  # JSON scalars and arrays are TOML too
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.toml"
        path.write_text("\n".join(lines) + "\n")
        try:
            load_config(path, env={"HOME": d})
        except ConfigError as exc:
            assert "line " in str(exc)
