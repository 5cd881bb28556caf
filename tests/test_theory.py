"""Tests of ffkit.theory: the closed forms, checked against exact special cases and by quadrature.

The Monte Carlo checks of these formulas are in test_variance.py (the variance and cosine of
forward gradients), test_perturbation.py (Ren et al.'s Table 1) and test_tangents.py (κ).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ffkit import theory


def test_variance_factor_and_kurtosis() -> None:
    assert theory.variance_factor(10) == 11 and theory.variance_factor(10, "rademacher") == 9
    assert theory.variance_factor(10, directions=4) == pytest.approx(11 / 4)
    assert np.allclose(theory.variance_factor(np.array([1, 100])), [2, 101])
    with pytest.raises(ValueError, match="unknown tangent distribution"):
        theory.variance_factor(10, "uniform")
    with pytest.raises(ValueError, match="directions"):
        theory.variance_factor(10, directions=0)


def test_expected_cosine_closed_form() -> None:
    assert theory.expected_cosine(2) == pytest.approx(2 / math.pi)  # |cos| of a uniform angle
    assert theory.expected_cosine(3) == pytest.approx(0.5)  # Archimedes: u₁ uniform on [−1, 1]
    assert theory.expected_cosine(1) == pytest.approx(1.0)
    for n in (100, 10**6):
        # Γ(n/2)/Γ((n+1)/2) = √(2/n) (1 + 1/(4n) + 1/(32n²) + O(n⁻³))
        assert theory.expected_cosine(n) == pytest.approx(math.sqrt(2 / (math.pi * n)) * (1 + 1 / (4 * n)), rel=0.1 / n**2)


@pytest.mark.parametrize("n", [2, 3, 5, 50])
def test_cosine_density_is_normalised_with_the_right_moments(n: int) -> None:
    t = np.linspace(0.0, 1.0, 400_001)
    p = theory.cosine_density(t, n)
    if n == 2:  # integrable singularity at t = 1: substitute t = sin φ instead
        phi = np.linspace(0.0, math.pi / 2, 400_001)
        w = theory.cosine_density(np.sin(phi), n) * np.cos(phi)
        assert np.trapezoid(w, phi) == pytest.approx(1.0, abs=1e-4)
        return
    assert np.trapezoid(p, t) == pytest.approx(1.0, abs=1e-5)
    assert np.trapezoid(t * p, t) == pytest.approx(theory.expected_cosine(n), abs=1e-5)
    assert np.trapezoid(t * t * p, t) == pytest.approx(1 / n, abs=1e-5)


def test_perturbation_variance_table() -> None:
    kw = dict(V=2.0, S=0.5, p=3, q=4, N=8)
    assert theory.perturbation_variance("weight", "shared", **kw) == pytest.approx(14 / 8 * 2 + 13 * 0.5)
    assert theory.perturbation_variance("weight", "per-example", **kw) == pytest.approx(14 / 8 * 2 + 13 / 8 * 0.5)
    assert theory.perturbation_variance("activity", "shared", **kw) == pytest.approx(6 / 8 * 2 + 5 * 0.5)
    assert theory.perturbation_variance("activity", "per-example", **kw) == pytest.approx(6 / 8 * 2 + 5 / 8 * 0.5)
    with pytest.raises(ValueError, match="perturb"):
        theory.perturbation_variance("bias", "shared", **kw)  # type: ignore[arg-type]


def test_kurtosis_is_read_from_the_tangents_registry() -> None:
    assert theory.kurtosis("gaussian") == 3.0 and theory.kurtosis("rademacher") == 1.0
    assert theory.kurtosis("Gaussian") == 3.0
    with pytest.raises(ValueError, match="unknown tangent distribution"):
        theory.kurtosis("sobol")


def test_closed_forms_reject_bad_arguments() -> None:
    for bad in (0, -3):
        with pytest.raises(ValueError, match="n must be >= 1"):
            theory.variance_factor(bad)
        with pytest.raises(ValueError, match="n must be >= 1"):
            theory.expected_cosine(bad)
    with pytest.raises(ValueError, match="n must be >= 1"):
        theory.expected_cosine(np.array([3, 0]))
    for bad in (1, 2.5, 0):
        with pytest.raises(ValueError, match="n >= 2"):
            theory.cosine_density(0.5, bad)  # type: ignore[arg-type]
    kw = dict(V=2.0, S=0.5, p=3, q=4, N=8)
    with pytest.raises(ValueError, match="noise"):
        theory.perturbation_variance("weight", "some", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        theory.perturbation_variance("weight", "shared", **{**kw, "N": 0})
    with pytest.raises(ValueError, match="non-negative"):
        theory.perturbation_variance("weight", "shared", **{**kw, "V": -1.0})


def test_cosine_density_vanishes_outside_the_unit_interval() -> None:
    assert theory.cosine_density(-0.1, 5) == 0.0 and theory.cosine_density(1.0, 5) == 0.0
    assert theory.cosine_density(np.array([0.0, 2.0]), 5).tolist()[1] == 0.0
