"""What the worker processes of the multi-process tests run (module level, so that ``spawn`` finds it).

Used by tests/conftest.py (which starts the launches) and by the tests of ``ffkit.distributed`` and
``ffkit.methods.shared_seed`` (which also run :func:`train` in the test process itself, as the
one-worker reference).
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from torch import nn

import ffkit.distributed as fd
from ffkit.methods import AllReduceGradient, SharedSeedForwardGradient
from ffkit.models import mlp

STEPS = 5
K = 3
GLOBAL_BATCH = 12
LR = 0.2
SCHEMES = ("shared-seed", "shared-seed lean", "all-reduce")
DTYPES = (torch.float64, torch.float32)
DIE_TIMEOUT, HANG_TIMEOUT = 5.0, 3.0  # collective timeouts of the two failure runs


def batch(step: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step``: the same on every worker, which then keeps its shard."""
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=dtype), torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)


def make_method(scheme: str, stats: fd.CommStats) -> SharedSeedForwardGradient | AllReduceGradient:
    if scheme == "shared-seed":
        return SharedSeedForwardGradient(K, seed=9, stats=stats)
    if scheme == "shared-seed lean":
        return SharedSeedForwardGradient(K, seed=9, stats=stats, lean=True, lr=LR)
    return AllReduceGradient(stats=stats)


def train(scheme: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """STEPS SGD steps (lr LR) on this process's shard of fixed global batches; (θ_0, θ_T, comm stats).

    Without a process group this is the 1-process run on the whole global batch."""
    model = mlp([6, 8, 3], generator_seed=4).to(dtype)
    theta0 = nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    stats = fd.CommStats()
    method = make_method(scheme, stats)
    opt = None if method.applies_update else torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(STEPS):
        x, y = fd.shard(*batch(step, dtype))
        if opt is not None:
            opt.zero_grad()
        method.step(model, (x, y))
        if opt is not None:
            opt.step()
    return theta0, nn.utils.parameters_to_vector(model.parameters()).detach().clone(), stats.as_dict()


def mismatch() -> str:
    """Each rank uses a different K; return the error every rank gets."""
    model = mlp([4, 3], generator_seed=0)
    method = SharedSeedForwardGradient(2 + dist.get_rank())
    try:
        method(model, lambda: model(torch.ones(2, 4)).sum())
    except ValueError as err:
        return str(err)
    return "no error"


def train_all() -> dict:
    """Every (scheme, dtype) in one process group, then the collectives and agreement checks."""
    rank = dist.get_rank()
    out: dict = {(scheme, str(dtype)): train(scheme, dtype) for scheme in SCHEMES for dtype in DTYPES}
    out["mismatch"] = mismatch()
    stats = fd.CommStats()
    out["mean"] = (fd.all_reduce_mean(torch.tensor([rank + 1.0, 10.0 * rank]), stats), stats.as_dict())
    try:
        fd.check_agreement({"alpha": 7, "rank": rank, "beta": 1}, what="the test")
        out["agreement"] = "no error"
    except ValueError as err:
        out["agreement"] = str(err)
    fd.check_agreement({"alpha": 7}, what="the test")  # agreeing workers pass
    out["rank"] = rank
    return out


def die_at_step_two(rank_to_die: int) -> str:
    """Shared-seed steps forever, except that one rank exits abruptly at step 2."""
    model = mlp([4, 3], generator_seed=0)
    method = SharedSeedForwardGradient(2)
    x = torch.randn(8, 4)
    for step in range(10_000):
        if dist.get_rank() == rank_to_die and step == 2:
            os._exit(3)  # no clean-up, no goodbye: as if the process were killed
        xb, _ = fd.shard(x, x)
        method(model, lambda: model(xb).pow(2).mean())
    return "never"


def hang_at_step_two() -> str:
    """Rank 1 stops responding (sleeps) at step 2 without dying."""
    model = mlp([4, 3], generator_seed=0)
    method = SharedSeedForwardGradient(2)
    x = torch.randn(8, 4)
    for step in range(10_000):
        if dist.get_rank() == 1 and step == 2:
            time.sleep(600)
        xb, _ = fd.shard(x, x)
        method(model, lambda: model(xb).pow(2).mean())
    return "never"
