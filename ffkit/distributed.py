"""Data parallelism on ``torch.distributed``: share a seed instead of a gradient.

In data parallelism each of the ``W`` workers holds a copy of the parameters θ ∈ R^n and a shard
of the global batch. With the per-shard loss a *mean*, the global loss is the average of the
shard losses, f(θ) = (1/W) Σ_r f_r(θ), and so is every derivative of it.

**Standard data parallelism** (:class:`AllReduceGradient`) computes ∇f_r(θ) by backprop on each
worker and all-reduces it: every step, every worker hands **n** numbers (4n bytes in float32)
to the collective, and gets back ∇f = (1/W) Σ_r ∇f_r.

**Shared-seed forward gradient** (:class:`SharedSeedForwardGradient`). Every worker seeds a
``torch.Generator`` from the same ``(seed, step)`` and so draws the *same* K tangents
v_1, …, v_K ∈ R^n without sending them. Each worker computes only its K directional
derivatives ∇f_r·v_k (forward mode, one JVP per tangent, see
:func:`directional_derivatives`) and all-reduces those **K scalars** (4K bytes). By linearity
(1/W) Σ_r ∇f_r·v_k = ∇f·v_k, so every worker now holds the directional derivatives of the
global loss and forms the same forward gradient

    g = (1/K) Σ_k (∇f·v_k) v_k,

then applies the same update: the replicas never drift apart, and a W-process run follows the
1-process run on the same global batch up to floating-point rounding. Communication no longer
depends on n; the price is that every worker regenerates the K tangents (K·n random numbers)
each step.

The byte counts are measured, not assumed: every collective goes through
:func:`all_reduce_mean`, which adds the payload it hands to ``torch.distributed.all_reduce``
(``numel × element_size`` bytes, what one worker contributes) to a :class:`CommStats`. How many
bytes the backend then puts on the wire depends on its algorithm (a ring all-reduce moves about
2(W−1)/W times the payload per worker); the payload is the quantity both schemes share.

Launching: the workers read the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``) in :func:`init_from_env`, with the ``gloo`` backend on CPU and
``nccl`` on GPUs, e.g. ::

    torchrun --standalone --nproc-per-node 2 -m ffkit dp-train --scheme shared-seed --directions 4

:func:`launch_local` starts W such workers on this machine (127.0.0.1, a free port) from Python,
collects their return values, and stops them all if one fails. A worker that dies or hangs makes
the collectives of the others fail within the process group's timeout, and they raise
:class:`WorkerFailureError` instead of waiting forever.

Plotting communication against model size: the command ``python -m ffkit bench-comm`` writes
the measurements (``chapters/results/bench_comm.json``); :func:`plot_communication` draws the
bytes per step against n, :func:`plot_step_time` the time per step and of the all-reduce alone.
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
from torch import Tensor, nn

from ffkit.autodiff import module_jvp
from ffkit.fg import SAMPLERS, sample_tangent_
from ffkit.train import DivergenceError

__all__ = [
    "AllReduceGradient",
    "CommStats",
    "DistributedRunError",
    "SharedSeedForwardGradient",
    "WorkerFailureError",
    "all_reduce_mean",
    "check_agreement",
    "directional_derivatives",
    "init_from_env",
    "launch_local",
    "plot_communication",
    "plot_step_time",
    "shard",
    "step_generator",
]

_MASK64 = (1 << 64) - 1


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


# --------------------------------------------------------------------------- tangents and JVPs


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded from ``(seed, step)`` only: every worker that calls this with
    the same pair draws the same tangents. The pair is mixed (SplitMix64) into one 63-bit seed so
    that neighbouring seeds or steps do not give related streams."""
    for name, value in (("seed", seed), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    z = (seed * 0x9E3779B97F4A7C15 + step + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return torch.Generator(device=device).manual_seed(z & ((1 << 63) - 1))


def _draw_tangent(params: Mapping[str, Tensor], sampler: str, generator: torch.Generator) -> dict[str, Tensor]:
    """One tangent v with the shapes of ``params``, drawn parameter by parameter (in the mapping's
    order) with :func:`ffkit.fg.sample_tangent_`: i.i.d. N(0, 1) or ±1 entries, E[v vᵀ] = I."""
    return {name: sample_tangent_(torch.empty_like(p), sampler, generator) for name, p in params.items()}


def directional_derivatives(
    model: nn.Module,
    closure: Callable[[], Tensor],
    tangents: Sequence[Mapping[str, Tensor]],
) -> tuple[Tensor, Tensor]:
    """The loss f(θ) = ``closure()`` and its directional derivatives ∇f(θ)·v_k, one forward-mode
    pass (``torch.func.jvp``) per tangent.

    ``tangents[k]`` maps each trainable parameter name of ``model`` (as in
    ``model.named_parameters()``) to a tensor of its shape. Returns ``(value, d)`` with ``d`` of
    shape ``(K,)`` in the parameters' dtype. The K scalars are returned separately (not already
    combined into a forward gradient, as :func:`ffkit.forward_gradient` does) because the
    shared-seed scheme must average them over the workers first.
    """
    if len(tangents) < 1:
        raise ValueError("directional_derivatives needs at least one tangent")
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters")
    value: Tensor | None = None
    derivs = []
    for k, v in enumerate(tangents):
        if set(v) != set(params):
            missing, extra = sorted(set(params) - set(v)), sorted(set(v) - set(params))
            raise ValueError(f"tangent {k} does not match the parameters (missing {missing}, extra {extra})")
        primal, tangent_out = module_jvp(model, closure, v, method="func")
        if not isinstance(primal, Tensor) or primal.numel() != 1:
            raise ValueError("closure() must return a scalar loss tensor")
        if value is None:
            value = primal.detach()
        derivs.append(tangent_out.detach().reshape(()))
    assert value is not None
    return value.reshape(()), torch.stack(derivs)


# --------------------------------------------------------------------------- the two schemes


def _check_directions(directions: int) -> int:
    if isinstance(directions, bool) or not isinstance(directions, int):
        raise TypeError(f"directions must be an int, got {type(directions).__name__}")
    if directions < 1:
        raise ValueError(f"directions (K) must be >= 1, got {directions}")
    return directions


class SharedSeedForwardGradient:
    """Gradient function (the signature of :func:`ffkit.train.backprop_grad`) for shared-seed
    data-parallel forward gradients.

    Each call is one step t (counted in ``self.step``, starting at 0):

    1. draw K tangents v_k from ``step_generator(seed, t)`` (identical on every worker);
    2. compute the shard's directional derivatives ∇f_r·v_k (:func:`directional_derivatives`);
    3. average them over the workers with :func:`all_reduce_mean`: K scalars, 4K bytes in float32;
    4. add g = (1/K) Σ_k (∇f·v_k) v_k to each parameter's ``.grad`` (setting it if it is
       ``None``), where ``loss.backward()`` would have accumulated ∇f.

    Any ``torch.optim`` optimizer then takes the same step on every worker. The K tangents
    (K·n numbers) are held during the step; ``self.step`` may be set to resume a run (it selects
    the tangents, so two workers must agree on it). The first call checks that every worker has
    the same K, seed, step, sampler and n (:func:`check_agreement`; its bytes go to
    ``setup_stats``, not ``stats``). Returns the shard's loss f_r(θ). Raises :class:`ffkit.train.DivergenceError` on every worker at once if an
    averaged directional derivative is not finite (one worker's NaN would otherwise reach all).
    """

    def __init__(
        self,
        directions: int = 1,
        *,
        seed: int = 0,
        sampler: str = "gaussian",
        stats: CommStats | None = None,
    ) -> None:
        self.directions = _check_directions(directions)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        step_generator(seed, 0)  # validates the seed
        self.seed = seed
        self.sampler = sampler
        self.stats = stats if stats is not None else CommStats()
        self.step = 0
        #: cumulative wall-clock seconds of the local work: drawing tangents, the K JVPs, forming g
        self.seconds = {"sample": 0.0, "jvp": 0.0, "update": 0.0}
        #: the one-off check, at the first call, that all workers agree on K, seed, step, sampler, n
        self.setup_stats = CommStats()
        self._agreed = False

    def __call__(self, model: nn.Module, closure: Callable[[], Tensor]) -> Tensor:
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameters")
        params = {name: p for name, p in named}
        if not self._agreed:
            check_agreement(
                {"directions K": self.directions, "seed": self.seed % 2**62, "step": self.step,
                 "sampler": SAMPLERS.index(self.sampler), "parameters n": sum(p.numel() for p in params.values())},
                device=named[0][1].device, stats=self.setup_stats, what="shared-seed forward gradient",
            )
            self._agreed = True
        t0 = time.perf_counter()
        generator = step_generator(self.seed, self.step, named[0][1].device)
        tangents = [_draw_tangent(params, self.sampler, generator) for _ in range(self.directions)]
        t1 = time.perf_counter()
        value, d = directional_derivatives(model, closure, tangents)
        t2 = time.perf_counter()
        all_reduce_mean(d, self.stats, what=f"shared-seed step {self.step}")
        t3 = time.perf_counter()
        if not bool(torch.isfinite(d).all()):
            raise DivergenceError(f"a directional derivative became {d.tolist()} at step {self.step}")
        with torch.no_grad():
            for name, p in named:
                g = tangents[0][name].mul_(float(d[0]) / self.directions)  # reuse the tangent's memory
                for k in range(1, self.directions):
                    g.add_(tangents[k][name], alpha=float(d[k]) / self.directions)
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
        self.seconds["sample"] += t1 - t0
        self.seconds["jvp"] += t2 - t1
        self.seconds["update"] += time.perf_counter() - t3
        self.step += 1
        return value


class AllReduceGradient:
    """Gradient function for standard data parallelism: backprop on the shard, then the full
    gradient averaged over the workers in one :func:`all_reduce_mean` of n numbers (4n bytes in
    float32), added to each ``.grad`` (set if ``None``), as ``loss.backward()`` would. Returns the
    shard's loss.
    """

    def __init__(self, *, stats: CommStats | None = None) -> None:
        self.stats = stats if stats is not None else CommStats()
        self.step = 0
        #: the one-off check, at the first call, that all workers agree on the step and on n
        self.setup_stats = CommStats()
        self._agreed = False

    def __call__(self, model: nn.Module, closure: Callable[[], Tensor]) -> Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        if not self._agreed:
            check_agreement({"step": self.step, "parameters n": sum(p.numel() for p in params)},
                            device=params[0].device, stats=self.setup_stats, what="all-reduced gradient")
            self._agreed = True
        earlier = [p.grad for p in params]  # only this closure's gradient is averaged
        for p in params:
            p.grad = None
        try:
            loss = closure()
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ValueError("closure() must return a scalar loss tensor")
            loss.backward()
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        finally:
            for p, e in zip(params, earlier):
                p.grad = e
        flat = torch.cat([g.reshape(-1) for g in grads])
        all_reduce_mean(flat, self.stats, what=f"all-reduce step {self.step}")
        if not bool(torch.isfinite(flat).all()):
            raise DivergenceError(f"the averaged gradient is not finite at step {self.step}")
        offset = 0
        with torch.no_grad():
            for p in params:
                g = flat[offset : offset + p.numel()].view_as(p)
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.add_(g)
                offset += p.numel()
        self.step += 1
        return loss.detach()


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


# --------------------------------------------------------------------------- figure


def _size_rows(result: Mapping[str, Any], world_size: int | None) -> tuple[int, list[Mapping[str, Any]]]:
    """The ``sizes`` records of one world size (default: the first one), sorted by n."""
    rows = list(result.get("sizes", []))
    if not rows:
        raise ValueError("the result has no 'sizes' records")
    ws = rows[0]["world_size"] if world_size is None else world_size
    rows = sorted((r for r in rows if r["world_size"] == ws), key=lambda r: r["n"])
    if not rows:
        raise ValueError(f"no size records for world size {ws}")
    return ws, rows


def _plot_schemes(
    result: Mapping[str, Any], key: str, ylabel: str, labels: tuple[str, str], ax: Any, world_size: int | None
) -> tuple[Any, list[int], list[Mapping[str, Any]]]:
    """Draw ``record[scheme][key]`` against n for both schemes, log-log, with markers; return
    the axes, the n values and the records, for the caller to add its reference lines."""
    from ffkit.plot import compare_curves

    ws, rows = _size_rows(result, world_size)
    n = [r["n"] for r in rows]
    ax = compare_curves(
        {
            "backprop": (n, [r["all_reduce"][key] for r in rows]),
            "forward gradient": (n, [r["shared_seed"][key] for r in rows]),
        },
        xlabel="parameters n",
        ylabel=ylabel,
        ax=ax,
        logx=True,
        logy=True,
        title=f"{ws} workers, K = {rows[0]['directions']}",
    )
    for line, label in zip(ax.get_lines(), labels):
        line.set_label(label)
        line.set_marker("o")
    return ax, n, rows


def plot_communication(result: Mapping[str, Any], *, ax: Any = None, world_size: int | None = None) -> Any:
    """Bytes handed to the collectives per step and worker versus the number of parameters n, for
    both schemes, from the ``sizes`` records of ``chapters/results/bench_comm.json`` (see
    :mod:`ffkit.commands.bench_comm`), over the predictions 4n and 4K (wide pale lines). Log-log
    axes; returns the axes."""
    ax, n, rows = _plot_schemes(
        result, "bytes_per_step", "bytes sent per step and worker",
        ("all-reduced gradient (backprop)", "shared seed (forward gradient)"), ax, world_size,
    )
    k = rows[0]["directions"]
    ax.plot(n, [4 * v for v in n], color="0.6", lw=6, alpha=0.35, zorder=0, label="predicted 4n")
    ax.plot(n, [4 * k for _ in n], color="0.6", lw=6, alpha=0.35, zorder=0, label=f"predicted 4K = {4 * k}")
    ax.legend()
    return ax


def plot_step_time(result: Mapping[str, Any], *, ax: Any = None, world_size: int | None = None) -> Any:
    """Median seconds per training step versus n for both schemes (solid), and the time of their
    all-reduce alone (dashed, ``isolated_comm_seconds``), from the same records as
    :func:`plot_communication`. Log-log axes; returns the axes."""
    from ffkit.plot import method_color

    ax, n, rows = _plot_schemes(
        result, "step_seconds", "seconds", ("step, all-reduced gradient", "step, shared seed"), ax, world_size
    )
    for scheme, name, label in (("all_reduce", "backprop", "all-reduce of 4n bytes alone"),
                                ("shared_seed", "forward gradient", "all-reduce of 4K bytes alone")):
        ax.plot(n, [r[scheme]["isolated_comm_seconds"] for r in rows], ls="--", marker=".",
                color=method_color(name), label=label)
    ax.legend()
    return ax
