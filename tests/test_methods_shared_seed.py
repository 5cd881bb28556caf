"""Tests of ffkit.methods.shared_seed: shared-seed forward gradients (plain and lean) and the all-reduce.

The 2-process runs come from tests/conftest.py (started once, shared with test_distributed.py);
the worker bodies are in tests/distributed_workers.py.
"""

from __future__ import annotations

import copy
import math
from concurrent.futures import Future

import distributed_workers as workers
import pytest
import torch
from torch import nn

from ffkit import tangents as tg
from ffkit.distributed import CommStats
from ffkit.methods import (
    AllReduceGradient,
    DivergenceError,
    ForwardGradient,
    LeanForwardGradient,
    SharedSeedForwardGradient,
)
from ffkit.models import count_parameters, mlp
from ffkit.profile import problem

# torch's forward-mode rules for some losses are set up through torch.jit.script, which warns
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

K = workers.K

# ---------------------------------------------------------------------------- multi-process

# Tolerances. Both runs compute the same quantities and differ only in the order of the
# floating-point additions (a mean over 12 examples versus the average of two means over 6, then
# the all-reduce). So each directional derivative or gradient entry differs by a few units of
# roundoff u (2^-53 in float64, 2^-24 in float32) relative to its terms, and 5 SGD steps
# (lr 0.2) of an 8-unit MLP amplify that by a modest factor, far below 1e3. We allow 1e3·u
# relative to max(1, |θ|): about 1e-13 in float64 and 6e-5 in float32. A logic error (tangents
# differing between workers, a missing 1/W, a shard of the wrong batch) changes θ by
# O(lr·|g|) ≈ 1e-2, far above both.
_TOL = {str(torch.float64): 1e3 * 2.0**-53, str(torch.float32): 1e3 * 2.0**-24}


@pytest.mark.parametrize("scheme", workers.SCHEMES)
@pytest.mark.parametrize("dtype", workers.DTYPES)
def test_two_processes_match_one_process(two_process_runs: list[dict], scheme: str, dtype: torch.dtype) -> None:
    key = (scheme, str(dtype))
    theta0, theta_one, _ = workers.train(scheme, dtype)  # no process group here: a world of one
    (start0, end0, _), (start1, end1, _) = two_process_runs[0][key], two_process_runs[1][key]
    assert torch.equal(start0, theta0) and torch.equal(start1, theta0)
    # the update is computed from identical numbers on both workers: replicas stay bit-identical
    assert torch.equal(end0, end1)
    moved = float((theta_one - theta0).abs().max())
    assert moved > 1e-3, "the runs barely moved; the comparison would prove nothing"
    tol = _TOL[str(dtype)] * max(1.0, float(theta_one.abs().max()))
    diff = float((end0 - theta_one).abs().max())
    assert diff <= tol, f"2-process and 1-process runs differ by {diff:.3e} > {tol:.3e}"


@pytest.mark.parametrize("scheme", workers.SCHEMES)
def test_bytes_counted_are_k_or_n_scalars(two_process_runs: list[dict], scheme: str) -> None:
    n = count_parameters(mlp([6, 8, 3]))
    for dtype in workers.DTYPES:
        # both shared-seed steps all-reduce the K numbers in the model's dtype
        size = torch.empty((), dtype=dtype).element_size()
        per_call = n if scheme == "all-reduce" else K
        for rank in (0, 1):
            stats = two_process_runs[rank][(scheme, str(dtype))][2]
            assert stats["calls"] == workers.STEPS
            assert stats["bytes"] == workers.STEPS * size * per_call


def test_workers_with_different_settings_get_a_clear_error(two_process_runs: list[dict]) -> None:
    for rank in (0, 1):
        assert "disagree on directions K (from 2 to 3)" in two_process_runs[rank]["mismatch"]


# ---------------------------------------------------------------------------- one process


def _problem() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    model = mlp([5, 7, 3], generator_seed=1).double()
    g = torch.Generator().manual_seed(2)
    return model, torch.randn(10, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (10,), generator=g)


