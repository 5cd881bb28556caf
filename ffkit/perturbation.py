"""Weight versus activity perturbation of one linear layer: the estimators of Ren et al.'s Table 1.

A linear layer z = W x (W of shape q × p) inside a loss L = mean_k ℓ(z_k, y_k) over a batch of N
examples can be perturbed in two places: its pq weights (a tangent Ẇ, *weight perturbation*) or
its q pre-activations per example (a tangent u, *activity perturbation*, whose weight gradient
is the outer product (∇_z ℓ·u) u xᵀ). The noise can be shared by the batch or drawn per example.
:func:`linear_layer_estimate` draws all four; their variances are
:func:`ffkit.theory.perturbation_variance`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from ffkit import tangents

__all__ = ["linear_layer_estimate"]


def linear_layer_estimate(
    weight: Tensor,
    x: Tensor,
    y: Tensor,
    loss: Callable[[Tensor, Tensor], Tensor],
    *,
    perturb: Literal["weight", "activity"] = "weight",
    noise: Literal["shared", "per-example"] = "shared",
    draws: int = 1,
    sampler: str | tangents.Distribution = "gaussian",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Forward-gradient estimates of ∂L/∂W for one linear layer z = W x, L = mean_k ℓ(z_k, y_k).

    ``weight`` is W (q × p); ``x`` (N × p) and ``y`` (N × ...) are one batch, or ``x``
    (D × N × p) and ``y`` (D × N × ...) are D batches, one per draw. ``loss(z, y)`` maps the
    pre-activations (N × q) and targets of one batch to the N per-example losses ℓ_k (it is
    vmapped over draws, so use plain tensor operations). Every directional derivative comes from
    a forward-mode pass (``torch.func.jvp``); tangents come from ``sampler``
    (:mod:`ffkit.tangents`), drawn from ``generator``.

    * weight perturbation: tangent Ẇ (q × p) on W; ĝ = (∇_W L · Ẇ) Ẇ, or with per-example noise
      ĝ = mean_k (∇_W ℓ_k · Ẇ_k) Ẇ_k.
    * activity perturbation (Ren et al. 2023): tangent u (q entries) on each z_k, shared or one
      per example; ĝ = mean_k (∇_z ℓ_k · u_k) u_k x_kᵀ. Only the q entries of z are perturbed.

    Returns D independent estimates (D = ``draws`` for one batch), shape (D, q, p).
    """
    if weight.ndim != 2:
        raise ValueError(f"W must have shape (q, p), got {tuple(weight.shape)}")
    if x.ndim == 2:
        if not isinstance(draws, int) or draws < 1:
            raise ValueError(f"draws must be a positive int, got {draws!r}")
        x = x.expand(draws, *x.shape)
        y = y.expand(draws, *y.shape)
    elif x.ndim != 3:
        raise ValueError(f"x must have shape (N, p) or (draws, N, p), got {tuple(x.shape)}")
    if x.shape[-1] != weight.shape[1] or y.shape[:2] != x.shape[:2]:
        raise ValueError(
            f"W {tuple(weight.shape)}, x {tuple(x.shape)} and y {tuple(y.shape)} do not fit: "
            "need W (q, p), x (..., N, p), y (..., N, ...)"
        )
    if perturb not in ("weight", "activity"):
        raise ValueError(f"perturb must be 'weight' or 'activity', got {perturb!r}")
    if noise not in ("shared", "per-example"):
        raise ValueError(f"noise must be 'shared' or 'per-example', got {noise!r}")
    q, p = weight.shape
    n_draws, n_ex = x.shape[0], x.shape[1]
    w = weight.detach()
    xd = x.detach().to(w.dtype)
    yd = y.detach()
    dist = tangents.get(sampler)

    def draw(*shape: int) -> Tensor:
        return dist.fill_(torch.empty(shape, dtype=w.dtype, device=w.device), generator)

    def per_example(z: Tensor, yb: Tensor) -> Tensor:
        out = loss(z, yb)
        if out.shape != (n_ex,):
            raise ValueError(f"loss(z, y) must return the {n_ex} per-example losses, got shape {tuple(out.shape)}")
        return out

    if perturb == "activity":
        if noise == "shared":
            u = draw(n_draws, 1, q).expand(n_draws, n_ex, q)
        else:
            u = draw(n_draws, n_ex, q)

        def act(xb: Tensor, yb: Tensor, t: Tensor) -> Tensor:
            return torch.func.jvp(lambda z: per_example(z, yb), (xb @ w.T,), (t,))[1]

        dd = torch.func.vmap(act)(xd, yd, u)  # (D, N): ∇_z ℓ_k · u_k
        return torch.einsum("dk,dkq,dkp->dqp", dd, u, xd) / n_ex
    if noise == "shared":
        v = draw(n_draws, q, p)

        def shared(xb: Tensor, yb: Tensor, t: Tensor) -> Tensor:
            return torch.func.jvp(lambda m: per_example(xb @ m.T, yb).mean(), (w,), (t,))[1]

        dd = torch.func.vmap(shared)(xd, yd, v)  # (D,): ∇_W L · Ẇ
        return dd[:, None, None] * v
    # per-example weight noise: example k sees its own copy W_k of the weights and tangent Ẇ_k
    v = draw(n_draws, n_ex, q, p)
    stacked = w.expand(n_ex, q, p).clone()

    def separate(xb: Tensor, yb: Tensor, t: Tensor) -> Tensor:
        return torch.func.jvp(lambda ws: per_example(torch.einsum("kqp,kp->kq", ws, xb), yb), (stacked,), (t,))[1]

    dd = torch.func.vmap(separate)(xd, yd, v)  # (D, N): ∇_W ℓ_k · Ẇ_k
    return torch.einsum("dk,dkqp->dqp", dd, v) / n_ex
