"""A small Sphinx extension: the command-line reference, from the argparse parsers themselves.

``.. cli-help:: pyowtorrent.cli:build_parser`` imports the module, calls the
function for an :class:`argparse.ArgumentParser`, and renders the parser's
``--help`` as a literal block, then one section per subcommand (and per
sub-subcommand, such as ``gdrive login``) with that command's ``--help``.
A command added to the parser appears here without touching the docs.

Option ``:no-subcommands:``: only the parser's own help.  The sections nest
under the section the directive is in, and each is a label other pages can
reference: ``{ref}`pyowtorrent-create``` (the command, dashes for spaces).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

# Help text is wrapped to this many columns, whatever the terminal building the docs.
HELP_WIDTH = 88


@contextmanager
def _columns(width: int) -> Iterator[None]:
    """argparse wraps help to ``$COLUMNS`` (through shutil.get_terminal_size): pin it."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width + 2)
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def load_parser(spec: str) -> argparse.ArgumentParser:
    """``module:function`` -> the parser the function returns."""
    module_name, sep, func_name = spec.partition(":")
    if not sep or not func_name:
        raise ValueError(f"{spec!r} is not MODULE:FUNCTION")
    parser = getattr(importlib.import_module(module_name), func_name)()
    if not isinstance(parser, argparse.ArgumentParser):
        raise TypeError(f"{spec} returned {type(parser).__name__}, not an ArgumentParser")
    return parser


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, one-line help, parser)`` of each subcommand, in the order they were added (aliases once)."""
    out = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        seen: set[int] = set()
        for name, sub in action.choices.items():
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            out.append((name, helps.get(name, ""), sub))
    return out


def all_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path below ``parser``: ``("create",)``, ``("gdrive",)``, ``("gdrive", "login")``…"""
    out: list[tuple[str, ...]] = []
    for name, _, sub in subcommands(parser):
        path = (*prefix, name)
        out.append(path)
        out.extend(all_commands(sub, path))
    return out


class CliHelp(SphinxDirective):
    required_arguments = 1
    optional_arguments = 0
    has_content = False
    option_spec = {"no-subcommands": directives.flag}

    def run(self) -> list[nodes.Node]:
        spec = self.arguments[0]
        try:
            parser = load_parser(spec)
        except Exception as exc:  # noqa: BLE001 - reported as a build warning, with its cause
            raise self.error(f"cli-help: cannot build the parser {spec}: {type(exc).__name__}: {exc}") from exc
        self._note_dependencies(spec)
        with _columns(HELP_WIDTH):
            result: list[nodes.Node] = [self._help_block(parser)]
            if "no-subcommands" not in self.options:
                result.extend(self._sections(parser))
        return result

    def _note_dependencies(self, spec: str) -> None:
        """Rebuild this page when the command-line modules change."""
        package = spec.partition(":")[0].rpartition(".")[0] or spec.partition(":")[0]
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None)
            if path and (name == package or name.startswith(package + ".")):
                self.env.note_dependency(path)

    def _help_block(self, parser: argparse.ArgumentParser) -> nodes.literal_block:
        text = parser.format_help().rstrip()
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return block

    def _sections(self, parser: argparse.ArgumentParser) -> list[nodes.Node]:
        out: list[nodes.Node] = []
        for name, help_text, sub in subcommands(parser):
            title = sub.prog
            node_id = nodes.make_id(title)
            section = nodes.section()
            section["ids"].append(node_id)
            section["names"].append(nodes.fully_normalize_name(title))
            # A label other pages can point at: {ref}`pyowtorrent-create`.
            std = self.env.get_domain("std")
            std.note_hyperlink_target(node_id, self.env.docname, node_id, title)  # type: ignore[attr-defined]
            section += nodes.title(title, "", nodes.literal(title, title))
            if help_text:
                section += nodes.paragraph(help_text, help_text[:1].upper() + help_text[1:] + ".")
            section += self._help_block(sub)
            section.extend(self._sections(sub))
            self.state.document.note_implicit_target(section, section)
            out.append(section)
        return out


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("cli-help", CliHelp)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
