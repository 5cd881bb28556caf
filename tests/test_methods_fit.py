"""Every method trains under ffkit.train.fit: one small problem, the loss at least halves.

The problem: 128 points in R⁴ labelled by the sign of x₀ + x₁ (linearly separable), an MLP 4-8-2
(n = 58 parameters), full-batch steps. Its initial cross-entropy is about ln 2; 50 steps of any
method below must bring the full-batch loss under half of it. The forward-gradient methods use
K = 4 tangents and η = 0.2. The trainings are cached: the trajectory test reuses them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from ffkit import models, train
from ffkit.methods import (
    AllReduceGradient,
    Backprop,
    ForwardGradient,
    LeanForwardGradient,
    Method,
    SharedSeedForwardGradient,
)

STEPS = 50
METHODS: dict[str, tuple[Callable[[], Method], float | None]] = {
    # name: (the method, the SGD rate of the optimizer; None for a method that applies its update)
    "backprop": (Backprop, 0.5),
    "forward gradient": (lambda: ForwardGradient(4, seed=0), 0.2),
    "lean forward gradient": (lambda: LeanForwardGradient(0.2, 4, seed=0), None),
    "shared-seed forward gradient": (lambda: SharedSeedForwardGradient(4, seed=0), 0.2),
    "shared-seed lean forward gradient": (lambda: SharedSeedForwardGradient(4, seed=0, lean=True, lr=0.2), None),
    "all-reduce backprop": (AllReduceGradient, 0.5),
}
#: another seed, to show that the trajectory test can fail
OTHER_SEED = {"forward gradient, seed 1": (lambda: ForwardGradient(4, seed=1), 0.2)}


def _problem() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


@functools.lru_cache(maxsize=None)
def _train(name: str) -> tuple[float, float, torch.Tensor]:
    """(initial loss, final loss, final parameters) of ``STEPS`` full-batch steps of method ``name``."""
    x, y = _problem()
    make, lr = {**METHODS, **OTHER_SEED}[name]
    model = models.mlp([4, 8, 2], flatten=False, generator_seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr) if lr is not None else None
    with torch.no_grad():
        start = float(F.cross_entropy(model(x), y))
    history = train.fit(model, make(), train.cycle(lambda: [(x, y)]), optimizer, steps=STEPS)
    with torch.no_grad():
        end = float(F.cross_entropy(model(x), y))
    assert history.loss[0] == pytest.approx(start, rel=1e-5) and len(history.loss) == STEPS
    return start, end, torch.nn.utils.parameters_to_vector(model.parameters()).detach()


@pytest.mark.parametrize("name", list(METHODS))
def test_fit_trains_every_method(name: str) -> None:
    start, end, _ = _train(name)
    assert end < 0.5 * start, f"{name}: loss {start:.4f} -> {end:.4f}"


def test_the_forward_gradient_methods_follow_one_trajectory() -> None:
    """Same seed, same rate: tangent k of step t is the same in all four, so under fit they end at
    the same parameters up to float32 rounding. rtol 1e-4 is about 1.7·10³ units of float32
    roundoff (6e-8) over 50 steps; a different tangent at any step sends θ elsewhere altogether."""
    names = ["forward gradient", "lean forward gradient", "shared-seed forward gradient",
             "shared-seed lean forward gradient"]
    finals = [_train(name)[2] for name in names]
    for name, theta in zip(names[1:], finals[1:]):
        torch.testing.assert_close(theta, finals[0], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    assert not torch.allclose(_train("forward gradient, seed 1")[2], finals[0], rtol=1e-4, atol=1e-5)
