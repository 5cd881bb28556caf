"""Memory-lean forward-gradient SGD: tangents regenerated from a seed, the update applied in place.

A weight-perturbation forward gradient needs, for each of K directions, one tangent v ∈ Rⁿ (n the
number of parameters θ) and the scalar ∇f·v; the SGD step is

    θ ← θ − η g,    g = (1/K) Σ_k (∇f·v_k) v_k.

Written plainly (:func:`plain_forward_gradient_step`), the step holds every v_k and g in memory:
model-sized buffers on top of the model itself. Nothing forces that. Tangent k of step t is drawn
from ``ffkit.tangents.generator(seed, t, k)`` and can be drawn again, identically, whenever it is
needed, so :func:`lean_forward_gradient_step`

1. runs the model layer by layer in forward mode, drawing each layer's slice of v_k just before
   that layer runs and dropping it right after, which yields ∇f·v_k while holding one layer's
   tangent at a time (and no activations: forward mode keeps none);
2. draws the same slices again, parameter by parameter, and applies
   θ_p ← θ_p − η (1/K) Σ_k (∇f·v_k) v_{k,p} in place (:func:`ffkit.tangents.combine`).

Its extra memory is one parameter tensor's tangent plus one layer's activations and their
tangents: about the memory of inference. The same trick (for a zeroth-order, two-forward-pass
estimate instead of a forward-mode one) lets MeZO fine-tune language models in the memory of
inference (Malladi et al., 2023). Between the two phases the K numbers ∇f·v_k can be averaged
over data-parallel workers (``reduce``), which is the shared-seed step of
:mod:`ffkit.methods.shared_seed` in lean form.

All three steps (plain, lean, and :class:`~ffkit.methods.forward_gradient.ForwardGradient` with
SGD) draw the same tangents for the same (seed, step), so they apply the same update up to
floating-point rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from ffkit import tangents as tg
from ffkit.autodiff import module_jvp
from ffkit.methods.base import (
    Batch,
    DivergenceError,
    Method,
    StepResult,
    check_directions,
    check_lr,
    check_seed,
    check_step,
    inputs_targets,
    register,
    trainable,
)

__all__ = [
    "LeanForwardGradient",
    "LeanStep",
    "lean_forward_gradient_step",
    "plain_forward_gradient_step",
    "tangent_forward",
]

#: ``loss_fn(output) -> scalar``: the loss of the model's output on the current batch.
OutputLoss = Callable[[Tensor], Tensor]
#: Averages the K directional derivatives over workers (in place) between the two phases.
Reduce = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class LeanStep:
    """What one step returns: the loss f(θ) before the update and the K directional derivatives
    ∇f·v_k (a float64 tensor of shape ``(K,)``; after ``reduce``, the averaged ones)."""

    loss: float
    dots: Tensor


def _distinct(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters, refusing parameters shared between layers (a layer-by-layer
    stream would draw two slices for one tensor)."""
    named = trainable(model)
    every = [p for _, p in model.named_parameters(remove_duplicate=False) if p.requires_grad]
    if len(every) != len(named):
        raise ValueError("the model shares a parameter between layers; seeded tangents need distinct parameters")
    return named


def _scalar(loss: object) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar tensor, got {shape}")
    return loss.reshape(())


def _finite(loss: float, dots: Sequence[float]) -> None:
    if not math.isfinite(loss) or not all(math.isfinite(d) for d in dots):
        raise DivergenceError(f"non-finite loss {loss} or directional derivative {list(dots)}")


def _fully_trainable_linear(module: nn.Module) -> bool:
    return type(module) is nn.Linear and all(p.requires_grad for p in module.parameters())


def _linear_jvp(layer: nn.Linear, h: Tensor, dist: tg.Distribution, gen: torch.Generator) -> Tensor:
    """z = W h + b and its tangent ż = W ḣ + Ẇ h + ḃ for a batch of rows, with one buffer for ż.

    Forward mode through ``F.linear`` forms the three terms of ż as separate tensors; here ż is
    accumulated in place, which keeps two B × out temporaries fewer alive. Ẇ and ḃ are drawn in
    ``named_parameters`` order (weight, then bias).
    """
    primal, tangent = fwAD.unpack_dual(h)
    weight = layer.weight.detach()
    bias = layer.bias.detach() if layer.bias is not None else None
    w_dot = dist.fill_(torch.empty_like(weight), gen)
    b_dot = dist.fill_(torch.empty_like(bias), gen) if bias is not None else None
    z = nn.functional.linear(primal, weight, bias)
    z_dot = nn.functional.linear(primal, w_dot, b_dot)
    del w_dot, b_dot
    if tangent is not None and z_dot.dim() == 2:
        z_dot.addmm_(tangent, weight.t())
    elif tangent is not None:
        z_dot.add_(nn.functional.linear(tangent, weight))
    return fwAD.make_dual(z, z_dot)


