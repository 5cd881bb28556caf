"""Benchmark one training step over a grid of MLPs and batches: backprop vs forward gradients (ratio table).

Runs :func:`ffkit.experiments.step.grid` (variants interleaved round by round in one process,
SGD step included) and prints each variant's median step time as a ratio to backprop's::

    python -m ffkit bench-step --out chapters/results/bench_step.json
    python -m ffkit bench-step --shapes 784,1024,1024,10 --batches 64 --rounds 30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ffkit import results
from ffkit.experiments import step as exp

DEFAULT_SHAPES = "784,1024,1024,10;784,2048,2048,10;784,1024,1024,1024,1024,10"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffkit bench-step", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="MLP layer sizes, ';' between MLPs")
    parser.add_argument("--batches", default="64,256", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (one step of every variant each)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-naive", action="store_true", help="leave out the straightforward torch.func/forward_ad steps")
    parser.add_argument("--out", type=Path, default=None, help="also write the results envelope here")
    args = parser.parse_args(argv)
    try:
        shapes = [[int(s) for s in shape.split(",")] for shape in args.shapes.split(";") if shape.strip()]
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        parser.error("--shapes and --batches must be integers (',' within an MLP, ';' between MLPs)")
    if not shapes or any(len(s) < 2 or min(s) < 1 for s in shapes) or not batches or min(batches) < 1:
        parser.error("need MLPs of at least two positive sizes and positive batch sizes")
    if args.rounds < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("need --rounds >= 1, --warmup >= 0 and --threads >= 1")
    torch.set_num_threads(args.threads)
    records = exp.grid(shapes, batches, rounds=args.rounds, warmup=args.warmup, seed=args.seed,
                       naive=not args.no_naive, report_line=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"one SGD step, x backprop (median over {args.rounds} interleaved rounds of the paired ratio), "
          f"{args.threads} threads, torch {torch.__version__}")
    print(exp.report(records))
    if args.out is not None:
        settings = {"shapes": shapes, "batches": batches, "rounds": args.rounds, "warmup": args.warmup,
                    "threads": args.threads, "seed": args.seed, "optimizer": "SGD", "directions": 1}
        path = results.write(args.out, results.envelope(results.command_line(argv, name="bench-step"), settings,
                                                         {"grid": records}))
        print(f"wrote {path}")
    return 0
