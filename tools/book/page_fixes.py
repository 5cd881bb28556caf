"""Two fixes to the scripts that the theme puts in every page, found by the browser test.

* sphinx-thebe declares ``const THEBE_JS_URL = ...`` in an inline script that ends up twice in
  the page, so the second copy throws "Identifier 'THEBE_JS_URL' has already been declared":
  every script is kept once.
* The theme logs "Got invalid theme mode" when no default colour mode is set: the book's
  default is light (its figures are drawn on white).
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx
from sphinx.config import Config


def unique_scripts(scripts: list[Any]) -> list[Any]:
    """``scripts`` without repeats: two entries are the same script when they have the same
    file name and the same attributes (an inline script's body is one of them)."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for script in scripts:
        key = (
            str(getattr(script, "filename", script) or ""),  # an inline script's is None or ""
            tuple(sorted(getattr(script, "attributes", {}).items())),
        )
        if key not in seen:
            seen.add(key)
            out.append(script)
    return out


def _light_by_default(app: Sphinx, config: Config) -> None:
    # the theme reads its default mode from the template context, not from its options
    context = dict(config.html_context or {})
    context.setdefault("default_mode", "light")
    config.html_context = context


def _dedupe(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any) -> None:
    if "script_files" in context:
        context["script_files"] = unique_scripts(list(context["script_files"]))


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("config-inited", _light_by_default)
    # after every extension that adds scripts to the page
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
