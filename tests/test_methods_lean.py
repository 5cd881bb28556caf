"""Tests of ffkit.methods.lean: the memory-lean step equals the plain step and ForwardGradient + SGD.

Tolerances: the three computations draw the same tangents and differ only in the order of the
floating-point operations (layer-by-layer forward mode with an in-place tangent accumulation
against one forward-mode pass; g formed in place against g in ``.grad``), so in float32 they
agree to a few hundred units of roundoff (2⁻²⁴ ≈ 6e-8) relative to the parameters: rtol 1e-5,
atol 1e-7. A wrong tangent or a missing 1/K changes a parameter by O(lr·|g|) ≈ 1e-3.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ffkit import tangents as tg
from ffkit.methods import DivergenceError, ForwardGradient, LeanForwardGradient
from ffkit.methods.lean import lean_forward_gradient_step, plain_forward_gradient_step, tangent_forward
from ffkit.models import mlp

CASES = [(1, "gaussian"), (3, "gaussian"), (2, "rademacher")]


def _problem(seed: int = 0) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    model = mlp([12, 16, 16, 4], flatten=False, generator_seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(10, 12, generator=g)
    y = torch.randint(0, 4, (10,), generator=g)
    return model, x, y


def _loss(y: torch.Tensor):
    return lambda out: nn.functional.cross_entropy(out, y)


def _close(a: nn.Module, b: nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("directions", "sampler"), CASES)
def test_lean_update_equals_plain_update(directions: int, sampler: str) -> None:
    lean, x, y = _problem()
    plain = copy.deepcopy(lean)
    before = [p.detach().clone() for p in lean.parameters()]
    for step in (0, 7):
        a = lean_forward_gradient_step(lean, x, _loss(y), lr=0.05, seed=11, step=step, directions=directions, sampler=sampler)
        b = plain_forward_gradient_step(plain, x, _loss(y), lr=0.05, seed=11, step=step, directions=directions, sampler=sampler)
        assert a.loss == pytest.approx(b.loss, rel=1e-6)
        assert a.dots.shape == (directions,) and a.dots.dtype == torch.float64
        torch.testing.assert_close(a.dots, b.dots, rtol=1e-5, atol=1e-7)
        _close(lean, plain)
    assert all(not torch.equal(p, p0) for p, p0 in zip(lean.parameters(), before))  # the steps moved θ


@pytest.mark.parametrize(("directions", "sampler"), CASES)
def test_lean_update_equals_forward_gradient_and_sgd_with_the_same_seed_and_step(directions: int, sampler: str) -> None:
    lean, x, y = _problem(2)
    reference = copy.deepcopy(lean)
    fg = ForwardGradient(directions, sampler, seed=13)
    opt = torch.optim.SGD(reference.parameters(), lr=0.05)
    method = LeanForwardGradient(0.05, directions, sampler, seed=13)
    for step in range(3):
        opt.zero_grad()
        fg(reference, lambda: nn.functional.cross_entropy(reference(x), y))  # step t = fg.t
        opt.step()
        result = method.step(lean, (x, y))  # step t = method.t
        assert method.t == fg.t == step + 1
        assert result.details["dots"] == pytest.approx(fg.last_dots, rel=1e-5, abs=1e-7)
        _close(lean, reference)
    # and the function with an explicit step is the method's step
    again = copy.deepcopy(lean)
    lean_forward_gradient_step(lean, x, _loss(y), lr=0.05, seed=13, step=3, directions=directions, sampler=sampler)
    method.step(again, (x, y))
    assert all(torch.equal(p, q) for p, q in zip(lean.parameters(), again.parameters()))


def test_update_is_minus_lr_times_mean_of_dot_times_tangent() -> None:
    model, x, y = _problem()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = lean_forward_gradient_step(model, x, _loss(y), lr=0.1, seed=3, step=2, directions=2)
    params = list(before.values())
    vs = [dict(zip(before, tg.draw(params, "rademacher", tg.generator(3, 2, k)))) for k in range(2)]
    for name, p in model.named_parameters():
        expected = before[name] - 0.1 * (step.dots[0] * vs[0][name] + step.dots[1] * vs[1][name]).float() / 2
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_directional_derivative_equals_autograd_gradient_dot_tangent() -> None:
    model, x, y = _problem(seed=4)
    reference = copy.deepcopy(model)
    loss = nn.functional.cross_entropy(reference(x), y)
    names = [n for n, _ in reference.named_parameters()]
    grads = dict(zip(names, torch.autograd.grad(loss, list(reference.parameters()))))
    step = lean_forward_gradient_step(model, x, _loss(y), lr=1e-3, seed=5, directions=3, sampler="gaussian")
    assert step.loss == pytest.approx(float(loss.detach()), rel=1e-6)
    params = [p.detach() for p in reference.parameters()]
    for k in range(3):
        v = tg.draw(params, "gaussian", tg.generator(5, 0, k))
        expected = sum(float((grads[n] * t).sum()) for n, t in zip(names, v))
        assert float(step.dots[k]) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_tangent_forward_of_a_linear_layer_matches_forward_ad() -> None:
    """The in-place ż = W ḣ + Ẇ h + ḃ of the lean step against PyTorch's forward mode, with the
    same Ẇ, ḃ (drawn weight first, then bias)."""
    import torch.autograd.forward_ad as fwAD

    layer = nn.Linear(5, 3).double()
    g = torch.Generator().manual_seed(0)
    h, h_dot = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    w_dot, b_dot = tg.draw([layer.weight, layer.bias], "gaussian", tg.generator(1, 0, 0))
    with torch.no_grad(), fwAD.dual_level():
        out = tangent_forward(layer, fwAD.make_dual(h, h_dot), "gaussian", tg.generator(1, 0, 0))
        z, z_dot = fwAD.unpack_dual(out)
        z, z_dot = z.clone(), z_dot.clone()
    _, expected = torch.func.jvp(
        lambda x, w, b: nn.functional.linear(x, w, b),
        (h, layer.weight.detach(), layer.bias.detach()), (h_dot, w_dot, b_dot),
    )
    torch.testing.assert_close(z, layer(h).detach(), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(z_dot, expected, rtol=1e-12, atol=1e-14)


def test_frozen_parameters_are_left_alone_and_both_steps_agree() -> None:
    lean, x, y = _problem()
    lean[0].weight.requires_grad_(False)
    plain = copy.deepcopy(lean)
    frozen = lean[0].weight.detach().clone()
    lean_forward_gradient_step(lean, x, _loss(y), lr=0.05, seed=2)
    plain_forward_gradient_step(plain, x, _loss(y), lr=0.05, seed=2)
    assert torch.equal(lean[0].weight, frozen)
    _close(lean, plain)


def test_lean_steps_lower_the_loss_of_a_small_regression() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 1))
    x = torch.randn(64, 5)
    target = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0], [3.0]])

    def loss(out: torch.Tensor) -> torch.Tensor:
        return ((out - target) ** 2).mean()

    first = lean_forward_gradient_step(model, x, loss, lr=0.02, seed=0, step=0, directions=4).loss
    for s in range(1, 200):
        last = lean_forward_gradient_step(model, x, loss, lr=0.02, seed=0, step=s, directions=4).loss
    assert last < 0.1 * first


def test_method_reports_the_loss_and_the_dots_and_counts_steps() -> None:
    model, x, y = _problem()
    method = LeanForwardGradient(lr=0.01, directions=2, seed=1)
    assert method.applies_update and method.t == 0 and "lr=0.01" in repr(method)
    with torch.no_grad():
        expected = float(nn.functional.cross_entropy(model(x), y))
    result = method.step(model, (x, y))
    assert result.loss == pytest.approx(expected, rel=1e-6) and len(result.details["dots"]) == 2
    assert method.t == 1
    assert all(p.grad is None for p in model.parameters())  # it never writes .grad
    custom = LeanForwardGradient(lr=0.01, seed=1, loss=lambda out, t: (out - t).pow(2).mean())
    target = torch.zeros(10, 4)
    with torch.no_grad():
        expected = float(model(x).pow(2).mean())
    assert custom.step(model, (x, target)).loss == pytest.approx(expected, rel=1e-6)


def test_bad_input() -> None:
    model, x, y = _problem()
    with pytest.raises(TypeError, match="nn.Sequential"):
        lean_forward_gradient_step(nn.Linear(3, 2), x, _loss(y), lr=0.1, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr"):
        lean_forward_gradient_step(model, x, _loss(y), lr=0.0, seed=0)
    with pytest.raises(ValueError, match="directions"):
        lean_forward_gradient_step(model, x, _loss(y), lr=0.1, seed=0, directions=0)
    with pytest.raises(ValueError, match="unknown tangent distribution"):
        plain_forward_gradient_step(model, x, _loss(y), lr=0.1, seed=0, sampler="uniform")
    with pytest.raises(ValueError, match="unknown tangent distribution"):
        lean_forward_gradient_step(model, x, _loss(y), lr=0.1, seed=0, sampler="uniform")
    with pytest.raises(ValueError, match="seed"):
        lean_forward_gradient_step(model, x, _loss(y), lr=0.1, seed=-1)
    with pytest.raises(ValueError, match="step"):
        lean_forward_gradient_step(model, x, _loss(y), lr=0.1, seed=0, step=-1)
    with pytest.raises(ValueError, match="step"):
        plain_forward_gradient_step(model, x, _loss(y), lr=0.1, seed=0, step=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scalar"):
        lean_forward_gradient_step(model, x, lambda out: out, lr=0.1, seed=0)
    with pytest.raises(TypeError, match="inputs"):
        lean_forward_gradient_step(model, x.tolist(), _loss(y), lr=0.1, seed=0)  # type: ignore[arg-type]
    shared = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="shares"):
        lean_forward_gradient_step(nn.Sequential(shared, nn.ReLU(), shared), torch.randn(2, 4), lambda o: o.sum(), lr=0.1, seed=0)
    with pytest.raises(ValueError, match="lr"):
        LeanForwardGradient(lr=-1.0)
    with pytest.raises(ValueError, match="directions"):
        LeanForwardGradient(lr=0.1, directions=0)
    with pytest.raises(TypeError, match="needs batches"):
        LeanForwardGradient(lr=0.1).step(model, x)
    with pytest.raises(TypeError, match="loss must be callable"):
        LeanForwardGradient(lr=0.1, loss="cross-entropy")  # type: ignore[arg-type]
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(DivergenceError):
        lean_forward_gradient_step(model, x, lambda out: out.sum() * float("nan"), lr=0.1, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # untouched
