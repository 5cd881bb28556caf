"""Tests of ffkit.fg: forward-gradient estimates against autograd and their statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import ffkit
from ffkit.fg import SAMPLERS, ForwardGradient, forward_gradient, sample_tangent_
from ffkit.train import DivergenceError, backprop_grad, fit


def _f(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """A small non-linear function of two tensors (a one-hidden-layer net on fixed data)."""
    x = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3)
    h = torch.tanh(x @ params["w1"] + params["b1"])
    return (h @ params["w2"]).pow(2).mean() + params["b1"].sin().sum()


def _params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w1": torch.randn(3, 5, generator=g, dtype=torch.float64),
        "b1": torch.randn(5, generator=g, dtype=torch.float64),
        "w2": torch.randn(5, 2, generator=g, dtype=torch.float64),
    }


def _autograd(params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    value = _f(leaves)
    grads = torch.autograd.grad(value, list(leaves.values()))
    return value.detach(), dict(zip(leaves, grads))


def _tangents(params: dict[str, torch.Tensor], sampler: str, seed: int) -> dict[str, torch.Tensor]:
    """The tangents forward_gradient draws with Generator(seed): one per leaf, in order."""
    g = torch.Generator().manual_seed(seed)
    return {k: sample_tangent_(torch.empty_like(v), sampler, g) for k, v in params.items()}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_directional_derivative_equals_autograd_gradient_dot_v(sampler: str) -> None:
    params = _params()
    value, grad = _autograd(params)
    for seed in range(3):
        v = _tangents(params, sampler, seed)
        fvalue, est = forward_gradient(_f, params, sampler=sampler, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(fvalue, value)
        dot = sum((grad[k] * v[k]).sum() for k in params)
        for k in params:
            # one direction: the estimate is exactly (∇f·v) v
            torch.testing.assert_close(est[k], dot * v[k], rtol=1e-12, atol=1e-12)
        if sampler == "rademacher":  # v = ±1, so est * v recovers ∇f·v in every coordinate
            recovered = torch.cat([(est[k] * v[k]).reshape(-1) for k in params])
            assert torch.equal(recovered, recovered[:1].expand_as(recovered))
            assert abs(float(recovered[0]) - float(dot)) <= 1e-12 * max(1.0, abs(float(dot)))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_unbiased_within_five_sigma(sampler: str) -> None:
    """Mean of N estimates vs ∇f; the per-coordinate variance of one estimate is
    ‖g‖² + gᵢ² (Gaussian) or ‖g‖² − gᵢ² (Rademacher), so the mean's standard deviation is
    sqrt(var / N) and a 5-sigma bound fails by chance with probability < 1e-5 over 30 coordinates."""
    params = _params(1)
    _, grad = _autograd(params)
    g = torch.cat([grad[k].reshape(-1) for k in params])
    n = 3000
    _, est = forward_gradient(_f, params, directions=n, sampler=sampler, generator=torch.Generator().manual_seed(7))
    mean = torch.cat([est[k].reshape(-1) for k in params])
    sign = 1.0 if sampler == "gaussian" else -1.0
    var = g.pow(2).sum() + sign * g.pow(2)
    sigma = (var / n).sqrt()
    z = (mean - g).abs() / sigma.clamp_min(1e-12)
    assert float(z.max()) < 5.0, f"max |z| = {float(z.max()):.2f}"
    # and the check has power: an estimator off by 30 % in scale would fail it
    assert float(((1.3 * g - g).abs() / sigma).max()) > 5.0


def test_directions_average_single_estimates() -> None:
    params = _params(2)
    k = 5
    _, avg = forward_gradient(_f, params, directions=k, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    singles = [forward_gradient(_f, params, generator=g)[1] for _ in range(k)]
    for name in params:
        torch.testing.assert_close(avg[name], sum(s[name] for s in singles) / k, rtol=1e-12, atol=1e-14)


def test_param_structures() -> None:
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    value, est = forward_gradient(lambda t: (t**2).sum(), x, generator=g)
    assert isinstance(est, torch.Tensor) and est.shape == x.shape and float(value) == 5.25
    value, est = forward_gradient(lambda p: (p[0] * p[1]).sum(), (x, 2 * x), generator=g)
    assert isinstance(est, tuple) and len(est) == 2
    _, est = forward_gradient(lambda p: (p[0] * p[1]).sum(), [x, 2 * x], generator=g)
    assert isinstance(est, list)
    assert not x.requires_grad and x.tolist() == [1.0, -2.0, 0.5]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_repeatable_with_fixed_generator(sampler: str) -> None:
    params = _params()
    a = forward_gradient(_f, params, directions=3, sampler=sampler, generator=torch.Generator().manual_seed(11))[1]
    b = forward_gradient(_f, params, directions=3, sampler=sampler, generator=torch.Generator().manual_seed(11))[1]
    c = forward_gradient(_f, params, directions=3, sampler=sampler, generator=torch.Generator().manual_seed(12))[1]
    assert all(torch.equal(a[k], b[k]) for k in params)
    assert not all(torch.equal(a[k], c[k]) for k in params)


@pytest.mark.parametrize("size", [1, 31, 32, 33, 64 * 500 + 7])
def test_rademacher_sampler_is_fair_in_every_bit(size: int) -> None:
    out = sample_tangent_(torch.empty(size), "rademacher", torch.Generator().manual_seed(0))
    assert bool(((out == 1) | (out == -1)).all())
    out64 = sample_tangent_(torch.empty(size, dtype=torch.float64), "rademacher", torch.Generator().manual_seed(0))
    assert torch.equal(out64, out.double())
    if size > 64 * 100:
        # each of the 64 bit positions of the random words is a fair coin: column means of a
        # (rows, 64) view have standard deviation 1/sqrt(rows)
        rows = size // 64
        cols = out[: rows * 64].reshape(rows, 64).mean(dim=0)
        assert float(cols.abs().max()) < 5 / math.sqrt(rows)


def _model(seed: int = 0) -> nn.Module:
    return ffkit.models.mlp([6, 16, 3], flatten=False, generator_seed=seed)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def test_module_api_matches_functional_api() -> None:
    model = _model().double()
    x, y = _data()
    x = x.double()
    loss_fn = nn.CrossEntropyLoss()
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    fvalue, fest = forward_gradient(
        lambda p: loss_fn(torch.func.functional_call(model, p, (x,)), y),
        params,
        directions=2,
        generator=torch.Generator().manual_seed(5),
    )
    fg = ForwardGradient(directions=2, generator=torch.Generator().manual_seed(5))
    loss = fg(model, lambda: loss_fn(model(x), y))
    assert torch.equal(loss, fvalue) and not loss.requires_grad
    for name, p in model.named_parameters():
        assert isinstance(p, nn.Parameter)  # parameters are restored after the call
        torch.testing.assert_close(p.grad, fest[name], rtol=1e-12, atol=1e-14)
    # like loss.backward(), a second call accumulates into .grad
    before = {k: p.grad.clone() for k, p in model.named_parameters()}
    fg(model, lambda: loss_fn(model(x), y))
    assert all(not torch.equal(p.grad, before[k]) for k, p in model.named_parameters())


def test_tied_parameters_get_one_tangent() -> None:
    torch.manual_seed(0)
    a = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(a, nn.Tanh(), nn.Linear(4, 4, bias=False))
    model[2].weight = a.weight  # tied
    x = torch.randn(8, 4)
    closure = lambda: model(x).pow(2).mean()  # noqa: E731
    ForwardGradient(sampler="rademacher", generator=torch.Generator().manual_seed(0))(model, closure)
    est = a.weight.grad.clone()
    v = sample_tangent_(torch.empty(4, 4), "rademacher", torch.Generator().manual_seed(0))
    a.weight.grad = None
    closure().backward()  # autograd sums the contributions of both uses
    torch.testing.assert_close(est, (a.weight.grad * v).sum() * v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_optimizers_decrease_the_loss(opt: str) -> None:
    model = _model(1)
    x, y = _data()
    loss_fn = nn.CrossEntropyLoss()
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.5)
    with torch.no_grad():
        start = float(loss_fn(model(x), y))
    history = fit(
        model,
        loss_fn,
        ffkit.train.cycle(lambda: [(x, y)]),
        optimizer,
        steps=60,
        grad_fn=ForwardGradient(directions=2, generator=torch.Generator().manual_seed(0)),
        scheduler=scheduler,
    )
    with torch.no_grad():
        end = float(loss_fn(model(x), y))
    assert history.loss[0] == pytest.approx(start, rel=1e-6)
    assert end < 0.8 * start, (start, end)


def test_bad_input() -> None:
    x = torch.randn(3)
    f = lambda t: (t**2).sum()  # noqa: E731
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="directions"):
            forward_gradient(f, x, directions=bad)
        with pytest.raises(ValueError, match="directions"):
            ForwardGradient(directions=bad)
    with pytest.raises(ValueError, match="sampler"):
        forward_gradient(f, x, sampler="uniform")
    with pytest.raises(ValueError, match="sampler"):
        ForwardGradient(sampler="sobol")
    with pytest.raises(TypeError, match="generator"):
        forward_gradient(f, x, generator=0)
    with pytest.raises(TypeError, match="floating-point"):
        forward_gradient(f, torch.arange(3))
    with pytest.raises(TypeError, match="params"):
        forward_gradient(f, [1.0, 2.0])
    with pytest.raises(ValueError, match="scalar"):
        forward_gradient(lambda t: t * 2, x)
    with pytest.raises(TypeError, match="scalar"):
        forward_gradient(lambda t: float(t.sum()), x)
    with pytest.raises(DivergenceError, match="non-finite"):
        forward_gradient(lambda t: t.sum() * float("nan"), x)
    with pytest.raises(DivergenceError, match="non-finite"):
        forward_gradient(lambda t: t.sum() + float("inf"), x)
    with pytest.raises(ValueError, match="does not depend"):
        forward_gradient(lambda t: torch.tensor(1.0), x)

    model = _model()
    xb, yb = _data()
    fg = ForwardGradient()
    with pytest.raises(ValueError, match="scalar"):
        fg(model, lambda: model(xb))
    with pytest.raises(DivergenceError, match="non-finite"):
        fg(model, lambda: model(xb).sum() * float("nan"))
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())  # restored after the error
    with pytest.raises(ValueError, match="no trainable parameters"):
        fg(nn.ReLU(), lambda: torch.tensor(0.0))
    with pytest.raises(TypeError, match="nn.Module"):
        fg(lambda t: t, lambda: torch.tensor(0.0))


def test_backprop_grad_and_forward_gradient_are_interchangeable() -> None:
    """Same signature: both fill .grad and return the detached loss of the closure."""
    x, y = _data()
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for grad_fn in (backprop_grad, ForwardGradient(generator=torch.Generator().manual_seed(0))):
        model = _model(3)
        loss = grad_fn(model, lambda: loss_fn(model(x), y))
        losses.append(float(loss))
        assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_first_layer_shortcut_matches_torch_func_jvp(arch: str) -> None:
    """ffkit computes the first layer's tangent as layer(x, Ẇ, ḃ) (its input has no tangent);
    the result must equal torch.func.jvp's directional derivative with the same tangents."""
    torch.manual_seed(0)
    if arch == "mlp":
        model = ffkit.models.mlp([784, 32, 10]).double()
    else:
        model = ffkit.models.small_cnn(width=4).double()
    x = torch.rand(8, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    loss_fn = nn.CrossEntropyLoss()
    params = {k: p.detach() for k, p in model.named_parameters()}
    g = torch.Generator().manual_seed(4)
    tangents = {k: sample_tangent_(torch.empty_like(p), "gaussian", g) for k, p in params.items()}
    loss, dd = torch.func.jvp(
        lambda p: loss_fn(torch.func.functional_call(model, p, (x,)), y), (params,), (tangents,)
    )
    fg_loss = ForwardGradient(generator=torch.Generator().manual_seed(4))(model, lambda: loss_fn(model(x), y))
    assert torch.equal(fg_loss, loss.detach())
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, dd * tangents[k], rtol=1e-12, atol=1e-15)
