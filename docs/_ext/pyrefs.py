"""A small Sphinx extension: Python cross-references resolved the way Python resolves the names.

Docstrings say :class:`DownloadTimeout` where the module imported the name,
and signatures name ``pathlib.Path`` or internal classes the reference does
not document.  Sphinx's own lookup only finds names documented under exactly
that path, so in nitpicky mode each of these would be "target not found".

For a reference Sphinx could not resolve, this looks the name up as Python
would, from the module (and class) the reference is written in:

- it names an object that this site documents, under another path (an import,
  a re-export): the reference links there;
- it names a real object that is not documented here (the standard library,
  aiohttp, an internal class): it stays plain text, and is not reported;
- it names nothing that exists (a typo, a renamed function): it is left alone,
  and nitpicky mode reports it.

Names in a module autodoc mocks (``autodoc_mock_imports``) cannot be checked,
and stay plain text.

So ``-n`` keeps checking that every reference in the docstrings names
something real, without needing intersphinx (and the network).

It also mends two things autodoc gets wrong in dataclass signatures: a
``default_factory`` default shows as ``<factory>``, which is not Python, so
the whole signature would fall back to a naive split on commas (it becomes
``...``); and annotations of ``slots=True`` dataclasses come out as quoted
strings (they are evaluated, as for any other class).
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import types
from typing import Any

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util.inspect import signature as sphinx_signature
from sphinx.util.inspect import stringify_signature
from sphinx.util.nodes import make_refnode

_MISSING = object()
_ROUTINES = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def _canonical_walk(path: str) -> tuple[Any, str] | None:
    """The object ``path`` (``pkg.mod.Class.attr``) names, and its canonical dotted name; None if nothing."""
    parts = path.split(".")
    if not all(p.isidentifier() for p in parts) or "__main__" in parts:
        return None  # not a dotted name; or a module that would run a program when imported
    if len(parts) == 1 and hasattr(builtins, path):
        return getattr(builtins, path), f"builtins.{path}"
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj: Any = importlib.import_module(module_name)
        except Exception:  # noqa: BLE001 - not a module (or not importable): try a shorter prefix
            continue
        canonical = module_name
        for attr in parts[i:]:
            value = getattr(obj, attr, _MISSING)
            if value is _MISSING:
                # A dataclass field without a default is an annotation, not a class attribute.
                if isinstance(obj, type) and attr in getattr(obj, "__annotations__", {}):
                    canonical = f"{canonical}.{attr}"
                    obj = None
                    continue
                return None
            obj = value
            module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
            if isinstance(obj, _ROUTINES) and module and qualname and "<locals>" not in qualname:
                canonical = f"{module}.{qualname}"
            else:
                canonical = f"{canonical}.{attr}"
        return obj, canonical
    return None


def _documented_by_canonical(env: BuildEnvironment) -> dict[str, str]:
    """Canonical dotted name -> the name it is documented under, for every documented Python object."""
    domain = env.get_domain("py")
    objects = domain.objects  # type: ignore[attr-defined]
    cache = getattr(env, "_pyrefs_cache", None)
    if cache is not None and cache[0] == len(objects):
        return cache[1]  # type: ignore[no-any-return]
    mapping: dict[str, str] = {}
    for name in objects:
        found = _canonical_walk(name)
        mapping.setdefault(found[1] if found else name, name)
        mapping.setdefault(name, name)
    env._pyrefs_cache = (len(objects), mapping)  # type: ignore[attr-defined]
    return mapping


def _candidates(target: str, module: str | None, cls: str | None) -> list[str]:
    target = target.lstrip(".~")
    out = []
    if module and cls:
        out.append(f"{module}.{cls}.{target}")
    if module:
        out.append(f"{module}.{target}")
    out.append(target)
    return out


def resolve_missing(app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: nodes.Element) -> Any:
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    mocked = app.config.autodoc_mock_imports
    if any(target == m or target.startswith(m + ".") for m in mocked):
        return contnode  # autodoc stands in for that module: nothing to check it against
    for candidate in _candidates(target, node.get("py:module"), node.get("py:class")):
        found = _canonical_walk(candidate)
        if found is None:
            continue
        documented = _documented_by_canonical(env).get(found[1])
        if documented is None:
            return contnode  # real, but not in this reference: plain text
        entry = env.get_domain("py").objects[documented]  # type: ignore[attr-defined]
        return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, documented)
    return None  # names nothing: nitpicky mode reports it


def dataclass_signature(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, signature: str | None, return_annotation: str | None
) -> tuple[str | None, str | None] | None:
    """A dataclass's signature from its ``__init__``, annotations evaluated, and parseable.

    For some dataclasses (``slots=True`` ones) autodoc shows the annotations
    as the strings ``from __future__ import annotations`` left, quotes and all.
    """
    if what != "class" or not dataclasses.is_dataclass(obj) or not signature:
        return None
    try:
        init = getattr(obj, "__init__")  # the generated __init__ holds the fields, in order
        sig = sphinx_signature(init, bound_method=True)
        signature = stringify_signature(sig, show_return_annotation=False, unqualified_typehints=True)
    except Exception:  # noqa: BLE001 - keep autodoc's own
        pass
    return signature.replace("<factory>", "..."), return_annotation


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.autodoc")
    app.connect("missing-reference", resolve_missing)
    app.connect("autodoc-process-signature", dataclass_signature)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
