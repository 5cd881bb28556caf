"""Tests of ffkit.variance: the measuring instrument against closed forms (ffkit.theory).

Monte Carlo tolerances: a sample mean of D i.i.d. draws is within ``Z`` standard errors of its
expectation except with probability about 6e-7 (Z = 5, Gaussian tail); where the standard error
is itself estimated from the draws (D >= 2000 here) its relative error is a few percent, which
the margin absorbs. All generators are seeded, so the tests are deterministic anyway; the
tolerances say how far off a *correct* implementation can be.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import ffkit
from ffkit import variance as V
from ffkit.methods import Backprop, ForwardGradient, backprop_grad, forward_gradient
from ffkit.theory import expected_cosine, variance_factor

Z = 5.0


def _linear(g: torch.Tensor):
    """f(θ) = g·θ, whose gradient is g everywhere."""
    return lambda theta: (g * theta).sum()


def _fg_draw(g: torch.Tensor, *, sampler: str = "gaussian", directions: int = 1, seed: int = 0):
    """Draw t of the estimator is step t of a run seeded ``seed``: independent tangents per draw."""
    steps = itertools.count()
    theta = torch.zeros_like(g)
    return lambda: forward_gradient(_linear(g), theta, directions=directions, sampler=sampler, seed=seed,
                                    step=next(steps))[1]


def test_exact_estimator_has_no_bias_no_variance_and_cosine_one() -> None:
    g = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([[0.5, 0.0], [3.0, 1.0]])}
    st = V.measure(lambda: {k: t.clone() for k, t in g.items()}, g, draws=5)
    assert st.n == 6 and st.draws == 5
    assert st.bias_sq == 0.0 and st.variance == 0.0 and st.variance_se == 0.0
    assert st.grad_sq == pytest.approx(1 + 4 + 0.25 + 9 + 1)
    assert np.allclose(st.cosines, 1.0)
    assert set(st.groups) == {"a", "b"}
    assert st.groups["b"].size == 4 and st.groups["b"].grad_sq == pytest.approx(10.25)
    assert st.descent_fraction == 1.0


@pytest.mark.parametrize(("sampler", "directions"), [("gaussian", 1), ("rademacher", 1), ("gaussian", 4)])
def test_forward_gradient_variance_matches_theory(sampler: str, directions: int) -> None:
    n, draws = 24, 2000
    g = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    st = V.measure(_fg_draw(g, sampler=sampler, directions=directions), g, draws=draws)
    expected = variance_factor(n, sampler, directions)
    assert abs(st.relative_variance - expected) < Z * st.relative_variance_se
    # unbiased: ‖d̄‖² has mean tr C / D; for the covariance C = (‖g‖²I + (κ−1)ggᵀ)/K − ggᵀ/K of one
    # estimate its standard deviation is √(2 tr C²)/D <= √(2(n + 8)) ‖g‖²/(K D), so allow Z of them
    floor = expected * st.grad_sq / draws
    assert st.bias_sq < floor + Z * math.sqrt(2 * (n + 8)) * st.grad_sq / (directions * draws)
    if directions == 1:
        # E cos² = 1/n for both samplers; cos² ∈ [0, 1] so its sample s.e. is well defined
        se = np.std(st.cosines**2, ddof=1) / math.sqrt(draws)
        assert abs(st.mean_cosine_sq - 1 / n) < Z * se
        assert st.descent_fraction == 1.0  # (∇f·v)v·∇f = (∇f·v)² >= 0
    if sampler == "gaussian" and directions == 1:
        se = np.std(st.cosines, ddof=1) / math.sqrt(draws)
        assert abs(st.mean_cosine - expected_cosine(n)) < Z * se
        assert abs(st.relative_second_moment - (n + 2)) < Z * st.relative_variance_se * 1.1


def test_biased_estimator_is_flagged() -> None:
    n, draws = 10, 2000
    g = torch.randn(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    noisy = _fg_draw(g)
    st = V.measure(lambda: noisy() + 0.5 * g, g, draws=draws)  # bias 0.5 g, floor √((n+1)/D) ≈ 0.07
    assert abs(st.relative_bias - 0.5) < Z * st.bias_floor
    assert st.relative_bias > 5 * st.bias_floor


def test_group_variance_of_a_shared_gaussian_tangent() -> None:
    # one tangent v over all parameters: block A of (∇f·v)v has variance n_A‖∇f‖² + ‖∇_A f‖²
    gen = torch.Generator().manual_seed(3)
    g = {"small": 0.1 * torch.randn(5, generator=gen, dtype=torch.float64),
         "big": torch.randn(3, 4, generator=gen, dtype=torch.float64)}
    theta = {k: torch.zeros_like(t) for k, t in g.items()}
    f = lambda th: sum((g[k] * th[k]).sum() for k in g)  # noqa: E731
    steps = itertools.count()
    st = V.measure(lambda: forward_gradient(f, theta, sampler="gaussian", seed=4, step=next(steps))[1], g, draws=2000)
    total = st.grad_sq
    for name, gs in st.groups.items():
        expected = gs.size * total + gs.grad_sq
        assert abs(gs.variance - expected) < Z * gs.variance_se, name
    assert sum(gs.variance for gs in st.groups.values()) == pytest.approx(st.variance)
    # a group whose own gradient is small gets noise from the others: its cosine is far lower
    assert st.groups["small"].mean_cosine < 0.5 * st.groups["big"].mean_cosine


def test_custom_groups_mapping_and_callable() -> None:
    g = (torch.ones(2), torch.ones(3), torch.ones(4))
    st = V.measure(lambda: tuple(t.clone() for t in g), g, draws=2, groups={"first": ["0"], "rest": ["1", "2"]})
    assert {k: s.size for k, s in st.groups.items()} == {"first": 2, "rest": 7}
    st = V.measure(lambda: tuple(t.clone() for t in g), g, draws=2, groups=lambda k: "all")
    assert st.groups["all"].size == 9


def _mlp_problem() -> tuple[nn.Module, callable]:
    model = ffkit.models.mlp([6, 5, 3], flatten=False, generator_seed=0).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=gen)
    return model, lambda: nn.functional.cross_entropy(model(x), y)


def test_measure_model_with_forward_gradient() -> None:
    model, closure = _mlp_problem()
    before = [p.detach().clone() for p in model.parameters()]
    fg = ForwardGradient(sampler="gaussian", seed=5)
    st = V.measure_model(fg, model, closure, draws=800)
    n = ffkit.models.count_parameters(model)
    assert st.n == n == 6 * 5 + 5 + 5 * 3 + 3
    assert abs(st.relative_variance - (n + 1)) < Z * st.relative_variance_se
    assert set(st.groups) == {"0", "2"}  # Linear, ReLU, Linear: weights and biases per layer
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_compare_and_table() -> None:
    model, closure = _mlp_problem()
    res = V.compare(
        {
            "backprop": Backprop(),
            "FG K=1": ForwardGradient(seed=6),
            "FG K=4": ForwardGradient(directions=4, seed=7),
        },
        model,
        closure,
        draws=100,
        groups=None,
    )
    assert res["backprop"].variance == 0.0 and res["backprop"].mean_cosine == pytest.approx(1.0)
    assert res["FG K=4"].relative_variance < res["FG K=1"].relative_variance
    text = V.table(res)
    lines = text.splitlines()
    assert len(lines) == 2 + 3 and lines[2].startswith("backprop") and "var/‖∇f‖²" in lines[0]
    assert len(V.table(res, by_group=True).splitlines()) == 2 + 3 * 4
    assert V.table(res, columns=["n"]).splitlines()[2].split()[-1] == "53"


def test_measure_rejects_bad_input() -> None:
    g = torch.ones(3)
    with pytest.raises(ValueError, match="draws"):
        V.measure(lambda: g, g, draws=1)
    with pytest.raises(ValueError, match="squared norm"):
        V.measure(lambda: g, torch.zeros(3), draws=2)
    with pytest.raises(ValueError, match="expected"):
        V.measure(lambda: {"x": g}, {"y": g}, draws=2)
    with pytest.raises(ValueError, match="entries"):
        V.measure(lambda: torch.ones(4), g, draws=2)
    with pytest.raises(ValueError, match="unknown tensors"):
        V.measure(lambda: {"x": g}, {"x": g}, draws=2, groups={"a": ["z"]})
    with pytest.raises(ValueError, match="non-finite"):
        V.measure(lambda: torch.full((3,), math.nan), g, draws=2)
    with pytest.raises(TypeError):
        V.measure(lambda: g, [1.0, 2.0], draws=2)
    with pytest.raises(TypeError, match="nn.Module"):
        V.measure_model(backprop_grad, "model", lambda: g.sum(), draws=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no trainable parameters"):
        V.measure_model(backprop_grad, nn.Linear(2, 2).requires_grad_(False), lambda: g.sum(), draws=2)
    with pytest.raises(ValueError, match="at least one estimator"):
        V.compare({}, nn.Linear(2, 2), lambda: g.sum(), draws=2)
    st = V.measure(lambda: g, g, draws=2)
    with pytest.raises(ValueError, match="unknown columns"):
        V.table({"x": st}, columns=["nope"])
    with pytest.raises(ValueError):
        V.table({})
