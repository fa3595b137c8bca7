"""Sphinx configuration for the pyowtorrent documentation.

Build it with warnings as errors, as the tests do (``tests/test_docs.py``)::

    python -m sphinx -n -W --keep-going -b html docs docs/_build/html

The build needs no network: no intersphinx.  Pages are Markdown (MyST),
except the API reference, which is reStructuredText for autodoc.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

# Document the checkout, not whatever pyowtorrent happens to be installed.
sys.path.insert(0, str(ROOT))
# Local extensions: the CLI reference generated from the argparse parser.
sys.path.insert(0, str(DOCS / "_ext"))

from pyowtorrent import __version__  # noqa: E402

project = "pyowtorrent"
author = "the pyowtorrent authors"
copyright = "the pyowtorrent authors, MIT licence"
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "cli_help",
    "pyrefs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"

# Only pages are sources: not the build output, not the local extensions, not
# docs/README.md (the folder's index on GitHub; index.md is the site's).
exclude_patterns = [
    "_build",
    "_ext",
    "README.md",
    "Thumbs.db",
    ".DS_Store",
]

# MyST: anchors for headings down to ###, so ``page.md#a-heading`` links resolve.
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]

# The owmeta loader's reference needs owmeta-core (the ``owmeta`` extra, installed in
# two steps: see owmeta.md).  Where it is missing, or does not import, autodoc reads the
# loader against a stand-in for owmeta-core, so the site comes out the same.
try:
    import owmeta_core.datasource_loader  # noqa: F401
except ImportError:
    autodoc_mock_imports = ["owmeta_core"]

# autodoc: the docstrings are prose with ``literals`` and :class:`roles`.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}

# No intersphinx (the build must not need the network).  References Sphinx
# cannot resolve are looked up as Python would by the local extension
# ``pyrefs``: linked when documented under another path, plain text when real
# but not documented here (the standard library, internals), and reported by
# nitpicky mode only when they name nothing that exists.
nitpicky = True

pygments_style = "sphinx"
html_theme = "alabaster"
html_title = f"pyowtorrent {release}"
html_theme_options = {
    "description": "Publish and fetch research datasets over BitTorrent, in pure Python.",
    "fixed_sidebar": False,
}
