"""Data-parallel plumbing on ``torch.distributed``: counted collectives and worker processes.

The methods that use it are in :mod:`ffkit.methods.shared_seed`: the shared-seed forward
gradient (every worker draws the same tangents from a shared seed and all-reduces K scalars) and
standard data parallelism (every worker all-reduces its n-entry gradient). This module holds what
they and the benchmarks share:

* **counted collectives.** Every collective goes through :func:`all_reduce_mean`, which adds the
  payload it hands to ``torch.distributed.all_reduce`` (``numel × element_size`` bytes, what one
  worker contributes) and the time spent to a :class:`CommStats`. How many bytes the backend then
  puts on the wire depends on its algorithm: a ring all-reduce sends about 2(W − 1)/W times the
  payload per worker. :func:`check_agreement` makes every worker refuse to train with settings
  that differ between workers.
* **sharding.** :func:`shard` gives each worker an equal share of a global batch, so that the mean
  of the shard means is the mean over the global batch.
* **processes.** The workers read the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR``, ``MASTER_PORT``) in :func:`init_from_env`, with the ``gloo`` backend on CPU and
  ``nccl`` on GPUs, e.g. ::

      torchrun --standalone --nproc-per-node 2 -m ffkit dp-train --scheme shared-seed --directions 4

  :func:`launch_local` starts W such workers on this machine (127.0.0.1, a free port) from
  Python, collects their return values, and stops them all if one fails. A worker that dies or
  hangs makes the collectives of the others fail within the process group's timeout, and they
  raise :class:`WorkerFailureError` instead of waiting forever.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import pickle
import queue as queue_module
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "CommStats",
    "DistributedRunError",
    "WorkerFailureError",
    "all_reduce_mean",
    "check_agreement",
    "init_from_env",
    "launch_local",
    "shard",
]


class WorkerFailureError(RuntimeError):
    """A collective call failed or timed out: another worker died or stopped responding."""


class DistributedRunError(RuntimeError):
    """:func:`launch_local`: at least one worker failed; the message has every worker's outcome."""


# --------------------------------------------------------------------------- communication


@dataclass
class CommStats:
    """What went through the collective calls of one worker.

    ``bytes`` is the payload handed to ``all_reduce`` (``numel × element_size`` summed over the
    calls), ``seconds`` the wall-clock time spent inside the calls (it includes waiting for the
    slowest worker).
    """

    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def reset(self) -> None:
        """Set every counter back to zero."""
        self.calls, self.bytes, self.seconds = 0, 0, 0.0

    def as_dict(self) -> dict[str, float]:
        """A JSON-serialisable copy."""
        return {"calls": self.calls, "bytes": self.bytes, "seconds": self.seconds}


def _world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(tensor: Tensor, op: Any, stats: CommStats | None, what: str) -> Tensor:
    """``dist.all_reduce(tensor, op)`` in place (a no-op in a world of one), counted in ``stats``;
    a failure or timeout becomes :class:`WorkerFailureError`. Every collective of this module
    goes through here."""
    _, world_size = _world()
    start = time.perf_counter()
    if world_size > 1:
        try:
            dist.all_reduce(tensor, op=op)
        except Exception as err:  # gloo/nccl raise RuntimeError subclasses (DistBackendError, ...)
            waited = time.perf_counter() - start
            raise WorkerFailureError(
                f"{what}: the all-reduce failed after {waited:.1f} s on rank {dist.get_rank()} of "
                f"{world_size}; another worker probably died or stopped responding "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            ) from err
    if stats is not None:
        stats.calls += 1
        stats.bytes += tensor.numel() * tensor.element_size()
        stats.seconds += time.perf_counter() - start
    return tensor


