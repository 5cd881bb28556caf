"""Memory-lean forward-gradient SGD: tangents regenerated from a seed, updates applied in place.

A weight-perturbation forward gradient needs, for each of K directions, one tangent v ∈ R^n
(n = number of parameters θ) and the scalar ∇f·v; the step is

    θ ← θ − η g,    g = (1/K) Σ_k (∇f·v_k) v_k.

Written plainly (:func:`plain_forward_gradient_step`), the step holds every v_k and g in memory:
model-sized buffers on top of the model itself. Nothing forces that. A tangent drawn from a
seeded generator can be drawn again, identically, whenever it is needed, so
:func:`lean_forward_gradient_step`

1. runs the model layer by layer in forward mode, drawing each layer's slice of v_k from the
   generator just before that layer runs and dropping it right after, which yields ∇f·v_k while
   holding one layer's tangent at a time (and no activations: forward mode keeps none);
2. re-seeds the generator and walks over the parameters again, drawing the same slices and
   applying ``θ_p ← θ_p − η (∇f·v_k)/K · v_{k,p}`` in place, one parameter tensor at a time.

Its extra memory is one parameter tensor's tangent plus one layer's activations and their
tangents: about the memory of inference. The same trick (for a zeroth-order, two-forward-pass
estimate instead of a forward-mode one) is what lets MeZO fine-tune language models in the memory
of inference (Malladi et al., 2023).

Both functions draw the tangents in the same order from the same seeds, so for equal arguments
they apply the same update up to floating-point rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from ffkit.autodiff import module_jvp
from ffkit.fg import _check_sampler, sample_tangent_
from ffkit.train import DivergenceError

#: ``loss_fn(output) -> scalar``: the loss of the model's output on the current batch.
LossFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class LeanStep:
    """What one forward-gradient step returns: the loss f(θ) before the update and the K
    directional derivatives ∇f·v_k (a tensor of shape ``(K,)``)."""

    loss: float
    dots: Tensor


def _draw(like: Tensor, sampler: str, generator: torch.Generator) -> Tensor:
    """One tangent slice shaped like ``like``, drawn from ``generator`` by ffkit.fg's samplers."""
    return sample_tangent_(torch.empty_like(like), sampler, generator)


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters that receive a tangent, in ``named_parameters`` order; refuses shared ones."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    named = [(name, p) for name, p in model.named_parameters(remove_duplicate=False) if p.requires_grad]
    if len({id(p) for _, p in named}) != len(named):
        raise ValueError("the model shares a parameter between layers; seeded tangents need distinct parameters")
    if not named:
        raise ValueError("the model has no trainable parameters")
    for name, p in named:
        if not p.is_floating_point():
            raise TypeError(f"parameter {name!r} has dtype {p.dtype}; forward gradients need floating point")
    return named


def direction_seeds(seed: int, directions: int) -> list[int]:
    """The K per-direction seeds derived from one step seed (distinct, reproducible)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(directions, int) or directions < 1:
        raise ValueError(f"directions must be a positive int, got {directions!r}")
    g = torch.Generator().manual_seed(seed)
    return [int(s) for s in torch.randint(0, 2**62, (directions,), generator=g)]


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def seeded_tangents(model: nn.Module, seed: int, *, sampler: str = "gaussian") -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, v_p)`` for each trainable parameter p, drawn from one generator seeded with ``seed``.

    The parameters are visited in ``model.named_parameters()`` order, so calling this twice with
    the same seed regenerates the same tangent v ∈ R^n, slice by slice. This is the order in which
    :func:`lean_forward_gradient_step` draws them for an ``nn.Sequential``.
    """
    _check_sampler(sampler)
    named = _trainable(model)
    gen = _generator(seed, named[0][1].device)
    for name, p in named:
        yield name, _draw(p, sampler, gen)


def _check_common(model: nn.Module, lr: float, directions: int, sampler: str) -> None:
    _check_sampler(sampler)
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not isinstance(directions, int) or directions < 1:
        raise ValueError(f"directions must be a positive int, got {directions!r}")


def _scalar(loss: object) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar tensor, got {shape}")
    return loss.reshape(())


def _finite(loss: float, dots: list[float]) -> None:
    if not math.isfinite(loss) or not all(math.isfinite(d) for d in dots):
        raise DivergenceError(f"non-finite loss {loss} or directional derivative {dots}; lower the learning rate")


@torch.no_grad()
def _apply_update(model: nn.Module, seeds: list[int], dots: list[float], lr: float, sampler: str) -> None:
    """θ_p ← θ_p − η (1/K) Σ_k (∇f·v_k) v_{k,p}, one parameter at a time, regenerating each v_{k,p}."""
    named = _trainable(model)
    device = named[0][1].device
    gens = [_generator(s, device) for s in seeds]
    k = len(seeds)
    for _, p in named:
        for gen, dot in zip(gens, dots):
            p.add_(_draw(p, sampler, gen), alpha=-lr * dot / k)


def _fully_trainable_linear(module: nn.Module) -> bool:
    return type(module) is nn.Linear and all(p.requires_grad for p in module.parameters())


