"""Train LocalMixers (S/1/1, M/1/16) on MNIST with BP, LG-BP, FG-W, FG-A, LG-FG-W, LG-FG-A (Ren et al. 2023).

Every (architecture, algorithm, seed) run trains with Adam, a one-epoch warm-up and a cosine
decay, and appends its record (test error after every epoch, final training error, seconds per
epoch) to ``chapters/results/local_mnist.json``, merging with the runs already there (a run with
the same architecture, algorithm, dataset, epochs and seed is replaced). The file is rewritten
atomically after every run, so an interrupted experiment keeps what it finished. The learning
rate is ``--lr``, or with ``--tune`` the best of ``--lr-grid`` after ``--tune-epochs`` epochs on
a held-out part of the training set (the scores are stored too; ``--tune-only`` stores them
without training, ``--lr-from-tuning`` trains with the stored rates)::

    python -m ffkit local-mnist --arch M/1/16 --algorithm LG-FG-A --epochs 20 --seeds 0,1,2 --tune
    python -m ffkit local-mnist --arch S/1/1,M/1/16 --algorithm all --tune-only
    python -m ffkit local-mnist --arch S/1/1,M/1/16 --algorithm all --epochs 30 --seeds 0,1,2 --lr-from-tuning
    python -m ffkit local-mnist --arch M/1/16 --algorithm BP --epochs 1 --device cuda --out local_mnist_gpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from ffkit import results
from ffkit.experiments.local_mnist import ALGORITHMS, LOCAL_DATASETS, comparisons, merge_runs, summary, train_run, tune_lr
from ffkit.local_mixer import VARIANTS
from ffkit.methods import DivergenceError

DEFAULT_OUT = Path("chapters/results/local_mnist.json")
DEFAULT_GRID = "3e-4,1e-3,3e-3"


def _list(text: str, known: tuple[str, ...], what: str, parser: argparse.ArgumentParser) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items == ["all"]:
        return list(known)
    lookup = {k.upper(): k for k in known}
    unknown = [t for t in items if t.upper() not in lookup]
    if unknown or not items:
        parser.error(f"unknown {what} {', '.join(unknown) or repr(text)}; choose from {', '.join(known)} (or all)")
    return [lookup[t.upper()] for t in items]


def _numbers(text: str, kind: type, what: str, parser: argparse.ArgumentParser) -> list:
    try:
        values = [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        parser.error(f"{what} must be comma-separated numbers, got {text!r}")
    if not values:
        parser.error(f"{what} is empty")
    return values


def _load(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffkit local-mnist", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="M/1/16", help=f"comma-separated, from {', '.join(VARIANTS)} (or all)")
    parser.add_argument("--algorithm", default="LG-FG-A", help=f"comma-separated, from {', '.join(ALGORITHMS)} (or all)")
    parser.add_argument("--dataset", default="mnist", choices=LOCAL_DATASETS)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (initialisation, batch order, tangents)")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 1e-3, or tuned)")
    parser.add_argument("--tune", action="store_true", help="pick the rate of --lr-grid on held-out training data")
    parser.add_argument("--lr-grid", default=DEFAULT_GRID)
    parser.add_argument("--tune-epochs", type=int, default=2)
    parser.add_argument("--tune-only", action="store_true", help="tune (and store the scores) without the full runs")
    parser.add_argument("--lr-from-tuning", action="store_true",
                        help="use the rate tuned earlier (stored in --out by --tune or --tune-only)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--directions", type=int, default=1, help="K tangents per step (forward-gradient algorithms)")
    parser.add_argument("--sampler", default="rademacher", choices=("rademacher", "gaussian"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only (quick checks)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    archs = _list(args.arch, tuple(VARIANTS), "architecture", parser)
    algorithms = _list(args.algorithm, ALGORITHMS, "algorithm", parser)
    seeds = _numbers(args.seeds, int, "--seeds", parser)
    grid = _numbers(args.lr_grid, float, "--lr-grid", parser)
    if args.epochs < 1 or args.tune_epochs < 1 or args.batch < 1 or args.directions < 1 or args.threads < 1:
        parser.error("--epochs, --tune-epochs, --batch, --directions and --threads must be >= 1")
    if any(s < 0 for s in seeds) or any(not (math.isfinite(r) and r > 0) for r in grid):
        parser.error("seeds must be >= 0 and learning rates positive")
    if args.tune_only:
        args.tune = True
    if sum([args.lr is not None, args.tune, args.lr_from_tuning]) > 1:
        parser.error("give one of --lr, --tune (or --tune-only) and --lr-from-tuning")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    for arch in archs:
        cfg = VARIANTS[arch]
        if 28 % cfg.patches:
            parser.error(f"{arch}: {cfg.patches} patches per side do not divide the 28 × 28 images")
    torch.set_num_threads(args.threads)

    stored = _load(args.out)
    runs = list(stored.get("results", {}).get("runs", []))
    tuning = dict(stored.get("results", {}).get("tuning", {}))
    options = dict(batch_size=args.batch, directions=args.directions, sampler=args.sampler,
                   device=args.device, limit=args.limit)
    settings = {
        "dataset": args.dataset, "epochs": args.epochs, "batch": args.batch, "optimizer": "Adam",
        "schedule": "linear warm-up (1 epoch), cosine decay to 0", "directions": args.directions,
        "sampler": args.sampler, "lr": args.lr, "tune": args.tune, "lr_from_tuning": args.lr_from_tuning, "lr_grid": grid,
        "tune_epochs": args.tune_epochs, "tune_validation": 5000, "device": args.device,
        "threads": args.threads, "limit": args.limit,
    }
    command = results.command_line(argv, name="local-mnist")

    def save() -> None:
        envelope = results.envelope(
            command=command, settings=settings,
            results={"runs": runs, "summary": summary(runs), "tuning": tuning},
            env=results.environment(args.device), comparisons=comparisons(runs),
        )
        results.write(args.out, envelope)

    for arch in archs:
        for algorithm in algorithms:
            lr = args.lr if args.lr is not None else 1e-3
            key = f"{arch} {algorithm} {args.dataset}"
            if args.directions != 1:  # a rate tuned for one tangent per step is not one for K
                key += f" K={args.directions}"
            if args.lr_from_tuning:
                if key not in tuning:
                    print(f"ffkit local-mnist: no tuned learning rate for {key} in {args.out}; run with --tune-only first",
                          file=sys.stderr)
                    return 2
                lr = float(tuning[key]["lr"])
            if args.tune:
                start = time.perf_counter()
                try:
                    lr, scores = tune_lr(arch, algorithm, grid, epochs=args.tune_epochs, dataset=args.dataset, **options)
                except DivergenceError as err:
                    print(f"ffkit local-mnist: {arch} {algorithm}: {err}", file=sys.stderr)
                    return 1
                tuning[key] = {"command": command, "grid": grid, "epochs": args.tune_epochs,
                               "validation_error": [None if not math.isfinite(scores[r]) else scores[r] for r in grid],
                               "lr": lr, "seconds": round(time.perf_counter() - start, 1)}
                print(f"{arch:7s} {algorithm:8s} tuned lr {lr:g}: validation errors "
                      + ", ".join(f"{r:g}: {100 * scores[r]:.2f}%" for r in grid), flush=True)
                save()
            if args.tune_only:
                continue
            for seed in seeds:
                try:
                    run = train_run(arch, algorithm, dataset=args.dataset, epochs=args.epochs, lr=lr, seed=seed,
                                    show_progress=True, **options)
                except DivergenceError as err:
                    print(f"ffkit local-mnist: {arch} {algorithm} seed {seed} diverged: {err}", file=sys.stderr)
                    return 1
                run["command"] = command
                runs = merge_runs(runs, [run])
                save()
                print(f"{arch:7s} {algorithm:8s} seed {seed}: test error {100 * run['test_error']:.2f}% "
                      f"(train {100 * run['train_error']:.2f}%), {run['seconds_per_epoch']:.1f} s/epoch, lr {lr:g}",
                      flush=True)
    for row in summary(runs):
        if row["arch"] in archs and row["algorithm"] in algorithms and row["epochs"] == args.epochs:
            print(f"{row['arch']:7s} {row['algorithm']:8s} {row['dataset']}: {100 * row['test_error']:.2f}% "
                  f"± {100 * row['test_error_std']:.2f} over seeds {row['seeds']}")
    print(f"wrote {args.out}")
    return 0