def all_reduce_mean(tensor: Tensor, stats: CommStats | None = None, *, what: str = "all_reduce") -> Tensor:
    """Replace ``tensor`` in place by its average over the workers, (1/W) Σ_r tensor_r, and return it.

    The counting wrapper of the training step's communication: the payload (``numel ×
    element_size`` bytes) and the time spent are added to ``stats``. Without an initialised
    process group the world has one worker and the average is ``tensor`` itself (the payload is
    still counted, so one- and many-worker runs report the same bytes per worker).

    A failing or timed-out collective (another worker died or hangs) raises
    :class:`WorkerFailureError` naming ``what``.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"all_reduce_mean needs a tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"all_reduce_mean averages floating-point tensors, got dtype {tensor.dtype}")
    _all_reduce(tensor, dist.ReduceOp.SUM, stats, what)
    _, world_size = _world()
    if world_size > 1:
        tensor.div_(world_size)
    return tensor


def check_agreement(
    fields: Mapping[str, int], *, device: torch.device | str = "cpu", stats: CommStats | None = None, what: str = "settings"
) -> None:
    """Raise ``ValueError`` on every worker if the workers hold different values of any of the
    integer ``fields`` (e.g. K, the seed, the step, n): one all-reduce with MIN and one with MAX
    of ``len(fields)`` int64 numbers. Data parallelism with mismatched settings would otherwise
    fail obscurely (buffers of different sizes) or silently (different tangents)."""
    if not fields:
        return
    values = torch.tensor([int(v) for v in fields.values()], dtype=torch.int64, device=device)
    low, high = values.clone(), values.clone()
    _all_reduce(low, dist.ReduceOp.MIN, stats, f"{what} check")
    _all_reduce(high, dist.ReduceOp.MAX, stats, f"{what} check")
    bad = [f"{name} (from {lo} to {hi})" for name, lo, hi in zip(fields, low.tolist(), high.tolist()) if lo != hi]
    if bad:
        raise ValueError(f"{what}: the workers disagree on {', '.join(bad)}; every worker must use the same settings")


def shard(x: Tensor, y: Tensor, rank: int | None = None, world_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Worker ``rank``'s contiguous share of a global batch ``(x, y)``.

    The shares must have equal sizes: only then is the mean of the shard means the mean over the
    global batch, which makes a W-worker step equal the 1-worker step. Defaults: this process's
    rank and world size.
    """
    r, w = _world()
    rank = r if rank is None else rank
    world_size = w if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank} and world size {world_size}")
    if len(x) != len(y):
        raise ValueError(f"x and y have different lengths: {len(x)} and {len(y)}")
    if len(x) % world_size:
        raise ValueError(
            f"the global batch of {len(x)} does not split into {world_size} equal shards; "
            "use a multiple of the world size"
        )
    size = len(x) // world_size
    return x[rank * size : (rank + 1) * size], y[rank * size : (rank + 1) * size]


# --------------------------------------------------------------------------- processes


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    if raw is None:
        raise ValueError(f"environment variable {name} is not set; launch with torchrun or ffkit.distributed.launch_local")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def init_from_env(
    *, backend: str | None = None, timeout: float = 60.0, expected_world_size: int | None = None
) -> tuple[int, int]:
    """Join the default process group described by the ``torchrun`` environment and return
    ``(rank, world_size)``.

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``backend`` defaults to
    ``nccl`` when CUDA is available (each process then uses GPU ``LOCAL_RANK``) and ``gloo``
    otherwise. ``timeout`` (seconds) bounds every collective: when a worker dies or hangs, the
    others raise instead of waiting. ``expected_world_size`` guards against launching the wrong
    number of processes.
    """
    if not dist.is_available():
        raise RuntimeError("this build of torch has no torch.distributed")
    if dist.is_initialized():
        raise RuntimeError("the default process group is already initialised in this process")
    if not (isinstance(timeout, (int, float)) and timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"environment variable {name} is not set; launch with torchrun or ffkit.distributed.launch_local")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world_size}")
    if expected_world_size is not None and world_size != expected_world_size:
        raise ValueError(f"expected {expected_world_size} workers but WORLD_SIZE={world_size}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    dist.init_process_group(
        backend, init_method="env://", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout)
    )
    return rank, world_size


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker_main(
    target: Callable[..., Any],
    args: tuple[Any, ...],
    rank: int,
    world_size: int,
    port: int,
    timeout: float,
    threads: int,
    results: Any,
    go: Any,
    start_timeout: float,
) -> None:
    """Body of one process started by :func:`launch_local` (module level, so ``spawn`` can pickle it).

    By the time it runs, ``spawn`` has imported ``target``'s module. It reports ``ready`` and
    waits for ``go`` (set once every worker is ready), so that all workers join the process group
    at about the same time: slow imports on a busy machine must not eat into ``timeout``, which
    bounds the rendezvous as well as every collective."""
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # keep gloo's traffic on the loopback device
    torch.set_num_threads(threads)
    try:
        results.put((rank, "ready", None))
        if not go.wait(timeout=start_timeout):
            raise RuntimeError("the launcher never started the run (not every worker became ready)")
        init_from_env(backend="gloo", timeout=timeout, expected_world_size=world_size)
        value = target(*args)
        # pickled here, by value: torch's multiprocessing pickler would share tensor storage
        # through file descriptors that vanish when this process exits
        results.put((rank, "ok", pickle.dumps(value)))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, then the process exits
        text = "".join(traceback.format_exception_only(type(err), err)).strip()
        results.put((rank, "error", text))
        results.close()
        results.join_thread()
        os._exit(1)
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass


def launch_local(
    target: Callable[..., Any],
    world_size: int,
    args: Sequence[Any] = (),
    *,
    timeout: float = 300.0,
    collective_timeout: float = 30.0,
    threads: int = 1,
) -> list[Any]:
    """Run ``target(*args)`` in ``world_size`` fresh processes on this machine, each inside a gloo
    process group (127.0.0.1, a free port, the ``torchrun`` environment variables set), and return
    their return values in rank order.

    ``target`` must be a module-level function (processes are started with ``spawn``); it finds its
    rank with ``torch.distributed.get_rank()`` and its return value must be picklable.
    ``collective_timeout`` bounds every collective; ``timeout`` bounds the whole run. If a worker
    fails, the others get ``collective_timeout`` plus a few seconds to notice and stop on their
    own, then every remaining process is terminated and :class:`DistributedRunError` lists what
    each worker reported. Children are always cleaned up, whatever happens.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not callable(target):
        raise TypeError(f"target must be callable, got {type(target).__name__}")
    for name, value in (("timeout", timeout), ("collective_timeout", collective_timeout)):
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    go = ctx.Event()
    port = _free_port()
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(target, tuple(args), rank, world_size, port, float(collective_timeout), threads, results, go, float(timeout)),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    ready: set[int] = set()
    outcome: dict[int, tuple[str, Any]] = {}
    deadline = time.monotonic() + timeout
    first_failure: float | None = None
    grace = collective_timeout + 2.0

    def record(rank: int, status: str, value: Any) -> None:
        nonlocal first_failure
        if status == "ready":
            ready.add(rank)
            if len(ready) == world_size:
                go.set()
            return
        outcome[rank] = (status, value)
        if status != "ok" and first_failure is None:
            first_failure = time.monotonic()

    try:
        for p in procs:
            p.start()
        while len(outcome) < world_size:
            now = time.monotonic()
            if now > deadline or (first_failure is not None and now > first_failure + grace):
                break
            try:
                record(*results.get(timeout=0.1))
                continue
            except queue_module.Empty:
                pass
            for rank, p in enumerate(procs):
                if rank not in outcome and p.exitcode is not None:
                    try:  # its last message may still be on its way through the queue
                        record(*results.get(timeout=0.5))
                    except queue_module.Empty:
                        record(rank, "error", f"process exited with code {p.exitcode} without a result")
                    break
    finally:
        started = [p for p in procs if p.pid is not None]
        for p in started:
            if p.is_alive():
                p.terminate()
        for p in started:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        results.close()
        results.cancel_join_thread()
    if len(outcome) == world_size and all(status == "ok" for status, _ in outcome.values()):
        return [pickle.loads(outcome[rank][1]) for rank in range(world_size)]
    lines = []
    for rank in range(world_size):
        status, value = outcome.get(rank, ("killed", "no result before the launcher stopped it"))
        lines.append(f"  rank {rank}: {status}" + ("" if status == "ok" else f": {value}"))
    why = "timed out" if time.monotonic() > deadline else "a worker failed"
    raise DistributedRunError(f"distributed run of {world_size} workers {why}:\n" + "\n".join(lines))
