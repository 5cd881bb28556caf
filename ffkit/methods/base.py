"""The protocol every way to train follows, and what a training step reports.

A *method* turns one batch into parameter gradients. :class:`Method` has one job,
``step(model, batch) -> StepResult``: fill ``p.grad`` of the model's trainable parameters (adding
to what is there, as ``loss.backward()`` does) and return the loss and whatever else the method
measures. The optimizer step that follows is plain ``torch.optim``, so backprop, forward
gradients, local losses and Forward-Forward all train with the same loop
(:func:`ffkit.train.fit`) and any optimizer, schedule or weight decay.

Two refinements:

* :class:`LossMethod` is a method for one global loss L(θ) = ``loss(model(x), y)``. It only needs a
  closure that evaluates L, so it is also callable as ``method(model, closure) -> loss``, the
  shape of ``loss.backward()``'s replacement inside a hand-written loop.
* A method with ``applies_update = True`` changes the parameters itself instead of filling
  ``.grad`` (the memory-lean forward gradient, which never holds a parameter-sized gradient);
  :func:`ffkit.train.fit` then takes no optimizer.

Methods are registered by name (:func:`register`, :func:`create`), so that command-line tools
and experiment tables name them as the book does ("backprop", "fg", "lg-fg-a", "ff", ...).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch.nn.functional as F
from torch import Tensor, nn

from ffkit import tangents

__all__ = [
    "Batch",
    "DivergenceError",
    "GradFn",
    "LossFn",
    "LossMethod",
    "Method",
    "StepResult",
    "check_directions",
    "check_finite",
    "check_lr",
    "check_seed",
    "check_step",
    "create",
    "inputs_targets",
    "names",
    "register",
    "trainable",
]

#: One batch as a data loader yields it, usually ``(x, y)``.
Batch = Sequence[Tensor]
#: ``loss(output, target) -> scalar``: the global loss of a :class:`LossMethod`.
LossFn = Callable[[Tensor, Tensor], Tensor]
#: The closure interface of a :class:`LossMethod`: ``grad_fn(model, closure) -> loss`` fills
#: ``.grad`` for the loss that ``closure()`` computes and returns it, detached.
GradFn = Callable[[nn.Module, Callable[[], Tensor]], Tensor]


class DivergenceError(RuntimeError):
    """Training produced a NaN or infinite loss, directional derivative or gradient."""


@dataclass
class StepResult:
    """What one training step reports.

    Attributes:
        loss: the training loss on the batch, before the update (for local methods, the sum of
            the local losses).
        details: anything else the method measured, by name (per-layer losses, the directional
            derivatives, goodness of positive and negative data, ...).
    """

    loss: float
    details: dict[str, Any] = field(default_factory=dict)


def check_finite(value: float | Tensor, what: str) -> float:
    """``float(value)``, or :class:`DivergenceError` naming ``what`` if it is NaN or infinite."""
    number = float(value)
    if not math.isfinite(number):
        raise DivergenceError(f"{what} is {number}")
    return number


def check_directions(directions: object) -> int:
    """K, the number of tangents per step: an int >= 1 (``True`` is not a number of directions)."""
    if isinstance(directions, bool) or not isinstance(directions, int) or directions < 1:
        raise ValueError(f"directions must be an int >= 1 (the number K of tangents), got {directions!r}")
    return directions


def check_seed(seed: object) -> int:
    """A run's tangent seed: a non-negative int, or ``None`` for one drawn from torch's default generator."""
    if seed is None:
        return tangents.random_seed()
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    return seed


def check_step(step: object) -> int:
    """A step index t: a non-negative int."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    return step


