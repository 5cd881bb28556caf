"""MNIST by backprop and by forward gradient: logistic regression, MLP 784-1024-1024-10, small CNN.

For each model, method and seed, the learning rate of plain SGD is tuned on a half-decade grid (the
rate with the lowest mean training loss over the last quarter of a short run wins; a run that
diverges scores infinity), then a full run with that rate records the training loss and
wall-clock time of every step, and the loss and accuracy on a fixed held-out set (the first
``eval_size`` test images) at the steps of :func:`eval_schedule` — every step at first, so that
the number of steps a method needs to reach a given loss is known to the step — plus the full
test set after the last step. Both methods see the same initialisation and the same batches for
a given seed. The command
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
from ffkit.train import Callback, StepInfo, cycle, fit, progress

__all__ = [
    "LR_GRID",
    "METHODS",
    "MODELS",
    "eval_schedule",
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


def eval_schedule(steps: int, every: int = 100) -> list[int]:
    """The steps after which a full run evaluates on the held-out set: every step up to 20, every
    5th up to 100, then every ``every``-th (at least every 50th), and the last step."""
    if steps < 1 or every < 1:
        raise ValueError(f"eval_schedule needs steps >= 1 and every >= 1, got {steps}, {every}")
    late = min(every, 50)
    chosen = set(range(1, 21)) | set(range(25, 101, 5)) | set(range(100, steps + 1, late)) | {steps}
    return sorted(s for s in chosen if s <= steps)


def _evaluator(model: nn.Module, test: tuple[Tensor, Tensor], at: set[int], into: dict[str, object]) -> Callback:
    """A callback that records :func:`test_metrics` of ``test`` after the steps in ``at``."""
    steps: list[int] = []
    metrics: dict[str, list[float]] = {}
    into["eval_step"], into["eval"] = steps, metrics

    def callback(info: StepInfo) -> None:
        if info.step not in at:
            return
        was_training = model.training
        model.eval()
        with torch.no_grad():
            values = test_metrics(model, *test)
        model.train(was_training)
        steps.append(info.step)
        for key, value in values.items():
            metrics.setdefault(key, []).append(value)

    return callback


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
    eval_steps: Sequence[int] | None = None,
    eval_size: int = 2000,
    seed: int = 0,
    sampler: str = "gaussian",
    callbacks: Sequence[Callback] = (),
) -> dict[str, object]:
    """One SGD run; returns the :class:`ffkit.train.History` as a dict (plus ``"diverged"``).

    With ``test`` given, ``eval_step``/``eval`` hold the loss and accuracy on the first
    ``eval_size`` test examples after each step of ``eval_steps`` (e.g. :func:`eval_schedule`;
    by default every ``eval_every`` steps, if > 0, and the last step), and ``final`` those on the
    whole test set after the last step. The initialisation (``seed``), the batch order (``seed``)
    and, for forward gradients, the tangents (``seed``) are fixed, so a run is repeatable and
    both methods see the same data.
    """
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; known: {', '.join(MODELS)}")
    model = reinitialize(MODELS[model_name](), seed)
    x, y = train
    data = cycle(lambda g=torch.Generator().manual_seed(seed): batches(x, y, batch_size, generator=g))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    held_out: dict[str, object] = {}
    extra = list(callbacks)
    if test is not None:
        subset = (test[0][:eval_size], test[1][:eval_size])
        if eval_steps is None:
            eval_steps = [*range(eval_every, steps + 1, eval_every), steps] if eval_every > 0 else [steps]
        extra.append(_evaluator(model, subset, set(eval_steps), held_out))
    try:
        history = fit(model, make_method(method, seed, sampler), data, optimizer, steps=steps, callbacks=extra).as_dict()
        history["diverged"] = False
    except DivergenceError:
        history = {"diverged": True}
    if test is not None and not history["diverged"]:
        history.update(held_out)
        model.eval()
        with torch.no_grad():
            history["final"] = test_metrics(model, *test)
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
    eval_size: int = 2000,
    report: Callable[[str], None] | None = None,
    show_progress: bool = False,
    dense: bool = False,
) -> dict[str, dict[str, dict[str, dict[str, object]]]]:
    """Every (model, method, seed): tune the rate on :data:`LR_GRID`, then the full run.

    Returns ``runs[model][method][str(seed)]``, each a history dict (rounded losses and times)
    with the chosen ``lr`` and the ``tuning`` scores. A rate that survived the short tuning run
    but diverges in the full run is replaced by the next smaller rate of the grid. The held-out
    evaluations come every ``eval_every`` steps, or, with ``dense``, at the steps of
    :func:`eval_schedule` (every step at first). With ``show_progress``, each full run shows a
    tqdm bar on stderr (:func:`ffkit.train.progress`).
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
                    bar = [progress(steps, desc=f"{model_name} {method} seed {seed}")] if show_progress else []
                    history = train_run(
                        model_name, method, lr, steps, train, test, batch_size=batch_size,
                        eval_every=eval_every, eval_size=eval_size, seed=seed, callbacks=bar,
                        eval_steps=eval_schedule(steps, eval_every) if dense else None,
                    )
                    if not history.get("diverged"):
                        break
                    if report:
                        report(f"{model_name} {method} seed {seed} lr={lr:g} diverged; trying a smaller rate")
                else:
                    raise DivergenceError(f"{method} on {model_name} diverged at every rate <= the tuned one")
                history["loss"] = _round(history["loss"])  # type: ignore[arg-type]
                history["seconds"] = _round(history["seconds"])  # type: ignore[arg-type]
                history["eval"] = {k: _round(v) for k, v in history["eval"].items()}  # type: ignore[union-attr]
                history["lr"] = lr
                history["tuning"] = {str(k): (v if math.isfinite(v) else None) for k, v in scores.items()}
                runs[model_name][method][str(seed)] = history
                if report:
                    acc = history["final"]["test_accuracy"]  # type: ignore[index]
                    report(f"{model_name} {method} seed {seed} lr={lr:g} test accuracy {acc:.4f} "
                           f"({history['seconds'][-1]:.1f} s)")  # type: ignore[index]
    return runs
