"""The book's conventions for its notebooks, and the checks that keep them.

* :data:`FIRST_CELL` starts every chapter: it installs ffkit where it is missing (a notebook
  opened alone on Colab) and calls ``ffkit.setup()``. Results files are read with
  ``ffkit.results.load(NAME)``, which finds them from any folder (see :mod:`ffkit.results`).
* Stored text outputs and shown code lines fit the text column: at most :data:`COLUMN_CHARS`
  characters (the book's theme shows 80 characters of code in its column; the browser test
  ``tools/check_book.py`` measures it).
* Figures are drawn for the column: at most ``ffkit.plot.COLUMN_PX`` CSS pixels wide at 1:1 and
  stored at twice that resolution (``ffkit.plot.use_style`` does both).

* Notebooks are executed and replayed in one environment, :data:`REPLAY_ENV`
  (:func:`pin_replay_environment`): ``python -m ffkit notebooks`` stores outputs made in it and
  ``pytest`` (nbval) compares against them in it.

``python -m ffkit notebooks --check`` reports what breaks these; tests/test_notebooks.py fails on
it.
"""

from __future__ import annotations

import base64
import os
import platform
import re
import unicodedata
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

from ffkit.plot import COLUMN_PX
from ffkit.results import REPOSITORY

#: Characters of a stored output line or a shown code line that fit the book's text column.
COLUMN_CHARS = 80

REPLAY_ENV = {"PYTHONHASHSEED": "0", "ATEN_CPU_CAPABILITY": "avx2"}
"""Environment of the kernels that execute and replay the notebooks. PyTorch picks its vectorised
CPU kernels by the processor's instruction set, and float32 sums come out in the last digits
differently with AVX-512 kernels than with AVX2 ones; after a few dozen training steps a printed
norm can differ in its fourth digit. Pinning AVX2, which nearly every x86-64 processor made since
2015 has, makes the stored outputs replay on either kind of machine."""

#: Image pixels per CSS pixel that a stored figure must have (2, less rounding).
MIN_PIXEL_RATIO = 1.9
#: Cell tags that hide a cell's code in the book (its output stays).
HIDDEN_INPUT_TAGS = frozenset({"hide-input", "remove-input", "hide-cell", "remove-cell"})
#: Cell tags that remove a cell's output from the book.
HIDDEN_OUTPUT_TAGS = frozenset({"remove-output", "remove-cell", "hide-output", "hide-cell"})
#: The first lines of every chapter's first code cell. Where ffkit is importable (a clone with
#: the requirements installed, Binder) they only import it; where it is not (Colab, a notebook
#: downloaded alone) they install it from the book's repository first (IPython expands
#: ``$repo``). Further imports and ``ffkit.setup()`` follow. Every line fits the column.
FIRST_CELL = f"""\
try:  # ffkit is there where the book is built and on Binder
    import ffkit
except ImportError:  # on Colab, or in a notebook opened alone
    repo = "{REPOSITORY}"
    %pip install --quiet git+https://github.com/$repo
    import ffkit
"""

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Outputs that the book shows instead of text/plain when a cell stores them.
_RICH = ("text/html", "text/markdown", "text/latex", "image/png", "image/jpeg", "image/svg+xml")


def display_width(text: str) -> int:
    """Columns that ``text`` takes in a monospace font: East Asian wide characters count two,
    combining marks none, ANSI colour codes nothing, tabs up to the next multiple of 8."""
    text = _ANSI.sub("", text).expandtabs(8)
    width = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def _source(cell: Any) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _tags(cell: Any) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def shows_input(cell: Any) -> bool:
    """Whether the book shows the code of ``cell`` (not collapsed or removed by a tag)."""
    return cell.get("cell_type") == "code" and not (_tags(cell) & HIDDEN_INPUT_TAGS)


def output_texts(output: Any) -> Iterator[str]:
    """The text that the book shows for one stored output (streams, errors, and text/plain
    where no richer form is stored)."""
    kind = output.get("output_type")
    if kind == "stream":
        text = output.get("text", "")
        yield "".join(text) if isinstance(text, list) else text
    elif kind == "error":
        yield "\n".join(output.get("traceback", []))
    elif kind in ("execute_result", "display_data"):
        data = output.get("data", {})
        if "text/plain" in data and not any(m in data for m in _RICH):
            text = data["text/plain"]
            yield "".join(text) if isinstance(text, list) else text


