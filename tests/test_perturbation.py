"""Tests of ffkit.perturbation: weight and activity perturbation of a linear layer against
autograd (unbiased) and against Ren et al.'s Table 1 (ffkit.theory.perturbation_variance).

Monte Carlo tolerances: a sample mean of D i.i.d. draws is within ``Z`` standard errors of its
expectation except with probability about 6e-7 (Z = 5, Gaussian tail); where the standard error
is itself estimated from the draws (D >= 2000 here) its relative error is a few percent, which
the margin absorbs. All generators are seeded, so the tests are deterministic anyway; the
tolerances say how far off a *correct* implementation can be.
"""

from __future__ import annotations

import math

import pytest
import torch

from ffkit.perturbation import linear_layer_estimate
from ffkit.theory import perturbation_variance

Z = 5.0


def _layer_population(seed: int = 0, m: int = 300, p: int = 5, q: int = 4):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, p, generator=gen, dtype=torch.float64)
    w = 0.3 * torch.randn(q, p, generator=gen, dtype=torch.float64)
    y = x @ (0.3 * torch.randn(q, p, generator=gen, dtype=torch.float64)).T + 0.5 * torch.randn(m, q, generator=gen, dtype=torch.float64)
    return x, y, w


def _sq_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (z - y).square().sum(1)


@pytest.mark.parametrize("perturb", ["weight", "activity"])
@pytest.mark.parametrize("noise", ["shared", "per-example"])
def test_linear_layer_estimate_is_unbiased_for_a_fixed_batch(perturb: str, noise: str) -> None:
    x, y, w = _layer_population()
    xb, yb = x[:6], y[:6]
    wr = w.clone().requires_grad_(True)
    _sq_loss(xb @ wr.T, yb).mean().backward()
    est = linear_layer_estimate(w, xb, yb, _sq_loss, perturb=perturb, noise=noise, draws=4000,
                                  generator=torch.Generator().manual_seed(1))
    assert est.shape == (4000, 4, 5)
    # every entry's mean is within Z standard errors of the autograd gradient
    se = est.std(0) / math.sqrt(len(est))
    assert torch.all((est.mean(0) - wr.grad).abs() < Z * se + 1e-12)


@pytest.mark.parametrize("perturb", ["weight", "activity"])
@pytest.mark.parametrize("noise", ["shared", "per-example"])
def test_linear_layer_variance_matches_ren_table_1(perturb: str, noise: str) -> None:
    x, y, w = _layer_population()
    q, p = w.shape
    grads = (x @ w.T - y)[:, :, None] * x[:, None, :]  # per-example G_k = δ_k x_kᵀ
    mean = grads.mean(0)
    v_, s_ = float(grads.var(0, unbiased=False).mean()), float(mean.square().mean())
    batch, draws = 4, 4000
    gen = torch.Generator().manual_seed(2)
    idx = torch.randint(0, len(x), (draws, batch), generator=gen)  # i.i.d. examples
    est = linear_layer_estimate(w, x[idx], y[idx], _sq_loss, perturb=perturb, noise=noise, generator=gen)
    per_draw = (est - mean).square().sum((1, 2)) / (p * q)  # mean per-entry squared deviation
    measured = float(per_draw.mean())
    se = float(per_draw.std()) / math.sqrt(draws)
    theory = perturbation_variance(perturb, noise, V=v_, S=s_, p=p, q=q, N=batch)
    assert abs(measured - theory) < Z * se


def test_linear_layer_estimate_rejects_bad_shapes() -> None:
    x, y, w = _layer_population()
    with pytest.raises(ValueError, match="do not fit"):
        linear_layer_estimate(w, x[:, :3], y, _sq_loss)
    with pytest.raises(ValueError, match="per-example losses"):
        linear_layer_estimate(w, x[:4], y[:4], lambda z, t: (z - t).square().sum())
    with pytest.raises(ValueError, match="noise"):
        linear_layer_estimate(w, x[:4], y[:4], _sq_loss, noise="some")  # type: ignore[arg-type]
