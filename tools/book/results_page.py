"""The Results page, generated at build time from the committed results files.

A page that contains the directive ::

    .. results-index:: chapters/results

lists (1) every number the book reproduces from a paper, next to ours, collected from the
``comparisons`` of every results file (see ``ffkit.results``: quantity, ours, paper, unit,
source, cite), and (2) every results file: the command that produced it, where it was computed,
and the chapters that load it. A new file in the folder extends the page on the next build; the
page is re-read on every build, so nothing is edited by hand.

Files written before the envelope format (no ``settings``/``environment``/``results`` keys) are
listed with their command (if they record one) and contribute no comparisons.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

ENVELOPE_KEYS = ("command", "settings", "environment", "results")
COMPARISON_KEYS = ("quantity", "ours", "paper", "unit", "source", "cite")
#: Environment keys shown as "computed on", in this order.
COMPUTE_KEYS = ("device", "gpu", "processor", "threads", "torch", "python", "system", "machine")


@dataclass
class ResultsFile:
    """What the page shows of one results file."""

    name: str
    command: str | None
    envelope: bool
    compute: dict[str, Any] = field(default_factory=dict)
    comparisons: list[dict[str, Any]] = field(default_factory=list)


def read(path: Path) -> ResultsFile:
    """One results file; ``ValueError`` for a file that is not a JSON object or whose
    comparisons lack a key."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: a results file holds a JSON object")
    envelope = all(k in data for k in ENVELOPE_KEYS)
    command = data.get("command")
    command = command.strip() if isinstance(command, str) and command.strip() else None
    compute = data.get("environment") if envelope else data.get("environment", data.get("machine"))
    comparisons = []
    if envelope:
        for i, c in enumerate(data.get("comparisons", [])):
            missing = [k for k in COMPARISON_KEYS if not isinstance(c, dict) or k not in c]
            if missing:
                raise ValueError(f"{path.name}: comparison {i} lacks {missing}")
            comparisons.append(c)
    return ResultsFile(
        name=path.name,
        command=command,
        envelope=envelope,
        compute=dict(compute) if isinstance(compute, dict) else {},
        comparisons=comparisons,
    )


def fmt_value(value: Any, unit: str = "") -> str:
    """A number as the page prints it: 4 significant digits, the unit after it."""
    if isinstance(value, bool) or value is None:
        text = str(value)
    elif isinstance(value, int):
        text = f"{value:,}".replace(",", "\u2009")
    elif isinstance(value, float):
        text = "n/a" if math.isnan(value) else f"{value:.4g}"
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        text = f"{fmt_value(value[0])}–{fmt_value(value[1])}"
    else:
        text = str(value)
    if not unit:
        return text
    return f"{text}{unit}" if unit == "%" else f"{text} {unit}"


def fmt_compute(compute: dict[str, Any]) -> str:
    """Where a result was computed, in one line: ``cpu, Intel Xeon, 2 threads, torch 2.13.0``."""
    parts = []
    for key in COMPUTE_KEYS:
        if key not in compute:
            continue
        value = compute[key]
        if key == "threads":
            parts.append(f"{value} thread{'s' if value != 1 else ''}")
        elif key in ("torch", "python"):
            parts.append(f"{key} {value}")
        elif key == "machine" and isinstance(value, str) and "processor" in compute:
            continue
        else:
            parts.append(str(value))
    return ", ".join(parts) if parts else "not recorded"


def loaders(stem: str, chapters: Path) -> list[str]:
    """The notebooks and Markdown pages in ``chapters`` that load ``stem.json``, as paths
    relative to ``chapters`` without suffix."""
    pattern = re.compile(rf"""load\(\s*\\?["']{re.escape(stem)}(\.json)?\\?["']|\b{re.escape(stem)}\.json\b""")
    found = []
    for path in sorted([*chapters.glob("*.ipynb"), *chapters.glob("*.md")]):
        if pattern.search(path.read_text(encoding="utf-8")):
            found.append(path.stem)
    return found


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("`", "\\`").replace("*", "\\*").replace("|", "\\|")


