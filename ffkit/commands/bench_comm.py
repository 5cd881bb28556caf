"""Benchmark: bytes communicated per step, shared-seed forward gradient vs all-reduced gradient.

Starts W worker processes on this machine (``torch.distributed``, gloo, 127.0.0.1; W = 2 and 4
by default) with :func:`ffkit.distributed.launch_local`. Every worker trains copies of an MLP
784 → w → w → 10 on synthetic batches (``--batch`` examples per worker; the global batch is
W × that) with two gradient functions side by side, in alternating rounds inside the same
processes:

* ``shared_seed``: :class:`ffkit.distributed.SharedSeedForwardGradient` (K directions, all-reduce
  of K scalars per step);
* ``all_reduce``: :class:`ffkit.distributed.AllReduceGradient` (backprop, all-reduce of the n
  gradient entries per step), the baseline of standard data parallelism.

It counts the bytes each worker hands to the collective calls and times every step, then prints
the bytes against the predictions 4K and 4n (float32) and the median step times as ratios to the
baseline. It also checks that a W-worker shared-seed run ends at the parameters of the 1-process
run on the same global batches. Results go to ``chapters/results/bench_comm.json``.

JSON schema (all times in seconds, medians over the timed steps of every round; bytes per step
and per worker, i.e. the payload one worker passes to ``all_reduce``):

``config``
    the arguments: ``widths``, ``world_sizes``, ``directions`` (K), ``batch_per_worker``,
    ``rounds``, ``steps_per_round``, ``k_sweep`` (list of K), ``k_sweep_width``, ``sampler``
    (tangent distribution), ``dtype``
    ("float32"), ``backend`` ("gloo"), ``threads_per_worker``, ``equivalence_steps``.
``machine``
    ``cpus`` (``os.cpu_count()``), ``torch`` (version), ``platform``.
``sizes``
    one record per (world size, width): ``world_size``, ``width``, ``n`` (parameters),
    ``directions`` (K), and for each scheme, under ``"shared_seed"`` and ``"all_reduce"``:
    ``bytes_per_step`` (measured), ``predicted_bytes`` (4K resp. 4n), ``calls_per_step``,
    ``step_seconds`` (median wall time of one training step: gradient, communication and
    optimizer step), ``comm_seconds`` (median time inside the collective calls during training,
    waiting for the slowest worker included), ``compute_seconds`` (``step_seconds -
    comm_seconds``), ``isolated_comm_seconds`` (median time of the same all-reduce alone, each
    call started right after a barrier: the cost of moving the payload itself). ``shared_seed``
    also has ``phase_seconds``: medians of its local phases per step, ``sample`` (drawing the K
    tangents, K·n random numbers), ``jvp`` (the K forward-mode passes) and ``update`` (forming
    g). Also
    ``bytes_ratio`` (all_reduce / shared_seed bytes) and ``time_ratio`` (shared_seed /
    all_reduce step time).
``k_sweep``
    for the smallest world size and width ``k_sweep_width``: records like ``sizes`` but only
    ``"shared_seed"``, one per K in ``config.k_sweep`` (the bytes grow as 4K, the step time
    roughly as K forward-mode passes).
``equivalence``
    per world size: ``world_size``, ``steps``, ``max_abs_diff_vs_one_process`` (largest
    |θ_W − θ_1| over all parameters after ``steps`` shared-seed SGD steps, float32),
    ``max_abs_diff_between_workers`` (0.0: the replicas stay bit-identical), ``max_abs_param``.
``seconds``
    the benchmark's total wall time.

To plot communication against model size in a notebook::

    import json, ffkit.distributed
    result = json.load(open("results/bench_comm.json"))
    ffkit.distributed.plot_communication(result, world_size=2)

or, by hand, with :func:`ffkit.plot.compare_curves` over ``(n, bytes_per_step)`` of each scheme
from ``result["sizes"]`` (log-log axes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ffkit.distributed import (
    AllReduceGradient,
    CommStats,
    SharedSeedForwardGradient,
    all_reduce_mean,
    launch_local,
    shard,
)
from ffkit.models import count_parameters, mlp

IN_FEATURES = 784
CLASSES = 10
DEFAULT_OUT = Path("chapters/results/bench_comm.json")


def _global_batch(step: int, size: int, seed: int = 1234) -> tuple[Tensor, Tensor]:
    """The synthetic global batch of ``step``: the same on every worker (each then takes its shard)."""
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    x = torch.randn(size, IN_FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (size,), generator=g)
    return x, y


class _Trainer:
    """One model, one optimizer, one gradient function; ``step()`` is one timed training step."""

    def __init__(self, width: int, grad_fn: Any, batch: int, world_size: int, rank: int) -> None:
        self.model = mlp([IN_FEATURES, width, width, CLASSES], generator_seed=0)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.grad_fn = grad_fn
        self.batch, self.world_size, self.rank = batch, world_size, rank
        self.t = 0
        self.parts: dict[str, list[float]] = {}  # per-step seconds of the gradient function's phases

    def step(self) -> tuple[float, float, tuple[int, int]]:
        """Returns (step seconds, seconds inside collectives, (bytes, calls) of the collectives)."""
        x, y = _global_batch(self.t, self.batch * self.world_size)
        xb, yb = shard(x, y, self.rank, self.world_size)
        stats: CommStats = self.grad_fn.stats
        before_s, before_b, before_c = stats.seconds, stats.bytes, stats.calls
        parts = dict(getattr(self.grad_fn, "seconds", {}))
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        self.grad_fn(self.model, lambda: nn.functional.cross_entropy(self.model(xb), yb))
        self.opt.step()
        elapsed = time.perf_counter() - start
        self.t += 1
        for key, value in getattr(self.grad_fn, "seconds", {}).items():
            self.parts.setdefault(key, []).append(value - parts[key])
        return elapsed, stats.seconds - before_s, (stats.bytes - before_b, stats.calls - before_c)


def _summary(times: list[float], comms: list[float], counts: list[tuple[int, int]], predicted: int) -> dict[str, Any]:
    bytes_per_step = {b for b, _ in counts}
    calls_per_step = {c for _, c in counts}
    if len(bytes_per_step) != 1 or len(calls_per_step) != 1:
        raise RuntimeError(f"bytes per step varied between steps: {sorted(bytes_per_step)}")
    step_s, comm_s = statistics.median(times), statistics.median(comms)
    return {
        "bytes_per_step": bytes_per_step.pop(),
        "predicted_bytes": predicted,
        "calls_per_step": calls_per_step.pop(),
        "step_seconds": step_s,
        "comm_seconds": comm_s,
        "compute_seconds": step_s - comm_s,
    }


def _measure(trainers: dict[str, _Trainer], rounds: int, steps: int) -> dict[str, tuple[list, list, list]]:
    """Alternate the trainers round by round (one warm-up step each first), collecting per-step data."""
    data: dict[str, tuple[list, list, list]] = {name: ([], [], []) for name in trainers}
    for tr in trainers.values():
        tr.step()  # warm-up: first-call overheads, connection set-up
        tr.parts.clear()
    for _ in range(rounds):
        for name, tr in trainers.items():
            for _ in range(steps):
                t, c, b = tr.step()
                data[name][0].append(t)
                data[name][1].append(c)
                data[name][2].append(b)
    return data


def _time_collective(numel: int, reps: int) -> float:
    """Median seconds of one :func:`all_reduce_mean` of ``numel`` float32 numbers, each call
    started right after a barrier, so that it measures the transfer rather than waiting for a
    slower worker."""
    import torch.distributed as dist

    buffer = torch.ones(numel)
    times = []
    for rep in range(reps + 1):
        dist.barrier()
        start = time.perf_counter()
        all_reduce_mean(buffer)
        if rep:  # the first call is a warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _worker(config: dict[str, Any]) -> dict[str, Any]:
    """What each process runs (module level so that ``spawn`` can find it)."""
    import torch.distributed as dist

    torch.manual_seed(0)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    batch, k = config["batch"], config["directions"]
    rounds, steps = config["rounds"], config["steps"]
    sizes = []
    for width in config["widths"]:
        trainers = {
            "shared_seed": _Trainer(width, SharedSeedForwardGradient(k, seed=11, sampler=config["sampler"]), batch, world_size, rank),
            "all_reduce": _Trainer(width, AllReduceGradient(), batch, world_size, rank),
        }
        n = count_parameters(trainers["all_reduce"].model)
        data = _measure(trainers, rounds, steps)
        record = {
            "world_size": world_size,
            "width": width,
            "n": n,
            "directions": k,
            "shared_seed": _summary(*data["shared_seed"], predicted=4 * k),
            "all_reduce": _summary(*data["all_reduce"], predicted=4 * n),
        }
        record["shared_seed"]["phase_seconds"] = {
            key: statistics.median(v) for key, v in trainers["shared_seed"].parts.items()
        }
        record["shared_seed"]["isolated_comm_seconds"] = _time_collective(k, rounds * steps)
        record["all_reduce"]["isolated_comm_seconds"] = _time_collective(n, rounds * steps)
        sizes.append(record)
    k_sweep = []
    if config["k_sweep"]:
        width = config["k_sweep_width"]
        for kk in config["k_sweep"]:
            tr = _Trainer(width, SharedSeedForwardGradient(kk, seed=11, sampler=config["sampler"]), batch, world_size, rank)
            data = _measure({"shared_seed": tr}, rounds, steps)
            summary = _summary(*data["shared_seed"], predicted=4 * kk)
            summary["phase_seconds"] = {key: statistics.median(v) for key, v in tr.parts.items()}
            k_sweep.append(
                {
                    "world_size": world_size,
                    "width": width,
                    "n": count_parameters(tr.model),
                    "directions": kk,
                    "shared_seed": summary,
                }
            )
    final = _equivalence_run(config["equivalence_steps"], batch, world_size, rank)
    return {"sizes": sizes, "k_sweep": k_sweep, "final_params": final}


def _equivalence_run(steps: int, batch: int, world_size: int, rank: int) -> Tensor:
    """Shared-seed SGD on a small MLP for ``steps`` steps; the flat parameter vector at the end."""
    tr = _Trainer(32, SharedSeedForwardGradient(4, seed=5), batch, world_size, rank)
    tr.opt = torch.optim.SGD(tr.model.parameters(), lr=0.05)
    for _ in range(steps):
        tr.step()
    return nn.utils.parameters_to_vector(tr.model.parameters()).detach().clone()


def _reference(steps: int, batch: int, world_size: int) -> Tensor:
    """The same run in this process, as one worker on the same global batches."""
    return _equivalence_run(steps, batch * world_size, 1, 0)


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
    sizes: list[dict[str, Any]] = []
    k_sweep: list[dict[str, Any]] = []
    equivalence: list[dict[str, Any]] = []
    for w in args.world_sizes:
        config = {
            "batch": args.batch,
            "directions": args.directions,
            "widths": args.widths,
            "rounds": args.rounds,
            "steps": args.steps,
            "k_sweep": args.k_sweep if w == min(args.world_sizes) else [],
            "k_sweep_width": args.k_sweep_width,
            "equivalence_steps": args.equivalence_steps,
            "sampler": args.sampler,
        }
        results = launch_local(_worker, w, (config,), timeout=args.timeout, collective_timeout=120.0)
        lead = results[0]  # rank 0 reports; the bytes are the same on every rank
        for r in lead["sizes"]:
            r["bytes_ratio"] = r["all_reduce"]["bytes_per_step"] / r["shared_seed"]["bytes_per_step"]
            r["time_ratio"] = r["shared_seed"]["step_seconds"] / r["all_reduce"]["step_seconds"]
        sizes.extend(lead["sizes"])
        k_sweep.extend(lead["k_sweep"])
        finals = [res["final_params"] for res in results]
        ref = _reference(args.equivalence_steps, args.batch, w)
        equivalence.append(
            {
                "world_size": w,
                "steps": args.equivalence_steps,
                "max_abs_diff_vs_one_process": float((finals[0] - ref).abs().max()),
                "max_abs_diff_between_workers": max(float((f - finals[0]).abs().max()) for f in finals),
                "max_abs_param": float(ref.abs().max()),
            }
        )
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

    result = {
        "command": " ".join(["python -m ffkit bench-comm", *argv]),
        "config": {
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
        },
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform(terse=True)},
        "sizes": sizes,
        "k_sweep": k_sweep,
        "equivalence": equivalence,
        "seconds": seconds,
    }
    if args.out != "-":
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
