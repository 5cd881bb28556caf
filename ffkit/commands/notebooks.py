"""Re-execute the book's notebooks in place, exactly as nbval replays them."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffkit notebooks", description=__doc__)
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: chapters/*.ipynb)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(Path("chapters").glob("*.ipynb"))
    if not paths:
        print("no notebooks found (run from the repository root or name them)", file=sys.stderr)
        return 2
    os.environ.setdefault("PYTHONHASHSEED", "0")
    for path in paths:
        if not path.is_file():
            print(f"not a notebook: {path}", file=sys.stderr)
            return 2
        seconds = execute_in_place(path, args.timeout)
        print(f"{path}: executed in {seconds:.1f} s")
    return 0
