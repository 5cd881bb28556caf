"""The cost of one training step: backprop against forward gradients, over a grid of shapes.

Every variant trains the same MLP on the same batch in one process: ``zero_grad``, filling
``.grad``, and an SGD step. :func:`step_variants` builds them:

* ``backprop``: ``loss.backward()``;
* ``ForwardGradient, <sampler>``: the :class:`ffkit.ForwardGradient` method, one tangent;
* ``forward_gradient, <sampler>``: the functional :func:`ffkit.forward_gradient` over
  ``torch.func.functional_call``, the estimate copied into ``.grad``;
* ``torch.func.jvp (straightforward)``: what one writes first, ``torch.func.jvp`` over
  ``functional_call`` with ``torch.randn_like`` tangents (needs one tangent buffer and one
  estimate buffer);
* ``forward_ad (naive)``: ``torch.autograd.forward_ad`` dual tensors with graph recording left on.

:func:`grid` times them with :func:`ffkit.bench.interleaved` (rounds in which every variant runs
once, in rotating order) for every (sizes, batch) of the grid and reports, per variant, the median
time and the median over rounds of the ratio to the backprop step of the same round. The command
``python -m ffkit bench-step`` prints the table and writes ``chapters/results/bench_step.json``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn

from ffkit import bench
from ffkit.methods import Backprop, ForwardGradient, forward_gradient
from ffkit.models import count_parameters, mlp

__all__ = ["SAMPLERS", "grid", "report", "step_variants"]

#: The tangent distributions benchmarked.
SAMPLERS = ("rademacher", "gaussian")


def _straightforward(model: nn.Module, closure_of: Callable[[dict[str, Tensor]], Tensor]) -> None:
    params = {k: p.detach() for k, p in model.named_parameters()}
    tangents = {k: torch.randn_like(p) for k, p in params.items()}
    _, dd = torch.func.jvp(closure_of, (params,), (tangents,))
    for k, p in model.named_parameters():
        p.grad = dd * tangents[k]


def _naive(model: nn.Module, closure_of: Callable[[dict[str, Tensor]], Tensor]) -> None:
    params = dict(model.named_parameters())
    tangents = {k: torch.randn_like(p) for k, p in params.items()}
    with fwAD.dual_level():
        duals = {k: fwAD.make_dual(p, tangents[k]) for k, p in params.items()}
        _, dd = fwAD.unpack_dual(closure_of(duals))
    for k, p in params.items():
        p.grad = dd * tangents[k]


def step_variants(sizes: Sequence[int], batch: int, *, seed: int = 0, naive: bool = True) -> dict[str, Callable[[], None]]:
    """One training step per variant (module docstring) on an MLP ``sizes`` and a random batch."""
    model = mlp(list(sizes), generator_seed=seed, flatten=False)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, sizes[0], generator=g)
    y = torch.randint(0, sizes[-1], (batch,), generator=g)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)  # tiny steps: the model barely moves
    names = [k for k, _ in model.named_parameters()]
    params = dict(model.named_parameters())

    def closure() -> Tensor:
        return F.cross_entropy(model(x), y)

    def closure_of(p: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(torch.func.functional_call(model, p, (x,)), y)

    def step(fill: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            fill()
            optimizer.step()

        return run

    def functional(sampler: str) -> Callable[[], None]:
        counter = iter(range(10**9))

        def fill() -> None:
            _, est = forward_gradient(closure_of, {k: params[k].detach() for k in names}, sampler=sampler,
                                      seed=seed, step=next(counter))
            for k in names:
                params[k].grad = est[k]

        return fill

    variants: dict[str, Callable[[], None]] = {"backprop": step(lambda: Backprop()(model, closure))}
    for sampler in SAMPLERS:
        method = ForwardGradient(sampler=sampler, seed=seed)
        variants[f"ForwardGradient, {sampler}"] = step(lambda m=method: m(model, closure))
        variants[f"forward_gradient, {sampler}"] = step(functional(sampler))
    if naive:
        variants["torch.func.jvp (straightforward)"] = step(lambda: _straightforward(model, closure_of))
        variants["forward_ad (naive)"] = step(lambda: _naive(model, closure_of))
    return variants


def grid(
    shapes: Sequence[Sequence[int]],
    batches: Sequence[int],
    *,
    rounds: int,
    warmup: int = 3,
    seed: int = 0,
    naive: bool = True,
    report_line: Callable[[str], None] | None = None,
) -> list[dict[str, object]]:
    """Time :func:`step_variants` for every (sizes, batch); one record per point of the grid."""
    records = []
    for sizes in shapes:
        for batch in batches:
            variants = step_variants(sizes, batch, seed=seed, naive=naive)
            timings = bench.interleaved(variants, rounds=rounds, warmup=warmup)
            base = timings["backprop"].samples
            ratio = {name: statistics.median(t / b for t, b in zip(timing.samples, base))
                     for name, timing in timings.items()}
            record = {
                "sizes": list(sizes),
                "batch": batch,
                "parameters": count_parameters(mlp(list(sizes), flatten=False)),
                "median_seconds": {name: t.median for name, t in timings.items()},
                "quartile_seconds": {name: list(t.quartiles) for name, t in timings.items()},
                "ratio_to_backprop": ratio,
            }
            records.append(record)
            if report_line:
                report_line(f"MLP {'-'.join(map(str, sizes))} batch {batch}: " + ", ".join(
                    f"{name} {r:.2f}x" for name, r in ratio.items() if name != "backprop"))
    return records


def report(records: Sequence[dict[str, object]]) -> str:
    """The ratio table: one row per point of the grid, one column per variant (x backprop)."""
    names = [n for n in records[0]["ratio_to_backprop"] if n != "backprop"]  # type: ignore[union-attr]
    short = {n: n.replace("ForwardGradient", "FG").replace("forward_gradient", "fg()")
             .replace("rademacher", "rad").replace("gaussian", "gauss")
             .replace("torch.func.jvp (straightforward)", "func.jvp").replace("forward_ad (naive)", "naive")
             for n in names}
    head = f"{'MLP':<16} {'batch':>5} {'BP ms':>7} " + " ".join(f"{short[n]:>10}" for n in names)
    lines = [head]
    for r in records:
        sizes = "-".join(map(str, r["sizes"]))  # type: ignore[arg-type]
        ratio: dict[str, float] = r["ratio_to_backprop"]  # type: ignore[assignment]
        bp = r["median_seconds"]["backprop"]  # type: ignore[index]
        lines.append(f"{sizes:<16} {r['batch']:>5} {1e3 * bp:>7.2f} " + " ".join(f"{ratio[n]:>9.2f}x" for n in names))
    return "\n".join(lines)
