"""The long-running commands run on uvloop's loop when it is installed (the ``fast`` extra), else asyncio's."""

from __future__ import annotations

import asyncio

import pytest

from pyowtorrent.engine.loop import EVENT_LOOP_VARIABLE, run, uses_uvloop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_run_uses_uvloop_where_it_is_installed_and_asyncio_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test extra installs uvloop: without it this fails, as a missing libtorrent does.
    monkeypatch.delenv(EVENT_LOOP_VARIABLE, raising=False)
    assert uses_uvloop() and run(_loop_module()).startswith("uvloop")
    monkeypatch.setenv(EVENT_LOOP_VARIABLE, "asyncio")
    assert not uses_uvloop() and run(_loop_module()).startswith("asyncio")