def tangent_forward(module: nn.Module, h: Tensor, sampler: str | tg.Distribution, gen: torch.Generator) -> Tensor:
    """Run one layer in forward mode with its tangent slice freshly drawn from ``gen``.

    Must be called inside ``torch.autograd.forward_ad.dual_level()``; ``h`` is the (dual) input,
    the result is the dual output (value and tangent). The module's trainable parameters get
    tangents drawn in ``named_parameters`` order, dropped when the call returns.
    """
    dist = tg.get(sampler)
    if _fully_trainable_linear(module):
        return _linear_jvp(module, h, dist, gen)  # type: ignore[arg-type]
    duals = {
        name: fwAD.make_dual(p.detach(), dist.fill_(torch.empty_like(p), gen))
        for name, p in module.named_parameters()
        if p.requires_grad
    }
    return torch.func.functional_call(module, duals, (h,)) if duals else module(h)


def _check_inputs(inputs: object) -> Tensor:
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a tensor, got {type(inputs).__name__}")
    return inputs


def lean_directional_derivatives(
    model: nn.Sequential,
    inputs: Tensor,
    loss_fn: OutputLoss,
    *,
    sampler: str | tg.Distribution,
    seed: int,
    step: int,
    directions: int,
) -> tuple[float, Tensor]:
    """Phase 1 of the lean step: f(θ) and the K numbers ∇f·v_k, one layer's tangent at a time."""
    dist = tg.get(sampler)
    device = next(model.parameters()).device
    losses: list[float] = []
    dots: list[float] = []
    with torch.no_grad():
        for k in range(directions):
            gen = tg.generator(seed, step, k, device)
            with fwAD.dual_level():
                h: Tensor = inputs
                for child in model:
                    h = tangent_forward(child, h, dist, gen)
                out = _scalar(loss_fn(h))
                del h
                primal, tangent = fwAD.unpack_dual(out)
                losses.append(float(primal))
                dots.append(0.0 if tangent is None else float(tangent))
    _finite(losses[0], dots)
    return losses[0], torch.tensor(dots, dtype=torch.float64)


@torch.no_grad()
def apply_regenerated(
    model: nn.Module,
    dots: Tensor | Sequence[float],
    *,
    lr: float,
    sampler: str | tg.Distribution,
    seed: int,
    step: int,
) -> None:
    """Phase 2: θ_p ← θ_p − η (1/K) Σ_k d_k v_{k,p}, parameter by parameter, each v_{k,p} drawn
    again from ``tangents.generator(seed, step, k)`` (the K generators advance in step)."""
    dist = tg.get(sampler)
    named = _distinct(model)
    device = named[0][1].device
    d = [float(x) for x in (dots.tolist() if isinstance(dots, Tensor) else dots)]
    gens = [tg.generator(seed, step, k, device) for k in range(len(d))]
    for _, p in named:
        slices = [[dist.fill_(torch.empty_like(p), gen)] for gen in gens]
        tg.combine(d, slices, out=[p], alpha=-lr)