def _linear_jvp(layer: nn.Linear, h: Tensor, sampler: str, gen: torch.Generator) -> Tensor:
    """z = W h + b and its tangent ż = W ḣ + Ẇ h + ḃ for a batch of rows, with one buffer for ż.

    Forward mode through ``F.linear`` forms the three terms of ż as separate tensors; here ż is
    accumulated in place, which keeps two B × out temporaries fewer alive. Ẇ and ḃ are drawn in
    ``named_parameters`` order (weight, then bias), as :func:`seeded_tangents` draws them.
    """
    primal, tangent = fwAD.unpack_dual(h)
    weight = layer.weight.detach()
    w_dot = _draw(weight, sampler, gen)
    bias = layer.bias.detach() if layer.bias is not None else None
    b_dot = _draw(bias, sampler, gen) if bias is not None else None
    z = nn.functional.linear(primal, weight, bias)
    z_dot = nn.functional.linear(primal, w_dot, b_dot)
    del w_dot, b_dot
    if tangent is not None and z_dot.dim() == 2:
        z_dot.addmm_(tangent, weight.t())
    elif tangent is not None:
        z_dot.add_(nn.functional.linear(tangent, weight))
    return fwAD.make_dual(z, z_dot)


def tangent_forward(module: nn.Module, h: Tensor, sampler: str, generator: torch.Generator) -> Tensor:
    """Run one layer in forward mode with its tangent slice freshly drawn from ``generator``.

    Must be called inside ``torch.autograd.forward_ad.dual_level()``; ``h`` is the (dual) input,
    the result is the dual output (value and tangent). The module's trainable parameters get
    tangents drawn in ``named_parameters`` order, which are dropped when the call returns.
    """
    if _fully_trainable_linear(module):
        return _linear_jvp(module, h, sampler, generator)  # type: ignore[arg-type]
    duals = {
        name: fwAD.make_dual(p.detach(), _draw(p, sampler, generator))
        for name, p in module.named_parameters(remove_duplicate=False)
        if p.requires_grad
    }
    return torch.func.functional_call(module, duals, (h,)) if duals else module(h)


def lean_forward_gradient_step(
    model: nn.Sequential,
    inputs: Tensor,
    loss_fn: LossFn,
    *,
    lr: float,
    seed: int,
    directions: int = 1,
    sampler: str = "gaussian",
) -> LeanStep:
    """One SGD step θ ← θ − η (1/K) Σ_k (∇f·v_k) v_k without any model-sized buffer.

    ``model`` is an ``nn.Sequential`` (its children run one after the other on ``inputs``) and
    f(θ) = ``loss_fn(model(inputs))``. For each direction k, the children run in forward mode;
    a child's slice of v_k is drawn from a generator seeded with the k-th of
    :func:`direction_seeds` just before the child runs and freed after it, so at no time is more
    than one child's tangent in memory, and no activation is stored for a backward pass. The
    update then regenerates the same slices and changes the parameters in place. ``nn.Linear``
    children go through a path that accumulates their output tangent ż = W ḣ + Ẇ h + ḃ in one
    buffer (:func:`_linear_jvp`); other children through PyTorch's forward mode. Returns the loss
    (of the first pass) and the K directional derivatives ∇f·v_k.

    Raises ``TypeError`` for a model that is not an ``nn.Sequential``, ``ValueError`` for a bad
    learning rate, sampler, seed or direction count or a non-scalar loss, and
    :class:`~ffkit.train.DivergenceError` (before touching the parameters) if the loss or a
    directional derivative is not finite.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"lean_forward_gradient_step streams layer by layer and needs an nn.Sequential, got {type(model).__name__}"
        )
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a tensor, got {type(inputs).__name__}")
    _check_common(model, lr, directions, sampler)
    _trainable(model)
    seeds = direction_seeds(seed, directions)
    device = next(model.parameters()).device
    losses: list[float] = []
    dots: list[float] = []
    with torch.no_grad():
        for s in seeds:
            gen = _generator(s, device)
            with fwAD.dual_level():
                h: Tensor = inputs
                for child in model:
                    h = tangent_forward(child, h, sampler, gen)
                out = _scalar(loss_fn(h))
                del h
                primal, tangent = fwAD.unpack_dual(out)
                losses.append(float(primal))
                dots.append(0.0 if tangent is None else float(tangent))
    _finite(losses[0], dots)
    _apply_update(model, seeds, dots, float(lr), sampler)
    return LeanStep(loss=losses[0], dots=torch.tensor(dots, dtype=torch.float64))


def plain_forward_gradient_step(
    model: nn.Module,
    inputs: Tensor,
    loss_fn: LossFn,
    *,
    lr: float,
    seed: int,
    directions: int = 1,
    sampler: str = "gaussian",
) -> LeanStep:
    """The same step written plainly: materialise every v_k and g, then θ ← θ − η g.

    Draws the same tangents as :func:`lean_forward_gradient_step` (from :func:`direction_seeds`
    via :func:`seeded_tangents`), computes each ∇f·v_k with one forward-mode pass over the whole
    model (:func:`ffkit.autodiff.module_jvp`), forms g = (1/K) Σ_k (∇f·v_k) v_k and subtracts η g.
    It holds K + 1 model-sized buffers (the tangents and g) at the moment of the update; it
    exists as the reference the lean step is tested against and as the "naive" row of the
    memory benchmark. Works for any ``nn.Module``.
    """
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a tensor, got {type(inputs).__name__}")
    _check_common(model, lr, directions, sampler)
    named = _trainable(model)
    seeds = direction_seeds(seed, directions)
    tangents = [dict(seeded_tangents(model, s, sampler=sampler)) for s in seeds]
    losses: list[float] = []
    dots: list[float] = []
    for v in tangents:
        value, dot = module_jvp(model, lambda: _scalar(loss_fn(model(inputs))), v)
        losses.append(float(value))
        dots.append(float(dot))
    _finite(losses[0], dots)
    with torch.no_grad():
        grad = {name: sum(d * v[name] for d, v in zip(dots, tangents)) / directions for name, _ in named}
        for name, p in named:
            p.sub_(lr * grad[name])
    return LeanStep(loss=losses[0], dots=torch.tensor(dots, dtype=torch.float64))
