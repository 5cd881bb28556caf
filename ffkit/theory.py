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
  (:func:`perturbation_variance`);
* structured tangents: K orthogonal directions (:func:`orthogonal_variance_factor`), low-rank
  weight tangents (:func:`low_rank_second_moment`, :func:`tangent_variance`), and activity
  perturbation of a whole network with normalisation and ReLU masks
  (:func:`activity_variance`).

Each formula is checked by Monte Carlo in the tests and in chapter 5.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from ffkit import tangents

__all__ = [
    "activity_variance",
    "cosine_density",
    "expected_cosine",
    "kurtosis",
    "low_rank_second_moment",
    "orthogonal_variance_factor",
    "perturbation_variance",
    "tangent_variance",
    "variance_factor",
]




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


def orthogonal_variance_factor(n: int | np.ndarray, directions: int) -> float | np.ndarray:
    """tr Cov(ĝ)/‖∇f‖² for K orthogonal tangents of length √n (:func:`ffkit.tangents.orthogonal`).

    ĝ = (1/K) Σ_k (∇f·v_k) v_k = (n/K) Q Qᵀ ∇f with Q an n × K orthonormal frame drawn uniformly;
    E[Q Qᵀ] = (K/n) I makes it unbiased and E‖Q Qᵀ ∇f‖² = (K/n)‖∇f‖² gives E‖ĝ‖² = (n/K)‖∇f‖²,
    so the variance is n/K − 1: a little below the (n + 1)/K of independent Gaussian directions,
    and 0 at K = n.
    """
    if isinstance(directions, bool) or not isinstance(directions, int) or directions < 1:
        raise ValueError(f"directions must be a positive int, got {directions!r}")
    arr = np.asarray(n, dtype=float)
    if np.any(arr < directions):
        raise ValueError(f"n must be at least K = {directions}")
    out = arr / directions - 1.0
    return float(out) if out.ndim == 0 else out


def low_rank_second_moment(rows: int, cols: int, rank: int, sampler: str | tangents.Distribution = "gaussian") -> float:
    """c = E[(G·V)² ‖V‖²] / ‖G‖² for a rank-r tangent V = (1/√r) Σ_j a_j b_jᵀ of an m × n matrix.

    With a_j ∈ Rᵐ, b_j ∈ Rⁿ independent with i.i.d. entries of variance 1 and fourth moment κ,

        c = [(r − 1)(m n + 2) + (m + κ − 1)(n + κ − 1)] / r,

    which depends on G only through ‖G‖². A rank-one Gaussian tangent gives (m + 2)(n + 2)
    against m n + 2 for a full Gaussian one (the limit r → ∞); for random signs (κ = 1) rank one
    gives m n, exactly the second moment of a full random-sign tangent.
    """
    for name, value in (("rows", rows), ("cols", cols), ("rank", rank)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    k = kurtosis(sampler)
    m, n, r = rows, cols, rank
    return ((r - 1) * (m * n + 2) + (m + k - 1) * (n + k - 1)) / r


def tangent_variance(
    sizes: np.ndarray | list[int],
    second_moments: np.ndarray | list[float],
    grad_sq: np.ndarray | list[float],
    directions: int = 1,
) -> float:
    """tr Cov(ĝ) of a forward gradient whose tangent is independent from tensor to tensor.

    Tensor l has ``sizes[l]`` = n_l entries, gradient block g_l with ``grad_sq[l]`` = ‖g_l‖², and a
    tangent V_l with E[V_l V_lᵀ] = I and E[(g_l·V_l)² ‖V_l‖²] = c_l ‖g_l‖² (``second_moments``:
    c_l = n_l + κ − 1 for i.i.d. entries, :func:`low_rank_second_moment` for a low-rank one).
    Since ∇f·V = Σ_l g_l·V_l,

        E‖ĝ_l‖² = n_l (‖g‖² − ‖g_l‖²) + c_l ‖g_l‖²,
        tr Cov(ĝ) = (1/K) Σ_l [ n_l ‖g‖² + (c_l − n_l − 1) ‖g_l‖² ]

    for the mean of K independent tangents.
    """
    n = np.asarray(sizes, dtype=float)
    c = np.asarray(second_moments, dtype=float)
    g = np.asarray(grad_sq, dtype=float)
    if not (n.shape == c.shape == g.shape) or n.ndim != 1 or n.size == 0:
        raise ValueError("sizes, second_moments and grad_sq must be 1-D arrays of one length")
    if isinstance(directions, bool) or not isinstance(directions, int) or directions < 1:
        raise ValueError(f"directions must be a positive int, got {directions!r}")
    total = g.sum()
    return float(np.sum(n * total + (c - n - 1) * g) / directions)


def activity_variance(
    grad_sq: np.ndarray,
    site_grad_sq: np.ndarray,
    fan: np.ndarray,
    weighted_fan: np.ndarray,
    sampler: str | tangents.Distribution = "gaussian",
    directions: int = 1,
) -> float:
    """tr Cov(ĝ) over the tangents of activity perturbation, for a fixed batch.

    Each loss j (an example, or an (example, group) pair for group-wise losses) owns the tangent
    entries u_j it reaches, and its directional derivative is d_j = a_j·u_j with a_j the gradient
    of L_j with respect to those activities (zero at inactive ReLUs). The estimate is
    ĝ = Σ_j M_j D_j u_j (a_j·u_j), where D_j keeps the active units and M_j is the exact linear map
    from an activity gradient to a weight gradient (the layer norm's backward step and the outer
    product with the layer input). For u_j with i.i.d. entries of fourth moment κ,

        tr Cov(ĝ) = (1/K) Σ_j [ ‖G_j‖² + ‖a_j‖² F_j + (κ − 3) H_j ],

    with G_j = M_j a_j the exact gradient of L_j (``grad_sq``), ‖a_j‖² (``site_grad_sq``),
    F_j = Σ_{i active} ‖M_j e_i‖² (``fan``) and H_j = Σ_i a_{j,i}² ‖M_j e_i‖² (``weighted_fan``).
    For one linear layer with no norm or mask, M e_i has norm ‖x_k‖ and F = q‖x_k‖²: the
    per-example activity row of Ren et al.'s Table 1 before averaging over the data.
    """
    arrays = [np.asarray(a, dtype=float).reshape(-1) for a in (grad_sq, site_grad_sq, fan, weighted_fan)]
    if len({a.size for a in arrays}) != 1:
        raise ValueError("grad_sq, site_grad_sq, fan and weighted_fan need one entry per loss")
    if isinstance(directions, bool) or not isinstance(directions, int) or directions < 1:
        raise ValueError(f"directions must be a positive int, got {directions!r}")
    g, a, f, h = arrays
    return float(np.sum(g + a * f + (kurtosis(sampler) - 3.0) * h) / directions)
