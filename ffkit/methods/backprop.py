"""Backpropagation: the reference every other method is measured against.

One forward pass records the computation, one reverse pass (``loss.backward()``) writes the exact
gradient ∇L(θ) into ``p.grad``. Its cost is about R_b ≈ 2–3 forward passes, and its memory holds
every activation until the backward pass reaches it (chapters 2 and 4).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ffkit.methods.base import LossFn, LossMethod, register

__all__ = ["Backprop", "backprop_grad"]


def backprop_grad(model: nn.Module, closure: Callable[[], Tensor]) -> Tensor:
    """The closure interface of backprop: ``closure().backward()``; returns the loss, detached."""
    loss = closure()
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(f"the closure must return a scalar loss tensor, got {type(loss).__name__}")
    loss.backward()
    return loss.detach()


@register("bp")
class Backprop(LossMethod):
    """Exact gradients by reverse-mode automatic differentiation (``loss.backward()``).

    Args:
        loss: ``loss(output, target)``, the global loss L; cross-entropy by default.
    """

    name = "backprop"

    def __init__(self, loss: LossFn | None = None) -> None:
        super().__init__(loss)

    def grad(self, model: nn.Module, closure: Callable[[], Tensor]) -> Tensor:
        return backprop_grad(model, closure)
