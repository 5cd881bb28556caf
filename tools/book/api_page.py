"""The API reference, generated from ``__all__``: every public name of a package, nothing by hand.

A page that contains the directive ::

    .. api-reference:: ffkit

gets one section per submodule listed in ``ffkit.__all__`` (``automodule`` with its members:
the names in the submodule's ``__all__``, or those it defines), and first a section with every
other name of ``ffkit.__all__``. A top-level name that is also documented in one of those
submodules is described briefly, linked to its full entry (``:canonical:``), so that both
``ffkit.ForwardGradient`` and ``ffkit.methods.ForwardGradient`` resolve; the others are
documented in full. Adding a name to ``__all__`` adds it to the page. A name that cannot be
imported is a build warning (an error under ``-W``), never a silent gap.

Docstrings are reStructuredText with Google/NumPy sections (Napoleon); ``:math:`` roles and
``.. math::`` blocks are rendered by MathJax like the chapters' equations.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from dataclasses import dataclass, field
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

#: Options of every generated ``automodule``.
MODULE_OPTIONS = (":members:", ":undoc-members:", ":show-inheritance:", ":member-order: bysource")


def public_names(package: types.ModuleType) -> list[str]:
    """``package.__all__``; an error if the package does not declare one."""
    names = getattr(package, "__all__", None)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{package.__name__} has no __all__ list of names")
    return list(names)


def module_members(module: types.ModuleType) -> dict[str, Any]:
    """What ``automodule :members:`` documents: the names in ``__all__`` if the module has one,
    else the public names it defines itself."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return {n: getattr(module, n) for n in names if hasattr(module, n)}
    return {
        n: v
        for n, v in vars(module).items()
        if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
    }


_PRIMITIVES = (str, bytes, int, float, complex, bool, type(None), tuple)


def _shareable(value: Any) -> bool:
    """Whether two modules exporting ``value`` export the same thing (not an interned constant)."""
    return not isinstance(value, _PRIMITIVES)


def _kind(value: Any) -> str:
    if inspect.isclass(value):
        return "class"
    if inspect.isroutine(value):
        return "function"
    return "data"


@dataclass
class Plan:
    """What the reference page shows.

    ``top``: ``(name, value, home)`` for every name of the package's ``__all__`` that is not a
    module; ``home`` is the full name of its entry in a documented submodule, or ``None`` when
    it is documented in full at the top. ``modules``: ``(module name, {member: home})`` for every
    submodule in ``__all__``; a member's home is ``None`` when the submodule documents it, else
    the full name of the entry of the submodule that does (an object that several submodules
    export is documented once, in the submodule where it is defined or else the first).
    ``missing``: names of ``__all__`` that cannot be imported.
    """

    top: list[tuple[str, Any, str | None]] = field(default_factory=list)
    modules: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def plan(package_name: str) -> Plan:
    """Decide where every public name of ``package_name`` is documented (see :class:`Plan`)."""
    package = importlib.import_module(package_name)
    result = Plan()
    loaded: list[types.ModuleType] = []
    values: dict[str, Any] = {}
    for name in public_names(package):
        try:
            value = getattr(package, name)
        except Exception:  # noqa: BLE001 - any import failure is reported as missing
            result.missing.append(name)
            continue
        if isinstance(value, types.ModuleType):
            loaded.append(value)
        else:
            values[name] = value
    members = {m.__name__: module_members(m) for m in loaded}
    # where each shared object is documented: the module it is defined in (the longest prefix
    # of its __module__), else the first module that exports it
    homes: dict[int, str] = {}
    for module in loaded:
        for name, value in members[module.__name__].items():
            if not _shareable(value):
                continue
            defined_in = getattr(value, "__module__", "") or ""
            current = homes.get(id(value))
            candidate = f"{module.__name__}.{name}"
            if current is None:
                homes[id(value)] = candidate
            elif _prefix_len(module.__name__, defined_in) > _prefix_len(current.rsplit(".", 1)[0], defined_in):
                homes[id(value)] = candidate
    for module in loaded:
        entries: dict[str, str | None] = {}
        for name, value in members[module.__name__].items():
            home = homes.get(id(value)) if _shareable(value) else None
            entries[name] = None if home in (None, f"{module.__name__}.{name}") else home
        result.modules.append((module.__name__, entries))
    for name, value in values.items():
        result.top.append((name, value, homes.get(id(value)) if _shareable(value) else None))
    return result


def _prefix_len(module: str, defined_in: str) -> int:
    return len(module) if defined_in == module or defined_in.startswith(module + ".") else -1


def _first_paragraph(value: Any) -> str:
    doc = inspect.getdoc(value) or ""
    return doc.split("\n\n", 1)[0].strip()


