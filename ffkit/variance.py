"""How noisy is a gradient estimator? Measure it against the true gradient, and the theory.

Notation (the book's): f: R^n -> R with parameters θ, true gradient ∇f, an estimator ĝ of ∇f
(for a forward gradient ĝ = (∇f·v) v with a random tangent v, averaged over K directions).

*Measuring* (:func:`measure`, :func:`measure_model`, :func:`compare`, :func:`table`): draw ĝ
many times and report, against the true gradient,

* the bias ‖E ĝ − ∇f‖ (estimated by the mean of the draws, next to the level ``var / draws``
  that an unbiased estimator shows by chance),
* the total variance tr Cov(ĝ) = E‖ĝ − E ĝ‖² and its standard error,
* the cosine between ĝ and ∇f, draw by draw,
* all of it per parameter group (a tensor, a layer, ...).

*Theory* (closed forms the chapter derives): :func:`variance_factor`, :func:`expected_cosine`,
:func:`cosine_density`, :func:`perturbation_variance` (Ren et al. 2023, Table 1), and SGD with
forward gradients on a quadratic (:func:`quadratic_risk`, :func:`max_stable_lr`,
:func:`simulate_quadratic`). :func:`linear_layer_estimate` is the weight- and
activity-perturbed forward gradient of one linear layer that the table is about.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Union

import numpy as np
import torch
from torch import Tensor, nn

from ffkit.train import GradFn, backprop_grad

__all__ = [
    "EstimatorStats",
    "GroupStats",
    "measure",
    "measure_model",
    "by_module",
    "compare",
    "table",
    "kurtosis",
    "variance_factor",
    "expected_cosine",
    "cosine_density",
    "perturbation_variance",
    "linear_layer_estimate",
    "quadratic_risk",
    "max_stable_lr",
    "simulate_quadratic",
]

#: A gradient in any of the shapes ffkit accepts: one tensor, a dict of named tensors, or a
#: tuple/list of tensors.
Grad = Union[Tensor, Mapping[str, Tensor], Sequence[Tensor]]
#: How parameters are grouped: ``None`` (one group per tensor), a function from a tensor's name
#: to its group's name, or an explicit ``{group: [tensor names]}``.
Groups = Union[None, Callable[[str], str], Mapping[str, Sequence[str]]]

# E[v_i^4] for tangents with E[v_i] = 0, E[v_i^2] = 1.
_KURTOSIS: dict[str, float] = {"gaussian": 3.0, "rademacher": 1.0}


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------


@dataclass
class GroupStats:
    """What :func:`measure` finds for one group A of parameters (all sums run over A only).

    ``grad_sq`` = ‖∇_A f‖², ``bias_sq`` = ‖mean of ĝ_A − ∇_A f‖², ``variance`` = the unbiased
    estimate of E‖ĝ_A − E ĝ_A‖² with standard error ``variance_se``, ``mean_cosine`` = the mean
    over draws of cos(ĝ_A, ∇_A f) (NaN where ∇_A f = 0).
    """

    size: int
    grad_sq: float
    bias_sq: float
    variance: float
    variance_se: float
    mean_cosine: float


@dataclass
class EstimatorStats:
    """An estimator measured against the true gradient over ``draws`` independent draws.

    Attributes hold absolute quantities; the properties divide them by ‖∇f‖² (or take square
    roots) so that estimators on different problems compare in one table.
    """

    n: int
    draws: int
    grad_sq: float  #: ‖∇f‖²
    second_moment: float  #: mean over draws of ‖ĝ‖²
    bias_sq: float  #: ‖ḡ − ∇f‖² with ḡ the mean of the draws
    variance: float  #: unbiased estimate of tr Cov(ĝ) = E‖ĝ − E ĝ‖²
    variance_se: float  #: standard error of ``variance``
    cosines: np.ndarray  #: cos(ĝ, ∇f), one per draw
    groups: dict[str, GroupStats] = field(default_factory=dict)

    @property
    def relative_variance(self) -> float:
        """tr Cov(ĝ) / ‖∇f‖²: n + 1 for one Gaussian direction, n − 1 for Rademacher."""
        return self.variance / self.grad_sq

    @property
    def relative_variance_se(self) -> float:
        """Standard error of :attr:`relative_variance`."""
        return self.variance_se / self.grad_sq

    @property
    def relative_second_moment(self) -> float:
        """E‖ĝ‖² / ‖∇f‖²: n + 2 for one Gaussian direction."""
        return self.second_moment / self.grad_sq

    @property
    def relative_bias(self) -> float:
        """‖ḡ − ∇f‖ / ‖∇f‖, the measured bias (it includes the sampling noise of ḡ)."""
        return math.sqrt(self.bias_sq / self.grad_sq)

    @property
    def bias_floor(self) -> float:
        """√(var / draws) / ‖∇f‖: the typical :attr:`relative_bias` of an *unbiased* estimator.

        A measured bias well above this floor is real; one near it is noise.
        """
        return math.sqrt(max(self.variance, 0.0) / self.draws / self.grad_sq)

    @property
    def mean_cosine(self) -> float:
        """Mean of cos(ĝ, ∇f) over the draws."""
        return float(np.mean(self.cosines))

    @property
    def mean_cosine_sq(self) -> float:
        """Mean of cos²(ĝ, ∇f) over the draws: 1/n for one Gaussian or Rademacher direction."""
        return float(np.mean(self.cosines**2))

    @property
    def descent_fraction(self) -> float:
        """The fraction of draws with ĝ·∇f > 0, i.e. a step −ηĝ that goes downhill."""
        return float(np.mean(self.cosines > 0))

    def row(self) -> dict[str, float]:
        """The numbers :func:`table` prints, keyed by column name."""
        return {
            "n": float(self.n),
            "draws": float(self.draws),
            "rel_bias": self.relative_bias,
            "bias_floor": self.bias_floor,
            "rel_variance": self.relative_variance,
            "rel_variance_se": self.relative_variance_se,
            "mean_cos": self.mean_cosine,
            "mean_cos_sq": self.mean_cosine_sq,
        }


def _as_named(grad: Grad, what: str) -> dict[str, Tensor]:
    if isinstance(grad, Tensor):
        return {"θ": grad}
    if isinstance(grad, Mapping):
        out = dict(grad)
    elif isinstance(grad, (list, tuple)):
        out = {str(i): g for i, g in enumerate(grad)}
    else:
        raise TypeError(f"{what} must be a tensor, a dict of tensors or a tuple of tensors, got {type(grad).__name__}")
    if not out:
        raise ValueError(f"{what} is empty")
    for k, g in out.items():
        if not isinstance(g, Tensor):
            raise TypeError(f"{what}[{k!r}] is a {type(g).__name__}, not a tensor")
    return out


def _group_index(names: Sequence[str], groups: Groups) -> dict[str, list[str]]:
    if groups is None:
        return {k: [k] for k in names}
    if callable(groups):
        out: dict[str, list[str]] = {}
        for k in names:
            out.setdefault(str(groups(k)), []).append(k)
        return out
    if isinstance(groups, Mapping):
        index = {str(g): list(ks) for g, ks in groups.items()}
        for g, ks in index.items():
            unknown = [k for k in ks if k not in names]
            if unknown:
                raise ValueError(f"group {g!r} names unknown tensors {unknown}; known: {list(names)}")
        return index
    raise TypeError(f"groups must be None, a callable or a mapping, got {type(groups).__name__}")


def by_module(name: str) -> str:
    """Group a parameter by the module that owns it: ``"2.weight"`` and ``"2.bias"`` -> ``"2"``."""
    return name.rsplit(".", 1)[0] if "." in name else name


def measure(
    draw: Callable[[], Grad],
    true_grad: Grad,
    *,
    draws: int,
    groups: Groups = None,
) -> EstimatorStats:
    """Call ``draw()`` ``draws`` times and measure the estimates against ``true_grad``.

    ``draw()`` returns one estimate ĝ with the structure of ``true_grad`` (a tensor, a dict or a
    tuple of tensors). With d_i = ĝ_i − ∇f the deviation of draw i and d̄ their mean, the
    (shifted, hence cancellation-free) estimates are ``bias_sq = ‖d̄‖²`` and
    ``variance = (Σ_i ‖d_i‖² − D ‖d̄‖²) / (D − 1)`` for D = ``draws``. Sums accumulate in float64
    and only Σ_i d_i and a few numbers per draw and tensor are stored, so n = 10⁶ is fine.
    """
    if not isinstance(draws, int) or draws < 2:
        raise ValueError(f"draws must be an int >= 2 (a variance needs two draws), got {draws!r}")
    truth = {k: t.detach().to(torch.float64).reshape(-1) for k, t in _as_named(true_grad, "true_grad").items()}
    names = list(truth)
    index = _group_index(names, groups)
    grad_sq = sum(float(t.square().sum()) for t in truth.values())
    if not math.isfinite(grad_sq) or grad_sq == 0.0:
        raise ValueError(f"the true gradient has squared norm {grad_sq}; relative measures need a finite, non-zero one")
    group_grad_sq = {g: sum(float(truth[k] @ truth[k]) for k in ks) for g, ks in index.items()}
    pos = {k: j for j, k in enumerate(names)}
    sum_d = {k: torch.zeros_like(t) for k, t in truth.items()}
    per_key = np.empty((draws, 3, len(names)))  # per draw and tensor: ĝ·∇f, ‖ĝ‖², ‖ĝ − ∇f‖²
    for i in range(draws):
        est = _as_named(draw(), "draw()")
        if set(est) != set(names):
            raise ValueError(f"draw() returned tensors {sorted(est)}, expected {sorted(names)}")
        for k in names:
            if est[k].numel() != truth[k].numel():
                raise ValueError(f"draw()[{k!r}] has {est[k].numel()} entries, the true gradient {truth[k].numel()}")
        dots = []
        for k in names:
            e = est[k].detach().reshape(-1).to(torch.float64)
            d = e - truth[k]
            sum_d[k] += d
            dots += [e @ truth[k], e @ e, d @ d]
        per_key[i] = torch.stack(dots).reshape(len(names), 3).T.numpy()
        if not np.all(np.isfinite(per_key[i])):
            raise ValueError(f"draw {i} returned a non-finite estimate")
    mean_d_key = np.array([float((sum_d[k] / draws).square().sum()) for k in names])

    def summarise(ks: Sequence[str], t_sq: float) -> tuple[float, float, float, np.ndarray, np.ndarray]:
        cols = [pos[k] for k in ks]
        dot, e_sq, d_sq = (per_key[:, r, cols].sum(1) for r in range(3))
        bias_sq = float(mean_d_key[cols].sum())
        var = max((float(d_sq.sum()) - draws * bias_sq) / (draws - 1), 0.0)
        se = float(np.std(d_sq, ddof=1) / math.sqrt(draws))
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = np.where(e_sq > 0, dot / np.sqrt(e_sq * t_sq), 0.0) if t_sq > 0 else np.full(draws, math.nan)
        return bias_sq, var, se, cos, e_sq

    bias_sq, variance, variance_se, cosines, e_sq = summarise(names, grad_sq)
    group_stats = {}
    for g, ks in index.items():
        b, v, se, cos, _ = summarise(ks, group_grad_sq[g])
        group_stats[g] = GroupStats(
            size=sum(truth[k].numel() for k in ks),
            grad_sq=group_grad_sq[g],
            bias_sq=b,
            variance=v,
            variance_se=se,
            mean_cosine=float(np.mean(cos)),
        )
    return EstimatorStats(
        n=sum(t.numel() for t in truth.values()),
        draws=draws,
        grad_sq=grad_sq,
        second_moment=float(e_sq.mean()),
        bias_sq=bias_sq,
        variance=variance,
        variance_se=variance_se,
        cosines=cosines,
        groups=group_stats,
    )


def _model_grads(model: nn.Module) -> dict[str, Tensor]:
    return {
        name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def _fill(fn: GradFn, model: nn.Module, closure: Callable[[], Tensor]) -> dict[str, Tensor]:
    model.zero_grad(set_to_none=True)
    fn(model, closure)
    return _model_grads(model)


def measure_model(
    grad_fn: GradFn,
    model: nn.Module,
    closure: Callable[[], Tensor],
    *,
    draws: int,
    reference: GradFn = backprop_grad,
    groups: Groups = by_module,
) -> EstimatorStats:
    """Measure a ``grad_fn(model, closure)`` estimator (e.g. ``ffkit.ForwardGradient()``) on one batch.

    ``closure()`` computes the loss f(θ) of ``model`` on a fixed batch; ``reference`` (backprop
    by default) gives the true gradient ∇f once, then ``grad_fn`` is drawn ``draws`` times.
    Parameters are grouped per module by default (``"0.weight"`` and ``"0.bias"`` form group
    ``"0"``); ``groups=None`` gives one group per tensor. The model's ``.grad`` are cleared at
    the end and its parameters are never changed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters")
    try:
        truth = _fill(reference, model, closure)
        stats = measure(lambda: _fill(grad_fn, model, closure), truth, draws=draws, groups=groups)
    finally:
        model.zero_grad(set_to_none=True)
    return stats


