"""Tests of ffkit.distributed: counted collectives, agreement checks, sharding and worker processes.

The multi-process tests start real gloo process groups on 127.0.0.1 (a free port chosen at run
time) through :func:`ffkit.distributed.launch_local`; the launches are shared with
tests/test_methods_shared_seed.py and started once (tests/conftest.py).
"""

from __future__ import annotations

from concurrent.futures import Future

import pytest
import torch
import torch.distributed as dist
import distributed_workers as workers
from distributed_workers import DIE_TIMEOUT, HANG_TIMEOUT

import ffkit.distributed as fd

# torch's forward-mode rules for some losses are set up through torch.jit.script, which warns
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


# ---------------------------------------------------------------------------- multi-process


def test_launch_returns_each_workers_value_in_rank_order(two_process_runs: list[dict]) -> None:
    assert [run["rank"] for run in two_process_runs] == [0, 1]


def test_all_reduce_mean_averages_over_the_workers_and_counts_the_payload(two_process_runs: list[dict]) -> None:
    for run in two_process_runs:
        mean, stats = run["mean"]
        # rank r contributed [r + 1, 10 r]: the average over r = 0, 1 is [1.5, 5]
        assert torch.equal(mean, torch.tensor([1.5, 5.0]))
        assert stats["calls"] == 1 and stats["bytes"] == 2 * 4 and stats["seconds"] >= 0


def test_check_agreement_names_every_field_the_workers_disagree_on(two_process_runs: list[dict]) -> None:
    for run in two_process_runs:
        message = run["agreement"]
        assert message.startswith("the test: the workers disagree on rank (from 0 to 1)")
        assert "alpha" not in message and "beta" not in message  # the fields they agree on are not named


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


def test_in_a_world_of_one_the_mean_is_the_tensor_and_the_payload_is_still_counted() -> None:
    assert not dist.is_initialized()
    stats = fd.CommStats()
    t = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    assert fd.all_reduce_mean(t, stats) is t and t.tolist() == [1.0, -2.0, 3.0]
    fd.all_reduce_mean(torch.ones(5), stats)
    assert stats.calls == 2 and stats.bytes == 3 * 8 + 5 * 4 and stats.seconds >= 0
    assert stats.as_dict() == {"calls": 2, "bytes": 44, "seconds": stats.seconds}
    stats.reset()
    assert stats.as_dict() == {"calls": 0, "bytes": 0, "seconds": 0.0}
    with pytest.raises(TypeError, match="floating-point"):
        fd.all_reduce_mean(torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="needs a tensor"):
        fd.all_reduce_mean([1.0, 2.0])  # type: ignore[arg-type]


def test_check_agreement_in_a_world_of_one() -> None:
    stats = fd.CommStats()
    fd.check_agreement({"K": 3, "seed": 5}, stats=stats)
    assert stats.calls == 2 and stats.bytes == 2 * 2 * 8  # MIN and MAX of two int64 numbers
    fd.check_agreement({}, stats=stats)
    assert stats.calls == 2  # nothing to check: no collective


def test_shard_splits_evenly_and_rejects_uneven_batches() -> None:
    x, y = torch.arange(12.0).reshape(6, 2), torch.arange(6)
    parts = [fd.shard(x, y, r, 3) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    whole = fd.shard(x, y)  # this process's rank and world size: 0 of 1
    assert torch.equal(whole[0], x) and torch.equal(whole[1], y)
    with pytest.raises(ValueError, match="equal shards"):
        fd.shard(x, y, 0, 4)
    with pytest.raises(ValueError, match="rank"):
        fd.shard(x, y, 3, 3)
    with pytest.raises(ValueError, match="rank"):
        fd.shard(x, y, 0, 0)
    with pytest.raises(ValueError, match="different lengths"):
        fd.shard(x, y[:5], 0, 1)


def test_launch_local_rejects_bad_arguments() -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="world_size"):
            fd.launch_local(workers.train_all, bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        fd.launch_local("train_all", 2)  # type: ignore[arg-type]
    for name in ("timeout", "collective_timeout"):
        for bad in (0, -1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match=name):
                fd.launch_local(workers.train_all, 2, **{name: bad})


def test_init_from_env_checks_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="expected 4 workers"):
        fd.init_from_env(expected_world_size=4)
    with pytest.raises(ValueError, match="backend"):
        fd.init_from_env(backend="mpi")
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
