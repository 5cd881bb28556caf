"""Forward gradients: a gradient estimate from forward-mode passes alone (Baydin et al. 2022).

For a function f: Rⁿ → R at parameters θ and a random tangent v with E[v vᵀ] = I
(:mod:`ffkit.tangents`), one forward-mode pass gives the directional derivative ∇f·v, and

    g = (∇f·v) v

is an unbiased estimate of ∇f(θ), because E[(∇f·v) v] = E[v vᵀ] ∇f = ∇f. Averaging K independent
directions, g = (1/K) Σ_k (∇f·v_k) v_k, divides its variance by K. With i.i.d. entries of fourth
moment κ the variance is (n + κ − 2)‖∇f‖²/K: (n − 1)‖∇f‖²/K for the default Rademacher tangents
and (n + 1)‖∇f‖²/K for Gaussian ones (:mod:`ffkit.theory`).

Two entry points:

* :func:`forward_gradient` for a function of a tensor (or a dict/tuple/list of tensors);
* :class:`ForwardGradient`, the :class:`~ffkit.methods.base.Method` for an ``nn.Module``: it
  writes g into every parameter's ``.grad``, so any ``torch.optim`` optimizer, scheduler or weight
  decay runs unchanged.

Both evaluate f under ``torch.no_grad()`` with ``torch.autograd.forward_ad`` dual tensors (a
module through ``torch.func.functional_call``): no autograd graph is recorded and no activation
is stored. Tangent k of call t is drawn from ``ffkit.tangents.generator(seed, t, k)``, straight
into the buffers that become g, so a step allocates one parameter-sized buffer, as
``loss.backward()`` does; the memory-lean and shared-seed methods draw the same tangents from the
same seed. A linear or convolution layer whose input carries no tangent (the first layer) gets
its output tangent from one product ``layer(x, Ẇ, ḃ)`` instead of forward AD's two (one of them
with a zero tangent).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Union

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ffkit import tangents as tg
from ffkit.autodiff import call_with
from ffkit.methods.base import (
    DivergenceError,
    LossFn,
    LossMethod,
    check_directions,
    check_seed,
    check_step,
    register,
    trainable,
)

__all__ = [
    "ForwardGradient",
    "add_to_grad",
    "estimate",
    "forward_gradient",
    "module_directional",
]

#: Parameters accepted by :func:`forward_gradient`: one tensor, or a dict/tuple/list of tensors.
Params = Union[Tensor, Mapping[str, Tensor], Sequence[Tensor]]


class _SkipZeroTangentProducts(TorchFunctionMode):
    """Linear and convolution layers whose *input* carries no tangent get their output tangent
    from one product, ``layer(x, Ẇ, ḃ)``.

    Forward AD treats the missing input tangent as a materialised zero and multiplies it by the
    weight anyway; for the first layer of an MLP that is a whole wasted matrix product. The layer
    is linear in (W, b) for a fixed input x, so the tangent of ``layer(x, W, b)`` is exactly
    ``layer(x, Ẇ, ḃ)``. Every other operation runs unchanged.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in _LAYERS and len(args) >= 2 and "input" not in kwargs:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if isinstance(x, Tensor) and isinstance(weight, Tensor) and fwAD.unpack_dual(x).tangent is None:
                w_p, w_t = fwAD.unpack_dual(weight)
                b_p, b_t = fwAD.unpack_dual(bias) if isinstance(bias, Tensor) else (bias, None)
                if w_t is not None:
                    rest = args[3:]
                    extra = {k: v for k, v in kwargs.items() if k != "bias"}
                    primal = func(x, w_p, b_p, *rest, **extra)
                    tangent = func(x, w_t, b_t, *rest, **extra)
                    return fwAD.make_dual(primal, tangent)
        return func(*args, **kwargs)


_LAYERS = frozenset(
    {torch.nn.functional.linear, torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d}
)


def _unpack_scalar(out: object, what: str, finite: bool = True) -> tuple[Tensor, float]:
    """The primal value and the directional derivative of a dual scalar; clear errors otherwise
    (with ``finite=False`` a NaN or infinity is returned rather than raised)."""
    if not isinstance(out, Tensor):
        raise TypeError(f"{what} must return a scalar tensor, got {type(out).__name__}")
    if out.numel() != 1:
        raise ValueError(f"{what} must return a scalar (one element), got shape {tuple(out.shape)}")
    primal, tangent = fwAD.unpack_dual(out)
    value = float(primal)
    if finite and not math.isfinite(value):
        raise DivergenceError(f"{what} returned a non-finite value ({value})")
    if tangent is None:
        raise ValueError(
            f"{what} does not depend on the parameters (no tangent reached it); "
            "does it use them, without .detach() or .item()?"
        )
    dot = float(tangent)
    if finite and not math.isfinite(dot):
        raise DivergenceError(f"the directional derivative of {what} is non-finite ({dot})")
    return primal.detach().reshape(()), dot


