"""Ways to train, behind one protocol.

Every method is a :class:`Method`: ``method.step(model, batch)`` fills the ``.grad`` of the model's
trainable parameters from one batch and returns a :class:`StepResult` (the loss and whatever the
method measures); :func:`ffkit.train.fit` drives any of them with any ``torch.optim`` optimizer.

==================================  ========================================================
method                              what fills ``.grad``
==================================  ========================================================
:class:`Backprop`                   ``loss.backward()``: the exact gradient
:class:`ForwardGradient`            (1/K) Σ_k (∇L·v_k) v_k from K forward-mode passes (FG-W)
:class:`LeanForwardGradient`        the same SGD step applied in place, tangents regenerated
                                    layer by layer (memory of inference)
:class:`SharedSeedForwardGradient`  data parallelism that all-reduces K scalars
:class:`AllReduceGradient`          data parallelism that all-reduces the gradient
:class:`ForwardForward`             each layer's own Forward-Forward loss: exact local gradients
                                    (one product per layer), or forward gradients per layer
                                    (:class:`ForwardGradientForwardForward`); supervised or
                                    unsupervised (:class:`UnsupervisedForwardForward`)
==================================  ========================================================

Methods are registered by name (:func:`create`, :func:`names`); new ones subclass
:class:`Method` (or :class:`LossMethod` for a single global loss) and register with
``@register("alias")``.
"""

from __future__ import annotations

from ffkit.methods.backprop import Backprop, backprop_grad
from ffkit.methods.base import (
    Batch,
    DivergenceError,
    GradFn,
    LossFn,
    LossMethod,
    Method,
    StepResult,
    create,
    names,
    register,
)
from ffkit.methods.forward_forward import (
    ForwardForward,
    ForwardGradientForwardForward,
    UnsupervisedForwardForward,
)
from ffkit.methods.forward_gradient import ForwardGradient, forward_gradient
from ffkit.methods.lean import LeanForwardGradient, lean_forward_gradient_step, plain_forward_gradient_step
from ffkit.methods.shared_seed import AllReduceGradient, SharedSeedForwardGradient

__all__ = [
    "AllReduceGradient",
    "Backprop",
    "Batch",
    "DivergenceError",
    "ForwardForward",
    "ForwardGradient",
    "ForwardGradientForwardForward",
    "GradFn",
    "LeanForwardGradient",
    "LossFn",
    "LossMethod",
    "Method",
    "SharedSeedForwardGradient",
    "StepResult",
    "UnsupervisedForwardForward",
    "backprop_grad",
    "create",
    "forward_gradient",
    "lean_forward_gradient_step",
    "names",
    "plain_forward_gradient_step",
    "register",
]
