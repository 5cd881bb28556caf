"""Re-execute the book's notebooks in place, exactly as nbval replays them; --check their layout."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from ffkit import _book


def execute_in_place(path: Path, timeout: int = 900) -> float:
    """Run every cell of ``path`` in a fresh kernel of this environment, save outputs; return seconds."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent.resolve())}},
        record_timing=False,  # no wall-clock timestamps in the committed notebook
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # timestamps left by an earlier run
    nbformat.write(nb, path)
    return elapsed


def check(path: Path) -> list[str]:
    """What in the stored notebook ``path`` breaks the book's layout conventions (ffkit._book)."""
    nb = nbformat.read(path, as_version=4)
    problems = [f"first cell: {p}" for p in _book.first_cell_problems(nb)]
    problems += [f"relative path: {p}" for p in _book.relative_paths(nb)]
    problems += [f"too wide: {w}" for w in _book.wide_lines(nb)]
    problems += [f"figure: {p}" for p in _book.figure_problems(nb)]
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffkit notebooks", description=__doc__)
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: chapters/*.ipynb)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"do not execute; report the standard first cell, relative paths, shown code and stored "
        f"output lines wider than {_book.COLUMN_CHARS} characters, and figures not drawn for the column",
    )
    args = parser.parse_args(argv)
    paths = args.paths or sorted(Path("chapters").glob("*.ipynb"))
    if not paths:
        print("no notebooks found (run from the repository root or name them)", file=sys.stderr)
        return 2
    if args.check:
        failed = 0
        for path in paths:
            problems = check(path)
            failed += bool(problems)
            print(f"{path}: {len(problems) or 'no'} problem{'s' if len(problems) != 1 else ''}")
            for p in problems:
                print(f"  {p}")
        return 1 if failed else 0
    _book.pin_replay_environment()
    for path in paths:
        if not path.is_file():
            print(f"not a notebook: {path}", file=sys.stderr)
            return 2
        seconds = execute_in_place(path, args.timeout)
        print(f"{path}: executed in {seconds:.1f} s")
    return 0