def module_directional(
    model: nn.Module, closure: Callable[[], Tensor], *, finite: bool = True
) -> tuple[list[tuple[str, nn.Parameter]], list[Tensor], Callable[[list[Tensor]], tuple[Tensor, float]]]:
    """The trainable parameters of ``model``, their detached values θ, and ``directional(v)``,
    which runs ``closure()`` once in forward mode with θ + εv (through ``functional_call``) and
    returns (L(θ), ∇L·v)."""
    if not callable(closure):
        raise TypeError(f"closure must be callable, got {type(closure).__name__}")
    named = trainable(model)
    primals = [p.detach() for _, p in named]

    def directional(v: list[Tensor]) -> tuple[Tensor, float]:
        with fwAD.dual_level():
            duals = {name: fwAD.make_dual(p, t) for (name, _), p, t in zip(named, primals, v)}
            with _SkipZeroTangentProducts():
                out = call_with(model, closure, duals)
            return _unpack_scalar(out, "the closure", finite)

    return named, primals, directional


def estimate(
    primals: Sequence[Tensor],
    directional: Callable[[list[Tensor]], tuple[Tensor, float]],
    *,
    directions: int,
    distribution: tg.Distribution,
    seed: int,
    step: int,
) -> tuple[Tensor, list[Tensor], list[float]]:
    """f(θ), g = (1/K) Σ_k (∇f·v_k) v_k and the K numbers ∇f·v_k, where ``directional(v)``
    returns (f(θ), ∇f·v) for a tangent v shaped like ``primals``.

    Tangent k is drawn from ``tangents.generator(seed, step, k)``. The first is drawn into fresh
    buffers that are scaled in place and become g; later ones reuse one scratch buffer per tensor.
    Call under ``torch.no_grad()``.
    """
    device = primals[0].device
    value: Tensor | None = None
    g: list[Tensor] | None = None
    scratch: list[Tensor] | None = None
    dots: list[float] = []
    for k in range(directions):
        gen = tg.generator(seed, step, k, device)
        if g is not None and scratch is None:
            scratch = [torch.empty_like(p) for p in primals]
        v = tg.draw(primals, distribution, gen, out=scratch)
        primal, dot = directional(v)
        if value is None:
            value = primal
        dots.append(dot)
        g = tg.combine([dot], [v], out=g, directions=directions)
    assert value is not None and g is not None
    return value, g, dots


def _flatten(params: Params) -> tuple[list[Tensor], Callable[[Sequence[Tensor]], Params]]:
    """The leaves of ``params`` and a function that rebuilds the same structure from new leaves."""

    def check(t: object, what: str) -> Tensor:
        if not isinstance(t, Tensor):
            raise TypeError(f"{what} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{what} has dtype {t.dtype}; forward gradients need floating-point parameters")
        return t

    if isinstance(params, Tensor):
        return [check(params, "params")], lambda leaves: leaves[0]
    if isinstance(params, Mapping):
        if not params:
            raise ValueError("params is empty")
        keys = list(params)
        return [check(params[k], f"params[{k!r}]") for k in keys], lambda leaves: dict(zip(keys, leaves))
    if isinstance(params, (tuple, list)):
        if not params:
            raise ValueError("params is empty")
        kind = type(params)
        leaves = [check(t, f"params[{i}]") for i, t in enumerate(params)]
        return leaves, lambda new: kind(new) if kind in (tuple, list) else tuple(new)
    raise TypeError(f"params must be a tensor or a dict/tuple/list of tensors, got {type(params).__name__}")


