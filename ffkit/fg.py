"""Forward gradients: a gradient estimate from forward-mode passes alone.

For a function f: R^n → R at parameters θ and a random tangent (direction) v with E[v vᵀ] = I,
one forward-mode pass gives the directional derivative ∇f·v, and

    g = (∇f·v) v

is an unbiased estimate of ∇f(θ), because E[(∇f·v) v] = E[v vᵀ] ∇f = ∇f. Averaging over K
independent directions divides its variance by K. With Gaussian v ~ N(0, I) the per-coordinate
variance of one estimate is ‖∇f‖² + (∂_i f)²; with Rademacher v (entries ±1) it is
‖∇f‖² − (∂_i f)².

Two entry points:

* :func:`forward_gradient` for a function of a tensor (or a dict/tuple of tensors);
* :class:`ForwardGradient` for an ``nn.Module``: it writes the estimate into every parameter's
  ``.grad``, so that any ``torch.optim`` optimizer, scheduler or weight decay runs unchanged,
  and it has the signature of :func:`ffkit.train.backprop_grad` (``grad_fn`` of
  :func:`ffkit.train.fit`).

Both run the function under ``torch.no_grad()`` with ``torch.autograd.forward_ad`` dual
tensors: no autograd graph is recorded and no activation is stored. A linear or convolution
layer whose input carries no tangent (the first layer) gets its tangent from one product
``layer(x, Ẇ, ḃ)`` instead of forward AD's two (one of them with a zero tangent). Tangents are drawn straight
into the tensors that then become the estimate (scaled in place), so a step allocates one
parameter-sized buffer, as ``loss.backward()`` does. The K directions run one after another:
evaluating them in one ``torch.func.vmap``-ed pass (which shares the primal computation) was no
faster on CPU for the book's MLPs, so the simpler loop stays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Union

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from torch.overrides import TorchFunctionMode

from ffkit.train import DivergenceError

__all__ = ["SAMPLERS", "ForwardGradient", "forward_gradient", "sample_tangent_"]

#: Parameters accepted by :func:`forward_gradient`: one tensor, or a dict/tuple/list of tensors.
Params = Union[Tensor, Mapping[str, Tensor], Sequence[Tensor]]

_INT32_MIN = -(2**31)
_ONE_F32_BITS = 0x3F800000  # IEEE-754 bits of 1.0f; setting the sign bit gives -1.0f


def _fill_gaussian_(out: Tensor, generator: torch.Generator | None) -> Tensor:
    """v ~ N(0, I), drawn in place."""
    return out.normal_(generator=generator)


def _fill_rademacher_(out: Tensor, generator: torch.Generator | None) -> Tensor:
    """v uniform on {−1, +1}ⁿ, drawn in place from one random bit per entry.

    Drawing a random float per entry costs as much as a Gaussian; instead we draw n/64 random
    64-bit words and move each bit into the sign bit of the float 1.0 (three cheap integer ops
    on n 32-bit words). Other dtypes go through a float32 buffer.
    """
    n = out.numel()
    if n == 0:
        return out
    words32 = (n + 31) // 32
    words = torch.empty((words32 + 1) // 2, dtype=torch.int64, device=out.device)
    words.random_(-(2**63), None, generator=generator)  # all 64 bits random
    w = words.view(torch.int32)[:words32]
    if out.dtype == torch.float32 and out.is_contiguous():
        target = out.view(-1)
        if n % 32 == 0:
            bits = target.view(torch.int32).view(words32, 32)
        else:
            bits = torch.empty(words32, 32, dtype=torch.int32, device=out.device)
    else:
        bits = torch.empty(words32, 32, dtype=torch.int32, device=out.device)
    shifts = torch.arange(32, dtype=torch.int32, device=out.device)
    # bit k of word w lands in the sign bit of entry (w, k)
    torch.bitwise_left_shift(w.unsqueeze(1), shifts, out=bits)
    bits.bitwise_and_(_INT32_MIN)
    bits.bitwise_or_(_ONE_F32_BITS)
    signs = bits.view(torch.float32).view(-1)
    if signs.data_ptr() != out.data_ptr():
        out.copy_(signs[:n].view(out.shape))
    return out


_SAMPLER_FNS: dict[str, Callable[[Tensor, torch.Generator | None], Tensor]] = {
    "gaussian": _fill_gaussian_,
    "rademacher": _fill_rademacher_,
}

#: The names of the tangent distributions, for the ``sampler`` argument.
SAMPLERS: tuple[str, ...] = tuple(_SAMPLER_FNS)


def _check_sampler(sampler: str) -> Callable[[Tensor, torch.Generator | None], Tensor]:
    if not isinstance(sampler, str) or sampler.lower() not in _SAMPLER_FNS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return _SAMPLER_FNS[sampler.lower()]


def _check_directions(directions: int) -> int:
    if isinstance(directions, bool) or not isinstance(directions, int) or directions < 1:
        raise ValueError(f"directions must be an int >= 1 (the number K of tangents), got {directions!r}")
    return directions


def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _check_floating(t: object, what: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{what} must be a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{what} has dtype {t.dtype}; forward gradients need floating-point parameters")


def sample_tangent_(out: Tensor, sampler: str = "gaussian", generator: torch.Generator | None = None) -> Tensor:
    """Fill ``out`` in place with a tangent v from ``sampler`` (``"gaussian"``: v ~ N(0, I);
    ``"rademacher"``: entries ±1 with probability ½). Both satisfy E[v vᵀ] = I. Returns ``out``."""
    fill = _check_sampler(sampler)
    _check_generator(generator)
    _check_floating(out, "the tangent buffer")
    return fill(out, generator)


class _SkipZeroTangentProducts(TorchFunctionMode):
    """Linear and convolution layers whose *input* carries no tangent (the first layer: the data
    are constants) get their tangent as one product, ``layer(x, Ẇ, ḃ)``.

    Forward AD treats the missing input tangent as a materialised zero tensor and multiplies it
    by the weight anyway; for the first layer of an MLP that is a full wasted matrix product.
    Since these layers are linear in (W, b) for a fixed input x, the tangent of
    ``layer(x, W, b)`` is exactly ``layer(x, Ẇ, ḃ)``. Everything else runs unchanged.
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


