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

The closed forms these measurements are checked against are in :mod:`ffkit.theory` (variance,
cosine, Ren et al.'s Table 1) and :mod:`ffkit.quadratic` (SGD on a quadratic).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import torch
from torch import Tensor, nn

from ffkit.methods.backprop import backprop_grad
from ffkit.methods.base import GradFn

__all__ = [
    "EstimatorStats",
    "GroupStats",
    "measure",
    "measure_model",
    "by_module",
    "compare",
    "table",
]

#: A gradient in any of the shapes ffkit accepts: one tensor, a dict of named tensors, or a
#: tuple/list of tensors.
Grad = Union[Tensor, Mapping[str, Tensor], Sequence[Tensor]]
#: How parameters are grouped: ``None`` (one group per tensor), a function from a tensor's name
#: to its group's name, or an explicit ``{group: [tensor names]}``.
Groups = Union[None, Callable[[str], str], Mapping[str, Sequence[str]]]



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
