"""Forward against reverse mode: R_f, R_b on an MLP, and the time to the full gradient against n.

Two measurements, each run side by side in one process with the variants interleaved round by
round (:func:`ffkit.bench.interleaved`), each timing repeated back to back until it lasts about
20 ms, reported as medians over the rounds:

1. :func:`cost_ratios`, the cost of one JVP and one VJP relative to a forward pass. f(θ) is the
   cross-entropy loss of an MLP (784-1024-1024-10 with ReLU, a batch of 64, in chapter 2). Per
   round: the forward pass alone (the baseline, without autograd), one JVP ∇f(θ)·v by forward
   mode (``ffkit.module_jvp`` with ``torch.autograd.forward_ad`` and with ``torch.func.jvp``),
   one VJP (forward pass recording the graph plus ``backward()``: the whole gradient) and
   ``torch.autograd.functional.jvp`` (the double-VJP trap). R_f and R_b are the medians over
   rounds of time(JVP)/time(forward) and time(VJP)/time(forward).
2. :func:`full_gradient_times`, the time to the full gradient versus n. f: Rⁿ → R is the loss of a
   small MLP (8-h-4, batch 32) as a function of its flattened parameters, n = 13h + 4. The full
   gradient costs n JVPs (one per basis vector eᵢ; in a Python loop, and vectorised with
   ``torch.func.vmap``) but one VJP. All three gradients are checked to agree.

The command ``python -m ffkit bench-modes`` runs both and writes ``chapters/results/bench_modes.json``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from ffkit import bench, tangents
from ffkit.autodiff import jvp, module_jvp
from ffkit.models import count_parameters, mlp, reinitialize

__all__ = ["cost_ratios", "full_gradient_times"]


def cost_ratios(sizes: list[int], batch: int, rounds: int, seed: int = 0) -> dict[str, object]:
    """Measurement 1: times of the variants and their ratios to the forward pass."""
    model = mlp(sizes, generator_seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, sizes[0], generator=g)
    y = torch.randint(0, sizes[-1], (batch,), generator=g)
    names = [n for n, _ in model.named_parameters()]
    v = dict(zip(names, tangents.draw([p.detach() for p in model.parameters()], "gaussian", g)))

    def loss() -> Tensor:
        return F.cross_entropy(model(x), y)

    def forward() -> Tensor:
        with torch.no_grad():
            return loss()

    def vjp() -> None:
        model.zero_grad(set_to_none=True)
        loss().backward()

    def loss_of(*params: Tensor) -> Tensor:
        return F.cross_entropy(torch.func.functional_call(model, dict(zip(names, params)), (x,)), y)

    primals = tuple(p.detach() for p in model.parameters())
    tangent_args = tuple(v[n] for n in names)
    variants: dict[str, Callable[[], object]] = {
        "forward pass": forward,
        "JVP, forward_ad": lambda: module_jvp(model, loss, v, method="forward_ad"),
        "JVP, torch.func.jvp": lambda: module_jvp(model, loss, v, method="func"),
        "VJP, backward()": vjp,
        "autograd.functional.jvp": lambda: torch.autograd.functional.jvp(loss_of, primals, tangent_args),
    }
    # all JVPs compute the same number, ∇f·v; check before timing
    reference = module_jvp(model, loss, v)[1]
    vjp()
    grad_dot_v = sum((p.grad * v[n]).sum() for n, p in model.named_parameters())
    torch.testing.assert_close(module_jvp(model, loss, v, method="func")[1], reference, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.autograd.functional.jvp(loss_of, primals, tangent_args)[1], reference, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_dot_v, reference, rtol=1e-4, atol=1e-6)

    timings = bench.interleaved(variants, rounds=rounds, warmup=3, min_seconds=0.02)
    seconds = {name: t.samples for name, t in timings.items()}
    base = seconds["forward pass"]
    ratios = {name: [t / b for t, b in zip(ts, base)] for name, ts in seconds.items()}
    return {
        "sizes": sizes,
        "batch": batch,
        "n_parameters": count_parameters(model),
        "rounds": rounds,
        "median_seconds": {k: t.median for k, t in timings.items()},
        "median_ratio": {k: statistics.median(r) for k, r in ratios.items()},
        "ratio_quartiles": {k: statistics.quantiles(r, n=4)[::2] for k, r in ratios.items()},
        "R_f": statistics.median(ratios["JVP, forward_ad"]),
        "R_b": statistics.median(ratios["VJP, backward()"]),
    }


def full_gradient_times(hidden: list[int], rounds: int, seed: int = 0) -> dict[str, object]:
    """Measurement 2: seconds to the whole gradient by n JVPs (loop, vmap) and by one VJP."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 8, generator=g)
    y = torch.randint(0, 4, (32,), generator=g)
    rows: dict[str, list[float]] = {"n": [], "n JVPs, loop": [], "n JVPs, vmap": [], "one VJP": []}
    for h in hidden:
        model = reinitialize(mlp([8, h, 4], flatten=False), seed)
        params = {k: p.detach() for k, p in model.named_parameters()}
        shapes = {k: p.shape for k, p in params.items()}
        sizes = [p.numel() for p in params.values()]
        theta = torch.cat([p.reshape(-1) for p in params.values()])
        n = theta.numel()

        def f(flat: Tensor) -> Tensor:
            parts = dict(zip(shapes, torch.split(flat, sizes)))
            p = {k: parts[k].reshape(shapes[k]) for k in shapes}
            return F.cross_entropy(torch.func.functional_call(model, p, (x,)), y)

        eye = torch.eye(n)

        def by_loop() -> Tensor:
            return torch.stack([jvp(f, (theta,), (eye[i],))[1] for i in range(n)])

        def by_vmap() -> Tensor:
            return torch.func.vmap(lambda e: torch.func.jvp(f, (theta,), (e,))[1])(eye)

        def by_vjp() -> Tensor:
            return torch.func.grad(f)(theta)

        reference = by_vjp()
        torch.testing.assert_close(by_loop(), reference, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(by_vmap(), reference, rtol=1e-4, atol=1e-6)
        t = bench.interleaved({"loop": by_loop, "vmap": by_vmap, "vjp": by_vjp}, rounds=rounds, warmup=1, min_seconds=0.02)
        rows["n"].append(n)
        rows["n JVPs, loop"].append(t["loop"].median)
        rows["n JVPs, vmap"].append(t["vmap"].median)
        rows["one VJP"].append(t["vjp"].median)
    return rows
