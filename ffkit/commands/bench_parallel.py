"""Per-layer step timings for the timeline figures, and K tangents batched with vmap versus a loop.

On a machine shared with other work the fastest runs estimate the cost of the work itself: the
per-layer timings are those of the quietest of ``--repeats`` layer-by-layer steps (smallest
total), the other times the fastest runs; the medians are stored next to them in the JSON."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from ffkit.profile import StepRunner, directional_derivatives, layer_timings, problem, schedule


def _min_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _paired_times(a, b, repeats: int, min_seconds: float = 3.0) -> tuple[list[float], list[float]]:
    """Seconds of ``a()`` and of ``b()``, timed alternately so that both see the same load, over at
    least ``repeats`` runs each and at least ``min_seconds`` in all (so that a burst of other work on
    the machine cannot cover every run)."""
    a(), b()  # warm-up
    ta: list[float] = []
    tb: list[float] = []
    begin = time.perf_counter()
    while len(ta) < repeats or time.perf_counter() - begin < min_seconds:
        for fn, times in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return ta, tb


def _layers_part(width: int, depth: int, batch: int, microbatches: int, repeats: int) -> dict[str, object]:
    """Each repeat times the step layer by layer (full batch and one micro-batch) and then whole
    steps, so that all of them see the same load; the per-layer timings kept are those of the
    quietest repeat (smallest total), the whole-step times the fastest."""
    model, x, y = problem(width, depth, batch)
    m = batch // microbatches
    runners = {meth: StepRunner(meth, *problem(width, depth, batch)) for meth in ("inference", "backprop", "lean forward gradient")}
    runs: dict[str, list[dict[str, list[float]]]] = {"full_batch": [], "microbatch": []}
    whole: dict[str, list[float]] = {meth: [] for meth in runners}
    for r in range(repeats + 1):  # the first repeat warms up and is dropped
        full = layer_timings(model, x, lambda o: nn.functional.cross_entropy(o, y), repeats=1, seed=r)
        micro = layer_timings(model, x[:m], lambda o: nn.functional.cross_entropy(o, y[:m]), repeats=1, seed=r)
        seconds = {meth: _min_seconds(runner.step, 1) for meth, runner in runners.items()}
        if r:
            runs["full_batch"].append(full)
            runs["microbatch"].append(micro)
            for meth, t in seconds.items():
                whole[meth].append(t)
    out: dict[str, object] = {}
    for key, samples in runs.items():
        out[key] = min(samples, key=lambda run: sum(sum(v) for v in run.values()))
        out[key + "_median"] = {
            piece: [statistics.median(run[piece][i] for run in samples) for i in range(depth)] for piece in samples[0]
        }
    out["whole_step_seconds"] = {meth: min(ts) for meth, ts in whole.items()}
    return out


def _directions_part(width: int, depth: int, batch: int, ks: list[int], repeats: int, draws: int) -> dict[str, object]:
    model, x, y = problem(width, depth, batch)
    params = {n: p.detach() for n, p in model.named_parameters()}
    n = sum(p.numel() for p in params.values())

    def f(ps: dict[str, Tensor]) -> Tensor:
        return nn.functional.cross_entropy(torch.func.functional_call(model, ps, (x,)), y)

    grads = torch.autograd.grad(f(dict(model.named_parameters())), list(model.parameters()))
    grad = torch.cat([g.flatten() for g in grads])
    gen = torch.Generator().manual_seed(0)
    rows = []
    for k in ks:
        tangents = {name: torch.randn((k, *p.shape), generator=gen) for name, p in params.items()}
        loop_times, vmap_times = _paired_times(
            lambda: directional_derivatives(f, params, tangents, batched=False),
            lambda: directional_derivatives(f, params, tangents, batched=True),
            repeats,
        )
        loop, vmap = min(loop_times), min(vmap_times)
        # the total variance E‖g_K − ∇f‖² of the K-direction estimate, by Monte Carlo
        errors = []
        # ‖g_K − ∇f‖² has a relative spread of about √(2/K) per draw: more draws where K is small
        draws_k = max(draws, -(-400 // k))
        for _ in range(draws_k):
            v = {name: torch.randn((k, *p.shape), generator=gen) for name, p in params.items()}
            dots = directional_derivatives(f, params, v, batched=True)
            est = torch.cat([(dots.view(-1, *[1] * (t.dim() - 1)) * t).mean(0).flatten() for t in v.values()])
            errors.append(float(((est - grad) ** 2).sum()))
        rows.append(
            {
                "K": k,
                "loop_seconds": loop,
                "vmap_seconds": vmap,
                "loop_seconds_median": statistics.median(loop_times),
                "vmap_seconds_median": statistics.median(vmap_times),
                "variance": statistics.fmean(errors),
                "variance_sem": statistics.stdev(errors) / len(errors) ** 0.5,
                "draws": draws_k,
                "variance_theory": (n + 1) * float(grad @ grad) / k,
            }
        )
        print(f"  K={k:<3} loop {loop * 1e3:8.1f} ms  vmap {vmap * 1e3:8.1f} ms  speed-up {loop / vmap:5.2f}", flush=True)
    return {"width": width, "depth": depth, "batch": batch, "n": n, "draws": draws, "grad_norm_sq": float(grad @ grad), "rows": rows}


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
    parser.add_argument("--only", choices=("layers", "directions"), default=None,
                        help="run one part and update that part of an existing --output file")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    ks = [int(k) for k in args.ks.split(",")]

    layers_part = None
    if args.only != "directions":
        print(f"per-layer timings: MLP width {args.width}, depth {args.depth}, batch {args.batch} "
              f"(and micro-batches of {args.batch // args.microbatches}), "
              f"quietest of {args.repeats} runs (medians in the JSON)")
        layers_part = _layers_part(args.width, args.depth, args.batch, args.microbatches, args.repeats)
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
    directions_part = None
    if args.only != "layers":
        print("\nK directions at once: torch.func.vmap over the JVP versus a Python loop (MLP width 256, depth 3, batch 64)")
        torch.set_num_threads(args.directions_threads)
        directions_part = _directions_part(256, 3, 64, ks, args.repeats, args.draws)
        torch.set_num_threads(2)

    result = {
        "command": "python -m ffkit bench-parallel " + " ".join(argv),
        "config": {**{k: v for k, v in vars(args).items() if k != "output"}, "ks": ks},
        "machine": {"torch": torch.__version__, "platform": platform.platform(), "threads": 2},
        "layers": layers_part,
        "directions": directions_part,
    }
    if args.only is not None and args.output is not None and args.output.exists():
        previous = json.loads(args.output.read_text())
        result["layers"] = result["layers"] or previous.get("layers")
        result["directions"] = result["directions"] or previous.get("directions")
        result["config"] = {**previous.get("config", {}), **result["config"]}
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {args.output}", file=sys.stderr)
    return 0
