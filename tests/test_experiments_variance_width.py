"""Tests of ffkit.experiments.variance_width: one run's bookkeeping, and Hutchinson's trace
estimate against the exact trace of the Hessian.

Tolerance of the trace: the mean of 200 probes is within Z = 5 of its estimated standard errors
of tr H except with probability about 6e-7.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import ffkit
from ffkit.experiments.variance_width import hessian_trace, run_one

Z = 5.0


def test_variance_width_run_records_target_and_divergence() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    kw = dict(steps=20, eval_every=5, batch=16, seed=0)
    easy = run_one(2, "backprop", 0.1, x, y, target=10.0, **kw)  # the initial loss is about ln 10 < 10
    assert easy["steps_to_target"] == 5 and not easy["diverged"] and easy["eval_step"] == [0, 5]
    wild = run_one(2, "forward gradient", 1e4, x, y, target=0.0, **kw)
    assert wild["diverged"] and wild["steps_to_target"] is None
    calm = run_one(2, "forward gradient", 1e-3, x, y, target=0.0, **kw)
    assert not calm["diverged"] and calm["eval_step"] == [0, 5, 10, 15, 20] and len(calm["loss"]) == 5
    sparse = run_one(2, "backprop", 1e-3, x, y, target=0.0, **{**kw, "steps": 60, "eval_every": 10})
    assert sparse["eval_step"] == [0, 5, 10, 15, 20, 25, 30, 35, 40, 50, 60]


def test_variance_width_hessian_trace_matches_the_exact_trace() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    model = ffkit.models.mlp([784, 1, 10], generator_seed=0)
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        parts = dict(zip(names, (t.reshape(s) for t, s in zip(theta.split([s.numel() for s in shapes]), shapes))))
        return F.cross_entropy(torch.func.functional_call(model, parts, (x,)), y)

    hvp = lambda e: torch.func.jvp(torch.func.grad(loss), (flat,), (e,))[1]  # noqa: E731
    exact = float(torch.func.vmap(hvp)(torch.eye(flat.numel())).diagonal().sum())
    mean, se = hessian_trace(1, x, y, probes=200, seed=0)
    assert abs(mean - exact) < Z * se
