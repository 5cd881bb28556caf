"""Peak memory and time of one training step (inference, backprop, checkpointing, forward gradients)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from ffkit import results
from ffkit.profile import METHODS, StepProfile, measure_step

MiB = 2**20


def _table(rows: list[StepProfile], timed: list[StepProfile]) -> str:
    base = next(r for r in rows if r.method == "inference")
    seconds = {r.method: r.seconds for r in timed}
    lines = [
        f"{'method':<22} {'saved MiB':>9} {'working MiB':>11} {'footprint MiB':>13} "
        f"{'x inference':>11} {'working x':>9} {'step s':>7} {'time x':>6}"
    ]
    for r in rows:
        lines.append(
            f"{r.method:<22} {r.saved_bytes / MiB:>9.1f} {r.working_bytes / MiB:>11.1f} "
            f"{r.footprint_bytes / MiB:>13.1f} {r.footprint_bytes / base.footprint_bytes:>11.2f} "
            f"{r.working_bytes / base.working_bytes:>9.1f} {seconds[r.method]:>7.2f} "
            f"{seconds[r.method] / seconds['inference']:>6.2f}"
        )
    return "\n".join(lines)


def _sweep(name: str, values: list[int], fixed: dict[str, int], repeats: int, methods: list[str]) -> list[dict[str, object]]:
    rows = []
    for value in values:
        for method in methods:
            sizes = {**fixed, name: value}
            profile = measure_step(method, width=sizes["width"], depth=sizes["depth"], batch=sizes["batch"], repeats=repeats)
            rows.append(asdict(profile))
            print(f"  {name}={value:<5} {method:<22} working {profile.working_bytes / MiB:8.1f} MiB", flush=True)
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffkit bench-memory", description=__doc__)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per method (median)")
    parser.add_argument("--sweep", action="store_true", help="also measure memory versus depth and versus batch")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of: " + ", ".join(METHODS) + " (inference is always measured)")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    methods = ["inference"] + [m for m in METHODS if m in chosen and m != "inference"]

    print(f"MLP width {args.width}, depth {args.depth}, batch {args.batch}, float32, {torch.get_num_threads()} threads")
    print("each step measured in a fresh process; peak resident memory above the process baseline;")
    print("memory with freed memory returned to the system, time (median) with glibc's default allocator\n")
    reference = [measure_step(m, width=args.width, depth=args.depth, batch=args.batch, repeats=0) for m in methods]
    default = [
        measure_step(m, width=args.width, depth=args.depth, batch=args.batch, repeats=args.repeats, allocator="default")
        for m in methods
    ]
    print(_table(reference, default))
    base = reference[0]
    ratios = {r.method: r.footprint_bytes / base.footprint_bytes for r in reference}
    print("\nfootprint as a multiple of inference's: " + ", ".join(f"{m} {r:.2f}x" for m, r in ratios.items() if m != "inference"))
    print("\nfootprint with glibc's default (caching) allocator policy:")
    for r in default:
        print(f"  {r.method:<22} footprint {r.footprint_bytes / MiB:8.1f} MiB = {r.footprint_bytes / default[0].footprint_bytes:.2f}x inference")

    settings = {"width": args.width, "depth": args.depth, "batch": args.batch, "repeats": args.repeats, "dtype": "float32",
                "methods": methods}
    result: dict[str, object] = {
        "reference": [asdict(r) for r in reference],
        "reference_default_allocator": [asdict(r) for r in default],
    }
    if args.sweep:
        print("\nmemory versus depth (width 512, batch 256):")
        result["depth_sweep"] = _sweep("depth", [1, 2, 4, 8, 16, 32, 64], {"width": 512, "batch": 256}, repeats=0, methods=methods)
        print("\nmemory versus batch (width 512, depth 16):")
        result["batch_sweep"] = _sweep("batch", [16, 64, 256, 1024, 4096], {"width": 512, "depth": 16}, repeats=0, methods=methods)
    if args.output is not None:
        path = results.write(args.output, results.envelope(results.command_line(argv, name="bench-memory"), settings, result))
        print(f"\nwrote {path}", file=sys.stderr)
    return 0
