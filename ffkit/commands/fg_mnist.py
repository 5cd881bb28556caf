"""MNIST by backprop and by forward gradient: logistic regression, MLP 784-1024-1024-10, small CNN.

For each model and method, the learning rate of plain SGD is tuned on a grid (the one with the
lowest mean training loss over the last quarter of a short run wins; a run that diverges scores
infinity), then a full run with that rate records the training loss and wall-clock time of every
step and the test loss/accuracy every ``--eval-every`` steps. Both methods see the same
initialisation and the same batches. Results go to ``chapters/results/fg_mnist.json``::

    python -m ffkit fg-mnist                 # about 10 minutes on one busy CPU core
    python -m ffkit fg-mnist --steps 300 --tune-steps 50 --models logistic --out fg_mnist_small.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffkit.data import batches, load_dataset
from ffkit.fg import ForwardGradient
from ffkit.models import count_parameters, logistic_regression, mlp, reinitialize, small_cnn
from ffkit.train import DivergenceError, GradFn, backprop_grad, cycle, fit

#: The models of the comparison (Baydin et al. 2022 use logistic regression, an MLP with two
#: hidden layers of 1024 and a CNN; ours is smaller than theirs).
MODELS: dict[str, Callable[[], nn.Module]] = {
    "logistic": logistic_regression,
    "mlp": lambda: mlp([784, 1024, 1024, 10]),
    "cnn": small_cnn,
}
METHODS: tuple[str, ...] = ("backprop", "forward gradient")
#: SGD learning rates tried per method (half-decades). Forward gradients need far smaller rates:
#: E‖(∇L·v)v‖² = (n + 2)‖∇L‖² for Gaussian v, so a step is about √n times longer.
LR_GRID: dict[str, tuple[float, ...]] = {
    "backprop": (0.03, 0.1, 0.3),
    "forward gradient": (1e-4, 3e-4, 1e-3, 3e-3),
}


def grad_fn_for(method: str, seed: int) -> GradFn:
    """The ``.grad`` filler of a method: backprop, or Gaussian forward gradient with K = 1."""
    if method == "backprop":
        return backprop_grad
    if method == "forward gradient":
        return ForwardGradient(directions=1, sampler="gaussian", generator=torch.Generator().manual_seed(seed))
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def train_run(
    model_name: str,
    method: str,
    lr: float,
    steps: int,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor] | None = None,
    *,
    batch_size: int = 64,
    eval_every: int = 0,
    seed: int = 0,
) -> dict[str, object]:
    """One SGD run; returns the :class:`ffkit.train.History` as a dict (plus ``"diverged"``).

    The initialisation (``seed``), the batch order (``seed``) and, for forward gradients, the
    tangents (``seed``) are fixed, so a run is repeatable and both methods see the same data.
    """
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; known: {', '.join(MODELS)}")
    model = reinitialize(MODELS[model_name](), seed)
    x, y = train
    data = cycle(lambda g=torch.Generator().manual_seed(seed): batches(x, y, batch_size, generator=g))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    evaluate = None
    if test is not None:
        xt, yt = test

        def evaluate(m: nn.Module) -> dict[str, float]:
            logits = torch.cat([m(xt[i : i + 2000]) for i in range(0, len(xt), 2000)])
            return {
                "test_loss": float(F.cross_entropy(logits, yt)),
                "test_accuracy": float((logits.argmax(1) == yt).float().mean()),
            }

    try:
        history = fit(
            model, F.cross_entropy, data, optimizer, steps=steps, grad_fn=grad_fn_for(method, seed),
            evaluate=evaluate, eval_every=eval_every,
        ).as_dict()
        history["diverged"] = False
    except DivergenceError:
        history = {"diverged": True}
    history["parameters"] = count_parameters(model)
    return history


def tail_loss(history: dict[str, object], fraction: float = 0.25) -> float:
    """Mean training loss over the last ``fraction`` of the steps (infinity if the run diverged)."""
    if history.get("diverged"):
        return math.inf
    loss: list[float] = history["loss"]  # type: ignore[assignment]
    tail = loss[-max(1, int(len(loss) * fraction)) :]
    value = sum(tail) / len(tail)
    return value if math.isfinite(value) else math.inf


def tune(
    model_name: str, method: str, grid: Sequence[float], steps: int, train: tuple[Tensor, Tensor], *, seed: int = 0
) -> tuple[float, dict[float, float]]:
    """The rate of ``grid`` with the lowest :func:`tail_loss` after ``steps`` steps, and all scores."""
    scores = {lr: tail_loss(train_run(model_name, method, lr, steps, train, seed=seed)) for lr in grid}
    best = min(scores, key=lambda lr: (scores[lr], -lr))
    if not math.isfinite(scores[best]):
        raise DivergenceError(f"{method} on {model_name}: every learning rate of {list(grid)} diverged")
    return best, scores


def _round(values: list[float], digits: int = 5) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in values]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffkit fg-mnist", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--steps", type=int, default=1000, help="SGD steps of each full run")
    parser.add_argument("--tune-steps", type=int, default=150, help="steps of each tuning run")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    parser.add_argument("--out", type=Path, default=Path("chapters/results/fg_mnist.json"))
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        parser.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    if args.steps < 1 or args.tune_steps < 1 or args.batch < 1 or args.eval_every < 0:
        parser.error("--steps, --tune-steps and --batch must be >= 1, --eval-every >= 0")

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train = load_dataset("mnist", "train", normalize=True)
    test = load_dataset("mnist", "test", normalize=True)
    started = time.perf_counter()
    result: dict[str, object] = {
        "command": "python -m ffkit fg-mnist " + " ".join(argv),
        "settings": {
            "steps": args.steps, "tune_steps": args.tune_steps, "batch": args.batch,
            "eval_every": args.eval_every, "seed": args.seed, "threads": args.threads,
            "optimizer": "SGD (no momentum)", "lr_grid": LR_GRID, "torch": torch.__version__,
        },
        "runs": {},
    }
    runs: dict[str, dict[str, object]] = result["runs"]  # type: ignore[assignment]
    for model_name in models:
        runs[model_name] = {}
        for method in METHODS:
            lr, scores = tune(model_name, method, LR_GRID[method], args.tune_steps, train, seed=args.seed)
            # a rate that survived the short tuning run can still diverge later: step down the grid
            candidates = sorted((r for r in LR_GRID[method] if r <= lr), reverse=True)
            for lr in candidates:
                history = train_run(
                    model_name, method, lr, args.steps, train, test,
                    batch_size=args.batch, eval_every=args.eval_every, seed=args.seed,
                )
                if not history.get("diverged"):
                    break
                print(f"{model_name:>9} {method:<17} lr={lr:<8g} diverged; trying a smaller rate", flush=True)
            else:
                raise DivergenceError(f"{method} on {model_name} diverged at every rate <= the tuned one")
            history["loss"] = _round(history["loss"])  # type: ignore[arg-type]
            history["seconds"] = _round(history["seconds"])  # type: ignore[arg-type]
            history["lr"] = lr
            history["tuning"] = {str(k): (v if math.isfinite(v) else None) for k, v in scores.items()}
            runs[model_name][method] = history
            acc = history["eval"]["test_accuracy"][-1]  # type: ignore[index]
            print(f"{model_name:>9} {method:<17} lr={lr:<8g} final test accuracy {acc:.4f} "
                  f"({history['seconds'][-1]:.1f} s training)", flush=True)  # type: ignore[index]
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result) + "\n")
    print(f"wrote {args.out} ({result['total_seconds']} s)")
    return 0
