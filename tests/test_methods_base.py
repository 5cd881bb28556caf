"""Tests of ffkit.methods.base: the Method protocol, LossMethod, the registry and the checks."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffkit import methods
from ffkit.methods import base
from ffkit.methods.base import (
    DivergenceError,
    LossMethod,
    Method,
    StepResult,
    check_directions,
    check_finite,
    check_lr,
    check_seed,
    check_step,
    inputs_targets,
    trainable,
)
from ffkit.models import mlp


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A private copy of the method registry, so that registering in a test leaves the others alone."""
    copy = dict(base._REGISTRY)
    monkeypatch.setattr(base, "_REGISTRY", copy)
    return copy


def _problem() -> tuple[nn.Module, Tensor, Tensor]:
    model = mlp([5, 4, 3], flatten=False, generator_seed=0).double()
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)


# --------------------------------------------------------------------------- registry


def test_create_builds_registered_methods_by_name_and_alias() -> None:
    fg = methods.create("fg", seed=0)
    assert isinstance(fg, methods.ForwardGradient) and fg.seed == 0 and fg.directions == 1
    assert isinstance(methods.create("FG-W", directions=3, seed=1), methods.ForwardGradient)
    assert isinstance(methods.create("forward-gradient", seed=2), methods.ForwardGradient)
    assert isinstance(methods.create("bp"), methods.Backprop)
    assert isinstance(methods.create("backprop"), methods.Backprop)
    lean = methods.create("lean-fg", lr=0.1, seed=3)
    assert isinstance(lean, methods.LeanForwardGradient) and lean.lr == 0.1
    assert isinstance(methods.create("shared-seed-fg", directions=2), methods.SharedSeedForwardGradient)
    assert isinstance(methods.create("all-reduce-bp"), methods.AllReduceGradient)
    for cls in (methods.Backprop, methods.ForwardGradient, methods.LeanForwardGradient,
                methods.SharedSeedForwardGradient, methods.AllReduceGradient):
        assert cls.name in methods.names()


def test_create_rejects_unknown_names_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown method 'sgd'") as info:
        methods.create("sgd")
    assert "backprop" in str(info.value) and "fg" in str(info.value)
    with pytest.raises(ValueError, match="unknown method"):
        methods.create(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        methods.create("fg", nonsense=1)  # options go to the constructor


def test_register_a_new_method(registry: dict) -> None:
    @methods.register("noop-alias")
    class Noop(Method):
        name = "noop"

        def step(self, model: nn.Module, batch) -> StepResult:
            return StepResult(loss=0.0)

    assert isinstance(methods.create("noop"), Noop) and isinstance(methods.create("NOOP-ALIAS"), Noop)
    assert {"noop", "noop-alias"} <= set(methods.names())
    assert methods.register()(Noop) is Noop  # registering the same class again is harmless

    class Other(Method):
        name = "noop"

        def step(self, model: nn.Module, batch) -> StepResult:
            return StepResult(loss=1.0)

    with pytest.raises(ValueError, match="registered already"):
        methods.register()(Other)

    class Nameless(Method):
        def step(self, model: nn.Module, batch) -> StepResult:
            return StepResult(loss=1.0)

    with pytest.raises(TypeError, match="name"):
        methods.register()(Nameless)
    with pytest.raises(TypeError, match="Method subclasses"):
        methods.register()(int)  # type: ignore[arg-type]


def test_method_is_abstract() -> None:
    with pytest.raises(TypeError):
        Method()  # type: ignore[abstract]
    with pytest.raises(TypeError):
        LossMethod()  # type: ignore[abstract]
    assert Method.applies_update is False


# --------------------------------------------------------------------------- LossMethod


class _Autograd(LossMethod):
    """The smallest LossMethod: backward() on the closure's loss, counting its calls."""

    name = "test-autograd"

    def __init__(self, loss=None) -> None:
        super().__init__(loss)
        self.calls = 0

    def grad(self, model: nn.Module, closure: Callable[[], Tensor]) -> Tensor:
        self.calls += 1
        loss = closure()
        loss.backward()
        return loss.detach()


def test_loss_method_step_is_grad_of_the_batch_closure_with_cross_entropy_by_default() -> None:
    model, x, y = _problem()
    method = _Autograd()
    result = method.step(model, (x, y, "extra entries are ignored"))
    assert isinstance(result, StepResult) and result.details == {}
    reference = F.cross_entropy(model(x), y)
    assert result.loss == pytest.approx(float(reference.detach()), rel=1e-14)
    grads = torch.autograd.grad(reference, list(model.parameters()))
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-14, atol=1e-16)
    # the closure interface: calling the method is grad(model, closure)
    model.zero_grad(set_to_none=True)
    loss = method(model, lambda: F.cross_entropy(model(x), y))
    assert float(loss) == result.loss and not loss.requires_grad and method.calls == 2


