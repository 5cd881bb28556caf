"""Tests of ffkit.variance: the measurements against closed forms, the theory against simulation.

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
import torch.nn.functional as F
from torch import nn

import ffkit
from ffkit import variance as V
from ffkit.fg import ForwardGradient, forward_gradient
from ffkit.train import backprop_grad

Z = 5.0


def _linear(g: torch.Tensor):
    """f(θ) = g·θ, whose gradient is g everywhere."""
    return lambda theta: (g * theta).sum()


def _fg_draw(g: torch.Tensor, *, sampler: str = "gaussian", directions: int = 1, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    theta = torch.zeros_like(g)
    return lambda: forward_gradient(_linear(g), theta, directions=directions, sampler=sampler, generator=gen)[1]


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
    expected = V.variance_factor(n, sampler, directions)
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
        assert abs(st.mean_cosine - V.expected_cosine(n)) < Z * se
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
    draw_gen = torch.Generator().manual_seed(4)
    st = V.measure(lambda: forward_gradient(f, theta, generator=draw_gen)[1], g, draws=2000)
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
    fg = ForwardGradient(generator=torch.Generator().manual_seed(5))
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
            "backprop": backprop_grad,
            "FG K=1": ForwardGradient(generator=torch.Generator().manual_seed(6)),
            "FG K=4": ForwardGradient(directions=4, generator=torch.Generator().manual_seed(7)),
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
    st = V.measure(lambda: g, g, draws=2)
    with pytest.raises(ValueError, match="unknown columns"):
        V.table({"x": st}, columns=["nope"])
    with pytest.raises(ValueError):
        V.table({})


# --- theory -----------------------------------------------------------------------------------


def test_variance_factor_and_kurtosis() -> None:
    assert V.variance_factor(10) == 11 and V.variance_factor(10, "rademacher") == 9
    assert V.variance_factor(10, directions=4) == pytest.approx(11 / 4)
    assert np.allclose(V.variance_factor(np.array([1, 100])), [2, 101])
    with pytest.raises(ValueError, match="sampler"):
        V.variance_factor(10, "uniform")
    with pytest.raises(ValueError, match="directions"):
        V.variance_factor(10, directions=0)


def test_expected_cosine_closed_form() -> None:
    assert V.expected_cosine(2) == pytest.approx(2 / math.pi)  # |cos| of a uniform angle
    assert V.expected_cosine(3) == pytest.approx(0.5)  # Archimedes: u₁ uniform on [−1, 1]
    assert V.expected_cosine(1) == pytest.approx(1.0)
    for n in (100, 10**6):
        # Γ(n/2)/Γ((n+1)/2) = √(2/n) (1 + 1/(4n) + 1/(32n²) + O(n⁻³))
        assert V.expected_cosine(n) == pytest.approx(math.sqrt(2 / (math.pi * n)) * (1 + 1 / (4 * n)), rel=0.1 / n**2)


@pytest.mark.parametrize("n", [2, 3, 5, 50])
def test_cosine_density_is_normalised_with_the_right_moments(n: int) -> None:
    t = np.linspace(0.0, 1.0, 400_001)
    p = V.cosine_density(t, n)
    if n == 2:  # integrable singularity at t = 1: substitute t = sin φ instead
        phi = np.linspace(0.0, math.pi / 2, 400_001)
        w = V.cosine_density(np.sin(phi), n) * np.cos(phi)
        assert np.trapezoid(w, phi) == pytest.approx(1.0, abs=1e-4)
        return
    assert np.trapezoid(p, t) == pytest.approx(1.0, abs=1e-5)
    assert np.trapezoid(t * p, t) == pytest.approx(V.expected_cosine(n), abs=1e-5)
    assert np.trapezoid(t * t * p, t) == pytest.approx(1 / n, abs=1e-5)


def test_perturbation_variance_table() -> None:
    kw = dict(V=2.0, S=0.5, p=3, q=4, N=8)
    assert V.perturbation_variance("weight", "shared", **kw) == pytest.approx(14 / 8 * 2 + 13 * 0.5)
    assert V.perturbation_variance("weight", "per-example", **kw) == pytest.approx(14 / 8 * 2 + 13 / 8 * 0.5)
    assert V.perturbation_variance("activity", "shared", **kw) == pytest.approx(6 / 8 * 2 + 5 * 0.5)
    assert V.perturbation_variance("activity", "per-example", **kw) == pytest.approx(6 / 8 * 2 + 5 / 8 * 0.5)
    with pytest.raises(ValueError, match="perturb"):
        V.perturbation_variance("bias", "shared", **kw)  # type: ignore[arg-type]


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
    est = V.linear_layer_estimate(w, xb, yb, _sq_loss, perturb=perturb, noise=noise, draws=4000,
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
    est = V.linear_layer_estimate(w, x[idx], y[idx], _sq_loss, perturb=perturb, noise=noise, generator=gen)
    per_draw = (est - mean).square().sum((1, 2)) / (p * q)  # mean per-entry squared deviation
    measured = float(per_draw.mean())
    se = float(per_draw.std()) / math.sqrt(draws)
    theory = V.perturbation_variance(perturb, noise, V=v_, S=s_, p=p, q=q, N=batch)
    assert abs(measured - theory) < Z * se


def test_linear_layer_estimate_rejects_bad_shapes() -> None:
    x, y, w = _layer_population()
    with pytest.raises(ValueError, match="do not fit"):
        V.linear_layer_estimate(w, x[:, :3], y, _sq_loss)
    with pytest.raises(ValueError, match="per-example losses"):
        V.linear_layer_estimate(w, x[:4], y[:4], lambda z, t: (z - t).square().sum())
    with pytest.raises(ValueError, match="noise"):
        V.linear_layer_estimate(w, x[:4], y[:4], _sq_loss, noise="some")  # type: ignore[arg-type]


def test_quadratic_risk_isotropic_closed_form() -> None:
    n, lr = 30, 0.02
    risk = V.quadratic_risk(np.ones(n), 1.0, lr, 50)
    rho = 1 - 2 * lr + (n + 2) * lr**2  # E‖e'‖² = (1 − 2η + (n+2)η²)‖e‖² for h = 1
    assert np.allclose(risk, 0.5 * n * rho ** np.arange(51))
    early = V.quadratic_risk(np.ones(n), 1.0, lr, 50, stop_below=risk[20])
    assert len(early) == 21 and np.allclose(early, risk[:21])
    gd = V.quadratic_risk(np.ones(n), 1.0, 0.3, 5, directions=None)
    assert np.allclose(gd, 0.5 * n * 0.49 ** np.arange(6))


@pytest.mark.parametrize(("sampler", "directions"), [("gaussian", 1), ("rademacher", 1), ("gaussian", 3)])
def test_simulation_matches_exact_expected_loss(sampler: str, directions: int) -> None:
    n, runs, steps, lr = 12, 4000, 40, 0.04
    h = np.geomspace(0.2, 1.0, n)
    e0 = torch.ones(runs, n, dtype=torch.float64)
    sim = V.simulate_quadratic(torch.tensor(h), e0, lr, steps, sampler=sampler, directions=directions,
                               generator=torch.Generator().manual_seed(3))
    exact = V.quadratic_risk(h, 1.0, lr, steps, sampler=sampler, directions=directions)
    for t in (1, 10, 40):
        se = float(sim[t].std()) / math.sqrt(runs)
        assert abs(float(sim[t].mean()) - exact[t]) < Z * se


def test_max_stable_lr_closed_forms() -> None:
    n = 40
    ones = np.ones(n)
    assert V.max_stable_lr(ones) == pytest.approx(2 / (n + 2), rel=1e-5)
    assert V.max_stable_lr(ones, sampler="rademacher") == pytest.approx(2 / n, rel=1e-5)
    # K Gaussian directions on h = 1: η (n + K + 1) < 2K
    assert V.max_stable_lr(ones, directions=5) == pytest.approx(10 / (n + 6), rel=1e-5)
    assert V.max_stable_lr([1.0], sampler="rademacher") == pytest.approx(2.0, rel=1e-5)  # n = 1: exact gradient
    h = np.geomspace(0.1, 2.0, 25)
    assert V.max_stable_lr(h, directions=None) == pytest.approx(2 / 2.0, rel=1e-5)
    eta = V.max_stable_lr(h)
    grow = V.quadratic_risk(h, 1.0, 1.02 * eta, 3000)
    decay = V.quadratic_risk(h, 1.0, 0.98 * eta, 3000)
    assert grow[-1] > grow[-1000] and decay[-1] < decay[-1000]


def test_variance_width_run_records_target_and_divergence() -> None:
    from ffkit.commands.variance_width import run_one

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    kw = dict(steps=20, eval_every=5, batch=16, seed=0)
    easy = run_one(2, "backprop", 0.1, x, y, target=10.0, **kw)  # the initial loss is about ln 10 < 10
    assert easy["steps_to_target"] == 5 and not easy["diverged"] and easy["eval_step"] == [0, 5]
    wild = run_one(2, "forward gradient", 1e4, x, y, target=0.0, **kw)
    assert wild["diverged"] and wild["steps_to_target"] is None
    calm = run_one(2, "forward gradient", 1e-3, x, y, target=0.0, **kw)
    assert not calm["diverged"] and calm["eval_step"] == [0, 5, 10, 15, 20] and len(calm["loss"]) == 5
    sparse = run_one(2, "backprop", 1e-3, x, y, target=0.0, **{**kw, "steps": 60, "eval_every": 10})
    assert sparse["eval_step"] == [0, 5, 10, 15, 20, 25, 30, 35, 40, 50, 60]


def test_variance_width_hessian_trace_matches_the_exact_trace() -> None:
    from ffkit.commands.variance_width import hessian_trace

    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    model = ffkit.models.mlp([784, 1, 10], generator_seed=0)
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        parts = dict(zip(names, (t.reshape(s) for t, s in zip(theta.split([s.numel() for s in shapes]), shapes))))
        return F.cross_entropy(torch.func.functional_call(model, parts, (x,)), y)

    hvp = lambda e: torch.func.jvp(torch.func.grad(loss), (flat,), (e,))[1]  # noqa: E731
    exact = float(torch.func.vmap(hvp)(torch.eye(flat.numel())).diagonal().sum())
    mean, se = hessian_trace(1, x, y, probes=200, seed=0)
    assert abs(mean - exact) < Z * se
