"""Tests of ffkit.profile: saved bytes against closed forms, a measured step, per-layer timings."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
import torch
from torch import nn

from ffkit.models import count_parameters
from ffkit.profile import (
    METHODS,
    StepRunner,
    count_ops,
    directional_derivatives,
    layer_timings,
    layers,
    measure_step,
    problem,
    saved_tensor_bytes,
)

F32 = 4


def test_linear_layer_saves_exactly_its_input() -> None:
    layer = nn.Linear(7, 3)
    x = torch.randn(11, 7)
    assert saved_tensor_bytes(lambda: layer(x), exclude=layer.parameters()) == 11 * 7 * F32
    # with the parameters counted too, nothing else appears: W is not needed for ∂f/∂W
    assert saved_tensor_bytes(lambda: layer(x)) == 11 * 7 * F32


def test_inference_and_forward_mode_save_nothing() -> None:
    model, x, y = problem(32, 4, 8)
    with torch.no_grad():
        assert saved_tensor_bytes(lambda: model(x)) == 0
    for method in ("inference", "forward gradient", "ForwardGradient", "lean forward gradient",
                   "shared-seed lean forward gradient"):
        assert StepRunner(method, model, x, y).saved_bytes() == 0


@pytest.mark.parametrize("depth", [1, 3, 6])
def test_backprop_saves_one_activation_per_layer(depth: int) -> None:
    width, batch, classes = 24, 5, 10
    model, x, y = problem(width, depth, batch, classes=classes)
    params = list(model.parameters())
    # the input of every linear layer (x, then each ReLU output, which the ReLU saves too)
    activations = depth * batch * width * F32
    assert saved_tensor_bytes(lambda: model(x).sum(), exclude=params) == activations
    # cross-entropy adds its log-softmax (N x classes floats), the int64 targets and a scalar weight
    loss_terms = batch * classes * F32 + batch * 8 + F32
    assert StepRunner("backprop", model, x, y).saved_bytes() == activations + loss_terms


def test_checkpointing_saves_less_than_backprop() -> None:
    model, x, y = problem(32, 64, 8)
    full = StepRunner("backprop", model, x, y).saved_bytes()
    lean = StepRunner("checkpointing", model, x, y).saved_bytes()
    assert 0 < lean < full / 2


def test_every_step_runs_and_gradient_steps_change_the_model() -> None:
    for method in METHODS:
        model, x, y = problem(16, 3, 4)
        before = [p.detach().clone() for p in model.parameters()]
        loss = StepRunner(method, model, x, y, lr=0.1).step()
        with torch.no_grad():
            expected = float(nn.functional.cross_entropy(problem(16, 3, 4)[0](x), y))
        assert loss == pytest.approx(expected, rel=1e-5)
        changed = any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
        assert changed == (method != "inference")


def test_measured_step_is_sane(step_profiles: dict[str, Future], profile_shape: dict[str, int]) -> None:
    """A fresh process (conftest): model bytes match the parameter count, the plain forward
    gradient needs at least its model-sized tangent (scaled in place into the estimate), the
    lean one far less."""
    model, x, _ = problem(**profile_shape)
    model_bytes = (count_parameters(model) + x.numel()) * F32
    got = {m: step_profiles[m].result() for m in ("forward gradient", "lean forward gradient")}
    for method, profile in got.items():
        assert profile.method == method and profile.exact and profile.allocator == "release"
        assert (profile.width, profile.depth, profile.batch) == tuple(profile_shape.values())
        assert profile.parameters == count_parameters(model)
        assert profile.model_bytes == pytest.approx(model_bytes, rel=0.25)
        assert profile.footprint_bytes >= profile.working_bytes
        assert profile.saved_bytes == 0
    assert got["forward gradient"].working_bytes >= 0.75 * model_bytes  # its one model-sized tangent
    assert got["lean forward gradient"].working_bytes < 0.5 * model_bytes


def test_layers_groups_activations_with_their_linear_layer() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    groups = layers(model)
    assert [len(g) for g in groups] == [3, 1]
    with pytest.raises(ValueError, match="no layer"):
        layers(nn.Sequential(nn.ReLU()))


def test_layer_timings_cover_every_layer() -> None:
    model, x, y = problem(16, 3, 4)
    timings = layer_timings(model, x, lambda out: nn.functional.cross_entropy(out, y), repeats=1)
    assert set(timings) == {"forward", "backward", "update", "forward+tangent", "update (regenerated)"}
    assert all(len(v) == 3 and all(t > 0 for t in v) for v in timings.values())


def test_batched_and_looped_directional_derivatives_equal_autograd() -> None:
    model, x, y = problem(8, 2, 6)
    params = {n: p.detach() for n, p in model.named_parameters()}

    def f(ps: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(torch.func.functional_call(model, ps, (x,)), y)

    g = torch.Generator().manual_seed(0)
    tangents = {n: torch.randn((5, *p.shape), generator=g) for n, p in params.items()}
    grads = torch.autograd.grad(f(dict(model.named_parameters())), list(model.parameters()))
    expected = torch.stack([sum((gr * tangents[n][k]).sum() for gr, n in zip(grads, params)) for k in range(5)])
    torch.testing.assert_close(directional_derivatives(f, params, tangents, batched=False), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(directional_derivatives(f, params, tangents, batched=True), expected, rtol=1e-4, atol=1e-6)


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="callable"):
        saved_tensor_bytes(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="width"):
        problem(0, 2, 2)
    model, x, y = problem(4, 2, 2)
    with pytest.raises(ValueError, match="unknown method"):
        StepRunner("adam", model, x, y)
    with pytest.raises(ValueError, match="unknown method"):
        measure_step("adam", width=4, depth=2, batch=2)
    with pytest.raises(ValueError, match="depth"):
        measure_step("backprop", width=4, depth=0, batch=2)
    with pytest.raises(ValueError, match="allocator"):
        measure_step("backprop", width=4, depth=2, batch=2, allocator="jemalloc")
    with pytest.raises(TypeError, match="Sequential"):
        StepRunner("backprop", nn.Linear(2, 2), x, y)  # type: ignore[arg-type]


def test_count_ops_counts_each_operator_once_per_call() -> None:
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    bt = b.T.contiguous()
    assert count_ops(lambda: a + b) == {"aten.add.Tensor": 1}

    def chain() -> None:
        c = a
        for _ in range(5):
            c = c * b
        torch.mm(c, bt)

    assert count_ops(chain) == {"aten.mul.Tensor": 5, "aten.mm.default": 1}
    assert count_ops(lambda: b.T) == {"aten.permute.default": 1}  # views are operators too


def test_count_ops_sees_the_backward_pass() -> None:
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 4)
    forward_only = count_ops(lambda: torch.mm(x, w).sum())
    with_backward = count_ops(lambda: torch.mm(x, w).sum().backward())
    assert forward_only == {"aten.mm.default": 1, "aten.sum.default": 1}
    # the backward of mm needs one more mm (x^T times the incoming gradient), so mm is counted twice
    assert with_backward["aten.mm.default"] == 2
    assert sum(with_backward.values()) > sum(forward_only.values())
    assert w.grad is not None and torch.allclose(w.grad, x.sum(0, keepdim=True).T.expand(4, 3))
