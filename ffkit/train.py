"""One training loop for every method.

:func:`fit` drives any :class:`~ffkit.methods.Method`: per step it draws a batch, asks the method
to fill ``.grad`` (``method.step(model, batch)``), and lets a plain ``torch.optim`` optimizer (and
scheduler) take the step. Which loss is minimised is the method's business (its ``loss``
argument, or the local objectives of local-loss and Forward-Forward methods). A method that
updates the parameters itself (``applies_update``, the memory-lean step) trains without an
optimizer. Callbacks see every step and can log, evaluate or stop the run early; a diverging run
stops with the step and the learning rate in the message.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import torch
from torch import Tensor, nn

from ffkit.methods.backprop import backprop_grad
from ffkit.methods.base import DivergenceError, GradFn, Method, StepResult

__all__ = [
    "Callback",
    "DivergenceError",
    "GradFn",
    "History",
    "StepInfo",
    "accuracy",
    "backprop_grad",
    "cycle",
    "fit",
    "log_every",
    "progress",
    "stop_below",
]


@dataclass
class History:
    """What :func:`fit` records: per-step training loss and wall-clock time, periodic evaluations.

    ``seconds[i]`` is the training time up to step ``step[i]`` (evaluations and callbacks not
    counted); ``details`` holds each step's :attr:`StepResult.details` when the method reports
    any; ``stopped_early`` is True when a callback ended the run.
    """

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval: dict[str, list[float]] = field(default_factory=dict)
    details: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False

    def as_dict(self) -> dict[str, object]:
        """A JSON-serialisable copy (without the per-step details)."""
        return {
            "step": list(self.step),
            "loss": list(self.loss),
            "seconds": list(self.seconds),
            "eval_step": list(self.eval_step),
            "eval": {k: list(v) for k, v in self.eval.items()},
            "stopped_early": self.stopped_early,
        }


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after each step."""

    step: int
    result: StepResult
    model: nn.Module
    history: History


class Callback(Protocol):
    """Called after every step; returning ``True`` stops training after this step."""

    def __call__(self, info: StepInfo) -> bool | None: ...


def cycle(batches: Callable[[], Iterable[tuple[Tensor, ...]]]) -> Iterator[tuple[Tensor, ...]]:
    """Repeat the epochs that ``batches()`` yields forever (a new epoch, a new call)."""
    while True:
        empty = True
        for batch in batches():
            empty = False
            yield batch
        if empty:
            raise ValueError("the batch source yielded no batches")


def _learning_rate(method: Method, optimizer: torch.optim.Optimizer | None) -> str:
    if optimizer is not None and optimizer.param_groups:
        return f"{optimizer.param_groups[0]['lr']:.3g}"
    lr = getattr(method, "lr", None)
    return f"{lr:.3g}" if isinstance(lr, (int, float)) else "unknown"


