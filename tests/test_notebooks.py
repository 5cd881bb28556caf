"""The committed notebooks fit the book's column and run when opened alone.

* every shown code line and stored output line is at most ffkit._book.COLUMN_CHARS (80)
  characters: the theme's code column holds 83 at a 1280 px window (the browser test,
  tools/check_book.py, measures it and fails below 80);
* every stored figure is at most ffkit.plot.COLUMN_PX wide at 1:1 and stored at 2x;
* every notebook starts with ffkit._book.FIRST_CELL (installs ffkit where it is missing) and
  opens no file by a path relative to itself;
* a notebook copied alone into an empty folder runs, and finds the committed results files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from ffkit import _book
from ffkit import results as ffresults

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))

# Chapters written before these checks existed. Each is expected to fail them until it is
# re-laid-out and re-executed; the mark is strict, so a chapter that passes makes its test fail
# until it is removed from this set. New chapters are checked from the start.
AWAITING_LAYOUT: set[str] = set()


def _param(path: Path) -> object:
    marks = []
    if path.stem in AWAITING_LAYOUT:
        marks.append(pytest.mark.xfail(reason="awaits the column layout (see AWAITING_LAYOUT)", strict=True))
    return pytest.param(path, id=path.stem, marks=marks)


CHAPTERS = [_param(p) for p in NOTEBOOKS]


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("path", CHAPTERS)
def test_lines_fit_the_column(path: Path) -> None:
    wide = _book.wide_lines(_read(path))
    assert not wide, f"{len(wide)} lines wider than {_book.COLUMN_CHARS} characters:\n" + "\n".join(map(str, wide))


@pytest.mark.parametrize("path", CHAPTERS)
def test_figures_are_drawn_for_the_column(path: Path) -> None:
    problems = _book.figure_problems(_read(path))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", CHAPTERS)
def test_notebook_opens_alone(path: Path) -> None:
    nb = _read(path)
    problems = _book.first_cell_problems(nb) + _book.relative_paths(nb)
    assert not problems, "\n".join(problems)


def test_display_width_counts_columns() -> None:
    assert _book.display_width("abc") == 3
    assert _book.display_width("θ‖∇f‖²") == 6  # Greek and mathematical symbols are narrow
    assert _book.display_width("表") == 2  # East Asian wide
    assert _book.display_width("\x1b[31merror\x1b[0m") == 5  # colour codes take no room
    assert _book.display_width("e\u0301") == 1  # a combining accent takes none
    assert _book.display_width("\tx") == 9


def _notebook(cells: list[str], outputs: list[list[dict]] | None = None, tags: list[list[str]] | None = None) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    for i, src in enumerate(cells):
        cell = nbformat.v4.new_code_cell(src)
        cell.outputs = (outputs or [[]] * len(cells))[i]
        cell.metadata["tags"] = (tags or [[]] * len(cells))[i]
        nb.cells.append(cell)
    return nb


def test_wide_lines_finds_shown_code_and_output_only() -> None:
    long = "x" * 81
    stream = {"output_type": "stream", "name": "stdout", "text": f"ok\n{long}\n"}
    rich = {"output_type": "display_data", "data": {"text/plain": long, "text/html": "<b>x</b>"}, "metadata": {}}
    nb = _notebook([f"a = 1\n{long}", long, "print()"], [[], [], [stream, rich]], [[], ["hide-input"], []])
    found = _book.wide_lines(nb)
    assert [(w.cell, w.where, w.line, w.width) for w in found] == [(1, "code", 2, 81), (3, "output", 2, 81)]
    assert not _book.wide_lines(_notebook(["x" * 80]))


def test_figure_problems_need_column_width_and_2x() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import base64

    import matplotlib.pyplot as plt

    from ffkit import plot

    def output(width_in: float, two_x: bool) -> dict:
        fig, ax = plt.subplots(figsize=(width_in, 2))
        ax.plot([0, 1])
        if two_x:
            data, md = plot.inline_png(fig)
            metadata = {"image/png": md}
        else:
            import io

            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100)
            data, metadata = base64.b64encode(buf.getvalue()).decode(), {}
        plt.close(fig)
        return {"output_type": "display_data", "data": {"image/png": data, "text/plain": "<Figure>"}, "metadata": metadata}

    ok = _notebook(["plot()"], [[output(12, True)]])  # tidy() scales it to the column
    assert _book.figure_problems(ok) == []
    wide = _book.figure_problems(_notebook(["plot()"], [[output(9, False)]]))
    assert len(wide) == 2 and "wider than" in wide[0] and "not high resolution" in wide[1]


def test_first_cell_is_ipython_that_installs_from_the_repository() -> None:
    from IPython.core.inputtransformer2 import TransformerManager

    python = TransformerManager().transform_cell(_book.FIRST_CELL)
    compile(python, "<first cell>", "exec")
    assert "run_line_magic('pip', 'install --quiet git+https://github.com/$repo')" in python
    repository = ffresults.REPOSITORY
    config = (ROOT / "_config.yml").read_text(encoding="utf-8")
    assert f"github.com/{repository}" in config  # the book's launch buttons point where pip installs from
    namespace: dict = {}
    exec(_book.FIRST_CELL.split("except ImportError:")[1].splitlines()[1].strip(), namespace)
    assert namespace["repo"] == repository
    assert all(_book.display_width(line) <= _book.COLUMN_CHARS for line in _book.FIRST_CELL.splitlines())
    good = _notebook([_book.FIRST_CELL + "\nffkit.setup()\n"])
    assert _book.first_cell_problems(good) == []
    assert len(_book.first_cell_problems(_notebook(["import ffkit\nffkit.setup()"]))) == 1


def test_relative_paths_are_found() -> None:
    nb = _notebook(['data = json.loads(Path("results/fg_mnist.json").read_text())', 'ffkit.results.load("fg_mnist")'])
    assert [p.split(":")[0] for p in _book.relative_paths(nb)] == ["cell 1"]


def test_a_notebook_alone_in_an_empty_folder_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a notebook that starts with the standard first cell from a folder holding nothing
    else: ffkit imports, every committed results file is found by name, and a figure comes out
    drawn for the column."""
    folder = ROOT / "chapters" / "results"
    files = sorted(folder.glob("*.json"))
    assert files, "no committed results files"
    envelopes = [p.stem for p in files if all(k in json.loads(p.read_text()) for k in ("command", "settings", "environment", "results"))]
    probe = (
        "import json\n"
        f"names = {[p.stem for p in files]!r}\n"
        "found = {n: json.loads(ffkit.results.find(n).read_text()) for n in names}\n"
        f"loaded = {{n: ffkit.results.load(n, download=False) for n in {envelopes!r}}}\n"
        "print(json.dumps({'cwd': __import__('os').getcwd(), 'found': sorted(found), 'loaded': sorted(loaded),\n"
        "                  'same': all(found[n] == loaded[n] for n in loaded)}))\n"
    )
    figure = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(12, 4))\nax.plot([0, 1], label='a')\nax.legend();"
    nb = _notebook([_book.FIRST_CELL + "\nffkit.setup()\n", probe, figure])
    path = tmp_path / "alone.ipynb"
    nbformat.write(nb, path)
    assert sorted(os.listdir(tmp_path)) == ["alone.ipynb"]
    monkeypatch.delenv("FFKIT_RESULTS", raising=False)  # the kernel inherits the environment
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "".join(o.get("text", "") for o in nb.cells[1].outputs if o.get("output_type") == "stream")
    report = json.loads(text)
    assert Path(report["cwd"]).resolve() == tmp_path.resolve()
    assert report["found"] == sorted(p.stem for p in files)
    assert report["loaded"] == sorted(envelopes) and report["same"]
    assert nb.cells[0].outputs == []  # ffkit was importable: nothing installed, nothing printed
    # ffkit.setup() made inline figures column-wide and 2x
    images = [o for o in nb.cells[2].outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1 and images[0]["metadata"]["image/png"]["width"] <= _book.COLUMN_PX
    assert _book.figure_problems(nb) == []


def test_notebooks_check_command_reports_problems(tmp_path: Path) -> None:
    import subprocess

    good = tmp_path / "good.ipynb"
    nbformat.write(_notebook([_book.FIRST_CELL + "\nffkit.setup()\n"]), good)
    bad = tmp_path / "bad.ipynb"
    nbformat.write(_notebook(["import ffkit\nx = " + "1 + " * 30 + "1"]), bad)

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ffkit", "notebooks", "--check", str(path)],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )

    ok = run(good)
    assert ok.returncode == 0 and "no problems" in ok.stdout
    failed = run(bad)
    assert failed.returncode == 1
    assert "first cell" in failed.stdout and "too wide: cell 1 code line 2: 125 characters" in failed.stdout


def test_replay_environment_is_set_where_missing_and_kept_where_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_book.platform, "machine", lambda: "x86_64")
    env = {"PYTHONHASHSEED": "7"}
    added = _book.pin_replay_environment(env)
    assert added == {"ATEN_CPU_CAPABILITY": "avx2"}
    assert env == {"PYTHONHASHSEED": "7", "ATEN_CPU_CAPABILITY": "avx2"}
    monkeypatch.setattr(_book.platform, "machine", lambda: "arm64")
    env = {}
    assert _book.pin_replay_environment(env) == {"PYTHONHASHSEED": "0"}
    assert "ATEN_CPU_CAPABILITY" not in env


def test_notebook_kernels_run_the_pinned_kernels() -> None:
    # pytest's own process has pinned the environment (the repository's conftest.py), so a kernel
    # it starts, like nbval's, uses the AVX2 kernels even on a processor with AVX-512
    import torch

    if "ATEN_CPU_CAPABILITY" not in _book.pin_replay_environment({}):
        pytest.skip("the instruction set is pinned only on x86-64")
    assert os.environ.get("ATEN_CPU_CAPABILITY") == "avx2"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("this processor has no AVX2")
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "AVX2"
