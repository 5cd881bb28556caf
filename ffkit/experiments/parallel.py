"""Per-layer step timings for the timeline figures, and K tangents batched with vmap against a loop.

:func:`layer_profile` reports medians over ``repeats`` layer-by-layer steps with their quartiles,
for Rademacher and Gaussian tangents, and the ratio of the forward-mode sweep to backprop's two
sweeps repeat by repeat; :func:`directions_profile` the fastest and the median of its rounds. The
command ``python -m ffkit bench-parallel`` runs both parts and writes
``chapters/results/bench_parallel.json`` for chapter 4.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ffkit import bench
from ffkit import tangents as tg
from ffkit.profile import StepRunner, directional_derivatives, layer_timings, problem
from ffkit.theory import variance_factor

__all__ = ["directions_profile", "layer_profile"]


def _quartiles(values: list[float]) -> list[float]:
    """Lower quartile, median and upper quartile of ``values``."""
    if len(values) < 2:
        return [values[0]] * 3
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], statistics.median(values), q[2]]


def layer_profile(
    width: int,
    depth: int,
    batch: int,
    microbatches: int,
    repeats: int,
    *,
    samplers: tuple[str, ...] = ("rademacher", "gaussian"),
) -> dict[str, object]:
    """Per-layer timings of a backprop and a lean forward-gradient step, for the timelines.

    Each repeat times the step layer by layer (:func:`ffkit.profile.layer_timings`, full batch and
    one micro-batch of ``batch // microbatches``) once per tangent distribution of ``samplers``,
    then whole steps, so that all of them see the same load. Reported per piece and layer: the
    median over repeats and the quartiles. ``sweep_ratio[key][sampler]`` holds, per repeat, the
    time of the forward-mode sweep with tangents (all layers) divided by the time of backprop's
    forward and backward sweeps measured in the same repeat, so that a ratio compares work done
    under the same load; its quartiles are stored next to the samples.

    Returns ``{"full_batch": {piece: [median per layer]}, "microbatch": ...}`` for the first
    sampler (also under ``"full_batch_median"``, ``"microbatch_median"``), ``"samplers":
    {sampler: {"full_batch": ..., "full_batch_quartiles": {piece: [[q1, median, q3] per
    layer]}, "microbatch": ..., "microbatch_quartiles": ...}}``, ``"sweep_ratio"``,
    ``"whole_step_seconds": {method: median}`` and ``"whole_step_quartiles"``.
    """
    model, x, y = problem(width, depth, batch)
    m = batch // microbatches
    runners = {meth: StepRunner(meth, *problem(width, depth, batch)) for meth in ("inference", "backprop", "lean forward gradient")}
    inputs = {"full_batch": (x, y), "microbatch": (x[:m], y[:m])}
    runs: dict[str, dict[str, list[dict[str, list[float]]]]] = {key: {s: [] for s in samplers} for key in inputs}
    whole: dict[str, list[float]] = {meth: [] for meth in runners}
    for r in range(repeats + 1):  # the first repeat warms up and is dropped
        for key, (xs, ys) in inputs.items():
            for sampler in samplers:
                timed = layer_timings(model, xs, lambda o, t=ys: nn.functional.cross_entropy(o, t), repeats=1,
                                      seed=r, sampler=sampler)
                if r:
                    runs[key][sampler].append(timed)
        seconds = {meth: t.minimum for meth, t in bench.interleaved(
            {meth: runner.step for meth, runner in runners.items()}, rounds=1, warmup=1).items()}
        if r:
            for meth, t in seconds.items():
                whole[meth].append(t)
    out: dict[str, object] = {}
    by_sampler: dict[str, dict[str, object]] = {s: {} for s in samplers}
    ratios: dict[str, dict[str, dict[str, object]]] = {}
    for key, per_sampler in runs.items():
        ratios[key] = {}
        for sampler, samples in per_sampler.items():
            pieces = samples[0]
            q = {piece: [_quartiles([run[piece][i] for run in samples]) for i in range(depth)] for piece in pieces}
            by_sampler[sampler][key + "_quartiles"] = q
            by_sampler[sampler][key] = {piece: [v[1] for v in q[piece]] for piece in pieces}
            per_repeat = [sum(run["forward+tangent"]) / (sum(run["forward"]) + sum(run["backward"])) for run in samples]
            ratios[key][sampler] = {"samples": per_repeat, "quartiles": _quartiles(per_repeat)}
        out[key] = by_sampler[samplers[0]][key]
        out[key + "_median"] = by_sampler[samplers[0]][key]
    out["samplers"] = by_sampler
    out["sweep_ratio"] = ratios
    out["whole_step_seconds"] = {meth: statistics.median(ts) for meth, ts in whole.items()}
    out["whole_step_quartiles"] = {meth: _quartiles(ts) for meth, ts in whole.items()}
    return out


def directions_profile(
    width: int,
    depth: int,
    batch: int,
    ks: list[int],
    repeats: int,
    draws: int,
    *,
    sampler: str = "gaussian",
    seed: int = 0,
    report: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """K tangents at once: the K numbers ∇f·v_k by a loop of JVPs and by one vmapped JVP, timed
    side by side (fastest and median of ``repeats`` interleaved rounds), and the total variance
    E‖g_K − ∇f‖² of the K-direction estimate by Monte Carlo against (n + κ − 2)‖∇f‖²/K."""
    model, x, y = problem(width, depth, batch)
    params = {n: p.detach() for n, p in model.named_parameters()}
    n = sum(p.numel() for p in params.values())

    def f(ps: dict[str, Tensor]) -> Tensor:
        return nn.functional.cross_entropy(torch.func.functional_call(model, ps, (x,)), y)

    grads = torch.autograd.grad(f(dict(model.named_parameters())), list(model.parameters()))
    grad = torch.cat([g.flatten() for g in grads])
    dist = tg.get(sampler)

    def stacked(k: int, step: int) -> dict[str, Tensor]:
        like = [torch.empty((k, *p.shape)) for p in params.values()]
        return dict(zip(params, tg.draw(like, dist, tg.generator(seed, step, k))))

    rows = []
    for k in ks:
        tangents = stacked(k, 0)
        t = bench.interleaved(
            {"loop": lambda: directional_derivatives(f, params, tangents, batched=False),
             "vmap": lambda: directional_derivatives(f, params, tangents, batched=True)},
            rounds=repeats, warmup=1,
        )
        loop_times, vmap_times = list(t["loop"].samples), list(t["vmap"].samples)
        loop, vmap = min(loop_times), min(vmap_times)
        # the total variance E‖g_K − ∇f‖² of the K-direction estimate, by Monte Carlo
        errors = []
        # ‖g_K − ∇f‖² has a relative spread of about √(2/K) per draw: more draws where K is small
        draws_k = max(draws, -(-400 // k))
        for draw in range(draws_k):
            v = stacked(k, 1 + draw)
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
                "variance_theory": float(variance_factor(n, dist, k)) * float(grad @ grad),
            }
        )
        if report:
            report(f"  K={k:<3} loop {loop * 1e3:8.1f} ms  vmap {vmap * 1e3:8.1f} ms  speed-up {loop / vmap:5.2f}")
    return {"width": width, "depth": depth, "batch": batch, "n": n, "draws": draws, "sampler": dist.name,
            "grad_norm_sq": float(grad @ grad), "rows": rows}
