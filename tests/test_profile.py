"""Tests of ffkit.profile: saved bytes against closed forms, a measured step, schedules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ffkit.profile import (
    METHODS,
    StepRunner,
    directional_derivatives,
    layer_timings,
    layers,
    measure_step,
    problem,
    saved_tensor_bytes,
    schedule,
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
    for method in ("inference", "forward gradient", "lean forward gradient"):
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


def test_measured_step_is_sane() -> None:
    """A fresh process: model bytes match the parameter count, the naive forward gradient needs
    at least its two model-sized buffers (tangent and estimate), the lean one far less."""
    width, depth, batch = 512, 16, 64
    model, x, _ = problem(width, depth, batch)
    model_bytes = sum(p.numel() for p in model.parameters()) * F32 + x.numel() * F32
    got = {m: measure_step(m, width=width, depth=depth, batch=batch, repeats=0) for m in ("forward gradient", "lean forward gradient")}
    for profile in got.values():
        assert profile.exact
        assert profile.model_bytes == pytest.approx(model_bytes, rel=0.25)
        assert profile.footprint_bytes >= profile.working_bytes
        assert profile.saved_bytes == 0
    assert got["forward gradient"].working_bytes >= 1.5 * model_bytes
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


def _check_no_overlap(tasks, workers_of) -> None:
    by_worker: dict[int, list[tuple[float, float]]] = {}
    for t in tasks:
        by_worker.setdefault(workers_of(t.row), []).append((t.start, t.start + t.duration))
    for spans in by_worker.values():
        spans.sort()
        assert all(a[1] <= b[0] + 1e-12 for a, b in zip(spans, spans[1:]))


def test_schedule_on_one_worker_is_the_sequential_step() -> None:
    f, b, u = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.1, 0.1, 0.1]
    bp = schedule("backprop", f, b, u)
    assert max(t.start + t.duration for t in bp) == pytest.approx(sum(f) + sum(b) + sum(u))
    updates = {t.row: t.start for t in bp if t.kind == "update"}
    # update locking: layer l is updated only after the backward sweep has come down from the top
    assert updates[2] < updates[1] < updates[0]
    assert updates[0] == pytest.approx(sum(f) + sum(b) + u[2] + u[1])
    fg = schedule("forward gradient", [2.0, 3.0, 4.0], None, u)
    assert max(t.start + t.duration for t in fg) == pytest.approx(9.0 + 0.3)
    _check_no_overlap(bp, lambda row: 0)
    _check_no_overlap(fg, lambda row: 0)


def test_pipeline_schedules_follow_the_closed_form() -> None:
    stages, micro, tf, tb = 4, 3, 1.0, 2.0
    f, b, u = [tf] * stages, [tb] * stages, [0.0] * stages
    bp = schedule("backprop", f, b, u, workers=stages, microbatches=micro)
    _check_no_overlap(bp, lambda row: row)
    # GPipe: forwards fill the pipe in (M + S - 1) slots, then the backwards drain it likewise
    assert max(t.start + t.duration for t in bp) == pytest.approx((micro + stages - 1) * (tf + tb))
    fg = schedule("forward gradient", f, None, u, workers=stages, microbatches=micro)
    updates = [t.start for t in fg if t.kind == "update"]
    assert updates == [pytest.approx((micro + stages - 1) * tf)] * stages
    with pytest.raises(ValueError, match="method"):
        schedule("sign step", f, b, u)
    with pytest.raises(ValueError, match="one duration per layer"):
        schedule("backprop", f, b[:2], u)
    with pytest.raises(ValueError, match="workers"):
        schedule("backprop", f, b, u, workers=5)


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


def test_timeline_draws_a_schedule() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ffkit.plot import timeline

    tasks = schedule("backprop", [1.0, 1.0], [2.0, 2.0], [0.5, 0.5])
    ax = timeline(tasks, row_labels=["layer 1", "layer 2"])
    assert len(ax.collections) == len(tasks)
    assert ax.get_xlim()[1] >= 1e3 * max(t.start + t.duration for t in tasks)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"forward", "backward", "update"}
    with pytest.raises(ValueError, match="row_labels"):
        timeline(tasks, row_labels=["only one"])
    with pytest.raises(ValueError, match="at least one"):
        timeline([])
    plt.close("all")
