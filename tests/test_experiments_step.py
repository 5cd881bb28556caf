"""Tests of ffkit.experiments.step (bench-step): every variant's step is a correct forward-gradient
step, and the grid runs end to end on tiny shapes. No timing is asserted.

Each variant leaves its estimate in ``.grad`` (the SGD step that follows changes θ, not ``.grad``);
run first on a fresh model it must equal (∇L·v) v at the initial parameters, with ∇L from the
backprop variant and v the tangent the variant draws: ``tangents.generator(seed, 0, 0)`` for the
library's variants, ``torch.randn_like`` after ``torch.manual_seed`` for the straightforward ones.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ffkit import tangents as tg
from ffkit.experiments import step as exp

SIZES, BATCH, SEED = [6, 5, 3], 4, 2


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[nn.Module]:
    """The models step_variants builds, in order (ffkit.experiments.step.mlp, recorded)."""
    models: list[nn.Module] = []
    original = exp.mlp

    def recording_mlp(*args, **kwargs):
        model = original(*args, **kwargs)
        models.append(model)
        return model

    monkeypatch.setattr(exp, "mlp", recording_mlp)
    return models


def _first_grad(name: str, built: list[nn.Module], *, torch_seed: int = 0) -> dict[str, torch.Tensor]:
    """Build fresh variants, run ``name`` once, return its model's .grad."""
    variants = exp.step_variants(SIZES, BATCH, seed=SEED)
    model = built[-1]
    torch.manual_seed(torch_seed)
    variants[name]()
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def _initial_params(built: list[nn.Module]) -> dict[str, torch.Tensor]:
    exp.step_variants(SIZES, BATCH, seed=SEED)
    return {k: p.detach().clone() for k, p in built[-1].named_parameters()}


def _expected(grad: dict[str, torch.Tensor], v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    dot = sum((grad[k] * v[k]).sum() for k in grad)
    return {k: dot * v[k] for k in grad}


@pytest.mark.parametrize("sampler", exp.SAMPLERS)
def test_library_variants_are_the_forward_gradient_of_the_seeded_tangent(sampler: str, built: list[nn.Module]) -> None:
    grad = _first_grad("backprop", built)
    params = _initial_params(built)
    v = dict(zip(params, tg.draw(list(params.values()), sampler, tg.generator(SEED, 0, 0))))
    expected = _expected(grad, v)
    method = _first_grad(f"ForwardGradient, {sampler}", built)
    functional = _first_grad(f"forward_gradient, {sampler}", built)
    for k in params:
        # float32: ∇L·v from forward mode and from backprop agree to ~1e-6 relative
        torch.testing.assert_close(method[k], expected[k], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(functional[k], method[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["torch.func.jvp (straightforward)", "forward_ad (naive)"])
def test_straightforward_variants_are_the_forward_gradient_of_a_gaussian_tangent(name: str, built: list[nn.Module]) -> None:
    grad = _first_grad("backprop", built)
    params = _initial_params(built)
    torch.manual_seed(5)
    v = {k: torch.randn_like(p) for k, p in params.items()}  # what the variant draws, in the same order
    expected = _expected(grad, v)
    got = _first_grad(name, built, torch_seed=5)
    for k in params:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-6)


def test_library_variants_draw_a_new_tangent_at_every_step(built: list[nn.Module]) -> None:
    variants = exp.step_variants(SIZES, BATCH, seed=SEED)
    model = built[-1]
    for name in (f"ForwardGradient, {exp.SAMPLERS[0]}", f"forward_gradient, {exp.SAMPLERS[0]}"):
        variants[name]()
        first = [p.grad.clone() for p in model.parameters()]
        variants[name]()
        # a different tangent (step 1), not the same one on a slightly moved model
        cos = sum(float((a * p.grad).sum()) for a, p in zip(first, model.parameters())) / (
            sum(float(a.square().sum()) for a in first) ** 0.5
            * sum(float(p.grad.square().sum()) for p in model.parameters()) ** 0.5
        )
        assert abs(cos) < 0.99


def test_grid_runs_end_to_end_on_tiny_shapes() -> None:
    records = exp.grid([[6, 5, 3], [4, 2]], [2, 3], rounds=2, warmup=1)
    assert [(r["sizes"], r["batch"]) for r in records] == [([6, 5, 3], 2), ([6, 5, 3], 3), ([4, 2], 2), ([4, 2], 3)]
    names = set(exp.step_variants([4, 2], 2))
    for r in records:
        assert r["parameters"] == sum(a * b + b for a, b in zip(r["sizes"][:-1], r["sizes"][1:]))
        assert set(r["median_seconds"]) == set(r["ratio_to_backprop"]) == set(r["quartile_seconds"]) == names
        assert r["ratio_to_backprop"]["backprop"] == 1.0  # each round's backprop time over itself
    lines = exp.report(records).splitlines()
    assert len(lines) == 1 + len(records) and lines[1].split()[:2] == ["6-5-3", "2"]
    without = exp.step_variants([4, 2], 2, naive=False)
    assert set(without) == names - {"torch.func.jvp (straightforward)", "forward_ad (naive)"}