def compare(
    estimators: Mapping[str, GradFn],
    model: nn.Module,
    closure: Callable[[], Tensor],
    *,
    draws: int,
    reference: GradFn = backprop_grad,
    groups: Groups = by_module,
) -> dict[str, EstimatorStats]:
    """:func:`measure_model` for each named estimator on the same model and batch.

    The result feeds :func:`table`. Estimators with a ``generator`` of their own stay
    reproducible whatever order they run in.
    """
    if not estimators:
        raise ValueError("compare needs at least one estimator")
    return {
        name: measure_model(fn, model, closure, draws=draws, reference=reference, groups=groups)
        for name, fn in estimators.items()
    }


_COLUMNS: dict[str, tuple[str, str]] = {
    # key: (header, format)
    "n": ("n", "{:.0f}"),
    "draws": ("draws", "{:.0f}"),
    "rel_bias": ("‖bias‖/‖∇f‖", "{:.3f}"),
    "bias_floor": ("noise floor", "{:.3f}"),
    "rel_variance": ("var/‖∇f‖²", "{:.4g}"),
    "rel_variance_se": ("± s.e.", "{:.2g}"),
    "mean_cos": ("E cos", "{:.4f}"),
    "mean_cos_sq": ("E cos²", "{:.4f}"),
}


