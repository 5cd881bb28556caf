"""Steps to a training loss and the largest stable learning rate as an MLP widens: forward gradient vs backprop.

For each hidden width w, an MLP 784-w-10 (n = 795 w + 10 parameters) is trained by plain SGD on a
fixed subset of MNIST, once per learning rate of a grid, with backprop and with the one-direction
Gaussian forward gradient. Every 5 steps up to 4 × ``eval_every``, then every ``eval_every``
steps, the loss on the whole subset is computed; a run stops when it reaches ``target``. A run
*diverges* when the loss becomes NaN or infinite or exceeds ten times its initial value.
:func:`hessian_trace` estimates tr H, H the Hessian of the loss at initialisation, by
Hutchinson's method. The command ``python -m ffkit variance-width`` runs :func:`run` and writes
``chapters/results/variance_width.json`` for chapter 5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ffkit import data, models, tangents, train
from ffkit.methods import Backprop, DivergenceError, ForwardGradient, Method

__all__ = ["BACKPROP_LRS", "FG_LRS", "hessian_trace", "run", "run_one"]

BACKPROP_LRS = [0.03, 0.1, 0.3, 1.0]
FG_LRS = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


def hessian_trace(width: int, x: torch.Tensor, y: torch.Tensor, *, probes: int, seed: int) -> tuple[float, float]:
    """Hutchinson's estimate of tr H, H the Hessian of the loss on (x, y) at initialisation.

    tr H = E[vᵀ H v] for Rademacher v; each H v is one forward-over-reverse product
    (``torch.func.jvp`` of ``torch.func.grad``). Returns the mean over ``probes`` and its
    standard error.
    """
    model = models.mlp([784, width, 10], generator_seed=seed)
    params = {k: p.detach() for k, p in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(torch.func.functional_call(model, p, (x,)), y)

    values = []
    for probe in range(probes):
        v = dict(zip(params, tangents.draw(list(params.values()), "rademacher", tangents.generator(seed, probe, 0))))
        _, hv = torch.func.jvp(torch.func.grad(loss), (params,), (v,))
        values.append(sum(float((hv[k] * v[k]).sum()) for k in v))
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std() / math.sqrt(probes))


def run_one(
    width: int,
    method: str,
    lr: float,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    eval_every: int,
    target: float,
    batch: int,
    seed: int,
    sampler: str = "gaussian",
) -> dict[str, object]:
    """Train one MLP 784-width-10 with ``method`` at learning rate ``lr``; return its record."""
    model = models.mlp([784, width, 10], generator_seed=seed)
    grad_fn: Method = Backprop() if method == "backprop" else ForwardGradient(sampler=sampler, seed=seed + 1)
    batches = train.cycle(lambda: data.batches(x, y, batch, generator=torch.Generator().manual_seed(seed + 2)))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def full_loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))

    losses = [full_loss()]
    eval_steps = [0]
    reached: int | None = None
    diverged = False
    # evaluate often early on (backprop reaches easy targets within tens of steps), then every eval_every
    fine = min(5, eval_every)
    schedule = sorted({*range(fine, min(4 * eval_every, steps) + 1, fine), *range(eval_every, steps + 1, eval_every)})
    previous = 0
    for done in schedule:
        try:
            train.fit(model, grad_fn, batches, optimizer, steps=done - previous)
        except DivergenceError:
            diverged = True
            break
        previous = done
        value = full_loss()
        eval_steps.append(done)
        losses.append(value)
        if not math.isfinite(value) or value > 10 * losses[0]:
            diverged = True
            break
        if value <= target:
            reached = done
            break
    return {
        "lr": lr,
        "steps_to_target": reached,
        "diverged": diverged,
        "eval_step": eval_steps,
        "loss": [v if math.isfinite(v) else None for v in losses],
    }


def run(
    widths: Sequence[int],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    eval_every: int,
    target: float,
    batch: int,
    seed: int,
    probes: int,
    report: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """For every width: tr H at initialisation and one run per method and learning rate of the grids."""
    if not widths or min(widths) < 1:
        raise ValueError(f"widths must be positive, got {list(widths)}")
    out: dict[str, object] = {}
    for width in widths:
        n = models.count_parameters(models.mlp([784, width, 10]))
        trace, trace_se = hessian_trace(width, x, y, probes=probes, seed=seed)
        entry: dict[str, object] = {"n": n, "trace_hessian": trace, "trace_hessian_se": trace_se}
        if report:
            report(f"width {width:4d}: tr H at initialisation = {trace:.2f} ± {trace_se:.2f}")
        for method, grid in (("backprop", BACKPROP_LRS), ("forward gradient", FG_LRS)):
            runs = [
                run_one(width, method, lr, x, y, steps=steps, eval_every=eval_every,
                        target=target, batch=batch, seed=seed)
                for lr in grid
            ]
            entry[method] = runs
            best = [r["steps_to_target"] for r in runs if r["steps_to_target"] is not None]
            stable = [r["lr"] for r in runs if not r["diverged"]]
            if report:
                report(f"width {width:4d} (n = {n:6d}) {method:16s}: best steps to loss {target} = "
                       f"{min(best) if best else '-'}; largest non-diverging lr {max(stable) if stable else '-'}")
        out[str(width)] = entry
    return out
