"""Steps to a training loss and largest stable learning rate as an MLP widens: forward gradient vs backprop.

Runs :func:`ffkit.experiments.variance_width.run` and writes ``chapters/results/variance_width.json``::

    python -m ffkit variance-width            # about 6 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import ffkit
from ffkit import results
from ffkit.experiments import variance_width as exp


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffkit variance-width", description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 16, 64, 256])
    parser.add_argument("--examples", type=int, default=2048, help="size of the fixed MNIST training subset")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3000, help="step budget per run")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--target", type=float, default=1.8, help="training loss (cross-entropy) to reach")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probes", type=int, default=30, help="Hutchinson probes for tr H at initialisation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("chapters/results/variance_width.json"))
    args = parser.parse_args(argv)
    if min(args.widths) < 1 or args.steps < args.eval_every or args.eval_every < 1:
        parser.error("widths must be positive and steps >= eval-every >= 1")
    ffkit.setup(seed=args.seed, threads=args.threads, plots=False)
    x, y = ffkit.load_dataset("mnist", "train", limit=args.examples)
    start = time.perf_counter()
    widths = exp.run(
        args.widths, x, y, steps=args.steps, eval_every=args.eval_every, target=args.target,
        batch=args.batch, seed=args.seed, probes=args.probes,
        report=lambda line: print(line, file=sys.stderr, flush=True),
    )
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update({"optimizer": "SGD (no momentum)",
                     "lr_grid": {"backprop": exp.BACKPROP_LRS, "forward gradient": exp.FG_LRS}})
    out = {"widths": widths, "total_seconds": round(time.perf_counter() - start, 1)}
    path = results.write(args.out, results.envelope(results.command_line(argv, name="variance-width"), settings, out))
    print(f"wrote {path}")
    return 0