def _closure(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    return lambda: nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize("sampler", ["rademacher", "gaussian"])
def test_shared_seed_step_is_the_forward_gradient_of_the_regenerated_tangents(sampler: str) -> None:
    model, x, y = _problem()
    closure = _closure(model, x, y)
    grads = torch.autograd.grad(closure(), list(model.parameters()))
    method = SharedSeedForwardGradient(K, seed=3, sampler=sampler)
    loss = method(model, closure)
    assert float(loss) == pytest.approx(float(closure().detach()), rel=1e-14)
    params = [p.detach() for p in model.parameters()]
    expected = [torch.zeros_like(p) for p in params]
    for k in range(K):
        v = tg.draw(params, sampler, tg.generator(3, 0, k))
        dot = sum((g * t).sum() for g, t in zip(grads, v))
        for e, t in zip(expected, v):
            e.add_(t * dot / K)
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-12)
    # one all-reduce of K float64 numbers per step; the agreement check is counted apart
    assert method.t == 1 and method.stats.calls == 1 and method.stats.bytes == 8 * K
    assert method.setup_stats.calls == 2
    method(model, closure)
    assert method.t == 2 and method.stats.calls == 2 and method.setup_stats.calls == 2  # checked once
    assert set(method.seconds) == {"sample", "jvp", "update"}


def test_plain_shared_seed_step_equals_forward_gradient_with_the_same_seed() -> None:
    a, x, y = _problem()
    b = copy.deepcopy(a)
    shared, fg = SharedSeedForwardGradient(K, seed=4), ForwardGradient(K, seed=4)
    for _ in range(2):  # steps 0 and 1
        a.zero_grad()
        b.zero_grad()
        shared(a, _closure(a, x, y))
        fg(b, _closure(b, x, y))
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-13, atol=1e-15)


def test_same_seed_same_update_new_step_new_tangents() -> None:
    model, x, y = _problem()
    closure = _closure(model, x, y)
    a, b, c = (SharedSeedForwardGradient(2, seed=5) for _ in range(3))
    a(model, closure)
    ga = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    b(model, closure)
    assert all(torch.equal(g, p.grad) for g, p in zip(ga, model.parameters()))
    model.zero_grad(set_to_none=True)
    c.t = 1  # a later step draws other tangents
    c(model, closure)
    assert not all(torch.equal(g, p.grad) for g, p in zip(ga, model.parameters()))


@pytest.mark.parametrize("scheme", ["shared-seed", "all-reduce"])
def test_gradients_accumulate_like_backward(scheme: str) -> None:
    model, x, y = _problem()
    closure = _closure(model, x, y)
    make = (lambda: SharedSeedForwardGradient(2, seed=1)) if scheme == "shared-seed" else AllReduceGradient
    make()(model, closure)
    once = [p.grad.clone() for p in model.parameters()]
    make()(model, closure)  # a fresh object: step 0 again, the same estimate, added on top
    for g, p in zip(once, model.parameters()):
        torch.testing.assert_close(p.grad, 2 * g, rtol=1e-14, atol=1e-16)


def test_all_reduce_gradient_alone_is_backprop() -> None:
    model, x, y = _problem()
    closure = _closure(model, x, y)
    grads = torch.autograd.grad(closure(), list(model.parameters()))
    ar = AllReduceGradient()
    loss = ar(model, closure)
    assert not loss.requires_grad
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-14, atol=1e-16)
    assert ar.stats.bytes == 8 * count_parameters(model) and ar.stats.calls == 1 and ar.t == 1


# ---------------------------------------------------------------------------- the lean step