def rst_lines(files: list[ResultsFile], chapters_doc: str, chapters_dir: Path) -> list[str]:
    """The reStructuredText of the page body; ``chapters_doc`` is the docname folder of the
    chapters (``/chapters``)."""
    out: list[str] = []
    rows = [(f, c) for f in files for c in f.comparisons]
    out += ["Numbers reproduced from papers", "------------------------------", ""]
    if not rows:
        out += ["No results file lists a comparison with a paper yet.", ""]
    else:
        out += [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 34 16 16 18 16",
            "   :class: results-comparisons",
            "",
            "   * - quantity",
            "     - paper",
            "     - ours",
            "     - source",
            "     - results file",
        ]
        for f, c in rows:
            unit = str(c.get("unit") or "")
            cite = f" :cite:p:`{c['cite']}`" if c.get("cite") else ""
            out += [
                f"   * - {_escape(str(c['quantity']))}",
                f"     - {_escape(fmt_value(c['paper'], unit))}",
                f"     - {_escape(fmt_value(c['ours'], unit))}",
                f"     - {_escape(str(c['source']))}{cite}",
                f"     - :ref:`{f.name} <results-{_anchor(f.name)}>`",
            ]
        out.append("")
    out += ["Results files", "-------------", ""]
    if not files:
        out += ["There are no results files yet.", ""]
    for f in files:
        out += [f".. _results-{_anchor(f.name)}:", ""]
        heading = f"``{f.name}``"
        out += [heading, "~" * len(heading), ""]
        command = f"``{f.command}``" if f.command else "not recorded in the file"
        out += [f":Command: {command}", f":Computed on: {_escape(fmt_compute(f.compute))}"]
        chapters = loaders(Path(f.name).stem, chapters_dir)
        if chapters:
            links = ", ".join(f":doc:`{chapters_doc}/{c}`" for c in chapters)
            out.append(f":Loaded by: {links}")
        if not f.envelope:
            out.append(":Comparisons: none (the file predates the results envelope)")
        elif f.comparisons:
            n = len(f.comparisons)
            out.append(f":Comparisons: {n} (in the table above)")
        else:
            out.append(":Comparisons: none")
        out.append("")
    return out


def _anchor(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class ResultsIndex(SphinxDirective):
    """``.. results-index:: FOLDER``: the generated Results page of the ``*.json`` in FOLDER
    (relative to the book's root)."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        root = Path(self.env.srcdir)
        folder = root / self.arguments[0]
        self.env.note_dependency(str(folder))
        _pages(self.env).add(self.env.docname)
        files = []
        for path in sorted(folder.glob("*.json")):
            self.env.note_dependency(str(path))
            try:
                files.append(read(path))
            except (ValueError, json.JSONDecodeError) as err:
                logger.warning(f"results-index: {path}: {err}", location=self.get_location())
        chapters_dir = folder.parent
        chapters_doc = "/" + chapters_dir.relative_to(root).as_posix()
        container = nodes.container()
        lines = rst_lines(files, chapters_doc, chapters_dir)
        nested_parse_with_titles(self.state, StringList(lines, source=self.get_source_info()[0]), container)
        return list(container.children)


def _pages(env: BuildEnvironment) -> set[str]:
    if not hasattr(env, "results_index_pages"):
        env.results_index_pages = set()  # type: ignore[attr-defined]
    return env.results_index_pages  # type: ignore[attr-defined]


def _always_reread(app: Sphinx, env: BuildEnvironment, added: set[str], changed: set[str], removed: set[str]) -> list[str]:
    # a results file added since the last build is not a dependency yet: re-read the page
    return sorted(_pages(env) - removed)


def _purge(app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    _pages(env).discard(docname)


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("results-index", ResultsIndex)
    app.connect("env-get-outdated", _always_reread)
    app.connect("env-purge-doc", _purge)
    return {"parallel_read_safe": False, "parallel_write_safe": True, "env_version": 1}
