"""Tests of ffkit.lean: the memory-lean forward-gradient step equals the plain one."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ffkit.lean import (
    direction_seeds,
    lean_forward_gradient_step,
    plain_forward_gradient_step,
    seeded_tangents,
)
from ffkit.models import mlp
from ffkit.train import DivergenceError


def _problem(seed: int = 0) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    model = mlp([12, 16, 16, 4], flatten=False, generator_seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(10, 12, generator=g)
    y = torch.randint(0, 4, (10,), generator=g)
    return model, x, y


def _loss(y: torch.Tensor):
    return lambda out: nn.functional.cross_entropy(out, y)


@pytest.mark.parametrize(("directions", "sampler"), [(1, "gaussian"), (3, "gaussian"), (2, "rademacher")])
def test_lean_update_equals_plain_update(directions: int, sampler: str) -> None:
    lean, x, y = _problem()
    plain = copy.deepcopy(lean)
    before = [p.detach().clone() for p in lean.parameters()]
    a = lean_forward_gradient_step(lean, x, _loss(y), lr=0.05, seed=11, directions=directions, sampler=sampler)
    b = plain_forward_gradient_step(plain, x, _loss(y), lr=0.05, seed=11, directions=directions, sampler=sampler)
    assert a.loss == pytest.approx(b.loss, rel=1e-6)
    torch.testing.assert_close(a.dots, b.dots, rtol=1e-5, atol=1e-7)
    for p, q, p0 in zip(lean.parameters(), plain.parameters(), before):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
        assert not torch.equal(p, p0)  # the step did change the parameters


def test_update_is_minus_lr_times_mean_of_dot_times_tangent() -> None:
    model, x, y = _problem()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = lean_forward_gradient_step(model, x, _loss(y), lr=0.1, seed=3, directions=2)
    seeds = direction_seeds(3, 2)
    vs = [dict(seeded_tangents(model, s)) for s in seeds]
    for name, p in model.named_parameters():
        expected = before[name] - 0.1 * (step.dots[0] * vs[0][name] + step.dots[1] * vs[1][name]).float() / 2
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_directional_derivative_equals_autograd_gradient_dot_tangent() -> None:
    model, x, y = _problem(seed=4)
    reference = copy.deepcopy(model)
    loss = nn.functional.cross_entropy(reference(x), y)
    grads = dict(zip([n for n, _ in reference.named_parameters()], torch.autograd.grad(loss, list(reference.parameters()))))
    step = lean_forward_gradient_step(model, x, _loss(y), lr=1e-3, seed=5, directions=3)
    assert step.loss == pytest.approx(float(loss.detach()), rel=1e-6)
    for k, s in enumerate(direction_seeds(5, 3)):
        expected = sum(float((grads[n] * v).sum()) for n, v in seeded_tangents(reference, s))
        assert float(step.dots[k]) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_seeded_tangents_are_reproducible_and_distributed_as_asked() -> None:
    model, _, _ = _problem()
    a = dict(seeded_tangents(model, 1))
    b = dict(seeded_tangents(model, 1))
    c = dict(seeded_tangents(model, 2))
    assert list(a) == [n for n, _ in model.named_parameters()]
    for name in a:
        assert torch.equal(a[name], b[name])
        assert a[name].shape == dict(model.named_parameters())[name].shape
        assert not torch.equal(a[name], c[name])
    signs = torch.cat([v.flatten() for _, v in seeded_tangents(model, 1, sampler="rademacher")])
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    seeds = direction_seeds(0, 16)
    assert len(set(seeds)) == 16 and seeds == direction_seeds(0, 16)


def test_frozen_parameters_are_left_alone_and_both_steps_agree() -> None:
    lean, x, y = _problem()
    lean[0].weight.requires_grad_(False)
    plain = copy.deepcopy(lean)
    frozen = lean[0].weight.detach().clone()
    lean_forward_gradient_step(lean, x, _loss(y), lr=0.05, seed=2)
    plain_forward_gradient_step(plain, x, _loss(y), lr=0.05, seed=2)
    assert torch.equal(lean[0].weight, frozen)
    for p, q in zip(lean.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_lean_steps_lower_the_loss_of_a_small_regression() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 1))
    x = torch.randn(64, 5)
    target = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0], [3.0]])

    def loss(out: torch.Tensor) -> torch.Tensor:
        return ((out - target) ** 2).mean()

    first = lean_forward_gradient_step(model, x, loss, lr=0.02, seed=0, directions=4).loss
    for s in range(1, 200):
        last = lean_forward_gradient_step(model, x, loss, lr=0.02, seed=s, directions=4).loss
    assert last < 0.1 * first


def test_bad_input() -> None:
    model, x, y = _problem()
    with pytest.raises(TypeError, match="nn.Sequential"):
        lean_forward_gradient_step(nn.Linear(3, 2), x, _loss(y), lr=0.1, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr"):
        lean_forward_gradient_step(model, x, _loss(y), lr=0.0, seed=0)
    with pytest.raises(ValueError, match="directions"):
        lean_forward_gradient_step(model, x, _loss(y), lr=0.1, seed=0, directions=0)
    with pytest.raises(ValueError, match="sampler"):
        plain_forward_gradient_step(model, x, _loss(y), lr=0.1, seed=0, sampler="uniform")
    with pytest.raises(ValueError, match="seed"):
        lean_forward_gradient_step(model, x, _loss(y), lr=0.1, seed=-1)
    with pytest.raises(ValueError, match="scalar"):
        lean_forward_gradient_step(model, x, lambda out: out, lr=0.1, seed=0)
    with pytest.raises(TypeError, match="inputs"):
        lean_forward_gradient_step(model, x.tolist(), _loss(y), lr=0.1, seed=0)  # type: ignore[arg-type]
    shared = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="shares"):
        lean_forward_gradient_step(nn.Sequential(shared, nn.ReLU(), shared), torch.randn(2, 4), lambda o: o.sum(), lr=0.1, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(DivergenceError):
        lean_forward_gradient_step(model, x, lambda out: out.sum() * float("nan"), lr=0.1, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
