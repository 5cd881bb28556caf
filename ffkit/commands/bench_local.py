"""Step costs of chapter 6: rank-one and full weight tangents on MLPs, Ren et al.'s six algorithms on LocalMixers.

Every variant of a model and batch is timed round-robin in one process
(``ffkit.bench.interleaved``) and reported as a ratio to backprop (MLPs) or to LG-BP and BP
(LocalMixers), by median and by minimum over the rounds; the minimum is the better estimate of
the work itself on a shared machine. Writes ``chapters/results/bench_local.json``::

    python -m ffkit bench-local                          # the full grid, about 20 minutes
    python -m ffkit bench-local --part mlp --rounds 30   # only the MLP grid
    python -m ffkit bench-local --part estimators        # the chapter's estimator table (M/1/16)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ffkit import results
from ffkit.bench import ratio_table
from ffkit.experiments.step_costs import MIXER_GRID, MLP_GRID, mixer_variants, mlp_variants, ratios, time_steps

DEFAULT_OUT = Path("chapters/results/bench_local.json")
PARTS = ("mlp", "mixer", "estimators")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffkit bench-local", description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="all", help=f"comma-separated subset of {', '.join(PARTS)} (or all)")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds per grid point")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=0.2,
                        help="each timing sample averages back-to-back steps over at least this long")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    parts = list(PARTS) if args.part == "all" else [p.strip() for p in args.part.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)} (or all)")
    if args.rounds < 1 or args.warmup < 0 or args.threads < 1 or not args.min_seconds >= 0:
        parser.error("--rounds and --threads must be >= 1, --warmup and --min-seconds >= 0")
    torch.set_num_threads(args.threads)

    stored = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {"results": {}}
    out: dict[str, list[dict]] = {k: v for k, v in stored.get("results", {}).items() if k in PARTS}
    grid: list[tuple[str, dict]] = []
    if "mlp" in parts:
        out["mlp"] = []
        grid += [("mlp", {"sizes": list(s), "batch": b}) for s, b in MLP_GRID]
    if "mixer" in parts:
        out["mixer"] = []
        grid += [("mixer", {"arch": a, "batch": b}) for a, b in MIXER_GRID]
    if "estimators" in parts:
        out["estimators"] = []
        grid += [("estimators", {"arch": "M/1/16", "batch": 64})]
    for part, point in grid:
        if part == "mlp":
            variants = mlp_variants(point["sizes"], point["batch"], seed=args.seed)
            baselines = ["backprop"]
            label = f"MLP {'-'.join(map(str, point['sizes']))}, batch {point['batch']}"
        else:
            variants = mixer_variants(point["arch"], point["batch"], seed=args.seed, estimators=part == "estimators")
            baselines = ["LG-BP", "BP"]
            label = f"LocalMixer {point['arch']}, batch {point['batch']}"
        print(f"{label} ({len(variants)} variants, {args.rounds} rounds)", file=sys.stderr, flush=True)
        timings = time_steps(variants, rounds=args.rounds, warmup=args.warmup, min_seconds=args.min_seconds)
        print(label)
        print(ratio_table(timings, baselines[0], statistic="minimum"))
        print()
        out[part].append({
            **point,
            "timings": {name: t.as_dict() for name, t in timings.items()},
            "ratios": {b: ratios(timings, b) for b in baselines},
        })
    settings = {"rounds": args.rounds, "warmup": args.warmup, "min_seconds": args.min_seconds,
                "threads": args.threads, "seed": args.seed,
                "mlp_grid": [[list(s), b] for s, b in MLP_GRID], "mixer_grid": [list(p) for p in MIXER_GRID]}
    envelope = results.envelope(command=results.command_line(argv, name="bench-local"), settings=settings, results=out)
    results.write(args.out, envelope)
    print(f"wrote {args.out}")
    return 0
