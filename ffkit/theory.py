"""Closed forms for forward-gradient estimates: variance, cosine, and Ren et al.'s Table 1.

Notation (the book's): f: Rⁿ → R, true gradient ∇f, a tangent v with i.i.d. entries, E v_i = 0,
E v_i² = 1 and fourth moment κ = E v_i⁴ (the :mod:`ffkit.tangents` registry carries κ), and the
forward gradient ĝ = (∇f·v) v, averaged over K directions. Then

* E ĝ = ∇f and tr Cov(ĝ) = (n + κ − 2)‖∇f‖²/K (:func:`variance_factor`): (n + 1)/K for Gaussian
  and (n − 1)/K for Rademacher tangents;
* for Gaussian v the cosine between ĝ and ∇f is :math:`|u_1|` for u uniform on the sphere of Rⁿ, with mean
  Γ(n/2)/(√π Γ((n+1)/2)) ≈ √(2/(πn)) (:func:`expected_cosine`, :func:`cosine_density`);
* perturbing a linear layer's weights or its activities, with noise shared by the batch or drawn
  per example, gives the four variances of Ren et al. (2023), Table 1
  (:func:`perturbation_variance`).

Each formula is checked by Monte Carlo in the tests and in chapter 5.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from ffkit import tangents

__all__ = ["cosine_density", "expected_cosine", "kurtosis", "perturbation_variance", "variance_factor"]




def kurtosis(sampler: str | tangents.Distribution) -> float:
    """κ = E[v_i⁴] of a tangent distribution with i.i.d. entries and E[v_i²] = 1, read from the
    :mod:`ffkit.tangents` registry: 3 for ``"gaussian"``, 1 for ``"rademacher"``.

    Raises ``ValueError`` for a distribution whose entries are not i.i.d. (no single κ).
    """
    dist = tangents.get(sampler)
    if dist.fourth_moment is None:
        raise ValueError(
            f"the {dist.name!r} tangents do not have i.i.d. entries; the closed forms in terms of "
            "E v_i⁴ do not apply to them"
        )
    return float(dist.fourth_moment)


def variance_factor(
    n: int | np.ndarray, sampler: str | tangents.Distribution = "gaussian", directions: int = 1
) -> float | np.ndarray:
    """tr Cov(ĝ) / ‖∇f‖² for ĝ the mean of K = ``directions`` forward gradients (∇f·v)v.

    With i.i.d. entries of v, E v_i² = 1 and kurtosis κ = E v_i⁴,
    E‖(∇f·v)v‖² = (n + κ − 1)‖∇f‖², so the variance is (n + κ − 2)‖∇f‖² / K:
    (n + 1)/K for Gaussian and (n − 1)/K for Rademacher tangents.
    """
    if not isinstance(directions, int) or directions < 1:
        raise ValueError(f"directions must be a positive int, got {directions!r}")
    arr = np.asarray(n, dtype=float)
    if np.any(arr < 1):
        raise ValueError("n must be >= 1")
    out = (arr + kurtosis(sampler) - 2.0) / directions
    return float(out) if out.ndim == 0 else out


def expected_cosine(n: int | np.ndarray) -> float | np.ndarray:
    """E[cos θ] = E|u₁| = Γ(n/2) / (√π Γ((n+1)/2)) for u uniform on the unit sphere of R^n.

    This is the mean cosine between a one-direction Gaussian forward gradient and ∇f; for large
    n it approaches √(2/(πn)). Computed through log-Gamma, so n = 10⁹ is fine.
    """
    arr = np.asarray(n, dtype=float)
    if np.any(arr < 1):
        raise ValueError("n must be >= 1")
    lg = np.vectorize(math.lgamma)
    out = np.exp(lg(arr / 2) - lg((arr + 1) / 2)) / math.sqrt(math.pi)
    return float(out) if out.ndim == 0 else out


def cosine_density(t: np.ndarray | float, n: int) -> np.ndarray | float:
    """The density of cos θ = :math:`|u_1|` on [0, 1] for u uniform on the sphere of R^n, n >= 2:

    p(t) = 2 Γ(n/2) / (√π Γ((n−1)/2)) · (1 − t²)^((n−3)/2).
    """
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"the cosine density needs an int n >= 2, got {n!r}")
    t = np.asarray(t, dtype=float)
    log_c = math.log(2.0) + math.lgamma(n / 2) - 0.5 * math.log(math.pi) - math.lgamma((n - 1) / 2)
    inside = (t >= 0) & (t < 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        val = np.exp(log_c + (n - 3) / 2 * np.log1p(-np.minimum(t * t, 1.0)))
    out = np.where(inside, val, 0.0)
    return float(out) if out.ndim == 0 else out


def perturbation_variance(
    perturb: Literal["weight", "activity"],
    noise: Literal["shared", "per-example"],
    *,
    V: float,
    S: float,
    p: int,
    q: int,
    N: int,
) -> float:
    """Ren et al. (2023), Table 1: mean per-entry variance of a linear layer's forward gradient.

    A layer z = W x with fan-in p, fan-out q (W is q × p), a batch of N examples drawn i.i.d.
    Per example, the weight gradient is G = δ xᵀ with δ = ∂ℓ/∂z. V is the mean over the pq
    entries of the variance of G across examples, S the mean of its squared expectation. The
    estimator perturbs W (a tangent of pq entries) or z (q entries), with one tangent for the
    batch (``"shared"``) or one per example:

    ========  ======================  ========================
    perturb   shared                  per-example
    ========  ======================  ========================
    weight    (pq+2)/N·V + (pq+1)·S   (pq+2)/N·V + (pq+1)/N·S
    activity  (q+2)/N·V + (q+1)·S     (q+2)/N·V + (q+1)/N·S
    ========  ======================  ========================
    """
    if perturb not in ("weight", "activity"):
        raise ValueError(f"perturb must be 'weight' or 'activity', got {perturb!r}")
    if noise not in ("shared", "per-example"):
        raise ValueError(f"noise must be 'shared' or 'per-example', got {noise!r}")
    if min(p, q, N) < 1:
        raise ValueError(f"p, q and N must be positive, got p={p}, q={q}, N={N}")
    if V < 0 or S < 0:
        raise ValueError(f"V and S are non-negative moments, got V={V}, S={S}")
    m = p * q if perturb == "weight" else q
    return (m + 2) / N * V + (m + 1) * S / (1 if noise == "shared" else N)