def _unpack_scalar(out: object, what: str) -> tuple[Tensor, Tensor | None]:
    """Primal value and directional derivative of a dual scalar; clear errors otherwise."""
    if not isinstance(out, Tensor):
        raise TypeError(f"{what} must return a scalar tensor, got {type(out).__name__}")
    if out.numel() != 1:
        raise ValueError(f"{what} must return a scalar (one element), got shape {tuple(out.shape)}")
    primal, tangent = fwAD.unpack_dual(out)
    value = float(primal)
    if not math.isfinite(value):
        raise DivergenceError(f"{what} returned a non-finite value ({value})")
    if tangent is None:
        raise ValueError(
            f"{what} does not depend on the parameters (no tangent reached it); "
            "does it use them, without .detach() or .item()?"
        )
    tangent = tangent.reshape(())
    if not math.isfinite(float(tangent)):
        raise DivergenceError(f"the directional derivative of {what} is non-finite ({float(tangent)})")
    return primal.detach().reshape(()), tangent


def _flatten(params: Params) -> tuple[list[Tensor], Callable[[Sequence[Tensor]], Params]]:
    """The leaves of ``params`` and a function that rebuilds the same structure from new leaves."""
    if isinstance(params, Tensor):
        _check_floating(params, "params")
        return [params], lambda leaves: leaves[0]
    if isinstance(params, Mapping):
        if not params:
            raise ValueError("params is empty")
        keys = list(params)
        for k in keys:
            _check_floating(params[k], f"params[{k!r}]")
        return [params[k] for k in keys], lambda leaves: dict(zip(keys, leaves))
    if isinstance(params, (tuple, list)):
        if not params:
            raise ValueError("params is empty")
        for i, t in enumerate(params):
            _check_floating(t, f"params[{i}]")
        kind = type(params)
        return list(params), lambda leaves: kind(leaves) if kind in (tuple, list) else tuple(leaves)
    raise TypeError(f"params must be a tensor or a dict/tuple/list of tensors, got {type(params).__name__}")


def _average_over_directions(
    params: Sequence[Tensor],
    directions: int,
    fill: Callable[[Tensor, torch.Generator | None], Tensor],
    generator: torch.Generator | None,
    directional: Callable[[list[Tensor]], tuple[Tensor, Tensor]],
) -> tuple[Tensor, list[Tensor]]:
    """f(θ) and g = (1/K) Σₖ (∇f·vₖ) vₖ, where ``directional(v)`` returns (f(θ), ∇f·v).

    The first tangents are drawn into fresh buffers that are scaled in place and become g; later
    ones reuse one scratch buffer per parameter. Call under ``torch.no_grad()``.
    """
    value: Tensor | None = None
    estimate: list[Tensor] = []
    scratch: list[Tensor] = []
    for k in range(directions):
        if k == 0:
            tangents = [fill(torch.empty_like(p), generator) for p in params]
        else:
            if not scratch:
                scratch = [torch.empty_like(p) for p in params]
            tangents = [fill(t, generator) for t in scratch]
        primal, dd = directional(tangents)
        if k == 0:
            value = primal
            estimate = [t.mul_(dd / directions) for t in tangents]
        else:
            for e, t in zip(estimate, tangents):
                e.addcmul_(t, dd, value=1.0 / directions)
    assert value is not None
    return value, estimate


