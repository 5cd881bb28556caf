"""MNIST by backprop and by forward gradient: logistic regression, MLP 784-1024-1024-10, small CNN.

For each model, method and seed, the learning rate of plain SGD is tuned on a half-decade grid (the
rate with the lowest mean training loss over the last quarter of a short run wins; a run that
diverges scores infinity), then a full run with that rate records the training loss and
wall-clock time of every step and the test loss and accuracy every ``eval_every`` steps. Both
methods see the same initialisation and the same batches for a given seed. The command
``python -m ffkit fg-mnist`` runs :func:`run` and writes ``chapters/results/fg_mnist.json``;
chapter 3 loads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffkit.data import batches
from ffkit.methods import Backprop, DivergenceError, ForwardGradient, Method
from ffkit.models import count_parameters, logistic_regression, mlp, reinitialize, small_cnn
from ffkit.train import cycle, fit

__all__ = [
    "LR_GRID",
    "METHODS",
    "MODELS",
    "make_method",
    "run",
    "tail_loss",
    "test_metrics",
    "train_run",
    "tune",
]

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


def make_method(method: str, seed: int, sampler: str = "gaussian") -> Method:
    """The :class:`~ffkit.methods.Method` of a row: backprop, or the forward gradient with K = 1
    (Gaussian tangents by default, the distribution chapter 3 analyses)."""
    if method == "backprop":
        return Backprop()
    if method == "forward gradient":
        return ForwardGradient(directions=1, sampler=sampler, seed=seed)
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def test_metrics(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """Cross-entropy and accuracy of ``model`` on ``(x, y)``, in chunks of 2000 examples."""
    logits = torch.cat([model(x[i : i + 2000]) for i in range(0, len(x), 2000)])
    return {
        "test_loss": float(F.cross_entropy(logits, y)),
        "test_accuracy": float((logits.argmax(1) == y).float().mean()),
    }


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
    sampler: str = "gaussian",
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

    evaluate = None if test is None else (lambda m: test_metrics(m, *test))
    try:
        history = fit(
            model, make_method(method, seed, sampler), data, optimizer, steps=steps,
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


def run(
    models: Sequence[str],
    seeds: Sequence[int],
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    steps: int = 1000,
    tune_steps: int = 150,
    batch_size: int = 64,
    eval_every: int = 100,
    report: Callable[[str], None] | None = None,
) -> dict[str, dict[str, dict[str, dict[str, object]]]]:
    """Every (model, method, seed): tune the rate on :data:`LR_GRID`, then the full run.

    Returns ``runs[model][method][str(seed)]``, each a history dict (rounded losses and times)
    with the chosen ``lr`` and the ``tuning`` scores. A rate that survived the short tuning run
    but diverges in the full run is replaced by the next smaller rate of the grid.
    """
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    if not seeds:
        raise ValueError("run needs at least one seed")
    runs: dict[str, dict[str, dict[str, dict[str, object]]]] = {}
    for model_name in models:
        runs[model_name] = {method: {} for method in METHODS}
        for method in METHODS:
            for seed in seeds:
                lr, scores = tune(model_name, method, LR_GRID[method], tune_steps, train, seed=seed)
                candidates = sorted((r for r in LR_GRID[method] if r <= lr), reverse=True)
                for lr in candidates:
                    history = train_run(
                        model_name, method, lr, steps, train, test,
                        batch_size=batch_size, eval_every=eval_every, seed=seed,
                    )
                    if not history.get("diverged"):
                        break
                    if report:
                        report(f"{model_name} {method} seed {seed} lr={lr:g} diverged; trying a smaller rate")
                else:
                    raise DivergenceError(f"{method} on {model_name} diverged at every rate <= the tuned one")
                history["loss"] = _round(history["loss"])  # type: ignore[arg-type]
                history["seconds"] = _round(history["seconds"])  # type: ignore[arg-type]
                history["lr"] = lr
                history["tuning"] = {str(k): (v if math.isfinite(v) else None) for k, v in scores.items()}
                runs[model_name][method][str(seed)] = history
                if report:
                    acc = history["eval"]["test_accuracy"][-1]  # type: ignore[index]
                    report(f"{model_name} {method} seed {seed} lr={lr:g} test accuracy {acc:.4f} "
                           f"({history['seconds'][-1]:.1f} s)")  # type: ignore[index]
    return runs
