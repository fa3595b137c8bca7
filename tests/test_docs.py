"""The documentation site (docs/) builds with warnings as errors, and its reference pages are complete.

The build is nitpicky: every cross-reference must name something that exists
(docs/_ext/pyrefs.py says how references Sphinx cannot link are checked
without intersphinx).  A docstring with broken reStructuredText, a reference
to a renamed function, a page missing from the table of contents: each fails
this test, as it fails the CI build.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from pyowtorrent.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"

# The pages the site must have (besides the design notes that were there before it).
PAGES = ["index", "quickstart", "verification", "publishing", "owmeta", "configuration", "daemon", "gdrive", "cli", "api"]


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command of the parser: ("create",), ("gdrive",), ("gdrive", "login"), ..."""
    out: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((*prefix, name))
                out.extend(command_paths(sub, (*prefix, name)))
    return out


def build(out: Path) -> None:
    cmd = [sys.executable, "-m", "sphinx", "-n", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)]
    result = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    )
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"


# One test, so one build (about 5 s), whichever worker runs it.
def test_the_site_builds_with_warnings_as_errors_and_its_reference_is_complete(tmp_path: Path) -> None:
    site = tmp_path / "html"
    build(site)
    for page in PAGES:
        assert (site / f"{page}.html").is_file(), f"docs/{page} was not built"

    # The API reference documents the façade, from the modules that define it.
    api = (site / "api.html").read_text(encoding="utf-8")
    for name in (
        "pyowtorrent.api.download",
        "pyowtorrent.api.adownload",
        "pyowtorrent.api.seed",
        "pyowtorrent.storage.create.create_torrent",
        "pyowtorrent.storage.verifier.verify_payload",
        "pyowtorrent.metainfo.torrent_file.Metainfo",
        "pyowtorrent.engine.session.Session",
        "pyowtorrent.engine.events.TorrentStatus",
        "pyowtorrent.errors.PyowtorrentError",
        "pyowtorrent.config.Config",
        "pyowtorrent.owmeta.BitTorrentDataSourceDirLoader",
    ):
        assert f'id="{name}"' in api, f"the API reference does not document {name}"

    # The CLI reference has a section for every command the parser has, sub-commands too.
    cli = (site / "cli.html").read_text(encoding="utf-8")
    paths = command_paths(build_parser())
    assert ("download",) in paths and ("create",) in paths
    for path in paths:
        anchor = "-".join(("pyowtorrent", *path))
        assert f'id="{anchor}"' in cli, f"the CLI reference has no section for `pyowtorrent {' '.join(path)}`"
    assert 'id="python-m-pyowtorrent-verify"' in cli
