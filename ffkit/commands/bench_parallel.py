"""Per-layer step timings for the timeline figures, and K tangents batched with vmap versus a loop.

Runs :mod:`ffkit.experiments.parallel` and writes the JSON that chapter 4 loads::

    python -m ffkit bench-parallel --output chapters/results/bench_parallel.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ffkit import results
from ffkit.experiments import parallel as exp
from ffkit.pipeline import schedule


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffkit bench-parallel", description=__doc__)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--ks", default="1,2,4,8,16,32,64", help="numbers of directions K")
    parser.add_argument("--draws", type=int, default=40, help="least Monte Carlo draws per K for the variance (400/K if more)")
    parser.add_argument("--directions-threads", type=int, default=1,
                        help="torch threads for the directions benchmark (1: immune to waiting on a busy second core)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the per-layer timings")
    parser.add_argument("--only", choices=("layers", "directions"), default=None,
                        help="run one part and update that part of an existing --output file")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be >= 1")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]

    layers_part = None
    if args.only != "directions":
        print(f"per-layer timings: MLP width {args.width}, depth {args.depth}, batch {args.batch} "
              f"(and micro-batches of {args.batch // args.microbatches}), "
              f"medians of {args.repeats} runs (quartiles in the JSON), Rademacher tangents")
        layers_part = exp.layer_profile(args.width, args.depth, args.batch, args.microbatches, args.repeats)
        full = layers_part["full_batch"]
        print(f"{'layer':>5} " + " ".join(f"{k:>20}" for k in full))
        for i in range(args.depth):
            print(f"{i + 1:>5} " + " ".join(f"{full[k][i] * 1e3:>17.2f} ms" for k in full))
        bp = schedule("backprop", full["forward"], full["backward"], full["update"])
        fg = schedule("forward gradient", full["forward+tangent"], None, full["update (regenerated)"])
        end = lambda tasks: max(t.start + t.duration for t in tasks)  # noqa: E731
        whole = layers_part["whole_step_seconds"]
        print(f"one worker: backprop step {end(bp) * 1e3:.1f} ms (measured whole step {whole['backprop'] * 1e3:.1f} ms), "
              f"forward-gradient step {end(fg) * 1e3:.1f} ms (measured {whole['lean forward gradient'] * 1e3:.1f} ms)")
        micro = layers_part["microbatch"]
        kw = {"stages": args.workers, "workers": args.workers, "microbatches": args.microbatches}
        bp_p = schedule("backprop", micro["forward"], micro["backward"], micro["update"], **kw)
        fg_p = schedule("forward gradient", micro["forward+tangent"], None, micro["update (regenerated)"], **kw)
        print(f"pipeline of {args.workers} workers, {args.microbatches} micro-batches: backprop {end(bp_p) * 1e3:.1f} ms, "
              f"forward gradient {end(fg_p) * 1e3:.1f} ms")
        for sampler, ratio in layers_part["sweep_ratio"]["full_batch"].items():
            q1, med, q3 = ratio["quartiles"]
            print(f"forward-mode sweep / backprop's forward and backward sweeps, {sampler}: "
                  f"median {med:.2f} (quartiles {q1:.2f}-{q3:.2f})")
    directions_part = None
    if args.only != "layers":
        print("\nK directions at once: torch.func.vmap over the JVP versus a Python loop (MLP width 256, depth 3, batch 64)")
        torch.set_num_threads(args.directions_threads)
        directions_part = exp.directions_profile(256, 3, 64, ks, args.repeats, args.draws, report=print)
        torch.set_num_threads(args.threads)

    settings = {**{k: v for k, v in vars(args).items() if k != "output"}, "ks": ks}
    data = {"layers": layers_part, "directions": directions_part}
    if args.only is not None and args.output is not None and args.output.exists():
        previous = json.loads(args.output.read_text())
        data = {k: v or previous["results"].get(k) for k, v in data.items()}
        settings = {**previous.get("settings", {}), **settings}
    if args.output is not None:
        path = results.write(args.output, results.envelope(results.command_line(argv, name="bench-parallel"), settings, data))
        print(f"\nwrote {path}", file=sys.stderr)
    return 0