def _signature(value: Any) -> str:
    try:
        sig = inspect.signature(value)
    except (TypeError, ValueError):
        return "()"
    params = []
    for p in sig.parameters.values():
        text = p.name
        if p.kind is p.VAR_POSITIONAL:
            text = "*" + text
        elif p.kind is p.VAR_KEYWORD:
            text = "**" + text
        if p.default is not p.empty:
            text += "=…"
        params.append(text)
    return "(" + ", ".join(params) + ")"


def _alias(module: str, name: str, value: Any, home: str) -> list[str]:
    """A short entry for ``module.name``, which is documented in full as ``home``."""
    kind = _kind(value)
    signature = _signature(value) if kind == "function" else ""
    out = [f".. py:{kind}:: {name}{signature}", f"   :module: {module}"]
    if kind == "class":
        out.append(f"   :canonical: {home}")
    out.append("")
    summary = _first_paragraph(value) if kind != "data" else ""
    if summary:
        out += ["   " + line for line in summary.splitlines()] + [""]
    role = {"class": "class", "function": "func", "data": "data"}[kind]
    out += [f"   The same object as :py:{role}:`{home}`, documented there in full.", ""]
    return out


def _attr_docs(module_name: str) -> dict[str, list[str]]:
    """The ``#:`` doc comments of a module's top-level names, as autodoc reads them."""
    from sphinx.pycode import ModuleAnalyzer
    from sphinx.errors import PycodeError

    try:
        docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
    except PycodeError:
        return {}
    return {name: list(lines) for (namespace, name), lines in docs.items() if namespace == ""}


def _defining_comment(module_name: str, name: str, value: Any) -> list[str]:
    """The doc comment of ``name`` in the module of the package that defines it (the same
    object under the same name, with a ``#:`` comment), else nothing."""
    root = module_name.split(".")[0]
    for candidate in sorted(m for m in sys.modules if m == root or m.startswith(root + ".")):
        if getattr(sys.modules[candidate], name, None) is value:
            lines = _attr_docs(candidate).get(name)
            if lines:
                return [line for line in lines if line.strip()] or []
    return []


def _short_repr(value: Any, limit: int = 120) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def rst_lines(package_name: str) -> tuple[list[str], list[str]]:
    """The reStructuredText of the page body, and the names that could not be imported."""
    result = plan(package_name)
    out: list[str] = []
    title = f"Names in ``{package_name}``"
    out += [title, "-" * len(title), ""]
    out += [
        f"``import {package_name}`` gives these names directly; the submodules below document "
        "the rest.",
        "",
    ]
    for name, value, home in result.top:
        full = f"{package_name}.{name}"
        if home is not None:
            out += _alias(package_name, name, value, home)
        elif _kind(value) == "class":
            out += [f".. autoclass:: {full}", *("   " + o for o in MODULE_OPTIONS), ""]
        elif _kind(value) == "function":
            out += [f".. autofunction:: {full}", ""]
        else:
            out += [f".. py:data:: {name}", f"   :module: {package_name}", f"   :value: {value!r}", ""]
    for module, entries in result.modules:
        heading = f"``{module}``"
        out += [heading, "-" * len(heading), ""]
        mod = importlib.import_module(module)
        elsewhere = {n: h for n, h in entries.items() if h is not None}
        # automodule documents module-level data only where the module itself carries its
        # doc comment (``#:``); re-exported data get an entry here, with the comment of the
        # module that defines them
        commented = _attr_docs(module)
        data = [n for n, h in entries.items() if h is None and _kind(getattr(mod, n)) == "data" and n not in commented]
        out += [f".. automodule:: {module}", *("   " + o for o in MODULE_OPTIONS)]
        if elsewhere or data:
            out.append(f"   :exclude-members: {', '.join([*elsewhere, *data])}")
        out.append("")
        for name in data:
            value = getattr(mod, name)
            out += [f".. py:data:: {name}", f"   :module: {module}", f"   :value: {_short_repr(value)}", ""]
            out += ["   " + line for line in _defining_comment(module, name, value)] + [""]
        for name, home in elsewhere.items():
            out += _alias(module, name, getattr(mod, name), home)
    return out, result.missing


class ApiReference(SphinxDirective):
    """``.. api-reference:: PACKAGE``: the generated reference of ``PACKAGE.__all__``."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        package_name = self.arguments[0]
        try:
            lines, missing = rst_lines(package_name)
        except (ImportError, ValueError) as err:
            logger.warning(f"api-reference: cannot document {package_name}: {err}", location=self.get_location())
            return []
        for name in missing:
            logger.warning(
                f"api-reference: {package_name}.{name} is in __all__ but cannot be imported",
                location=self.get_location(),
            )
        container = nodes.container()
        source = self.get_source_info()[0]
        content = StringList(lines, source=source)
        nested_parse_with_titles(self.state, content, container)
        return list(container.children)


def setup(app: Sphinx) -> dict[str, object]:
    app.setup_extension("sphinx.ext.autodoc")
    app.setup_extension("sphinx.ext.napoleon")
    app.add_directive("api-reference", ApiReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