def table(
    stats: Mapping[str, EstimatorStats],
    *,
    columns: Sequence[str] | None = None,
    by_group: bool = False,
) -> str:
    """A fixed-width text table of several measured estimators, one row each.

    ``columns`` picks among ``n, draws, rel_bias, bias_floor, rel_variance, rel_variance_se,
    mean_cos, mean_cos_sq`` (default: all). With ``by_group=True`` the rows are
    (estimator, group) pairs instead, with the group's size, its share ‖∇_A f‖²/‖∇f‖² of the
    squared gradient, its variance relative to the *whole* ‖∇f‖², and its mean cosine.
    """
    if not stats:
        raise ValueError("table needs at least one measured estimator")
    if by_group:
        header = ["estimator", "group", "size", "‖∇_A f‖²/‖∇f‖²", "var_A/‖∇f‖²", "E cos_A"]
        rows = [
            [name, g, f"{s.size}", f"{s.grad_sq / st.grad_sq:.4f}", f"{s.variance / st.grad_sq:.4g}", f"{s.mean_cosine:.4f}"]
            for name, st in stats.items()
            for g, s in st.groups.items()
        ]
    else:
        cols = list(_COLUMNS) if columns is None else list(columns)
        unknown = [c for c in cols if c not in _COLUMNS]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; choose from {list(_COLUMNS)}")
        header = ["estimator"] + [_COLUMNS[c][0] for c in cols]
        rows = []
        for name, st in stats.items():
            r = st.row()
            rows.append([name] + [_COLUMNS[c][1].format(r[c]) for c in cols])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(h.ljust(w) if j < (2 if by_group else 1) else h.rjust(w) for j, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(x.ljust(w) if j < (2 if by_group else 1) else x.rjust(w) for j, (x, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# theory
# ---------------------------------------------------------------------------------------------


def kurtosis(sampler: str) -> float:
    """E[v_i⁴] of a tangent sampler with E[v_i²] = 1: 3 for ``"gaussian"``, 1 for ``"rademacher"``."""
    if sampler not in _KURTOSIS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {sorted(_KURTOSIS)}")
    return _KURTOSIS[sampler]


def variance_factor(n: int | np.ndarray, sampler: str = "gaussian", directions: int = 1) -> float | np.ndarray:
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
    """The density of cos θ = |u₁| on [0, 1] for u uniform on the sphere of R^n, n >= 2:

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

    ======== =================== =======================
    perturb  shared              per-example
    ======== =================== =======================
    weight   (pq+2)/N·V + (pq+1)·S   (pq+2)/N·V + (pq+1)/N·S
    activity (q+2)/N·V + (q+1)·S     (q+2)/N·V + (q+1)/N·S
    ======== =================== =======================
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


def linear_layer_estimate(
    weight: Tensor,
    x: Tensor,
    y: Tensor,
    loss: Callable[[Tensor, Tensor], Tensor],
    *,
    perturb: Literal["weight", "activity"] = "weight",
    noise: Literal["shared", "per-example"] = "shared",
    draws: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Forward-gradient estimates of ∂L/∂W for one linear layer z = W x, L = mean_k ℓ(z_k, y_k).

    ``weight`` is W (q × p); ``x`` (N × p) and ``y`` (N × ...) are one batch, or ``x``
    (D × N × p) and ``y`` (D × N × ...) are D batches, one per draw. ``loss(z, y)`` maps the
    pre-activations (N × q) and targets of one batch to the N per-example losses ℓ_k (it is
    vmapped over draws, so use plain tensor operations). Every directional derivative comes from
    a forward-mode pass (``torch.func.jvp``); tangents are Gaussian.

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
    kw = {"generator": generator, "dtype": w.dtype, "device": w.device}

    def per_example(z: Tensor, yb: Tensor) -> Tensor:
        out = loss(z, yb)
        if out.shape != (n_ex,):
            raise ValueError(f"loss(z, y) must return the {n_ex} per-example losses, got shape {tuple(out.shape)}")
        return out

    if perturb == "activity":
        if noise == "shared":
            u = torch.randn(n_draws, 1, q, **kw).expand(n_draws, n_ex, q)
        else:
            u = torch.randn(n_draws, n_ex, q, **kw)

        def act(xb: Tensor, yb: Tensor, t: Tensor) -> Tensor:
            return torch.func.jvp(lambda z: per_example(z, yb), (xb @ w.T,), (t,))[1]

        dd = torch.func.vmap(act)(xd, yd, u)  # (D, N): ∇_z ℓ_k · u_k
        return torch.einsum("dk,dkq,dkp->dqp", dd, u, xd) / n_ex
    if noise == "shared":
        v = torch.randn(n_draws, q, p, **kw)

        def shared(xb: Tensor, yb: Tensor, t: Tensor) -> Tensor:
            return torch.func.jvp(lambda m: per_example(xb @ m.T, yb).mean(), (w,), (t,))[1]

        dd = torch.func.vmap(shared)(xd, yd, v)  # (D,): ∇_W L · Ẇ
        return dd[:, None, None] * v
    # per-example weight noise: example k sees its own copy W_k of the weights and tangent Ẇ_k
    v = torch.randn(n_draws, n_ex, q, p, **kw)
    stacked = w.expand(n_ex, q, p).clone()

    def separate(xb: Tensor, yb: Tensor, t: Tensor) -> Tensor:
        return torch.func.jvp(lambda ws: per_example(torch.einsum("kqp,kp->kq", ws, xb), yb), (stacked,), (t,))[1]

    dd = torch.func.vmap(separate)(xd, yd, v)  # (D, N): ∇_W ℓ_k · Ẇ_k
    return torch.einsum("dk,dkqp->dqp", dd, v) / n_ex


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
    runs, n = e0.shape
    e = e0.clone()
    out = torch.empty(steps + 1, runs, dtype=e.dtype)
    out[0] = 0.5 * (h * e * e).sum(1)
    for t in range(1, steps + 1):
        g = h * e
        if directions is None:
            est = g
        else:
            shape = (runs, directions, n)
            if sampler == "gaussian":
                v = torch.randn(shape, generator=generator, dtype=e.dtype)
            else:
                v = torch.randint(0, 2, shape, generator=generator).to(e.dtype) * 2 - 1
            est = ((g[:, None, :] * v).sum(2, keepdim=True) * v).mean(1)
        e = e - lr * est
        loss = 0.5 * (h * e * e).sum(1)
        out[t] = torch.nan_to_num(loss, nan=math.inf)
    return out
