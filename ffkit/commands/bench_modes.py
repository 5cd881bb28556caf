"""Benchmark forward vs reverse mode: R_f, R_b on an MLP and time to the full gradient vs n.

Two measurements, each run side by side in one process with the variants interleaved round by
round (so that a slow moment of a shared machine hits all of them alike), each timing repeated
back to back until it lasts about 20 ms, reported as medians over the rounds:

1. **Cost of one JVP and one VJP relative to a forward pass.** f(θ) is the cross-entropy loss of
   an MLP (by default 784-1024-1024-10 with ReLU, a batch of 64, as in Baydin et al. 2022's MNIST
   MLP). Per round we time: the forward pass alone (the baseline, without autograd), one JVP
   ∇f(θ)·v by forward mode (``ffkit.module_jvp`` with ``torch.autograd.forward_ad`` and with
   ``torch.func.jvp``), one VJP (forward pass recording the graph plus ``backward()``: the whole
   gradient) and ``torch.autograd.functional.jvp`` (the double-VJP trap). R_f and R_b are the
   medians over rounds of time(JVP)/time(forward) and time(VJP)/time(forward).
2. **Time to the full gradient versus n.** f: Rⁿ → R is the loss of a small MLP (8-h-4, batch
   32) as a function of its flattened parameters, n = 13h + 4. The full gradient costs n JVPs
   (one per basis vector eᵢ; in a Python loop, and vectorised with ``torch.func.vmap``) but one
   VJP. All three gradients are checked to agree.

Writes JSON (default ``chapters/results/bench_modes.json``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

import ffkit
from ffkit.autodiff import jvp, module_jvp
from ffkit.models import count_parameters, mlp, reinitialize

DEFAULT_OUT = Path("chapters/results/bench_modes.json")


def _time(fn: Callable[[], object], number: int) -> float:
    """Seconds per call of ``fn``, timed over ``number`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def interleaved_times(
    variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 3, min_seconds: float = 0.02
) -> dict[str, list[float]]:
    """Seconds per call of every variant, once per round, for ``rounds`` rounds.

    After ``warmup`` untimed rounds, each variant is timed over enough back-to-back calls to take
    about ``min_seconds`` (so that a fast function is not measured at the resolution of the timer
    and the scheduler), and the variants take turns within every round, so that a slow moment of
    a shared machine affects all of them alike.
    """
    number = {}
    for name, fn in variants.items():
        for _ in range(warmup):
            fn()
        number[name] = max(1, math.ceil(min_seconds / max(_time(fn, 1), 1e-9)))
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            seconds[name].append(_time(fn, number[name]))
    return seconds


def cost_ratios(sizes: list[int], batch: int, rounds: int, seed: int = 0) -> dict[str, object]:
    """Measurement 1: times of the variants and their ratios to the forward pass."""
    model = mlp(sizes, generator_seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, sizes[0], generator=g)
    y = torch.randint(0, sizes[-1], (batch,), generator=g)
    v = {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    names = [n for n, _ in model.named_parameters()]

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
    tangents = tuple(v[n] for n in names)
    variants: dict[str, Callable[[], object]] = {
        "forward pass": forward,
        "JVP, forward_ad": lambda: module_jvp(model, loss, v, method="forward_ad"),
        "JVP, torch.func.jvp": lambda: module_jvp(model, loss, v, method="func"),
        "VJP, backward()": vjp,
        "autograd.functional.jvp": lambda: torch.autograd.functional.jvp(loss_of, primals, tangents),
    }
    # all JVPs compute the same number, ∇f·v; check before timing
    reference = module_jvp(model, loss, v)[1]
    vjp()
    grad_dot_v = sum((p.grad * v[n]).sum() for n, p in model.named_parameters())
    torch.testing.assert_close(module_jvp(model, loss, v, method="func")[1], reference, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.autograd.functional.jvp(loss_of, primals, tangents)[1], reference, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_dot_v, reference, rtol=1e-4, atol=1e-6)

    seconds = interleaved_times(variants, rounds)
    base = seconds["forward pass"]
    ratios = {name: [t / b for t, b in zip(ts, base)] for name, ts in seconds.items()}
    return {
        "sizes": sizes,
        "batch": batch,
        "n_parameters": count_parameters(model),
        "rounds": rounds,
        "median_seconds": {k: statistics.median(ts) for k, ts in seconds.items()},
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
            return torch.stack([jvp(f, theta, eye[i])[1] for i in range(n)])

        def by_vmap() -> Tensor:
            return torch.func.vmap(lambda e: torch.func.jvp(f, (theta,), (e,))[1])(eye)

        def by_vjp() -> Tensor:
            return torch.func.grad(f)(theta)

        reference = by_vjp()
        torch.testing.assert_close(by_loop(), reference, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(by_vmap(), reference, rtol=1e-4, atol=1e-6)
        seconds = interleaved_times({"loop": by_loop, "vmap": by_vmap, "vjp": by_vjp}, rounds, warmup=1)
        rows["n"].append(n)
        rows["n JVPs, loop"].append(statistics.median(seconds["loop"]))
        rows["n JVPs, vmap"].append(statistics.median(seconds["vmap"]))
        rows["one VJP"].append(statistics.median(seconds["vjp"]))
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffkit bench-modes", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[784, 1024, 1024, 10], help="MLP layer sizes")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds per variant")
    parser.add_argument("--hidden", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64],
                        help="hidden widths h of the 8-h-4 MLP for the full-gradient timing (n = 13h + 4)")
    parser.add_argument("--gradient-rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine, threads that wait for each other "
                        "at every operation add more noise than they save time)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write ('-' for none)")
    args = parser.parse_args(argv)
    if args.rounds < 3 or args.gradient_rounds < 1 or args.batch < 1 or len(args.sizes) < 2:
        parser.error("need --rounds >= 3, --gradient-rounds >= 1, --batch >= 1 and two or more --sizes")

    ffkit.setup(seed=0, threads=args.threads, plots=False)
    costs = cost_ratios(args.sizes, args.batch, args.rounds)
    full = full_gradient_times(args.hidden, args.gradient_rounds)
    result = {
        "command": "python -m ffkit bench-modes " + " ".join(argv),
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": args.threads},
        "cost": costs,
        "full_gradient": full,
    }

    sizes = "-".join(map(str, args.sizes))
    print(f"MLP {sizes}, batch {args.batch}, n = {costs['n_parameters']:,} parameters, "
          f"{args.rounds} interleaved rounds, {args.threads} threads")
    print(f"{'variant':<26}{'median time':>14}{'x forward pass':>16}{'quartiles':>18}")
    for name, seconds in costs["median_seconds"].items():
        q1, q3 = costs["ratio_quartiles"][name]
        print(f"{name:<26}{seconds * 1e3:>11.2f} ms{costs['median_ratio'][name]:>16.2f}{f'{q1:.2f}-{q3:.2f}':>18}")
    print(f"R_f = {costs['R_f']:.2f}   R_b = {costs['R_b']:.2f}")
    print("\ntime to the full gradient of an 8-h-4 MLP loss (medians)")
    print(f"{'n':>6}{'n JVPs, loop':>16}{'n JVPs, vmap':>16}{'one VJP':>12}{'loop / VJP':>12}")
    for i, n in enumerate(full["n"]):
        loop, vmap, vjp_s = full["n JVPs, loop"][i], full["n JVPs, vmap"][i], full["one VJP"][i]
        print(f"{n:>6}{loop * 1e3:>13.2f} ms{vmap * 1e3:>13.2f} ms{vjp_s * 1e3:>9.2f} ms{loop / vjp_s:>12.1f}")
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {args.out}")
    return 0