def check_lr(lr: object) -> float:
    """A learning rate: a positive finite number."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    return float(lr)


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` for every distinct trainable parameter, in ``named_parameters`` order.

    Raises ``TypeError`` for a non-module or a trainable integer parameter and ``ValueError``
    for a model without trainable parameters.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    for name, p in named:
        if not p.is_floating_point():
            raise TypeError(f"parameter {name!r} has dtype {p.dtype}; gradients need floating-point parameters")
    return named


def inputs_targets(batch: object, method: object) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of a batch ``(x, y, ...)``; a clear error for anything else."""
    if isinstance(batch, Tensor) or not isinstance(batch, Sequence) or len(batch) < 2:
        raise TypeError(
            f"{type(method).__name__} needs batches (inputs, targets, ...), got "
            f"{type(batch).__name__}{'' if not isinstance(batch, Sequence) else f' of length {len(batch)}'}"
        )
    return batch[0], batch[1]


class Method(abc.ABC):
    """A way to train: ``step(model, batch)`` fills ``.grad`` and returns a :class:`StepResult`.

    Subclasses set ``name`` (the registry key, see :func:`register`) and implement :meth:`step`.
    A method that updates the parameters itself sets ``applies_update = True``.
    """

    name: ClassVar[str] = ""
    applies_update: ClassVar[bool] = False

    @abc.abstractmethod
    def step(self, model: nn.Module, batch: Batch) -> StepResult:
        """Fill ``p.grad`` of ``model``'s trainable parameters from ``batch`` (accumulating, as
        ``backward()`` does) and return the loss before the update."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LossMethod(Method):
    """A method for one global loss L(θ) = ``loss(model(x), y)`` (cross-entropy by default).

    Subclasses implement :meth:`grad`, the closure interface: ``grad(model, closure)`` fills
    ``.grad`` for the scalar that ``closure()`` computes and returns it detached. ``step`` builds
    that closure from the batch, and calling the method is ``grad``::

        optimizer.zero_grad()
        loss = method(model, lambda: F.cross_entropy(model(x), y))
        optimizer.step()
    """

    def __init__(self, loss: LossFn | None = None) -> None:
        if loss is not None and not callable(loss):
            raise TypeError(f"loss must be callable as loss(output, target), got {type(loss).__name__}")
        self.loss: LossFn = F.cross_entropy if loss is None else loss

    @abc.abstractmethod
    def grad(self, model: nn.Module, closure: Callable[[], Tensor]) -> Tensor:
        """Fill ``.grad`` for the loss ``closure()`` computes; return that loss, detached."""

    def __call__(self, model: nn.Module, closure: Callable[[], Tensor]) -> Tensor:
        return self.grad(model, closure)

    def closure(self, model: nn.Module, batch: Batch) -> Callable[[], Tensor]:
        """The closure of one batch ``(x, y, ...)``: ``loss(model(x), y)``."""
        x, y = inputs_targets(batch, self)
        return lambda: self.loss(model(x), y)

    def step(self, model: nn.Module, batch: Batch) -> StepResult:
        loss = self.grad(model, self.closure(model, batch))
        return StepResult(loss=check_finite(loss, "the training loss"))


# --------------------------------------------------------------------------- registry

M = TypeVar("M", bound=type[Method])
_REGISTRY: dict[str, type[Method]] = {}


def register(*aliases: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`Method` under its ``name`` and any ``aliases``."""

    def deco(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Method)) or not cls.name:
            raise TypeError("register() decorates Method subclasses that set a class attribute `name`")
        for key in (cls.name, *aliases):
            key = key.lower()
            if key in _REGISTRY and _REGISTRY[key] is not cls:
                raise ValueError(f"a method named {key!r} is registered already ({_REGISTRY[key].__name__})")
            _REGISTRY[key] = cls
        return cls

    return deco


def names() -> tuple[str, ...]:
    """The registered method names (aliases included)."""
    return tuple(_REGISTRY)


def create(name: str, **options: Any) -> Method:
    """The registered method called ``name`` (case-insensitive), built with ``options``."""
    if not isinstance(name, str) or name.lower() not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name.lower()](**options)

