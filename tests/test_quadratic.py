"""Tests of ffkit.quadratic: the exact expected loss of forward-gradient SGD on a quadratic,
its stability limit in closed form, and the simulation against both.

Monte Carlo tolerances: a sample mean of D i.i.d. draws is within ``Z`` standard errors of its
expectation except with probability about 6e-7 (Z = 5, Gaussian tail); where the standard error
is itself estimated from the draws (D >= 2000 here) its relative error is a few percent, which
the margin absorbs. All generators are seeded, so the tests are deterministic anyway; the
tolerances say how far off a *correct* implementation can be.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ffkit import quadratic as Q

Z = 5.0


def test_quadratic_risk_isotropic_closed_form() -> None:
    n, lr = 30, 0.02
    risk = Q.quadratic_risk(np.ones(n), 1.0, lr, 50)
    rho = 1 - 2 * lr + (n + 2) * lr**2  # E‖e'‖² = (1 − 2η + (n+2)η²)‖e‖² for h = 1
    assert np.allclose(risk, 0.5 * n * rho ** np.arange(51))
    early = Q.quadratic_risk(np.ones(n), 1.0, lr, 50, stop_below=risk[20])
    assert len(early) == 21 and np.allclose(early, risk[:21])
    gd = Q.quadratic_risk(np.ones(n), 1.0, 0.3, 5, directions=None)
    assert np.allclose(gd, 0.5 * n * 0.49 ** np.arange(6))


@pytest.mark.parametrize(("sampler", "directions"), [("gaussian", 1), ("rademacher", 1), ("gaussian", 3)])
def test_simulation_matches_exact_expected_loss(sampler: str, directions: int) -> None:
    n, runs, steps, lr = 12, 4000, 40, 0.04
    h = np.geomspace(0.2, 1.0, n)
    e0 = torch.ones(runs, n, dtype=torch.float64)
    sim = Q.simulate_quadratic(torch.tensor(h), e0, lr, steps, sampler=sampler, directions=directions,
                               generator=torch.Generator().manual_seed(3))
    exact = Q.quadratic_risk(h, 1.0, lr, steps, sampler=sampler, directions=directions)
    for t in (1, 10, 40):
        se = float(sim[t].std()) / math.sqrt(runs)
        assert abs(float(sim[t].mean()) - exact[t]) < Z * se


def test_max_stable_lr_closed_forms() -> None:
    n = 40
    ones = np.ones(n)
    assert Q.max_stable_lr(ones) == pytest.approx(2 / (n + 2), rel=1e-5)
    assert Q.max_stable_lr(ones, sampler="rademacher") == pytest.approx(2 / n, rel=1e-5)
    # K Gaussian directions on h = 1: η (n + K + 1) < 2K
    assert Q.max_stable_lr(ones, directions=5) == pytest.approx(10 / (n + 6), rel=1e-5)
    assert Q.max_stable_lr([1.0], sampler="rademacher") == pytest.approx(2.0, rel=1e-5)  # n = 1: exact gradient
    h = np.geomspace(0.1, 2.0, 25)
    assert Q.max_stable_lr(h, directions=None) == pytest.approx(2 / 2.0, rel=1e-5)
    eta = Q.max_stable_lr(h)
    grow = Q.quadratic_risk(h, 1.0, 1.02 * eta, 3000)
    decay = Q.quadratic_risk(h, 1.0, 0.98 * eta, 3000)
    assert grow[-1] > grow[-1000] and decay[-1] < decay[-1000]
