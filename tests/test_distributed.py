"""Tests of ffkit.distributed: shared-seed forward gradients and all-reduced gradients.

The multi-process tests start real gloo process groups on 127.0.0.1 (a free port chosen at run
time) through :func:`ffkit.distributed.launch_local`, which terminates every child in a
``finally``. Process start-up dominates their cost, so each launch checks several things.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import torch
import torch.distributed as dist
from torch import nn

import ffkit.distributed as fd
from ffkit.fg import sample_tangent_
from ffkit.models import count_parameters, mlp
from ffkit.train import DivergenceError

# torch's forward-mode rules for some losses are set up through torch.jit.script, which warns
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

STEPS = 5
K = 3
GLOBAL_BATCH = 12
LR = 0.2


def _batch(step: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=dtype), torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)


def _train(scheme: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """STEPS SGD steps on this process's shard of fixed global batches; (θ_0, θ_T, comm stats).

    Without a process group this is the 1-process run on the whole global batch."""
    model = mlp([6, 8, 3], generator_seed=4).to(dtype)
    theta0 = nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    stats = fd.CommStats()
    grad_fn = fd.SharedSeedForwardGradient(K, seed=9, stats=stats) if scheme == "shared-seed" else fd.AllReduceGradient(stats=stats)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(STEPS):
        x, y = fd.shard(*_batch(step, dtype))
        opt.zero_grad()
        grad_fn(model, lambda: nn.functional.cross_entropy(model(x), y))
        opt.step()
    return theta0, nn.utils.parameters_to_vector(model.parameters()).detach().clone(), stats.as_dict()


def _mismatch() -> str:
    """Worker body part: each rank uses a different K; return the error every rank gets."""
    model = mlp([4, 3], generator_seed=0)
    grad_fn = fd.SharedSeedForwardGradient(2 + dist.get_rank())
    try:
        grad_fn(model, lambda: model(torch.ones(2, 4)).sum())
    except ValueError as err:
        return str(err)
    return "no error"


def _train_all() -> dict:
    """Worker body: every (scheme, dtype) combination in one process group, then a mismatch."""
    out: dict = {
        (scheme, str(dtype)): _train(scheme, dtype)
        for scheme in ("shared-seed", "all-reduce")
        for dtype in (torch.float64, torch.float32)
    }
    out["mismatch"] = _mismatch()
    return out


def _die_at_step_two(rank_to_die: int) -> str:
    """Worker body: shared-seed steps forever, except that one rank exits abruptly at step 2."""
    model = mlp([4, 3], generator_seed=0)
    grad_fn = fd.SharedSeedForwardGradient(2)
    x = torch.randn(8, 4)
    for step in range(10_000):
        if dist.get_rank() == rank_to_die and step == 2:
            os._exit(3)  # no clean-up, no goodbye: as if the process were killed
        xb, _ = fd.shard(x, x)
        grad_fn(model, lambda: model(xb).pow(2).mean())
    return "never"


def _hang_at_step_two() -> str:
    """Worker body: rank 1 stops responding (sleeps) at step 2 without dying."""
    model = mlp([4, 3], generator_seed=0)
    grad_fn = fd.SharedSeedForwardGradient(2)
    x = torch.randn(8, 4)
    for step in range(10_000):
        if dist.get_rank() == 1 and step == 2:
            time.sleep(600)
        xb, _ = fd.shard(x, x)
        grad_fn(model, lambda: model(xb).pow(2).mean())
    return "never"


# ---------------------------------------------------------------------------- multi-process


DIE_TIMEOUT, HANG_TIMEOUT = 5.0, 3.0  # collective timeouts of the two failure runs


@pytest.fixture(scope="module")
def launches() -> Iterator[dict[str, Future]]:
    """The three 2-process runs of this file, started together (the process start-up, not the
    work, is what takes time); leaving the ``with`` waits until every child is gone."""
    with ThreadPoolExecutor(3) as pool:
        yield {
            "train": pool.submit(fd.launch_local, _train_all, 2, timeout=180, collective_timeout=60),
            "die": pool.submit(fd.launch_local, _die_at_step_two, 2, (1,), timeout=180, collective_timeout=DIE_TIMEOUT),
            "hang": pool.submit(fd.launch_local, _hang_at_step_two, 2, timeout=180, collective_timeout=HANG_TIMEOUT),
        }


@pytest.fixture(scope="module")
def two_process_runs(launches: dict[str, Future]) -> list[dict]:
    return launches["train"].result()


# Tolerances. Both runs compute the same quantities and differ only in the order of the
# floating-point additions (a mean over 12 examples versus the average of two means over 6, then
# the all-reduce). So each directional derivative or gradient entry differs by a few units of
# roundoff u (2^-53 in float64, 2^-24 in float32) relative to its terms, and 5 SGD steps
# (lr 0.2) of an 8-unit MLP amplify that by a modest factor, far below 1e3. We allow 1e3·u
# relative to max(1, |θ|): about 1e-13 in float64 and 6e-5 in float32. A logic error (tangents
# differing between workers, a missing 1/W, a shard of the wrong batch) changes θ by
# O(lr·|g|) ≈ 1e-2, far above both.
_TOL = {str(torch.float64): 1e3 * 2.0**-53, str(torch.float32): 1e3 * 2.0**-24}


@pytest.mark.parametrize("scheme", ["shared-seed", "all-reduce"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_two_processes_match_one_process(two_process_runs: list[dict], scheme: str, dtype: torch.dtype) -> None:
    key = (scheme, str(dtype))
    theta0, theta_one, _ = _train(scheme, dtype)  # no process group here: world of one
    (start0, end0, _), (start1, end1, _) = two_process_runs[0][key], two_process_runs[1][key]
    assert torch.equal(start0, theta0) and torch.equal(start1, theta0)
    # the update is computed from identical numbers on both workers: replicas stay bit-identical
    assert torch.equal(end0, end1)
    moved = float((theta_one - theta0).abs().max())
    assert moved > 1e-3, "the runs barely moved; the comparison would prove nothing"
    tol = _TOL[str(dtype)] * max(1.0, float(theta_one.abs().max()))
    diff = float((end0 - theta_one).abs().max())
    assert diff <= tol, f"2-process and 1-process runs differ by {diff:.3e} > {tol:.3e}"


@pytest.mark.parametrize("scheme", ["shared-seed", "all-reduce"])
def test_bytes_counted_are_k_or_n_scalars(two_process_runs: list[dict], scheme: str) -> None:
    n = count_parameters(mlp([6, 8, 3]))
    for dtype, size in ((torch.float64, 8), (torch.float32, 4)):
        for rank in (0, 1):
            stats = two_process_runs[rank][(scheme, str(dtype))][2]
            per_call = K if scheme == "shared-seed" else n
            assert stats["calls"] == STEPS
            assert stats["bytes"] == STEPS * size * per_call


def test_workers_with_different_settings_get_a_clear_error(two_process_runs: list[dict]) -> None:
    for rank in (0, 1):
        assert "disagree on directions K (from 2 to 3)" in two_process_runs[rank]["mismatch"]


def _rank_line(error: BaseException | None, rank: int) -> str:
    assert isinstance(error, fd.DistributedRunError), f"expected DistributedRunError, got {error!r}"
    return next(line for line in str(error).splitlines() if line.strip().startswith(f"rank {rank}"))


def _waited(line: str) -> float:
    """The seconds a WorkerFailureError says the all-reduce waited before failing."""
    return float(line.split("failed after ")[1].split(" s")[0])


def test_dead_worker_makes_the_others_fail_quickly(launches: dict[str, Future]) -> None:
    error = launches["die"].exception()
    assert "a worker failed" in str(error)
    assert "exited with code 3" in _rank_line(error, 1)
    # rank 0 stopped on its own, at the step where its partner vanished, with a clear error
    line = _rank_line(error, 0)
    assert "WorkerFailureError" in line and "step 2" in line
    assert _waited(line) <= DIE_TIMEOUT + 1.0


def test_hung_worker_makes_the_others_fail_after_the_timeout(launches: dict[str, Future]) -> None:
    error = launches["hang"].exception()
    line = _rank_line(error, 0)
    assert "WorkerFailureError" in line and "step 2" in line
    assert HANG_TIMEOUT - 0.5 <= _waited(line) <= HANG_TIMEOUT + 5.0
    assert "killed" in _rank_line(error, 1)  # still asleep: the launcher terminated it


# ---------------------------------------------------------------------------- one process


def _problem() -> tuple[nn.Module, callable]:
    model = mlp([5, 7, 3], generator_seed=1).double()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(10, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (10,), generator=g)
    return model, lambda: nn.functional.cross_entropy(model(x), y)


def test_directional_derivatives_match_autograd() -> None:
    model, closure = _problem()
    loss = closure()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    names = [name for name, _ in model.named_parameters()]
    gen = torch.Generator().manual_seed(0)
    tangents = [{name: torch.randn(p.shape, generator=gen, dtype=p.dtype) for name, p in model.named_parameters()} for _ in range(4)]
    value, d = fd.directional_derivatives(model, closure, tangents)
    expected = torch.stack([sum((g * v[name]).sum() for g, name in zip(grads, names)) for v in tangents])
    assert torch.allclose(value, loss.detach(), rtol=1e-14, atol=0)
    assert torch.allclose(d, expected, rtol=1e-12, atol=1e-14)


def test_shared_seed_step_is_the_forward_gradient_of_the_regenerated_tangents() -> None:
    model, closure = _problem()
    grads = torch.autograd.grad(closure(), list(model.parameters()))
    fg = fd.SharedSeedForwardGradient(K, seed=3, sampler="rademacher")
    fg(model, closure)
    gen = fd.step_generator(3, 0)
    params = dict(model.named_parameters())
    expected = [torch.zeros_like(p) for p in params.values()]
    for _ in range(K):
        v = [sample_tangent_(torch.empty_like(p), "rademacher", gen) for p in params.values()]
        dot = sum((g * t).sum() for g, t in zip(grads, v))
        for e, t in zip(expected, v):
            e.add_(t * dot / K)
    for p, e in zip(params.values(), expected):
        assert torch.allclose(p.grad, e, rtol=1e-10, atol=1e-12)
    assert fg.step == 1 and fg.stats.calls == 1 and fg.stats.bytes == 8 * K


def test_same_seed_same_update_new_step_new_tangents() -> None:
    model, closure = _problem()
    a, b, c = (fd.SharedSeedForwardGradient(2, seed=5) for _ in range(3))
    a(model, closure)
    ga = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    b(model, closure)
    assert all(torch.equal(x, p.grad) for x, p in zip(ga, model.parameters()))
    model.zero_grad(set_to_none=True)
    c.step = 1  # a later step draws other tangents
    c(model, closure)
    assert not all(torch.equal(x, p.grad) for x, p in zip(ga, model.parameters()))


@pytest.mark.parametrize("scheme", ["shared-seed", "all-reduce"])
def test_gradients_accumulate_like_backward(scheme: str) -> None:
    model, closure = _problem()
    make = (lambda: fd.SharedSeedForwardGradient(2, seed=1)) if scheme == "shared-seed" else fd.AllReduceGradient
    make()(model, closure)
    once = [p.grad.clone() for p in model.parameters()]
    make()(model, closure)  # a fresh object: step 0 again, the same estimate, added on top
    for x, p in zip(once, model.parameters()):
        assert torch.allclose(p.grad, 2 * x, rtol=1e-14, atol=1e-16)


def test_all_reduce_gradient_alone_is_backprop() -> None:
    model, closure = _problem()
    grads = torch.autograd.grad(closure(), list(model.parameters()))
    ar = fd.AllReduceGradient()
    ar(model, closure)
    for p, g in zip(model.parameters(), grads):
        assert torch.allclose(p.grad, g, rtol=1e-14, atol=1e-16)
    assert ar.stats.bytes == 8 * count_parameters(model)


def test_step_generator_depends_on_seed_and_step_only() -> None:
    draw = lambda s, t: torch.randn(8, generator=fd.step_generator(s, t))  # noqa: E731
    assert torch.equal(draw(1, 2), draw(1, 2))
    assert not torch.equal(draw(1, 2), draw(1, 3))
    assert not torch.equal(draw(1, 2), draw(2, 2))


def test_shard_splits_evenly_and_rejects_uneven_batches() -> None:
    x, y = torch.arange(12.0).reshape(6, 2), torch.arange(6)
    parts = [fd.shard(x, y, r, 3) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    with pytest.raises(ValueError, match="equal shards"):
        fd.shard(x, y, 0, 4)
    with pytest.raises(ValueError, match="rank"):
        fd.shard(x, y, 3, 3)
    with pytest.raises(ValueError, match="different lengths"):
        fd.shard(x, y[:5], 0, 1)


@pytest.mark.parametrize("directions", [0, -1])
def test_bad_directions(directions: int) -> None:
    with pytest.raises(ValueError, match="directions"):
        fd.SharedSeedForwardGradient(directions)


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="directions"):
        fd.SharedSeedForwardGradient(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sampler"):
        fd.SharedSeedForwardGradient(1, sampler="uniform")
    with pytest.raises(ValueError, match="seed"):
        fd.SharedSeedForwardGradient(1, seed=-1)
    with pytest.raises(TypeError, match="floating-point"):
        fd.all_reduce_mean(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="world_size"):
        fd.launch_local(_train_all, 0)
    model, _ = _problem()
    with pytest.raises(ValueError, match="scalar"):
        fd.SharedSeedForwardGradient(1)(model, lambda: model(torch.randn(2, 5, dtype=torch.float64)))
    with pytest.raises(ValueError, match="scalar"):
        fd.AllReduceGradient()(model, lambda: model(torch.randn(2, 5, dtype=torch.float64)))


def test_nan_loss_is_a_divergence() -> None:
    model, _ = _problem()
    x = torch.full((2, 5), math.nan, dtype=torch.float64)
    with pytest.raises(DivergenceError):
        fd.SharedSeedForwardGradient(2)(model, lambda: model(x).sum())
    with pytest.raises(DivergenceError):
        fd.AllReduceGradient()(model, lambda: model(x).sum())


def test_init_from_env_checks_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="expected 4 workers"):
        fd.init_from_env(expected_world_size=4)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK"):
        fd.init_from_env()
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(ValueError, match="RANK must be an integer"):
        fd.init_from_env()
    monkeypatch.delenv("MASTER_PORT")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="MASTER_PORT"):
        fd.init_from_env()
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        fd.init_from_env()
    with pytest.raises(ValueError, match="timeout"):
        fd.init_from_env(timeout=0)
    assert not dist.is_initialized()


def test_plots_draw_both_schemes() -> None:
    rec = lambda n: {  # noqa: E731
        "world_size": 2, "n": n, "directions": 4,
        "shared_seed": {"bytes_per_step": 16, "step_seconds": 0.01, "isolated_comm_seconds": 1e-4},
        "all_reduce": {"bytes_per_step": 4 * n, "step_seconds": 0.02, "isolated_comm_seconds": 1e-3},
    }
    ax = fd.plot_communication({"sizes": [rec(100), rec(1000)]})
    labels = [line.get_label() for line in ax.get_lines()]
    assert len(labels) == 4 and "predicted 4n" in labels
    assert list(ax.get_lines()[0].get_ydata()) == [400, 4000]
    assert len(fd.plot_step_time({"sizes": [rec(100), rec(1000)]}).get_lines()) == 4
    with pytest.raises(ValueError, match="world size 4"):
        fd.plot_communication({"sizes": [rec(100)]}, world_size=4)
    with pytest.raises(ValueError, match="sizes"):
        fd.plot_step_time({})


def test_dp_train_command_runs_as_one_worker(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from ffkit.commands import dp_train

    monkeypatch.delenv("RANK", raising=False)
    argv = ["--data", "synthetic", "--steps", "3", "--limit", "64", "--batch", "8", "--width", "8", "--directions", "2"]
    assert dp_train.main(argv) == 0
    out = capsys.readouterr().out
    assert "1 worker(s)" in out and "per step: 8 (predicted 8)" in out
    assert dp_train.main(argv[:-2] + ["--scheme", "all-reduce"]) == 0
    n = count_parameters(mlp([784, 8, 10]))
    assert f"per step: {4 * n} (predicted {4 * n})" in capsys.readouterr().out
