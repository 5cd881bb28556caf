"""MNIST by backprop and by forward gradient (logistic regression, MLP, small CNN), rates tuned per method and seed.

Runs :func:`ffkit.experiments.fg_mnist.run` and writes ``chapters/results/fg_mnist.json``::

    python -m ffkit fg-mnist --seeds 0,1,2          # chapter 3's results
    python -m ffkit fg-mnist --steps 300 --tune-steps 50 --models logistic --out small.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ffkit import results
from ffkit.data import load_dataset
from ffkit.experiments import fg_mnist as exp


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffkit fg-mnist", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(exp.MODELS), help="comma-separated subset of " + ", ".join(exp.MODELS))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (initialisation, batches, tangents)")
    parser.add_argument("--steps", type=int, default=1000, help="SGD steps of each full run")
    parser.add_argument("--tune-steps", type=int, default=150, help="steps of each tuning run")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=100, help="held-out evaluations every N steps after step 100")
    parser.add_argument("--eval-size", type=int, default=2000, help="test images in the held-out evaluations")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=Path("chapters/results/fg_mnist.json"))
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if any(m not in exp.MODELS for m in models) or not models:
        parser.error(f"--models must name some of {', '.join(exp.MODELS)}")
    if not seeds or min(seeds) < 0:
        parser.error("--seeds needs at least one non-negative integer")
    if args.steps < 1 or args.tune_steps < 1 or args.batch < 1 or args.eval_every < 1 or args.threads < 1 \
            or args.eval_size < 1:
        parser.error("--steps, --tune-steps, --batch, --eval-every, --eval-size and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    train = load_dataset("mnist", "train", normalize=True)
    test = load_dataset("mnist", "test", normalize=True)
    started = time.perf_counter()
    runs = exp.run(
        models, seeds, train, test, steps=args.steps, tune_steps=args.tune_steps, batch_size=args.batch,
        eval_every=args.eval_every, eval_size=args.eval_size,
        report=lambda line: print(line, file=sys.stderr, flush=True), show_progress=not args.no_progress,
        dense=True,
    )
    settings = {
        "models": models, "seeds": seeds, "steps": args.steps, "tune_steps": args.tune_steps,
        "batch": args.batch, "eval_every": args.eval_every, "eval_size": args.eval_size,
        "eval_steps": exp.eval_schedule(args.steps, args.eval_every), "optimizer": "SGD (no momentum)",
        "lr_grid": exp.LR_GRID, "tangents": "gaussian, K = 1",
    }
    total = round(time.perf_counter() - started, 1)
    path = results.write(args.out, results.envelope(
        results.command_line(argv, name="fg-mnist"), settings, {"runs": runs, "total_seconds": total},
    ))
    print(f"wrote {path} ({total} s)")
    return 0
