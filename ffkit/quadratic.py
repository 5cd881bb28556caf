"""SGD with forward gradients on a quadratic: the exact expected loss, its stability limit, and a simulation.

On f(θ) = ½ Σ_i h_i (θ_i − θ*_i)² the expected loss of SGD with forward gradients obeys a linear
recursion (:func:`quadratic_risk`), which gives the largest stable learning rate in closed form
(:func:`max_stable_lr`); :func:`simulate_quadratic` runs the same SGD with tangents from
:mod:`ffkit.tangents`, so the closed forms can be checked by Monte Carlo.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ffkit import tangents
from ffkit.theory import kurtosis

__all__ = ["max_stable_lr", "quadratic_risk", "simulate_quadratic"]


def _quadratic_coeffs(sampler: str, directions: int | None) -> tuple[float, float]:
    """(c, b) with E[ĝ_i²] = c g_i² + b ‖g‖² for the mean of K forward gradients (exact: K=None)."""
    if directions is None:
        return 1.0, 0.0
    if not isinstance(directions, int) or directions < 1:
        raise ValueError(f"directions must be a positive int or None (true gradient), got {directions!r}")
    kappa = kurtosis(sampler)
    return 1.0 + (kappa - 2.0) / directions, 1.0 / directions


def _check_h(h: Sequence[float] | np.ndarray | Tensor) -> np.ndarray:
    arr = np.asarray(h.detach().cpu() if isinstance(h, Tensor) else h, dtype=float).reshape(-1)
    if arr.size == 0 or np.any(~np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError("the curvatures h must be a non-empty array of positive finite numbers")
    return arr


def quadratic_risk(
    h: Sequence[float] | np.ndarray,
    e0_sq: Sequence[float] | np.ndarray,
    lr: float,
    steps: int,
    *,
    sampler: str = "gaussian",
    directions: int | None = 1,
    stop_below: float | None = None,
) -> np.ndarray:
    """Exact expected loss of SGD with forward gradients on f(θ) = ½ Σ_i h_i (θ_i − θ*_i)².

    With e = θ − θ*, ∇f = h ⊙ e and ĝ the mean of K forward gradients (∇f·v)v with i.i.d.
    tangent entries of kurtosis κ, E[ĝ_i² | e] = c h_i² e_i² + (1/K) Σ_j h_j² e_j² with
    c = 1 + (κ − 2)/K, so σ_i = E[e_i²] follows the linear recursion

        σ_i ← (1 − 2η h_i + c η² h_i²) σ_i + (η²/K) Σ_j h_j² σ_j.

    ``directions=None`` is gradient descent with the true gradient (c = 1, no second term).
    Gaussian tangents are rotation invariant, so this covers every quadratic with Hessian
    eigenvalues h. Returns E f(θ_t) for t = 0 … ``steps`` (length ``steps + 1``), or only up to
    the first t with E f(θ_t) <= ``stop_below`` if that comes earlier.
    """
    hv = _check_h(h)
    s = np.broadcast_to(np.asarray(e0_sq, dtype=float), hv.shape).copy()
    if lr <= 0 or steps < 0:
        raise ValueError(f"need lr > 0 and steps >= 0, got lr={lr}, steps={steps}")
    c, b = _quadratic_coeffs(sampler, directions)
    a = 1.0 - 2.0 * lr * hv + c * lr * lr * hv * hv
    h2 = hv * hv
    out = np.empty(steps + 1)
    out[0] = 0.5 * float(hv @ s)
    for t in range(1, steps + 1):
        s = a * s + (b * lr * lr * float(h2 @ s))
        out[t] = 0.5 * float(hv @ s)
        if stop_below is not None and out[t] <= stop_below:
            return out[: t + 1]
    return out


def _mean_square_stable(hv: np.ndarray, lr: float, c: float, b: float) -> bool:
    # σ ← (D + 1 wᵀ) σ with D = diag(d), d_i = 1 − 2ηh_i + cη²h_i², w = bη²h². It is similar to the
    # symmetric D + r rᵀ with r = √w, whose eigenvalues interlace with d: stable iff all lie in (−1, 1).
    d = 1.0 - 2.0 * lr * hv + c * lr * lr * hv * hv
    w = b * lr * lr * hv * hv
    if np.any(d >= 1.0):
        return False
    if b > 0 and float(np.sum(w / (1.0 - d))) >= 1.0:  # largest eigenvalue >= 1
        return False
    below = d < -1.0
    at = d == -1.0
    if not np.any(below | at):
        return True
    if np.sum(below | at) > 1 or b == 0:  # a positive rank-one update lifts at most one eigenvalue
        return False
    if np.any(at):  # D + I + r rᵀ with one zero diagonal entry j: positive definite iff r_j > 0
        return bool(np.all(w[at] > 0))
    # exactly one d_j < −1: D + I + r rᵀ is positive definite iff 1 + Σ w_i/(d_i + 1) < 0
    return 1.0 + float(np.sum(w / (d + 1.0))) < 0.0


def max_stable_lr(
    h: Sequence[float] | np.ndarray,
    *,
    sampler: str = "gaussian",
    directions: int | None = 1,
    rtol: float = 1e-6,
) -> float:
    """The largest learning rate for which :func:`quadratic_risk` does not grow (mean-square
    stability), found by bisection on the exact criterion.

    For Gaussian tangents and K directions the criterion is ηh_i < 2/c for all i and
    Σ_i η h_i / (K (2 − c η h_i)) < 1 with c = 1 + 1/K; for one direction and h = 1 (an isotropic
    quadratic in R^n) that is η < 2/(n + 2), against η < 2 for gradient descent.
    """
    hv = _check_h(h)
    c, b = _quadratic_coeffs(sampler, directions)
    lo, hi = 0.0, 4.0 / float(hv.max())
    if _mean_square_stable(hv, hi, c, b):
        raise ValueError("no instability below 4/max(h); this sampler/direction count is not covered")
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if _mean_square_stable(hv, mid, c, b):
            lo = mid
        else:
            hi = mid
    return lo


def simulate_quadratic(
    h: Tensor,
    e0: Tensor,
    lr: float,
    steps: int,
    *,
    sampler: str = "gaussian",
    directions: int | None = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run SGD with forward gradients on f(θ) = ½ Σ h_i e_i² for a batch of independent runs.

    ``e0`` (runs × n) holds the starting errors e = θ − θ*; each step draws K tangents per run and
    steps by −η ĝ with ĝ = mean_k (∇f·v_k) v_k, ∇f = h ⊙ e known in closed form (so no autodiff
    is needed; :func:`quadratic_risk` is the exact expectation of the result). Returns the loss
    of every run after every step, shape (steps + 1, runs); a run that overflows stays ``inf``.
    """
    if e0.ndim != 2 or h.ndim != 1 or e0.shape[1] != h.shape[0]:
        raise ValueError(f"need h of shape (n,) and e0 of shape (runs, n), got {tuple(h.shape)} and {tuple(e0.shape)}")
    if lr <= 0 or steps < 0:
        raise ValueError(f"need lr > 0 and steps >= 0, got lr={lr}, steps={steps}")
    _quadratic_coeffs(sampler, directions)
    dist = tangents.get(sampler)
    runs, n = e0.shape
    e = e0.clone()
    out = torch.empty(steps + 1, runs, dtype=e.dtype)
    out[0] = 0.5 * (h * e * e).sum(1)
    for t in range(1, steps + 1):
        g = h * e
        if directions is None:
            est = g
        else:
            v = dist.fill_(torch.empty(runs, directions, n, dtype=e.dtype), generator)
            est = ((g[:, None, :] * v).sum(2, keepdim=True) * v).mean(1)
        e = e - lr * est
        loss = 0.5 * (h * e * e).sum(1)
        out[t] = torch.nan_to_num(loss, nan=math.inf)
    return out
