"""A minimal, method-agnostic training loop.

The loop only needs to know how to fill ``p.grad`` for every parameter ``p``: by backprop
(:func:`backprop_grad`) or by any other estimator with the same signature (the forward-gradient
estimators of :mod:`ffkit.fg`). Everything after that (the optimizer, the schedule) is plain
``torch.optim``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

#: Fills ``.grad`` of the model's parameters for the loss that ``closure()`` computes, returns
#: that loss (detached). ``closure`` runs the model on the current batch.
GradFn = Callable[[nn.Module, Callable[[], Tensor]], Tensor]


class DivergenceError(RuntimeError):
    """Training produced a NaN or infinite loss."""


def backprop_grad(model: nn.Module, closure: Callable[[], Tensor]) -> Tensor:
    """The reference gradient: one forward pass, one backward pass, ``p.grad = dL/dp``."""
    loss = closure()
    loss.backward()
    return loss.detach()


@dataclass
class History:
    """What :func:`fit` records: per-step training loss and wall-clock time, periodic evaluations."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval: dict[str, list[float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """A JSON-serialisable copy."""
        return {
            "step": list(self.step),
            "loss": list(self.loss),
            "seconds": list(self.seconds),
            "eval_step": list(self.eval_step),
            "eval": {k: list(v) for k, v in self.eval.items()},
        }


def cycle(batches: Callable[[], Iterable[tuple[Tensor, Tensor]]]) -> Iterator[tuple[Tensor, Tensor]]:
    """Repeat the epochs that ``batches()`` yields forever (a new epoch, a new call)."""
    while True:
        empty = True
        for batch in batches():
            empty = False
            yield batch
        if empty:
            raise ValueError("the batch source yielded no batches")


def fit(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    grad_fn: GradFn = backprop_grad,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    eval_every: int = 0,
) -> History:
    """Train ``model`` for ``steps`` optimizer steps on batches ``(x, y)`` drawn from ``data``.

    Each step computes ``L = loss_fn(model(x), y)``, lets ``grad_fn`` fill the parameters'
    ``.grad``, and calls ``optimizer.step()`` (then ``scheduler.step()``). Every ``eval_every``
    steps, and after the last one, ``evaluate(model)`` is recorded under its keys.

    Raises :class:`DivergenceError` at the first non-finite loss, naming the step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if eval_every < 0:
        raise ValueError(f"eval_every must be >= 0, got {eval_every}")
    history = History()
    iterator = iter(data)
    elapsed = 0.0

    def record_eval(step: int) -> None:
        if evaluate is None:
            return
        model.eval()
        with torch.no_grad():
            metrics = evaluate(model)
        model.train()
        history.eval_step.append(step)
        for key, value in metrics.items():
            history.eval.setdefault(key, []).append(float(value))

    model.train()
    for step in range(1, steps + 1):
        try:
            x, y = next(iterator)
        except StopIteration:
            raise ValueError(f"data ran out after {step - 1} of {steps} steps; use ffkit.train.cycle") from None
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        try:
            loss = grad_fn(model, lambda: loss_fn(model(x), y))
        except DivergenceError as err:
            raise DivergenceError(f"at step {step}: {err}; lower the learning rate") from err
        value = float(loss)
        if not math.isfinite(value):
            raise DivergenceError(
                f"the training loss became {value} at step {step}; lower the learning rate"
            )
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        elapsed += time.perf_counter() - start
        history.step.append(step)
        history.loss.append(value)
        history.seconds.append(elapsed)
        if eval_every and step % eval_every == 0 and step != steps:
            record_eval(step)
    record_eval(steps)
    return history


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
