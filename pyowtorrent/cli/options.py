"""What every subcommand shares: the logging flags, the configuration file, and how logging is set up."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def common_parser() -> argparse.ArgumentParser:
    """Flags every subcommand takes: how much to log, and where."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("logging")
    g.add_argument("-v", "--verbose", action="count", default=0, help="log more: -v info, -vv debug")
    g.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log level (overrides -v)")
    g.add_argument("--log-file", metavar="PATH", help="write the log here instead of standard error")
    p.add_argument(
        "--config", metavar="PATH", help="the configuration file (default: $PYOWTORRENT_CONFIG, else the platform's)"
    )
    return p


def load_cli_config(args: argparse.Namespace, **flags: Any) -> Any:
    """The configuration file's settings, the environment over them, then ``flags`` (not None) over both."""
    from ..config import load_config

    return load_config(args.config).merged(**flags)


def setup_logging(verbose: int, level: str | None, log_file: str | None) -> None:
    """Warnings by default; -v info (why a peer was dropped, an announce failed), -vv debug."""
    import logging

    name = level or {0: "warning", 1: "info"}.get(verbose, "debug")
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pyowtorrent")
    root.handlers[:] = [handler]
    root.setLevel(name.upper())
    root.propagate = False