def fit(
    model: nn.Module,
    method: Method,
    data: Iterable[Sequence[Tensor]],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    steps: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    eval_every: int = 0,
    callbacks: Sequence[Callback] = (),
) -> History:
    """Train ``model`` with ``method`` for ``steps`` steps on batches drawn from ``data``.

    Each step: ``optimizer.zero_grad()``, ``result = method.step(model, batch)`` (which fills
    ``.grad``), ``optimizer.step()``, ``scheduler.step()``, then every callback. A method with
    ``applies_update = True`` changes the parameters itself and takes no optimizer. Every
    ``eval_every`` steps, and after the last one, ``evaluate(model)`` (run in eval mode under
    ``torch.no_grad()``) is recorded under its keys.

    Args:
        model: the ``nn.Module`` to train.
        method: a :class:`~ffkit.methods.Method` (e.g. ``Backprop()``, ``ForwardGradient()``).
        data: an iterable of batches ``(x, y, ...)``; see :func:`cycle` for several epochs.
        optimizer: any ``torch.optim`` optimizer over the model's parameters.
        steps: the number of steps, ≥ 1.
        callbacks: called with a :class:`StepInfo` after each step; one that returns ``True``
            ends the run (``history.stopped_early``). See :func:`progress`, :func:`log_every`,
            :func:`stop_below`.

    Raises :class:`~ffkit.methods.DivergenceError` at the first non-finite loss or directional
    derivative, naming the step and the learning rate; ``ValueError``/``TypeError`` for bad
    arguments (checked before the first step).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(method, Method):
        raise TypeError(
            f"method must be an ffkit.methods.Method (Backprop(), ForwardGradient(), ...), got {type(method).__name__}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0:
        raise ValueError(f"eval_every must be an int >= 0, got {eval_every!r}")
    if method.applies_update and optimizer is not None:
        raise ValueError(f"{type(method).__name__} updates the parameters itself; call fit without an optimizer")
    if not method.applies_update and optimizer is None:
        raise ValueError(f"{type(method).__name__} fills .grad; fit needs an optimizer to take the step")
    if scheduler is not None and optimizer is None:
        raise ValueError("a scheduler needs an optimizer")
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"callbacks must be callable, got {type(cb).__name__}")
    history = History()
    iterator = iter(data)
    elapsed = 0.0

    def record_eval(step: int) -> None:
        if evaluate is None:
            return
        was_training = model.training
        model.eval()
        with torch.no_grad():
            metrics = evaluate(model)
        model.train(was_training)
        history.eval_step.append(step)
        for key, value in metrics.items():
            history.eval.setdefault(key, []).append(float(value))

    model.train()
    step = 0
    try:
        for step in range(1, steps + 1):
            try:
                batch = next(iterator)
            except StopIteration:
                raise ValueError(f"data ran out after {step - 1} of {steps} steps; use ffkit.train.cycle") from None
            start = time.perf_counter()
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            try:
                result = method.step(model, batch)
                if not math.isfinite(result.loss):
                    raise DivergenceError(f"the training loss became {result.loss}")
            except DivergenceError as err:
                raise DivergenceError(
                    f"at step {step} (learning rate {_learning_rate(method, optimizer)}): {err}; lower the learning rate"
                ) from err
            if optimizer is not None:
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            elapsed += time.perf_counter() - start
            history.step.append(step)
            history.loss.append(float(result.loss))
            history.seconds.append(elapsed)
            if result.details:
                history.details.append(dict(result.details))
            if eval_every and step % eval_every == 0 and step != steps:
                record_eval(step)
            info = StepInfo(step, result, model, history)
            if any([bool(cb(info)) for cb in callbacks]):
                history.stopped_early = step < steps
                break
    finally:
        for cb in callbacks:  # a progress bar closes even when the run stops early or fails
            close = getattr(cb, "close", None)
            if callable(close):
                close()
    if not history.eval_step or history.eval_step[-1] != step:  # a run stopped at an evaluation step
        record_eval(step)
    return history


# --------------------------------------------------------------------------- callbacks


class progress:  # noqa: N801 - used like a function: callbacks=[progress(steps)]
    """A tqdm progress bar on stderr (or ``stream``) with the running loss, as a :class:`Callback`.

    :func:`fit` closes it when the run ends, early or not.
    """

    def __init__(self, total: int, *, desc: str = "", stream: IO[str] | None = None) -> None:
        from tqdm.auto import tqdm

        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"total must be an int >= 1, got {total!r}")
        self.total = total
        self.bar = tqdm(total=total, desc=desc, file=stream if stream is not None else sys.stderr, leave=False)

    def __call__(self, info: StepInfo) -> None:
        self.bar.update(1)
        if info.step % 10 == 0 or info.step == self.total:
            self.bar.set_postfix(loss=f"{info.result.loss:.4f}", refresh=False)

    def close(self) -> None:
        """Close the bar (idempotent)."""
        self.bar.close()


def log_every(every: int, *, stream: IO[str] | None = None) -> Callback:
    """Print ``step N  loss L  T s`` every ``every`` steps (to stderr by default)."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")

    def callback(info: StepInfo) -> None:
        if info.step % every == 0:
            print(f"step {info.step}  loss {info.result.loss:.4f}  {info.history.seconds[-1]:.1f} s",
                  file=stream if stream is not None else sys.stderr)

    return callback


def stop_below(loss: float, *, window: int = 1) -> Callback:
    """Stop once the mean training loss of the last ``window`` steps is below ``loss``."""
    if not math.isfinite(loss):
        raise ValueError(f"loss must be finite, got {loss}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")

    def callback(info: StepInfo) -> bool:
        recent = info.history.loss[-window:]
        return len(recent) == window and sum(recent) / window < loss

    return callback


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 2000) -> float:
    """The fraction of ``x`` whose arg-max prediction equals ``y``."""
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"accuracy needs equally many (>0) inputs and labels, got {len(x)} and {len(y)}")
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(dim=1) == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / len(x)
