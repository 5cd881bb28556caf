"""Tests of the structured tangents (orthogonal, low-rank), their variance formulas, the MLP step
with low-rank tangents and the guessed-direction estimator.

Monte Carlo checks compare a measured variance with its closed form within 4 standard errors of
the measurement (the standard error comes from the draws themselves).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ffkit import tangents as tg
from ffkit import theory, variance
from ffkit.local_mixer import LocalMixer, MixerConfig
from ffkit.methods import ForwardGradient, GuessedForwardGradient, LowRankForwardGradient
from ffkit.methods.local import WeightPerturbation, local_losses
from ffkit.methods.structured import mlp_layers
from ffkit.models import mlp


def test_orthogonal_directions_are_orthogonal_reproducible_and_of_length_root_n() -> None:
    like = [torch.zeros(5, 3), torch.zeros(4)]
    frame = tg.orthogonal(like, 4, seed=1, step=2)
    flat = torch.stack([torch.cat([t.reshape(-1) for t in v]) for v in frame]).double()
    torch.testing.assert_close(flat @ flat.T, 19.0 * torch.eye(4, dtype=torch.float64), atol=1e-4, rtol=0)
    again = tg.orthogonal(like, 4, seed=1, step=2)
    assert all(torch.equal(a, b) for va, vb in zip(frame, again) for a, b in zip(va, vb))
    other = tg.orthogonal(like, 4, seed=1, step=3)
    assert not torch.equal(frame[0][0], other[0][0])
    assert [t.shape for t in frame[0]] == [torch.Size([5, 3]), torch.Size([4])]
    with pytest.raises(ValueError, match="do not fit"):
        tg.orthogonal(like, 20, seed=0, step=0)


def _linear_draws(n: int, make: callable, draws: int) -> variance.EstimatorStats:
    """``make(g, t)`` draws estimate t of the gradient g of the linear function θ ↦ g·θ."""
    return _linear_draws_of(torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64), make, draws)


def _linear_draws_of(g: torch.Tensor, make: callable, draws: int) -> variance.EstimatorStats:
    state = {"t": 0}

    def draw() -> torch.Tensor:
        est = make(g, state["t"])
        state["t"] += 1
        return est

    return variance.measure(draw, g, draws=draws)


@pytest.mark.parametrize("k", [1, 4, 12])
def test_orthogonal_variance_matches_theory(k: int) -> None:
    n = 16

    def make(g: torch.Tensor, t: int) -> torch.Tensor:
        vs = tg.orthogonal([g], k, seed=0, step=t)
        return sum((g @ v[0]) * v[0] for v in vs) / k

    st = _linear_draws(n, make, 3000)
    expected = theory.orthogonal_variance_factor(n, k)
    assert abs(st.relative_variance - expected) < 4 * st.relative_variance_se
    assert st.relative_bias < 3 * st.bias_floor
    assert theory.orthogonal_variance_factor(n, n) == 0.0
    assert expected < theory.variance_factor(n, "gaussian", k)


def test_orthogonal_frame_of_full_size_recovers_the_gradient() -> None:
    g = torch.randn(6, dtype=torch.float64)
    vs = tg.orthogonal([g], 6, seed=3, step=0)
    est = sum((g @ v[0]) * v[0] for v in vs) / 6
    torch.testing.assert_close(est, g)


def test_low_rank_factors() -> None:
    like = [torch.zeros(5, 3), torch.zeros(4), torch.zeros(2, 2)]
    v = tg.draw_low_rank(like, 2, "gaussian", tg.generator(0, 0, 0), matrices=[True, False, False])
    assert isinstance(v[0], tg.LowRank) and v[0].shape == (5, 3) and v[0].rank == 2
    assert not isinstance(v[2], tg.LowRank)
    h = torch.randn(7, 3)
    torch.testing.assert_close(v[0].apply(h), h @ v[0].materialize().T)
    torch.testing.assert_close(tg.materialize(v[0]), v[0].left @ v[0].right.T / math.sqrt(2))
    with pytest.raises(ValueError, match="rank"):
        tg.draw_low_rank(like, 0, "gaussian", None)
    with pytest.raises(ValueError, match="needs a matrix"):
        tg.draw_low_rank(like, 1, "gaussian", None, matrices=[True, True, False])
    with pytest.raises(ValueError, match="unknown tangent kind"):
        next(tg.directions(like, 1, kind="sparse", seed=0, step=0))


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("sampler", ["gaussian", "rademacher"])
def test_low_rank_second_moment_matches_monte_carlo(rank: int, sampler: str) -> None:
    m, n = 4, 6
    gm = torch.randn(m, n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def make(g: torch.Tensor, t: int) -> torch.Tensor:
        v = tg.draw_low_rank([gm], rank, sampler, tg.generator(9, t, 0))[0].materialize()
        return (g @ v.reshape(-1)) * v.reshape(-1)

    st = _linear_draws_of(gm.reshape(-1), make, 4000)
    c = theory.low_rank_second_moment(m, n, rank, sampler)
    # E‖ĝ‖² = tr Cov(ĝ) + ‖∇f‖² (unbiased), so its standard error is the variance's
    assert abs(st.relative_second_moment - c) < 4 * st.relative_variance_se
    assert st.relative_bias < 3 * st.bias_floor


def test_full_rank_written_out_step_equals_forward_gradient() -> None:
    torch.manual_seed(0)
    model = mlp([12, 8, 8, 3], generator_seed=0).double()
    x, y = torch.randn(10, 12, dtype=torch.float64), torch.randint(0, 3, (10,))
    LowRankForwardGradient(rank=None, directions=2, seed=4).step(model, (x, y))
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ForwardGradient(directions=2, seed=4).step(model, (x, y))
    for a, p in zip(ours, model.parameters()):
        torch.testing.assert_close(a, p.grad)


@pytest.mark.parametrize("rank,sampler,k", [(1, "gaussian", 1), (1, "rademacher", 1), (2, "gaussian", 2)])
def test_mlp_low_rank_variance_matches_tangent_variance(rank: int, sampler: str, k: int) -> None:
    model = mlp([6, 5, 4], generator_seed=1).double()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (8,), generator=g)
    method = LowRankForwardGradient(rank=rank, directions=k, sampler=sampler, seed=3)
    st = variance.measure_model(lambda m, c: method.step(m, (x, y)), model, lambda: F.cross_entropy(model(x), y),
                                draws=1500, groups=None)
    sizes, moments, grad_sq = [], [], []
    for name, p in model.named_parameters():
        sizes.append(p.numel())
        grad_sq.append(st.groups[name].grad_sq)
        if p.ndim == 2:
            moments.append(theory.low_rank_second_moment(p.shape[0], p.shape[1], rank, sampler))
        else:
            moments.append(p.numel() + theory.kurtosis(sampler) - 1)
    expected = theory.tangent_variance(sizes, moments, grad_sq, directions=k)
    assert abs(st.variance - expected) < 4 * st.variance_se, (st.variance, expected, st.variance_se)
    assert st.relative_bias < 3 * st.bias_floor


def test_tangent_variance_reduces_to_the_iid_formula() -> None:
    sizes, grad_sq = [3, 5, 7], [0.5, 1.0, 2.0]
    for sampler in ("gaussian", "rademacher"):
        c = [n + theory.kurtosis(sampler) - 1 for n in sizes]
        total = theory.tangent_variance(sizes, c, grad_sq, directions=2)
        assert total == pytest.approx(theory.variance_factor(15, sampler, 2) * sum(grad_sq))
    assert theory.low_rank_second_moment(4, 6, 1, "rademacher") == 24  # = m n, as for full random signs
    assert theory.low_rank_second_moment(4, 6, 1, "gaussian") == 6 * 8
    with pytest.raises(ValueError):
        theory.tangent_variance([1, 2], [1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        theory.orthogonal_variance_factor(3, 4)


def test_mlp_layers_refuse_other_modules() -> None:
    with pytest.raises(TypeError, match="Conv2d"):
        mlp_layers(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)))
    with pytest.raises(TypeError, match="nn.Sequential"):
        mlp_layers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="rank"):
        LowRankForwardGradient(rank=0)


def _mixer() -> tuple[LocalMixer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = LocalMixer(MixerConfig(1, 8, 1, 2), (1, 4, 4), classes=3).double()
    for head in (*model.block_heads, model.head):
        torch.nn.init.normal_(head.weight)
        head.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("kind", ["orthogonal", "low-rank"])
def test_mixer_weight_perturbation_with_structured_tangents(kind: str) -> None:
    model, x, y = _mixer()
    method = WeightPerturbation(directions=3, tangent=kind, sampler="gaussian", seed=2)
    st = variance.measure_model(lambda m, c: method.step(m, (x, y)), model, lambda: F.cross_entropy(model(x), y),
                                draws=600, groups=None)
    if kind == "orthogonal":
        expected = theory.orthogonal_variance_factor(st.n, 3) * st.grad_sq
    else:
        sizes, moments, grad_sq = [], [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            sizes.append(p.numel())
            grad_sq.append(st.groups[name].grad_sq)
            matrix = p.ndim == 2 and name.endswith("weight")
            moments.append(theory.low_rank_second_moment(*p.shape, 1, "gaussian") if matrix else p.numel() + 2)
        expected = theory.tangent_variance(sizes, moments, grad_sq, directions=3)
    assert abs(st.variance - expected) < 4 * st.variance_se, (st.variance, expected, st.variance_se)
    assert st.relative_bias < 3 * st.bias_floor


def test_guess_is_the_projection_onto_the_local_gradient() -> None:
    model, x, y = _mixer()
    for head in (*model.block_heads, model.head):
        head.requires_grad_(True)
    blocks = [p for n, p in model.named_parameters() if n.startswith("blocks.")]
    grad = torch.cat([t.reshape(-1) for t in torch.autograd.grad(F.cross_entropy(model(x), y), blocks)])
    guess = torch.cat([t.reshape(-1) for t in torch.autograd.grad(local_losses(model, x, y)[0], blocks)])
    result = GuessedForwardGradient(seed=0).step(model, (x, y))
    est = torch.cat([p.grad.reshape(-1) for p in blocks])
    torch.testing.assert_close(est, (grad @ guess) / (guess @ guess) * guess)
    cos = float(grad @ guess / grad.norm() / guess.norm())
    # the bias of a projection: ‖∇L − g‖² = (1 − cos²) ‖∇L‖²
    assert float((grad - est).square().sum()) == pytest.approx((1 - cos**2) * float(grad.square().sum()))
    assert result.details["guess_norm"] == pytest.approx(float(guess.norm()))
    with pytest.raises(ValueError, match="noise"):
        GuessedForwardGradient(noise=-1.0)
    noisy = GuessedForwardGradient(noise=2.0, seed=1)
    model.zero_grad()
    noisy.step(model, (x, y))
    assert all(p.grad is not None for p in blocks)