def test_loss_method_uses_the_given_loss() -> None:
    model, x, _ = _problem()
    target = torch.zeros(8, 3, dtype=torch.float64)
    method = _Autograd(loss=F.mse_loss)
    assert method.loss is F.mse_loss
    result = method.step(model, (x, target))
    assert result.loss == pytest.approx(float(F.mse_loss(model(x), target).detach()), rel=1e-14)
    assert method.closure(model, (x, target))().shape == ()
    with pytest.raises(TypeError, match="loss must be callable"):
        _Autograd(loss="mse")


def test_loss_method_step_stops_at_a_non_finite_loss() -> None:
    model, x, _ = _problem()
    method = _Autograd(loss=lambda out, target: out.sum() * math.inf)
    with pytest.raises(DivergenceError, match="training loss is"):
        method.step(model, (x, x))


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (torch.zeros(4, 5), "got Tensor"),
        ((torch.zeros(4, 5),), "of length 1"),
        ([], "of length 0"),
        (42, "got int"),
    ],
)
def test_inputs_targets_needs_a_batch_of_inputs_and_targets(batch: object, match: str) -> None:
    with pytest.raises(TypeError, match=match) as info:
        inputs_targets(batch, _Autograd())
    assert "_Autograd needs batches (inputs, targets, ...)" in str(info.value)
    model, _, _ = _problem()
    with pytest.raises(TypeError, match="needs batches"):
        _Autograd().step(model, batch)  # type: ignore[arg-type]


def test_inputs_targets_returns_the_first_two_entries() -> None:
    x, y = torch.zeros(2), torch.ones(2)
    assert inputs_targets((x, y, torch.zeros(1)), None) == (x, y)
    assert inputs_targets([x, y], None) == (x, y)


# --------------------------------------------------------------------------- checks


def test_check_directions() -> None:
    assert check_directions(1) == 1 and check_directions(64) == 64
    for bad in (0, -1, 1.5, True, "2", None):
        with pytest.raises(ValueError, match="directions must be an int >= 1"):
            check_directions(bad)


def test_check_seed_and_step() -> None:
    assert check_seed(0) == 0 and check_seed(2**62) == 2**62
    torch.manual_seed(7)
    drawn = check_seed(None)  # drawn from torch's default generator, so manual_seed fixes it
    torch.manual_seed(7)
    assert check_seed(None) == drawn and isinstance(drawn, int) and drawn >= 0
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            check_seed(bad)
    assert check_step(0) == 0 and check_step(10**9) == 10**9
    for bad in (-1, 1.0, False, None):
        with pytest.raises(ValueError, match="step must be a non-negative int"):
            check_step(bad)


def test_check_lr() -> None:
    assert check_lr(0.1) == 0.1 and check_lr(1) == 1.0 and isinstance(check_lr(1), float)
    for bad in (0, -0.1, math.nan, math.inf, True, "0.1", None):
        with pytest.raises(ValueError, match="lr must be a positive finite number"):
            check_lr(bad)


def test_check_finite() -> None:
    assert check_finite(torch.tensor(2.5), "x") == 2.5 and check_finite(3, "x") == 3.0
    for bad in (math.nan, math.inf, -math.inf, torch.tensor(math.nan)):
        with pytest.raises(DivergenceError, match="the loss is"):
            check_finite(bad, "the loss")


def test_trainable_lists_distinct_trainable_parameters_in_order() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3), nn.Linear(3, 2))
    model[2].weight = model[0].weight  # tied: listed once
    model[3].bias.requires_grad_(False)  # frozen: left out
    named = trainable(model)
    expected = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n, _ in named] == [n for n, _ in expected] == ["0.weight", "0.bias", "2.bias", "3.weight"]
    assert all(p is q for (_, p), (_, q) in zip(named, expected))
    with pytest.raises(TypeError, match="nn.Module"):
        trainable(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no trainable parameters"):
        trainable(nn.ReLU())
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        trainable(frozen)
