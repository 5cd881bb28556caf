"""Benchmark: bytes communicated per step, shared-seed forward gradient vs all-reduced gradient.

Starts W worker processes on this machine (``torch.distributed``, gloo, 127.0.0.1; W = 2 and 4 by
default) through :func:`ffkit.experiments.comm.measure`, prints the bytes against the predictions
4K and 4n (float32) and the median step times, and writes ``chapters/results/bench_comm.json``
(the record schema is in :mod:`ffkit.experiments.comm`)::

    python -m ffkit bench-comm
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from ffkit import results
from ffkit.experiments import comm as exp

DEFAULT_OUT = Path("chapters/results/bench_comm.json")


def _table(records: list[dict[str, Any]]) -> str:
    head = (
        f"{'W':>2} {'width':>6} {'n':>9} {'bytes FG':>9} {'4K':>5} {'bytes DP':>10} {'4n':>10} "
        f"{'DP/FG':>8} {'step FG ms':>10} {'step DP ms':>10} {'FG/DP time':>10} {'comm FG ms':>10} {'comm DP ms':>10} "
        f"{'alone FG ms':>11} {'alone DP ms':>11}"
    )
    lines = [head]
    for r in records:
        fg, dp = r["shared_seed"], r["all_reduce"]
        lines.append(
            f"{r['world_size']:>2} {r['width']:>6} {r['n']:>9} {fg['bytes_per_step']:>9} {fg['predicted_bytes']:>5} "
            f"{dp['bytes_per_step']:>10} {dp['predicted_bytes']:>10} {r['bytes_ratio']:>8.0f} "
            f"{1e3 * fg['step_seconds']:>10.2f} {1e3 * dp['step_seconds']:>10.2f} {r['time_ratio']:>10.2f} "
            f"{1e3 * fg['comm_seconds']:>10.3f} {1e3 * dp['comm_seconds']:>10.3f} "
            f"{1e3 * fg['isolated_comm_seconds']:>11.3f} {1e3 * dp['isolated_comm_seconds']:>11.3f}"
        )
    return "\n".join(lines)


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffkit bench-comm", description=__doc__.splitlines()[0])
    parser.add_argument("--world-sizes", type=_positive_ints, default=[2, 4], help="comma-separated (default 2,4)")
    parser.add_argument("--widths", type=_positive_ints, default=[16, 64, 256, 1024], help="MLP hidden widths")
    parser.add_argument("--directions", type=int, default=4, help="K, tangents per step (default 4)")
    parser.add_argument("--k-sweep", type=_positive_ints, default=[1, 4, 16, 64], help="K values at --k-sweep-width")
    parser.add_argument("--k-sweep-width", type=int, default=256)
    parser.add_argument("--sampler", choices=("gaussian", "rademacher"), default="gaussian", help="tangent distribution")
    parser.add_argument("--batch", type=int, default=32, help="examples per worker per step")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per scheme")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--equivalence-steps", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per launch")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON path, or - for stdout only")
    args = parser.parse_args(argv)
    for name in ("directions", "k_sweep_width", "batch", "rounds", "steps", "equivalence_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")

    start = time.perf_counter()
    config = {
        "batch": args.batch, "directions": args.directions, "widths": args.widths, "rounds": args.rounds,
        "steps": args.steps, "k_sweep": args.k_sweep, "k_sweep_width": args.k_sweep_width,
        "equivalence_steps": args.equivalence_steps, "sampler": args.sampler,
    }
    measured = exp.measure(args.world_sizes, config, timeout=args.timeout)
    sizes, k_sweep, equivalence = measured["sizes"], measured["k_sweep"], measured["equivalence"]
    seconds = time.perf_counter() - start

    print("bytes handed to all_reduce per step and worker (float32), median step times;")
    print("FG = shared-seed forward gradient (K scalars), DP = all-reduced backprop gradient (n numbers);")
    print("comm = time inside all_reduce while training (includes waiting for the slowest worker),")
    print("alone = the same all_reduce timed right after a barrier")
    print(_table(sizes))
    for r in sizes:
        for scheme in ("shared_seed", "all_reduce"):
            if r[scheme]["bytes_per_step"] != r[scheme]["predicted_bytes"]:
                print(f"WARNING: {scheme} at width {r['width']} sent {r[scheme]['bytes_per_step']} bytes, "
                      f"predicted {r[scheme]['predicted_bytes']}")
    print("\nshared-seed step, median seconds per phase (sample K tangents | K JVPs | all_reduce | form g):")
    for r in sizes:
        ph, fg = r["shared_seed"]["phase_seconds"], r["shared_seed"]
        print(f"  W={r['world_size']} width {r['width']:>5}: sample {1e3 * ph['sample']:8.2f} ms | jvp {1e3 * ph['jvp']:8.2f} ms"
              f" | comm {1e3 * fg['comm_seconds']:7.3f} ms | update {1e3 * ph['update']:7.2f} ms")
    if k_sweep:
        print(f"\nK sweep (shared seed, W={k_sweep[0]['world_size']}, width {k_sweep[0]['width']}, n={k_sweep[0]['n']}):")
        for r in k_sweep:
            s = r["shared_seed"]
            print(f"  K={r['directions']:>3}: {s['bytes_per_step']:>5} bytes (4K={s['predicted_bytes']}), "
                  f"step {1e3 * s['step_seconds']:.2f} ms, comm {1e3 * s['comm_seconds']:.3f} ms")
    print("\nshared-seed run vs 1-process run on the same global batches (float32 SGD):")
    for e in equivalence:
        print(f"  W={e['world_size']}: {e['steps']} steps, max |θ_W − θ_1| = {e['max_abs_diff_vs_one_process']:.2e} "
              f"(max |θ| = {e['max_abs_param']:.2f}), max difference between workers = {e['max_abs_diff_between_workers']:.1e}")
    print(f"\ntotal {seconds:.1f} s")

    settings = {
        "widths": args.widths,
        "world_sizes": args.world_sizes,
        "directions": args.directions,
        "batch_per_worker": args.batch,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "k_sweep": args.k_sweep,
        "k_sweep_width": args.k_sweep_width,
        "sampler": args.sampler,
        "dtype": "float32",
        "backend": "gloo",
        "threads_per_worker": 1,
        "equivalence_steps": args.equivalence_steps,
    }
    env = dict(results.environment(), cpus=os.cpu_count())
    data = results.envelope(results.command_line(argv, name="bench-comm"), settings,
                            {**measured, "seconds": seconds}, env=env)
    if args.out != "-":
        print(f"wrote {results.write(args.out, data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
