"""The `python -m ffkit` entry point and the notebook executor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat

from ffkit.__main__ import main


def test_help_lists_every_command(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "notebooks" in out
    for path in (Path(__file__).parents[1] / "ffkit" / "commands").glob("[!_]*.py"):
        assert path.stem.replace("_", "-") in out


def test_unknown_command_is_an_error(capsys) -> None:
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main([]) == 2


def test_notebooks_command_executes_in_place(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import ffkit\nffkit.setup()\nprint(sum(range(10)))")]
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    result = subprocess.run(
        [sys.executable, "-m", "ffkit", "notebooks", str(path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    executed = nbformat.read(path, as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "45\n"
    assert executed.cells[0].execution_count == 1
    assert "execution" not in executed.cells[0].metadata  # no wall-clock timestamps stored


def test_notebooks_command_rejects_missing_files(tmp_path: Path, capsys) -> None:
    assert main(["notebooks", str(tmp_path / "missing.ipynb")]) == 2
    assert "not a notebook" in capsys.readouterr().err
