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
:class:`LocalBackprop`              LG-BP: backprop of a LocalMixer's local losses
:class:`WeightPerturbation`         FG-W on a LocalMixer (exact heads); ``LocalWeightPerturbation``
                                    is LG-FG-W
:class:`ActivityPerturbation`       FG-A: tangents on the activities, weight gradients by local
                                    outer products; ``LocalActivityPerturbation`` is LG-FG-A
:class:`LowRankForwardGradient`     FG-W of an MLP with rank-r weight tangents, the forward pass
                                    written out
:class:`GuessedForwardGradient`     the projection of ∇L onto a guess (a local loss's gradient)
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
from ffkit.methods.guess import GuessedForwardGradient
from ffkit.methods.lean import LeanForwardGradient, lean_forward_gradient_step, plain_forward_gradient_step
from ffkit.methods.local import (
    ActivityPerturbation,
    LocalActivityPerturbation,
    LocalBackprop,
    LocalWeightPerturbation,
    WeightPerturbation,
)
from ffkit.methods.shared_seed import AllReduceGradient, SharedSeedForwardGradient
from ffkit.methods.structured import LowRankForwardGradient

__all__ = [
    "ActivityPerturbation",
    "AllReduceGradient",
    "Backprop",
    "Batch",
    "DivergenceError",
    "ForwardForward",
    "ForwardGradient",
    "ForwardGradientForwardForward",
    "GradFn",
    "GuessedForwardGradient",
    "LeanForwardGradient",
    "LocalActivityPerturbation",
    "LocalBackprop",
    "LocalWeightPerturbation",
    "LossFn",
    "LowRankForwardGradient",
    "LossMethod",
    "Method",
    "SharedSeedForwardGradient",
    "StepResult",
    "UnsupervisedForwardForward",
    "WeightPerturbation",
    "backprop_grad",
    "create",
    "forward_gradient",
    "lean_forward_gradient_step",
    "names",
    "plain_forward_gradient_step",
    "register",
]