@dataclass(frozen=True)
class WideLine:
    """A line wider than the column: cell number (from 1), ``"code"`` or ``"output"``, line
    number in it (from 1), its width and its text."""

    cell: int
    where: str
    line: int
    width: int
    text: str

    def __str__(self) -> str:
        return f"cell {self.cell} {self.where} line {self.line}: {self.width} characters: {self.text[:60]}..."


def wide_lines(nb: Any, limit: int = COLUMN_CHARS) -> list[WideLine]:
    """Every shown code line and stored output line of ``nb`` wider than ``limit``."""
    found = []
    for number, cell in enumerate(nb["cells"], start=1):
        if cell.get("cell_type") != "code":
            continue
        if shows_input(cell):
            for i, line in enumerate(_source(cell).splitlines(), start=1):
                if (w := display_width(line)) > limit:
                    found.append(WideLine(number, "code", i, w, line))
        if _tags(cell) & HIDDEN_OUTPUT_TAGS:
            continue
        n = 0
        for output in cell.get("outputs", []):
            for text in output_texts(output):
                for line in text.splitlines():
                    n += 1
                    if (w := display_width(line)) > limit:
                        found.append(WideLine(number, "output", n, w, _ANSI.sub("", line)))
    return found


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height in pixels of a PNG image."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG image")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def figure_problems(nb: Any, column_px: int = COLUMN_PX, min_ratio: float = MIN_PIXEL_RATIO) -> list[str]:
    """Stored PNG figures of ``nb`` that the column would shrink (wider than ``column_px`` at
    1:1, their width in the output metadata or else their pixel width) or that are not high
    resolution (fewer than ``min_ratio`` pixels per CSS pixel)."""
    problems = []
    for number, cell in enumerate(nb["cells"], start=1):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" not in data:
                continue
            png = data["image/png"]
            pixels, _ = png_size(base64.b64decode("".join(png) if isinstance(png, list) else png))
            width = output.get("metadata", {}).get("image/png", {}).get("width", pixels)
            if width > column_px:
                problems.append(f"cell {number}: figure {width} px wide at 1:1, wider than the {column_px} px column")
            if pixels < min_ratio * width:
                problems.append(f"cell {number}: figure of {pixels} px shown {width} px wide: not high resolution")
    return problems


def first_code_cell(nb: Any) -> str | None:
    """The source of the first code cell of ``nb`` (``None`` if it has none)."""
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            return _source(cell)
    return None


def first_cell_problems(nb: Any) -> list[str]:
    """What the first code cell of ``nb`` lacks: the :data:`FIRST_CELL` lines at its start
    and a call of ``ffkit.setup(``."""
    source = first_code_cell(nb)
    if source is None:
        return ["no code cell"]
    problems = []
    if not source.startswith(FIRST_CELL):
        problems.append("the first code cell does not start with ffkit._book.FIRST_CELL")
    if "ffkit.setup(" not in source:
        problems.append("the first code cell does not call ffkit.setup()")
    return problems


_RELATIVE_RESULTS = re.compile(r"""["']results/|Path\(\s*["']results["']\s*\)|["']\.\./""")


def relative_paths(nb: Any) -> list[str]:
    """Code lines of ``nb`` that open files by a path relative to the notebook (such as
    ``results/x.json``), which breaks a notebook opened alone: use ``ffkit.results.load``."""
    found = []
    for number, cell in enumerate(nb["cells"], start=1):
        if cell.get("cell_type") != "code":
            continue
        for line in _source(cell).splitlines():
            if _RELATIVE_RESULTS.search(line):
                found.append(f"cell {number}: {line.strip()}")
    return found


def pin_replay_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`REPLAY_ENV` in ``environ`` (default ``os.environ``) where it is not set already,
    before notebook kernels start, so that they inherit it; the instruction-set pin only on x86-64
    (elsewhere PyTorch has other kernels). Returns what was set."""
    env = os.environ if environ is None else environ
    wanted = dict(REPLAY_ENV)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        wanted.pop("ATEN_CPU_CAPABILITY")
    added = {k: v for k, v in wanted.items() if k not in env}
    env.update(added)
    return added
