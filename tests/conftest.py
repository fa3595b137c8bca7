from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The project's shared material sits beside the checkout (CI lays it there too).
SHARED = Path(os.environ.get("PYOWTORRENT_SHARED", REPO.parent / "shared"))
CONFORMANCE = SHARED / "conformance"


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    if not (CONFORMANCE / "libtorrent-torrents.json").is_file():
        pytest.fail(f"conformance suite not found at {CONFORMANCE}: set PYOWTORRENT_SHARED to the shared/ folder")
    return CONFORMANCE
