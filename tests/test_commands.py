"""The `python -m ffkit` entry point and the notebook executor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from ffkit.__main__ import _commands, main
from ffkit.models import count_parameters, mlp

COMMANDS = list(_commands())


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


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_answers_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m ffkit NAME --help`` through the same dispatch, in this process (a subprocess per
    command would import torch nine times)."""
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m ffkit {name}")


def test_dp_train_command_runs_as_one_worker(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from ffkit.commands import dp_train

    monkeypatch.delenv("RANK", raising=False)
    argv = ["--data", "synthetic", "--steps", "3", "--limit", "64", "--batch", "8", "--width", "8", "--directions", "2"]
    assert dp_train.main(argv) == 0
    out = capsys.readouterr().out
    assert "1 worker(s)" in out and "per step: 8 (predicted 8)" in out  # K = 2 float32 numbers
    assert dp_train.main(argv[:-2] + ["--scheme", "all-reduce"]) == 0
    n = count_parameters(mlp([784, 8, 10]))
    assert f"per step: {4 * n} (predicted {4 * n})" in capsys.readouterr().out
