"""Serve MathJax 3 from the built book itself, so that every equation renders without network.

The MathJax files come from the pinned PyPI package ``django-static-mathjax`` (MathJax 3.2.2 as
static files, importable as ``mathjax``; Django itself is not needed). The book loads
``_static/mathjax/tex-mml-chtml.js`` instead of a CDN copy; after a successful HTML build the
combined component, the pieces it loads on demand (TeX extensions, CommonHTML fonts, menu and
accessibility code) and MathJax's licence are copied into ``_static/mathjax``.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ExtensionError

#: The combined component the book loads: TeX and MathML input, CommonHTML output.
ENTRY = "tex-mml-chtml.js"
#: What the entry loads on demand, relative to MathJax's ``es5`` folder.
ON_DEMAND = ("input", "output", "a11y", "ui", "sre")
#: Where the files go, relative to the HTML output folder.
TARGET = Path("_static") / "mathjax"


def source_dir() -> Path:
    """MathJax's ``es5`` folder inside the installed package; a clear error if it is missing."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or spec.origin is None:
        raise ExtensionError(
            "offline_mathjax: the MathJax package is not installed; "
            "run `python -m pip install -r requirements.txt` (it pins django-static-mathjax)"
        )
    es5 = Path(spec.origin).parent / "static" / "mathjax" / "es5"
    if not (es5 / ENTRY).is_file():
        raise ExtensionError(f"offline_mathjax: {es5 / ENTRY} not found; is `mathjax` the wrong package?")
    return es5


def _use_local_copy(app: Sphinx, config: Config) -> None:
    source_dir()  # fail at the start of the build, not after it
    # A path without a scheme is relative to _static/ (Sphinx's mathjax extension).
    config.mathjax_path = f"mathjax/{ENTRY}"


def _copy(app: Sphinx, exc: Exception | None) -> None:
    if exc is not None or app.builder.format != "html":
        return
    es5 = source_dir()
    target = Path(app.outdir) / TARGET
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(es5 / ENTRY, target / ENTRY)
    for name in ON_DEMAND:
        shutil.copytree(es5 / name, target / name, dirs_exist_ok=True)
    licence = es5.parent / "LICENSE"
    if licence.is_file():
        shutil.copy2(licence, target / "LICENSE")


def setup(app: Sphinx) -> dict[str, object]:
    app.setup_extension("sphinx.ext.mathjax")
    app.connect("config-inited", _use_local_copy, priority=900)
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