def lean_forward_gradient_step(
    model: nn.Sequential,
    inputs: Tensor,
    loss_fn: OutputLoss,
    *,
    lr: float,
    seed: int,
    step: int = 0,
    directions: int = 1,
    sampler: str | tg.Distribution = tg.DEFAULT,
    reduce: Reduce | None = None,
) -> LeanStep:
    """One SGD step θ ← θ − η (1/K) Σ_k (∇f·v_k) v_k without any model-sized buffer.

    ``model`` is an ``nn.Sequential`` (its children run one after the other on ``inputs``) and
    f(θ) = ``loss_fn(model(inputs))``. For each direction k the children run in forward mode; a
    child's slice of v_k is drawn from ``tangents.generator(seed, step, k)`` just before the child
    runs and freed after it, so no more than one child's tangent is in memory at a time, and no
    activation is stored for a backward pass. ``reduce``, if given, then averages the K numbers
    ∇f·v_k in place (over data-parallel workers). The update draws the same slices again and
    changes the parameters in place. ``nn.Linear`` children accumulate their output tangent
    ż = W ḣ + Ẇ h + ḃ in one buffer; other children go through PyTorch's forward mode.

    Raises ``TypeError`` for a model that is not an ``nn.Sequential``, ``ValueError`` for a bad
    learning rate, sampler, seed, step or direction count or a non-scalar loss, and
    :class:`~ffkit.methods.base.DivergenceError` (before touching the parameters) if the loss or
    a directional derivative is not finite.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"lean_forward_gradient_step streams layer by layer and needs an nn.Sequential, got {type(model).__name__}"
        )
    _check_inputs(inputs)
    lr = check_lr(lr)
    k = check_directions(directions)
    dist = tg.get(sampler)
    seed, step = check_seed(seed), check_step(step)
    _distinct(model)
    loss, dots = lean_directional_derivatives(model, inputs, loss_fn, sampler=dist, seed=seed, step=step, directions=k)
    if reduce is not None:  # averaged over workers in the parameters' dtype (4K bytes in float32)
        shared = dots.to(next(model.parameters()).dtype)
        reduce(shared)
        dots = shared.to(torch.float64)
        _finite(loss, dots.tolist())
    apply_regenerated(model, dots, lr=lr, sampler=dist, seed=seed, step=step)
    return LeanStep(loss=loss, dots=dots)


def plain_forward_gradient_step(
    model: nn.Module,
    inputs: Tensor,
    loss_fn: OutputLoss,
    *,
    lr: float,
    seed: int,
    step: int = 0,
    directions: int = 1,
    sampler: str | tg.Distribution = tg.DEFAULT,
) -> LeanStep:
    """The same step written plainly: materialise every v_k and g, then θ ← θ − η g.

    Draws the same tangents as :func:`lean_forward_gradient_step`, computes each ∇f·v_k with one
    forward-mode pass over the whole model (:func:`ffkit.autodiff.module_jvp`), forms
    g = (1/K) Σ_k (∇f·v_k) v_k in the buffers of v_1 (scaled in place, as
    :class:`~ffkit.methods.ForwardGradient` does) and subtracts η g. It holds K model-sized
    buffers at the moment of the update (one for K = 1); it is the reference the lean step is
    tested against and the "plain" row of the memory benchmark. Works for any ``nn.Module``.
    """
    _check_inputs(inputs)
    lr = check_lr(lr)
    k = check_directions(directions)
    dist = tg.get(sampler)
    seed, step = check_seed(seed), check_step(step)
    named = _distinct(model)
    params = [p for _, p in named]
    device = params[0].device
    vs = [tg.draw(params, dist, tg.generator(seed, step, i, device)) for i in range(k)]
    losses: list[float] = []
    dots: list[float] = []
    for v in vs:
        value, dot = module_jvp(model, lambda: _scalar(loss_fn(model(inputs))), {n: t for (n, _), t in zip(named, v)})
        losses.append(float(value))
        dots.append(float(dot))
    _finite(losses[0], dots)
    with torch.no_grad():
        g = tg.combine(dots, vs)  # v_1 scaled in place becomes g: K model-sized buffers in all
        for p, gp in zip(params, g):
            p.sub_(gp, alpha=lr)
    return LeanStep(loss=losses[0], dots=torch.tensor(dots, dtype=torch.float64))


@register("lean-fg")
class LeanForwardGradient(Method):
    """The memory-lean forward-gradient SGD step as a :class:`~ffkit.methods.base.Method`.

    It applies θ ← θ − η g itself (``applies_update = True``; :func:`ffkit.train.fit` then takes
    no optimizer), because holding g in ``.grad`` would need the model-sized buffer the method
    exists to avoid. Step t draws its tangents from ``tangents.generator(seed, t, k)``, exactly as
    :class:`~ffkit.methods.forward_gradient.ForwardGradient` does, so with SGD at the same rate the
    two follow the same trajectory up to rounding.

    Args:
        lr: the SGD learning rate η.
        directions: K ≥ 1.
        sampler: the tangent distribution (Rademacher by default).
        seed: the run's tangent seed (``None``: drawn from torch's default generator).
        loss: ``loss(output, target)``; cross-entropy by default.
    """

    name = "lean-forward-gradient"
    applies_update = True

    def __init__(
        self,
        lr: float,
        directions: int = 1,
        sampler: str | tg.Distribution = tg.DEFAULT,
        *,
        seed: int | None = None,
        loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        if loss is not None and not callable(loss):
            raise TypeError(f"loss must be callable as loss(output, target), got {type(loss).__name__}")
        self.lr = check_lr(lr)
        self.directions = check_directions(directions)
        self.distribution = tg.get(sampler)
        self.seed = check_seed(seed)
        self.loss = nn.functional.cross_entropy if loss is None else loss
        self.t = 0

    def __repr__(self) -> str:
        return (f"LeanForwardGradient(lr={self.lr}, directions={self.directions}, "
                f"sampler={self.distribution.name!r}, seed={self.seed})")

    def step(self, model: nn.Module, batch: Batch) -> StepResult:
        x, y = inputs_targets(batch, self)
        result = lean_forward_gradient_step(
            model,  # type: ignore[arg-type]
            x, lambda out: self.loss(out, y), lr=self.lr, seed=self.seed, step=self.t,
            directions=self.directions, sampler=self.distribution,
        )
        self.t += 1
        return StepResult(loss=result.loss, details={"dots": result.dots.tolist()})
