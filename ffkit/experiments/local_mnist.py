"""Training a LocalMixer with each of Ren et al.'s six algorithms, and comparing with their Table 3.

One *run* trains a :class:`~ffkit.local_mixer.LocalMixer` (``arch``, e.g. ``"M/1/16"``) on MNIST
or Fashion-MNIST with one algorithm (:data:`ALGORITHMS`): Adam, a one-epoch linear warm-up and
a cosine decay to 0, batches of 128, no augmentation. It records the test error (a fraction)
after every epoch, the final training error and the training time per epoch
(:func:`train_run`). :func:`tune_lr` picks the learning rate of a grid by the error on a
held-out part of the training set after a short run, never by the test set.

Runs are identified by (arch, algorithm, dataset, epochs, seed, directions) (:func:`run_key`) and merged into
one list (:func:`merge_runs`), so that a long experiment can be run piece by piece;
:func:`comparisons` pairs our mean test errors with Ren et al.'s Table 3 (:data:`PAPER_TABLE3`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ffkit.data import DATASETS, batches, load_dataset
from ffkit.local_mixer import VARIANTS, LocalMixer
from ffkit.methods import Backprop, DivergenceError, Method
from ffkit.methods.local import (
    ActivityPerturbation,
    LocalActivityPerturbation,
    LocalBackprop,
    LocalWeightPerturbation,
    WeightPerturbation,
)
from ffkit.train import cycle, fit, progress

__all__ = [
    "ALGORITHMS",
    "PAPER_TABLE3",
    "comparisons",
    "error_rate",
    "merge_runs",
    "method_for",
    "run_key",
    "summary",
    "train_run",
    "tune_lr",
]

#: Ren et al.'s algorithm names, in the order of their Table 3.
ALGORITHMS = ("BP", "LG-BP", "FG-W", "FG-A", "LG-FG-W", "LG-FG-A")
#: The image datasets a run may use (28 × 28 grey images, 10 classes).
LOCAL_DATASETS = ("mnist", "fashion-mnist")

#: Ren et al. (2023), Table 3, MNIST: (arch, algorithm) -> (test error %, train error % or None).
PAPER_TABLE3: dict[tuple[str, str], tuple[float, float | None]] = {
    ("S/1/1", "BP"): (2.66, 0.00),
    ("S/1/1", "LG-BP"): (2.43, None),
    ("S/1/1", "FG-W"): (9.25, 8.93),
    ("S/1/1", "FG-A"): (3.24, 1.53),
    ("S/1/1", "LG-FG-W"): (9.25, None),
    ("S/1/1", "LG-FG-A"): (3.24, 1.53),
    ("M/1/16", "BP"): (2.41, 0.00),
    ("M/1/16", "LG-BP"): (2.81, None),
    ("M/1/16", "FG-W"): (8.56, 8.64),
    ("M/1/16", "FG-A"): (3.76, 1.75),
    ("M/1/16", "LG-FG-W"): (5.66, 4.59),
    ("M/1/16", "LG-FG-A"): (2.55, 0.00),
}


def _check_algorithm(algorithm: str) -> str:
    if not isinstance(algorithm, str) or algorithm.upper() not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    return algorithm.upper()


def _check_arch(arch: str) -> str:
    if arch not in VARIANTS:
        raise ValueError(f"unknown LocalMixer architecture {arch!r}; choose one of {', '.join(VARIANTS)}")
    return arch


def _check_dataset(dataset: str) -> str:
    if dataset not in LOCAL_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(LOCAL_DATASETS)}")
    return dataset


def method_for(algorithm: str, *, seed: int, directions: int = 1, sampler: str = "rademacher") -> Method:
    """The :class:`~ffkit.methods.Method` of one of :data:`ALGORITHMS` (tangents seeded by ``seed``)."""
    name = _check_algorithm(algorithm)
    if name == "BP":
        return Backprop()
    if name == "LG-BP":
        return LocalBackprop()
    cls = {
        "FG-W": WeightPerturbation,
        "FG-A": ActivityPerturbation,
        "LG-FG-W": LocalWeightPerturbation,
        "LG-FG-A": LocalActivityPerturbation,
    }[name]
    return cls(directions=directions, sampler=sampler, seed=seed)


@torch.no_grad()
def error_rate(model: LocalMixer, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """The fraction of ``x`` the final head misclassifies."""
    was_training = model.training
    model.eval()
    wrong = 0
    for i in range(0, len(x), batch_size):
        wrong += int((model(x[i : i + batch_size]).argmax(1) != y[i : i + batch_size]).sum())
    model.train(was_training)
    return wrong / len(x)


def _schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_run(
    arch: str,
    algorithm: str,
    *,
    dataset: str = "mnist",
    epochs: int,
    lr: float,
    seed: int = 0,
    batch_size: int = 128,
    validation: int = 0,
    directions: int = 1,
    sampler: str = "rademacher",
    device: str | torch.device = "cpu",
    limit: int | None = None,
    show_progress: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train one LocalMixer and return its record (JSON-serialisable).

    With ``validation`` = V > 0 the last V training images are held out and the errors are
    measured on them instead of the test set (for :func:`tune_lr`). ``limit`` keeps the first
    ``limit`` training images (tests). The initialisation, the batch order and the tangents all
    follow ``seed``. Raises :class:`~ffkit.methods.DivergenceError` (with the step and the
    learning rate) if the run diverges.

    The record holds ``arch``, ``algorithm``, ``dataset``, ``epochs``, ``seed``, ``lr``,
    ``test_error`` (the final one, a fraction; the validation error with ``validation``),
    ``test_errors`` (after each epoch), ``train_error``, ``seconds_per_epoch`` (training steps
    only) and the settings.
    """
    arch, algorithm, dataset = _check_arch(arch), _check_algorithm(algorithm), _check_dataset(dataset)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    device = torch.device(device)
    x, y = load_dataset(dataset, "train", normalize=True, limit=limit)
    if validation:
        if not 0 < validation < len(x):
            raise ValueError(f"validation must be between 1 and {len(x) - 1}, got {validation}")
        x, y, x_eval, y_eval = x[:-validation], y[:-validation], x[-validation:], y[-validation:]
    else:
        x_eval, y_eval = load_dataset(dataset, "test", normalize=True)
    x, y, x_eval, y_eval = (t.to(device) for t in (x, y, x_eval, y_eval))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LocalMixer(arch, tuple(x.shape[1:]), len(DATASETS[dataset].classes)).to(device)
    method = method_for(algorithm, seed=seed, directions=directions, sampler=sampler)
    steps_per_epoch = len(x) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {len(x)} training images")
    total = epochs * steps_per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = _schedule(optimizer, steps_per_epoch, total)
    order = torch.Generator().manual_seed(seed)

    def epoch_batches() -> Iterable[tuple[Tensor, Tensor]]:
        return batches(x, y, batch_size, generator=order)

    errors: list[float] = []

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        err = error_rate(model, x_eval, y_eval)
        errors.append(err)
        if on_epoch is not None:
            on_epoch(len(errors), err)
        return {"error": err}

    callbacks = [progress(total, desc=f"{arch} {algorithm} seed {seed}")] if show_progress else []
    history = fit(
        model, method, cycle(epoch_batches), optimizer, steps=total, scheduler=scheduler,
        evaluate=evaluate, eval_every=steps_per_epoch, callbacks=callbacks,
    )
    seconds = history.seconds[-1]
    return {
        "arch": arch,
        "algorithm": algorithm,
        "dataset": dataset,
        "epochs": epochs,
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
        "optimizer": "Adam, 1-epoch warm-up, cosine decay",
        "directions": directions,
        "sampler": sampler,
        "validation": validation,
        "parameters": sum(p.numel() for p in model.parameters()),
        "test_error": errors[-1],
        "test_errors": errors,
        "train_error": error_rate(model, x, y),
        "final_loss": history.loss[-1],
        "seconds_per_epoch": seconds / epochs,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def tune_lr(
    arch: str,
    algorithm: str,
    grid: Sequence[float],
    *,
    epochs: int,
    dataset: str = "mnist",
    validation: int = 5000,
    seed: int = 0,
    **options: Any,
) -> tuple[float, dict[float, float]]:
    """The learning rate of ``grid`` with the lowest validation error after ``epochs`` epochs
    (ties to the smaller rate), and every rate's error (infinite for a diverged run)."""
    if not grid:
        raise ValueError("the learning-rate grid is empty")
    scores: dict[float, float] = {}
    for lr in grid:
        try:
            scores[lr] = train_run(arch, algorithm, dataset=dataset, epochs=epochs, lr=lr, seed=seed,
                                   validation=validation, **options)["test_error"]
        except DivergenceError:
            scores[lr] = math.inf
    best = min(scores, key=lambda r: (scores[r], r))
    if not math.isfinite(scores[best]):
        raise DivergenceError(f"{algorithm} on {arch} diverged at every learning rate of {list(grid)}")
    return best, scores


def run_key(run: Mapping[str, Any]) -> tuple[str, str, str, int, int, int]:
    """What identifies a run: (arch, algorithm, dataset, epochs, seed, directions K)."""
    return (run["arch"], run["algorithm"], run["dataset"], int(run["epochs"]), int(run["seed"]),
            int(run.get("directions", 1)))


def merge_runs(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with every run of ``new`` added, replacing an old run with the same :func:`run_key`;
    sorted by arch, algorithm (in :data:`ALGORITHMS` order), dataset, epochs and seed."""
    merged = {run_key(r): dict(r) for r in old}
    for r in new:
        merged[run_key(r)] = dict(r)
    order = {a: i for i, a in enumerate(ALGORITHMS)}
    return [merged[k] for k in sorted(merged, key=lambda k: (k[0], order.get(k[1], 99), k[2], k[3], k[5], k[4]))]


def summary(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (arch, algorithm, dataset, epochs, directions): the seeds, the mean, spread
    (min, max) and standard deviation of the test error, and the mean seconds per epoch."""
    groups: dict[tuple[str, str, str, int, int], list[Mapping[str, Any]]] = {}
    for r in runs:
        k = run_key(r)
        groups.setdefault((*k[:4], k[5]), []).append(r)
    rows = []
    for (arch, algorithm, dataset, epochs, directions), rs in groups.items():
        errs = [float(r["test_error"]) for r in rs]
        rows.append({
            "arch": arch, "algorithm": algorithm, "dataset": dataset, "epochs": epochs, "directions": directions,
            "seeds": sorted(int(r["seed"]) for r in rs),
            "test_error": statistics.fmean(errs),
            "test_error_min": min(errs),
            "test_error_max": max(errs),
            "test_error_std": statistics.stdev(errs) if len(errs) > 1 else 0.0,
            "train_error": statistics.fmean(float(r["train_error"]) for r in rs),
            "seconds_per_epoch": statistics.fmean(float(r["seconds_per_epoch"]) for r in rs),
        })
    return rows


def comparisons(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``comparisons`` entries for the results envelope: our mean MNIST test error next to Ren
    et al.'s Table 3, per (arch, algorithm) that both have (one tangent per step, the longest
    runs we have)."""
    best: dict[tuple[str, str], Mapping[str, Any]] = {}
    for row in summary(runs):
        key = (row["arch"], row["algorithm"])
        if row["dataset"] != "mnist" or key not in PAPER_TABLE3 or row["directions"] != 1:
            continue
        if key not in best or row["epochs"] > best[key]["epochs"]:
            best[key] = row
    out = []
    for (arch, algorithm), row in best.items():
        out.append({
            "quantity": f"MNIST test error, LocalMixer {arch}, {algorithm} ({row['epochs']} epochs, "
                        f"mean of {len(row['seeds'])} seeds)",
            "ours": round(100 * row["test_error"], 2),
            "paper": PAPER_TABLE3[(arch, algorithm)][0],
            "unit": "%",
            "source": "Table 3",
            "cite": "ren2023scaling",
        })
    return out