def forward_gradient(
    f: Callable[[Params], Tensor],
    params: Params,
    *,
    directions: int = 1,
    sampler: str | tg.Distribution = tg.DEFAULT,
    seed: int | None = None,
    step: int = 0,
) -> tuple[Tensor, Params]:
    """Value f(θ) and the forward-gradient estimate g = (1/K) Σ_k (∇f·v_k) v_k of ∇f(θ).

    Args:
        f: maps parameters shaped like ``params`` to a scalar tensor.
        params: θ, a floating-point tensor or a dict/tuple/list of them (not modified).
        directions: K ≥ 1, the number of tangents v_k (one forward-mode pass each).
        sampler: the distribution of v_k, a name of :func:`ffkit.tangents.names` (default
            Rademacher) or a :class:`~ffkit.tangents.Distribution`.
        seed, step: tangent k is drawn from ``ffkit.tangents.generator(seed, step, k)``, so equal
            arguments give the same estimate bit for bit. ``seed=None`` draws a seed from torch's
            default generator (``torch.manual_seed`` then fixes it).

    Returns:
        ``(value, g)``: f(θ) as a detached 0-dim tensor, and g with the structure of ``params``.

    Raises ``ValueError``/``TypeError`` for bad arguments or a non-scalar f, and
    :class:`~ffkit.methods.base.DivergenceError` when f(θ) or ∇f·v is NaN or infinite.
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    k = check_directions(directions)
    dist = tg.get(sampler)
    seed, step = check_seed(seed), check_step(step)
    leaves, rebuild = _flatten(params)
    primals = [t.detach() for t in leaves]

    def directional(v: list[Tensor]) -> tuple[Tensor, float]:
        with fwAD.dual_level():
            duals = [fwAD.make_dual(p, t) for p, t in zip(primals, v)]
            with _SkipZeroTangentProducts():
                out = f(rebuild(duals))
            return _unpack_scalar(out, "f(params)")

    with torch.no_grad():
        value, g, _ = estimate(primals, directional, directions=k, distribution=dist, seed=seed, step=step)
    return value, rebuild(g)


def add_to_grad(params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    """``p.grad += g`` (``p.grad = g`` where it is ``None``), where ``loss.backward()`` accumulates."""
    for p, g in zip(params, grads):
        if p.grad is None:
            p.grad = g
        else:
            p.grad.add_(g)


@register("fg", "fg-w")
class ForwardGradient(LossMethod):
    """Weight-perturbation forward gradients for an ``nn.Module``, written into ``.grad`` (FG-W).

    ``fg = ForwardGradient(directions=K, sampler=..., seed=...)`` is a
    :class:`~ffkit.methods.base.Method` (``fg.step(model, (x, y))``) and is callable as
    ``loss = fg(model, closure)``, where ``closure()`` runs ``model`` on the current batch and
    returns the scalar loss L(θ). For each of K tangents v_k it runs the closure once with every
    trainable parameter replaced by the dual tensor (θ_i, v_{k,i}) (through
    ``torch.func.functional_call``, so the module itself is never modified), reads ∇L·v_k off the
    loss, and adds g = (1/K) Σ_k (∇L·v_k) v_k to ``p.grad``, where ``loss.backward()`` would have
    accumulated ∇L. A training step is the backprop step with one line changed::

        optimizer.zero_grad()
        loss = fg(model, lambda: loss_fn(model(x), y))   # instead of loss_fn(...).backward()
        optimizer.step()

    Each call is one step t (``self.t``, from 0): tangent k comes from
    ``ffkit.tangents.generator(seed, t, k)``. Only parameters with ``requires_grad=True`` are
    perturbed; tied (shared) parameters get one tangent. The closure runs K times per call:
    modules with state updated in ``forward`` (batch-norm statistics) see each batch K times.

    Args:
        directions: K ≥ 1.
        sampler: the tangent distribution; Rademacher by default, the lower variance and the
            cheaper draw (chapter 3 measures the step time of both).
        seed: the run's tangent seed; ``None`` draws one from torch's default generator.
        loss: ``loss(output, target)`` for :meth:`step`; cross-entropy by default.

    Raises ``ValueError``/``TypeError`` for bad arguments, a closure that does not return a
    scalar, or a model without trainable floating-point parameters, and
    :class:`~ffkit.methods.base.DivergenceError` for a NaN or infinite loss.
    """

    name = "forward-gradient"

    def __init__(
        self,
        directions: int = 1,
        sampler: str | tg.Distribution = tg.DEFAULT,
        *,
        seed: int | None = None,
        loss: LossFn | None = None,
    ) -> None:
        super().__init__(loss)
        self.directions = check_directions(directions)
        self.distribution = tg.get(sampler)
        self.seed = check_seed(seed)
        self.t = 0
        #: the K directional derivatives ∇L·v_k of the last call
        self.last_dots: list[float] = []

    @property
    def sampler(self) -> str:
        """The name of the tangent distribution."""
        return self.distribution.name

    def __repr__(self) -> str:
        return f"ForwardGradient(directions={self.directions}, sampler={self.sampler!r}, seed={self.seed})"

    def grad(self, model: nn.Module, closure: Callable[[], Tensor]) -> Tensor:
        named, primals, directional = module_directional(model, closure)
        with torch.no_grad():
            loss, g, dots = estimate(
                primals, directional, directions=self.directions, distribution=self.distribution,
                seed=self.seed, step=self.t,
            )
            add_to_grad([p for _, p in named], g)
        self.t += 1
        self.last_dots = dots
        return loss
