"""Tests of ffkit.methods.forward_gradient: estimates against autograd, their statistics, the Method.

Tangent k of call t of a run seeded s is ``ffkit.tangents.draw(params, sampler,
generator(s, t, k))``; the tests rebuild it that way and compare the estimate with
(∇f·v) v, where ∇f comes from autograd.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ffkit
from ffkit import tangents as tg
from ffkit.methods import Backprop, DivergenceError, ForwardGradient, backprop_grad, forward_gradient
from ffkit.methods.forward_gradient import module_directional
from ffkit.train import cycle, fit

SAMPLERS = ("gaussian", "rademacher")


def _f(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """A small non-linear function of three tensors (a one-hidden-layer net on fixed data)."""
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


def _tangent(params: dict[str, torch.Tensor], sampler: str, seed: int, step: int = 0, k: int = 0) -> dict[str, torch.Tensor]:
    """Tangent k of step t of run ``seed``, as every method draws it."""
    return dict(zip(params, tg.draw(list(params.values()), sampler, tg.generator(seed, step, k))))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_estimate_is_autograd_gradient_dot_v_times_v(sampler: str) -> None:
    params = _params()
    value, grad = _autograd(params)
    for seed, step in ((0, 0), (1, 0), (1, 5)):
        v = _tangent(params, sampler, seed, step)
        fvalue, est = forward_gradient(_f, params, sampler=sampler, seed=seed, step=step)
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
    _, est = forward_gradient(_f, params, directions=n, sampler=sampler, seed=7)
    mean = torch.cat([est[k].reshape(-1) for k in params])
    sign = 1.0 if sampler == "gaussian" else -1.0
    var = g.pow(2).sum() + sign * g.pow(2)
    sigma = (var / n).sqrt()
    z = (mean - g).abs() / sigma.clamp_min(1e-12)
    assert float(z.max()) < 5.0, f"max |z| = {float(z.max()):.2f}"
    # and the check has power: an estimator off by 30 % in scale would fail it
    assert float(((1.3 * g - g).abs() / sigma).max()) > 5.0


def test_directions_average_the_estimates_of_tangents_0_to_k_minus_1() -> None:
    params = _params(2)
    _, grad = _autograd(params)
    k = 5
    _, avg = forward_gradient(_f, params, directions=k, sampler="gaussian", seed=3, step=4)
    singles = []
    for i in range(k):
        v = _tangent(params, "gaussian", 3, 4, i)
        dot = sum((grad[n] * v[n]).sum() for n in params)
        singles.append({n: dot * v[n] for n in params})
    for name in params:
        torch.testing.assert_close(avg[name], sum(s[name] for s in singles) / k, rtol=1e-12, atol=1e-14)
    # direction 0 of a K-direction call is the tangent of the one-direction call
    _, one = forward_gradient(_f, params, sampler="gaussian", seed=3, step=4)
    for name in params:
        torch.testing.assert_close(one[name], singles[0][name], rtol=1e-12, atol=1e-14)


def test_param_structures() -> None:
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    value, est = forward_gradient(lambda t: (t**2).sum(), x, seed=0)
    assert isinstance(est, torch.Tensor) and est.shape == x.shape and float(value) == 5.25
    v = tg.draw([x], "rademacher", tg.generator(0, 0, 0))[0]
    torch.testing.assert_close(est, (2 * x * v).sum() * v)  # ∇(‖x‖²) = 2x
    value, est = forward_gradient(lambda p: (p[0] * p[1]).sum(), (x, 2 * x), seed=0)
    assert isinstance(est, tuple) and len(est) == 2
    _, est = forward_gradient(lambda p: (p[0] * p[1]).sum(), [x, 2 * x], seed=0)
    assert isinstance(est, list)
    assert not x.requires_grad and x.tolist() == [1.0, -2.0, 0.5]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_and_step_same_estimate_otherwise_another(sampler: str) -> None:
    params = _params()

    def run(seed: int, step: int) -> dict[str, torch.Tensor]:
        return forward_gradient(_f, params, directions=3, sampler=sampler, seed=seed, step=step)[1]

    a = run(11, 0)
    assert all(torch.equal(a[k], run(11, 0)[k]) for k in params)
    assert not all(torch.equal(a[k], run(12, 0)[k]) for k in params)
    assert not all(torch.equal(a[k], run(11, 1)[k]) for k in params)


def test_seed_none_follows_torch_manual_seed() -> None:
    params = _params()
    torch.manual_seed(5)
    a = forward_gradient(_f, params)[1]
    torch.manual_seed(5)
    b = forward_gradient(_f, params)[1]
    assert all(torch.equal(a[k], b[k]) for k in params)
    torch.manual_seed(5)
    fg = ForwardGradient()
    torch.manual_seed(5)
    assert ForwardGradient().seed == fg.seed


# --------------------------------------------------------------------------- the Method


def _model(seed: int = 0) -> nn.Module:
    return ffkit.models.mlp([6, 16, 3], flatten=False, generator_seed=seed)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def test_module_method_matches_functional_api_call_by_call() -> None:
    model = _model().double()
    x, y = _data()
    x = x.double()
    loss_fn = nn.CrossEntropyLoss()
    params = {k: p.detach().clone() for k, p in model.named_parameters()}

    def functional(step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return forward_gradient(lambda p: loss_fn(torch.func.functional_call(model, p, (x,)), y), params,
                                directions=2, seed=5, step=step)

    fvalue, fest = functional(0)
    fg = ForwardGradient(directions=2, seed=5)
    assert fg.t == 0 and fg.sampler == "rademacher" and "seed=5" in repr(fg)
    loss = fg(model, lambda: loss_fn(model(x), y))
    assert fg.t == 1 and len(fg.last_dots) == 2
    assert torch.equal(loss, fvalue) and not loss.requires_grad
    for name, p in model.named_parameters():
        assert isinstance(p, nn.Parameter)  # parameters are restored after the call
        torch.testing.assert_close(p.grad, fest[name], rtol=1e-12, atol=1e-14)
    # the second call is step 1, and like loss.backward() it accumulates into .grad
    _, fest1 = functional(1)
    fg(model, lambda: loss_fn(model(x), y))
    assert fg.t == 2
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, fest[name] + fest1[name], rtol=1e-12, atol=1e-14)


def test_step_fills_grad_with_the_estimate_of_the_batch_loss() -> None:
    model = _model().double()
    x, y = _data()
    x = x.double()
    fg = ForwardGradient(directions=3, sampler="gaussian", seed=1)
    result = fg.step(model, (x, y))
    reference = copy.deepcopy(model)
    loss = nn.functional.cross_entropy(reference(x), y)
    grads = dict(zip([n for n, _ in reference.named_parameters()], torch.autograd.grad(loss, list(reference.parameters()))))
    assert result.loss == pytest.approx(float(loss.detach()), rel=1e-12)
    params = {n: p.detach() for n, p in model.named_parameters()}
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for k in range(3):
        v = _tangent(params, "gaussian", 1, 0, k)
        dot = sum((grads[n] * v[n]).sum() for n in params)
        assert fg.last_dots[k] == pytest.approx(float(dot), rel=1e-10, abs=1e-12)
        for n in params:
            expected[n] += dot * v[n] / 3
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-10, atol=1e-12)


def test_module_directional_gives_the_loss_and_gradient_dot_v() -> None:
    model = _model(4).double()
    x, y = _data()
    x = x.double()
    closure = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    loss = closure()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    named, primals, directional = module_directional(model, closure)
    assert [n for n, _ in named] == [n for n, _ in model.named_parameters()]
    assert all(not p.requires_grad for p in primals)
    for k in range(3):
        v = tg.draw(primals, "gaussian", tg.generator(0, 0, k))
        value, dot = directional(v)
        assert float(value) == pytest.approx(float(loss.detach()), rel=1e-14)
        assert dot == pytest.approx(float(sum((g * t).sum() for g, t in zip(grads, v))), rel=1e-10, abs=1e-14)
    with pytest.raises(TypeError, match="closure must be callable"):
        module_directional(model, 3)  # type: ignore[arg-type]


def test_tied_parameters_get_one_tangent() -> None:
    torch.manual_seed(0)
    a = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(a, nn.Tanh(), nn.Linear(4, 4, bias=False))
    model[2].weight = a.weight  # tied
    x = torch.randn(8, 4)
    closure = lambda: model(x).pow(2).mean()  # noqa: E731
    ForwardGradient(sampler="rademacher", seed=0)(model, closure)
    est = a.weight.grad.clone()
    v = tg.draw([a.weight], "rademacher", tg.generator(0, 0, 0))[0]
    a.weight.grad = None
    closure().backward()  # autograd sums the contributions of both uses
    torch.testing.assert_close(est, (a.weight.grad * v).sum() * v, rtol=1e-5, atol=1e-6)


def test_frozen_parameters_get_no_tangent_and_no_grad() -> None:
    model = _model().double()
    model[0].weight.requires_grad_(False)
    x, y = _data()
    x = x.double()
    ForwardGradient(seed=2).step(model, (x, y))
    assert model[0].weight.grad is None
    assert all(p.grad is not None for n, p in model.named_parameters() if n != "0.weight")


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
    history = fit(model, ForwardGradient(directions=2, seed=0), cycle(lambda: [(x, y)]), optimizer,
                  steps=60, scheduler=scheduler)
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
    with pytest.raises(ValueError, match="unknown tangent distribution"):
        forward_gradient(f, x, sampler="uniform")
    with pytest.raises(ValueError, match="unknown tangent distribution"):
        ForwardGradient(sampler="sobol")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="seed"):
            forward_gradient(f, x, seed=bad)
        with pytest.raises(ValueError, match="seed"):
            ForwardGradient(seed=bad)
        with pytest.raises(ValueError, match="step"):
            forward_gradient(f, x, seed=0, step=bad if bad is not True else -2)
    with pytest.raises(TypeError, match="generator"):
        forward_gradient(f, x, generator=torch.Generator())  # type: ignore[call-arg]  # seeds replaced generators
    with pytest.raises(TypeError, match="f must be callable"):
        forward_gradient(3, x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating-point"):
        forward_gradient(f, torch.arange(3))
    with pytest.raises(TypeError, match="params"):
        forward_gradient(f, [1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        forward_gradient(f, {})
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
    with pytest.raises(TypeError, match="loss must be callable"):
        ForwardGradient(loss="cross-entropy")  # type: ignore[arg-type]

    model = _model()
    xb, yb = _data()
    fg = ForwardGradient()
    with pytest.raises(ValueError, match="scalar"):
        fg(model, lambda: model(xb))
    with pytest.raises(DivergenceError, match="non-finite"):
        fg(model, lambda: model(xb).sum() * float("nan"))
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())  # restored after the error
    assert all(p.grad is None for p in model.parameters())  # nothing half-written
    with pytest.raises(ValueError, match="no trainable parameters"):
        fg(nn.ReLU(), lambda: torch.tensor(0.0))
    with pytest.raises(TypeError, match="nn.Module"):
        fg(lambda t: t, lambda: torch.tensor(0.0))
    with pytest.raises(TypeError, match="needs batches"):
        fg.step(model, xb)


def test_backprop_and_forward_gradient_are_interchangeable() -> None:
    """Same closure interface: both fill .grad and return the detached loss of the closure."""
    x, y = _data()
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for grad_fn in (backprop_grad, Backprop(), ForwardGradient(seed=0)):
        model = _model(3)
        loss = grad_fn(model, lambda: loss_fn(model(x), y))
        losses.append(float(loss))
        assert not loss.requires_grad
        assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())
    assert losses[0] == losses[1] == pytest.approx(losses[2], rel=1e-6)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_first_layer_shortcut_matches_torch_func_jvp(arch: str, sampler: str) -> None:
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
    tangents = _tangent(params, sampler, 4)
    loss, dd = torch.func.jvp(
        lambda p: loss_fn(torch.func.functional_call(model, p, (x,)), y), (params,), (tangents,)
    )
    fg_loss = ForwardGradient(sampler=sampler, seed=4)(model, lambda: loss_fn(model(x), y))
    assert torch.equal(fg_loss, loss.detach())
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, dd * tangents[k], rtol=1e-12, atol=1e-15)