def forward_gradient(
    f: Callable[[Params], Tensor],
    params: Params,
    *,
    directions: int = 1,
    sampler: str = "gaussian",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Params]:
    """Value f(θ) and the forward-gradient estimate (1/K) Σₖ (∇f·vₖ) vₖ of ∇f(θ).

    Args:
        f: maps parameters shaped like ``params`` to a scalar tensor.
        params: θ, a floating-point tensor or a dict/tuple/list of them (not modified).
        directions: K ≥ 1, the number of independent tangents vₖ (one forward-mode pass each).
        sampler: the distribution of vₖ, one of :data:`SAMPLERS`.
        generator: the ``torch.Generator`` that draws the tangents; the same seed gives the same
            estimate, bit for bit. ``None`` uses torch's default generator.

    Returns:
        ``(value, estimate)``: f(θ) as a detached 0-dim tensor, and the estimate with the
        structure of ``params``.

    Raises ``ValueError``/``TypeError`` for bad arguments or a non-scalar f, and
    :class:`ffkit.train.DivergenceError` when f(θ) or ∇f·v is NaN or infinite.
    """
    _check_directions(directions)
    fill = _check_sampler(sampler)
    _check_generator(generator)
    leaves, rebuild = _flatten(params)
    primals = [t.detach() for t in leaves]

    def directional(tangents: list[Tensor]) -> tuple[Tensor, Tensor]:
        with fwAD.dual_level():
            duals = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
            with _SkipZeroTangentProducts():
                out = f(rebuild(duals))
            return _unpack_scalar(out, "f(params)")

    with torch.no_grad():
        value, estimate = _average_over_directions(primals, directions, fill, generator, directional)
    return value, rebuild(estimate)


class ForwardGradient:
    """Forward-gradient estimates for an ``nn.Module``, written into the parameters' ``.grad``.

    ``fg = ForwardGradient(directions=K, sampler=..., generator=...)`` is called as
    ``loss = fg(model, closure)``, where ``closure()`` runs ``model`` on the current batch and
    returns the scalar loss L(θ). For each of K tangents v it runs the closure once with every
    trainable parameter θᵢ replaced by a dual tensor (θᵢ, vᵢ), under ``torch.no_grad()``, and
    reads ∇L·v off the loss. Then it adds g = (1/K) Σₖ (∇L·vₖ) vₖ to ``p.grad`` (setting it if it is
    ``None``), exactly where ``loss.backward()`` would have accumulated ∇L, and returns the
    detached loss. A training step is therefore the backprop step with one line changed::

        optimizer.zero_grad()
        loss = fg(model, lambda: loss_fn(model(x), y))   # instead of loss_fn(...).backward()
        optimizer.step()

    It has the signature of :func:`ffkit.train.backprop_grad`, so it is also a ``grad_fn`` for
    :func:`ffkit.train.fit`. Only parameters with ``requires_grad=True`` are perturbed; tied
    (shared) parameters get one tangent. The closure runs K times per call: modules with state
    updated in ``forward`` (batch-norm running statistics) see each batch K times.

    Raises ``ValueError``/``TypeError`` for bad arguments, a closure that does not return a
    scalar, or a model without trainable floating-point parameters, and
    :class:`ffkit.train.DivergenceError` for a NaN or infinite loss.
    """

    def __init__(
        self,
        directions: int = 1,
        sampler: str = "gaussian",
        generator: torch.Generator | None = None,
    ) -> None:
        self.directions = _check_directions(directions)
        self._fill = _check_sampler(sampler)
        self.sampler = sampler.lower()
        _check_generator(generator)
        self.generator = generator

    def __repr__(self) -> str:
        return f"ForwardGradient(directions={self.directions}, sampler={self.sampler!r})"

    @staticmethod
    def _slots(model: nn.Module) -> tuple[list[tuple[dict[str, object], str, nn.Parameter]], list[nn.Parameter]]:
        """Every place a trainable parameter sits in ``model`` and the distinct parameters."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        slots: list[tuple[dict[str, object], str, nn.Parameter]] = []
        unique: dict[int, nn.Parameter] = {}
        for module in model.modules():
            for name, p in module._parameters.items():
                if p is None or not p.requires_grad:
                    continue
                if not p.is_floating_point():
                    raise TypeError(f"parameter {name!r} of {type(module).__name__} has dtype {p.dtype}; "
                                    "forward gradients need floating-point parameters")
                slots.append((module._parameters, name, p))
                unique.setdefault(id(p), p)
        if not unique:
            raise ValueError("the model has no trainable parameters (requires_grad=True)")
        return slots, list(unique.values())

    def __call__(self, model: nn.Module, closure: Callable[[], Tensor]) -> Tensor:
        if not callable(closure):
            raise TypeError(f"closure must be callable, got {type(closure).__name__}")
        slots, params = self._slots(model)

        def directional(tangents: list[Tensor]) -> tuple[Tensor, Tensor]:
            with fwAD.dual_level():
                dual_of = {id(p): fwAD.make_dual(p.detach(), t) for p, t in zip(params, tangents)}
                try:
                    for table, name, p in slots:
                        table[name] = dual_of[id(p)]
                    with _SkipZeroTangentProducts():
                        out = closure()
                finally:
                    for table, name, p in slots:
                        table[name] = p
                return _unpack_scalar(out, "the closure")

        with torch.no_grad():
            loss, estimate = _average_over_directions(params, self.directions, self._fill, self.generator, directional)
            for p, e in zip(params, estimate):
                if p.grad is None:
                    p.grad = e
                else:
                    p.grad.add_(e)
        return loss