@pytest.mark.parametrize(("directions", "sampler"), [(1, "gaussian"), (K, "rademacher")])
def test_lean_step_equals_the_plain_step_with_sgd(directions: int, sampler: str) -> None:
    """Same seed, same steps: the lean step applies in place what plain + SGD applies through .grad.
    Both are float64 and differ only in the order of operations: rtol 1e-10 leaves a margin of
    10⁵ units of roundoff, while a wrong tangent changes θ by about lr·|g| ≈ 1e-2."""
    lean_model, x, y = _problem()
    plain_model = copy.deepcopy(lean_model)
    lean = SharedSeedForwardGradient(directions, seed=6, sampler=sampler, lean=True, lr=0.1)
    plain = SharedSeedForwardGradient(directions, seed=6, sampler=sampler)
    opt = torch.optim.SGD(plain_model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in lean_model.parameters()]
    for _ in range(3):
        result = lean.step(lean_model, (x, y))
        opt.zero_grad()
        plain_result = plain.step(plain_model, (x, y))
        opt.step()
        assert result.loss == pytest.approx(plain_result.loss, rel=1e-12)
        assert len(result.details["dots"]) == directions
        for p, q in zip(lean_model.parameters(), plain_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert lean.t == plain.t == 3
    assert all(p.grad is None for p in lean_model.parameters())  # the lean step never holds g
    assert all(not torch.equal(p, q) for p, q in zip(lean_model.parameters(), before))
    assert lean.stats.calls == 3 and lean.stats.bytes == 3 * 8 * directions


def test_lean_step_in_a_world_of_one_is_the_lean_forward_gradient() -> None:
    a, x, y = _problem()
    b = copy.deepcopy(a)
    shared = SharedSeedForwardGradient(2, seed=8, lean=True, lr=0.05)
    lean = LeanForwardGradient(0.05, 2, seed=8)
    for _ in range(2):
        assert shared.step(a, (x, y)).details == lean.step(b, (x, y)).details
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # bit for bit


def test_lean_step_keeps_the_memory_of_the_lean_forward_gradient(
    step_profiles: dict[str, Future], profile_shape: dict[str, int]
) -> None:
    """Measured in fresh processes (conftest): the shared-seed lean step's working memory stays
    far below one model-sized buffer, as the lean step's does, while the plain forward gradient
    needs at least its two model-sized buffers (tangent and estimate)."""
    model, x, _ = problem(**profile_shape)
    model_bytes = (count_parameters(model) + x.numel()) * 4
    got = {method: future.result() for method, future in step_profiles.items()}
    shared = got["shared-seed lean forward gradient"]
    assert shared.exact and shared.saved_bytes == 0
    assert shared.model_bytes == pytest.approx(model_bytes, rel=0.25)
    assert got["forward gradient"].working_bytes >= 0.75 * model_bytes  # its one model-sized tangent
    assert shared.working_bytes < 0.5 * model_bytes
    assert got["lean forward gradient"].working_bytes < 0.5 * model_bytes


def test_lean_method_applies_the_update_itself() -> None:
    lean = SharedSeedForwardGradient(2, lean=True, lr=0.1)
    assert lean.applies_update and lean.lr == 0.1 and "lean=True" in repr(lean)
    plain = SharedSeedForwardGradient(2)
    assert not plain.applies_update and plain.lr is None and plain.sampler == "rademacher"
    model, x, y = _problem()
    with pytest.raises(TypeError, match="updates the parameters itself"):
        lean(model, _closure(model, x, y))
    with pytest.raises(TypeError, match="nn.Sequential"):
        SharedSeedForwardGradient(2, lean=True, lr=0.1).step(nn.Linear(5, 3).double(), (x, y))


# ---------------------------------------------------------------------------- errors


def test_bad_arguments() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="directions"):
            SharedSeedForwardGradient(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown tangent distribution"):
        SharedSeedForwardGradient(1, sampler="uniform")
    for bad in (-1, 1.5, None):
        with pytest.raises(ValueError, match="seed"):
            SharedSeedForwardGradient(1, seed=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs lr"):
        SharedSeedForwardGradient(1, lean=True)
    with pytest.raises(ValueError, match="lr belongs to the lean step"):
        SharedSeedForwardGradient(1, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        SharedSeedForwardGradient(1, lean=True, lr=0.0)
    with pytest.raises(TypeError, match="lean must be True or False"):
        SharedSeedForwardGradient(1, lean="yes")  # type: ignore[arg-type]
    model, _, _ = _problem()
    x = torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="scalar"):
        SharedSeedForwardGradient(1)(model, lambda: model(x))
    with pytest.raises(ValueError, match="scalar"):
        AllReduceGradient()(model, lambda: model(x))
    with pytest.raises(ValueError, match="no trainable parameters"):
        SharedSeedForwardGradient(1)(nn.ReLU(), lambda: torch.tensor(0.0))
    with pytest.raises(ValueError, match="no trainable parameters"):
        AllReduceGradient()(nn.ReLU(), lambda: torch.tensor(0.0))
    with pytest.raises(TypeError, match="needs batches"):
        SharedSeedForwardGradient(1).step(model, x)
    assert isinstance(SharedSeedForwardGradient(1, stats=CommStats()).stats, CommStats)


@pytest.mark.parametrize("lean", [False, True])
def test_nan_loss_is_a_divergence(lean: bool) -> None:
    model, _, _ = _problem()
    x = torch.full((2, 5), math.nan, dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.long)
    before = [p.detach().clone() for p in model.parameters()]
    method = SharedSeedForwardGradient(2, lean=lean, lr=0.1 if lean else None)
    with pytest.raises(DivergenceError):
        method.step(model, (x, y))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    with pytest.raises(DivergenceError):
        AllReduceGradient()(model, lambda: model(x).sum())
