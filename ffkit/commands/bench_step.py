"""Benchmark one training step: backprop vs ffkit's forward gradient vs straightforward torch.func.jvp.

All methods train the same model on the same batch in one process. A step is ``zero_grad``,
filling ``.grad`` and an SGD update. The methods run round-robin (one step each, repeated), so
that load on the machine hits them alike, and the command prints the median time of each and the
ratios of the medians::

    python -m ffkit bench-step                       # MLP 784-1024-1024-1024-1024-10, batch 256
    python -m ffkit bench-step --sizes 784,1024,1024,10 --batch 64 --repeats 30

The straightforward implementations are what one writes first: ``torch.func.jvp`` over
``torch.func.functional_call`` with ``torch.randn_like`` tangents, and the same with
``torch.autograd.forward_ad`` dual tensors (graph recording left on).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn

from ffkit.fg import ForwardGradient
from ffkit.models import count_parameters, mlp
from ffkit.train import backprop_grad

GradFn = Callable[[nn.Module, Callable[[], Tensor]], Tensor]


def jvp_straightforward(model: nn.Module, closure_of: Callable[[dict[str, Tensor]], Tensor]) -> Tensor:
    """g = (∇L·v) v with ``torch.func.jvp`` over ``functional_call``, v from ``torch.randn_like``."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    tangents = {k: torch.randn_like(p) for k, p in params.items()}
    loss, dd = torch.func.jvp(closure_of, (params,), (tangents,))
    for k, p in model.named_parameters():
        p.grad = dd * tangents[k]
    return loss.detach()


def forward_ad_naive(model: nn.Module, closure_of: Callable[[dict[str, Tensor]], Tensor]) -> Tensor:
    """The same with ``forward_ad`` dual tensors, graph recording on, v from ``torch.randn_like``."""
    params = dict(model.named_parameters())
    tangents = {k: torch.randn_like(p) for k, p in params.items()}
    with fwAD.dual_level():
        duals = {k: fwAD.make_dual(p, tangents[k]) for k, p in params.items()}
        loss, dd = fwAD.unpack_dual(closure_of(duals))
    for k, p in params.items():
        p.grad = dd * tangents[k]
    return loss.detach()


def run(sizes: list[int], batch: int, repeats: int, warmup: int, directions: int, seed: int) -> dict[str, object]:
    """Time every method; return medians (seconds) and ratios in a JSON-serialisable dict."""
    torch.manual_seed(seed)
    model = mlp(sizes, generator_seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, sizes[0], generator=g)
    y = torch.randint(0, sizes[-1], (batch,), generator=g)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)  # tiny steps: the model barely moves

    def closure() -> Tensor:
        return F.cross_entropy(model(x), y)

    def closure_of(params: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    def ffkit_fg(sampler: str) -> GradFn:
        return ForwardGradient(directions=directions, sampler=sampler, generator=torch.Generator().manual_seed(seed))

    methods: dict[str, Callable[[], object]] = {}

    def add(name: str, fill: Callable[[], object]) -> None:
        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            fill()
            optimizer.step()

        methods[name] = step

    fg_gauss, fg_rad = ffkit_fg("gaussian"), ffkit_fg("rademacher")
    add("backprop", lambda: backprop_grad(model, closure))
    add("ffkit FG, gaussian", lambda: fg_gauss(model, closure))
    add("ffkit FG, rademacher", lambda: fg_rad(model, closure))
    if directions == 1:
        add("torch.func.jvp (straightforward)", lambda: jvp_straightforward(model, closure_of))
        add("forward_ad (naive)", lambda: forward_ad_naive(model, closure_of))

    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(warmup):
        for step in methods.values():
            step()
    for _ in range(repeats):
        for name, step in methods.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "sizes": sizes,
        "parameters": count_parameters(model),
        "batch": batch,
        "directions": directions,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "median_seconds": median,
        "ratio_to_backprop": {name: t / median["backprop"] for name, t in median.items()},
    }


def report(result: dict[str, object]) -> str:
    """The table the command prints."""
    median: dict[str, float] = result["median_seconds"]  # type: ignore[assignment]
    lines = [
        f"MLP {'-'.join(map(str, result['sizes']))} ({result['parameters']:,} parameters), "
        f"batch {result['batch']}, K={result['directions']}, float32, {result['threads']} threads, "
        f"torch {result['torch']}; median of {result['repeats']} steps",
        f"{'method':<34} {'ms/step':>9} {'x backprop':>11} {'speed-up vs jvp':>16}",
    ]
    jvp = median.get("torch.func.jvp (straightforward)")
    for name, t in median.items():
        speedup = f"{jvp / t:.2f}x" if jvp else "-"
        lines.append(f"{name:<34} {t * 1e3:>9.1f} {t / median['backprop']:>10.2f}x {speedup:>16}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffkit bench-step", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="784,1024,1024,1024,1024,10", help="MLP layer sizes, comma-separated")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=21, help="timed steps per method (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--directions", type=int, default=1, help="K tangents per forward-gradient step")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if len(sizes) < 2 or min(sizes) < 1 or args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("need at least two positive sizes, --batch >= 1, --repeats >= 1, --warmup >= 0")
    if args.threads < 1 or args.directions < 1:
        parser.error("--threads and --directions must be >= 1")
    torch.set_num_threads(args.threads)
    result = run(sizes, args.batch, args.repeats, args.warmup, args.directions, args.seed)
    print(report(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0
