"""Steps to a training loss and largest stable learning rate as an MLP widens: forward gradient vs backprop.

For each hidden width w, an MLP 784-w-10 (n = 795 w + 10 parameters) is trained by plain SGD on a
fixed subset of MNIST, once per learning rate of a grid, with backprop and with the one-direction
Gaussian forward gradient (``ffkit.ForwardGradient``). Every 5 steps up to 4 × ``--eval-every``,
then every ``--eval-every`` steps, the loss on the whole subset is computed; a run stops when it
reaches ``--target``. A run *diverges* when the
loss becomes NaN or infinite or exceeds ten times its initial value. The JSON written to
``chapters/results/variance_width.json`` holds, per width, Hutchinson's estimate of the trace of
the loss Hessian at initialisation and, per method and learning rate, the steps to the target
(or null), whether the run diverged, and the evaluated loss curve.

    python -m ffkit variance-width            # about 6 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import ffkit
from ffkit import data, models, train

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

    gen = torch.Generator().manual_seed(seed + 3)
    values = []
    for _ in range(probes):
        v = {k: torch.randint(0, 2, t.shape, generator=gen).to(t.dtype) * 2 - 1 for k, t in params.items()}
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
) -> dict[str, object]:
    """Train one MLP 784-width-10 with ``method`` at learning rate ``lr``; return its record."""
    model = models.mlp([784, width, 10], generator_seed=seed)
    grad_fn = (
        train.backprop_grad
        if method == "backprop"
        else ffkit.ForwardGradient(generator=torch.Generator().manual_seed(seed + 1))
    )
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
            train.fit(model, F.cross_entropy, batches, optimizer, steps=done - previous, grad_fn=grad_fn)
        except train.DivergenceError:
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffkit variance-width", description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 16, 64, 256])
    parser.add_argument("--examples", type=int, default=2048, help="size of the fixed MNIST training subset")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3000, help="step budget per run")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--target", type=float, default=1.8, help="training loss (cross-entropy) to reach")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probes", type=int, default=30, help="Hutchinson probes for tr H at initialisation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("chapters/results/variance_width.json"))
    args = parser.parse_args(argv)
    if min(args.widths) < 1 or args.steps < args.eval_every or args.eval_every < 1:
        parser.error("widths must be positive and steps >= eval-every >= 1")

    ffkit.setup(seed=args.seed, threads=args.threads, plots=False)
    x, y = ffkit.load_dataset("mnist", "train", limit=args.examples)
    start = time.perf_counter()
    results: dict[str, object] = {}
    for width in args.widths:
        n = models.count_parameters(models.mlp([784, width, 10]))
        trace, trace_se = hessian_trace(width, x, y, probes=args.probes, seed=args.seed)
        entry: dict[str, object] = {"n": n, "trace_hessian": trace, "trace_hessian_se": trace_se}
        print(f"width {width:4d}: tr H at initialisation = {trace:.2f} ± {trace_se:.2f}", flush=True)
        for method, grid in (("backprop", BACKPROP_LRS), ("forward gradient", FG_LRS)):
            runs = [
                run_one(width, method, lr, x, y, steps=args.steps, eval_every=args.eval_every,
                        target=args.target, batch=args.batch, seed=args.seed)
                for lr in grid
            ]
            entry[method] = runs
            best = [r["steps_to_target"] for r in runs if r["steps_to_target"] is not None]
            stable = [r["lr"] for r in runs if not r["diverged"]]
            print(f"width {width:4d} (n = {n:6d}) {method:16s}: best steps to loss {args.target} = "
                  f"{min(best) if best else '-'}; largest non-diverging lr {max(stable) if stable else '-'}", flush=True)
        results[str(width)] = entry
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update({"optimizer": "SGD (no momentum)", "lr_grid": {"backprop": BACKPROP_LRS, "forward gradient": FG_LRS},
                     "torch": torch.__version__})
    payload = {
        "command": "python -m ffkit variance-width " + " ".join(argv),
        "settings": settings,
        "results": results,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0
