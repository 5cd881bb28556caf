"""Bytes communicated per step: shared-seed forward gradient against the all-reduced gradient.

:func:`measure` starts W worker processes on this machine (``torch.distributed``, gloo, 127.0.0.1)
with :func:`ffkit.distributed.launch_local`. Every worker trains copies of an MLP
784 → w → w → 10 on synthetic batches (``--batch`` examples per worker; the global batch is
W × that) with two gradient functions side by side, in alternating rounds inside the same
processes:

* ``shared_seed``: :class:`ffkit.methods.SharedSeedForwardGradient` (K directions, all-reduce
  of K scalars per step);
* ``all_reduce``: :class:`ffkit.methods.AllReduceGradient` (backprop, all-reduce of the n
  gradient entries per step), the baseline of standard data parallelism.

It counts the bytes each worker hands to the collective calls and times every step, then prints
the bytes against the predictions 4K and 4n (float32) and the median step times as ratios to the
baseline. It also checks that a W-worker shared-seed run ends at the parameters of the 1-process
run on the same global batches. The command ``python -m ffkit bench-comm`` writes them, in the ``results`` part of its
envelope, to ``chapters/results/bench_comm.json``.

Records (all times in seconds, medians over the timed steps of every round; bytes per step
and per worker, i.e. the payload one worker passes to ``all_reduce``):

``config``
    the arguments: ``widths``, ``world_sizes``, ``directions`` (K), ``batch_per_worker``,
    ``rounds``, ``steps_per_round``, ``k_sweep`` (list of K), ``k_sweep_width``, ``sampler``
    (tangent distribution), ``dtype``
    ("float32"), ``backend`` ("gloo"), ``threads_per_worker``, ``equivalence_steps``.
``machine``
    ``cpus`` (``os.cpu_count()``), ``torch`` (version), ``platform``.
``sizes``
    one record per (world size, width): ``world_size``, ``width``, ``n`` (parameters),
    ``directions`` (K), and for each scheme, under ``"shared_seed"`` and ``"all_reduce"``:
    ``bytes_per_step`` (measured), ``predicted_bytes`` (4K resp. 4n), ``calls_per_step``,
    ``step_seconds`` (median wall time of one training step: gradient, communication and
    optimizer step), ``comm_seconds`` (median time inside the collective calls during training,
    waiting for the slowest worker included), ``compute_seconds`` (``step_seconds -
    comm_seconds``), ``isolated_comm_seconds`` (median time of the same all-reduce alone, each
    call started right after a barrier: the cost of moving the payload itself). ``shared_seed``
    also has ``phase_seconds``: medians of its local phases per step, ``sample`` (drawing the K
    tangents, K·n random numbers), ``jvp`` (the K forward-mode passes) and ``update`` (forming
    g). Also
    ``bytes_ratio`` (all_reduce / shared_seed bytes) and ``time_ratio`` (shared_seed /
    all_reduce step time).
``k_sweep``
    for the smallest world size and width ``k_sweep_width``: records like ``sizes`` but only
    ``"shared_seed"``, one per K in ``config.k_sweep`` (the bytes grow as 4K, the step time
    roughly as K forward-mode passes).
``equivalence``
    per world size: ``world_size``, ``steps``, ``max_abs_diff_vs_one_process`` (largest
    |θ_W − θ_1| over all parameters after ``steps`` shared-seed SGD steps, float32),
    ``max_abs_diff_between_workers`` (0.0: the replicas stay bit-identical), ``max_abs_param``.
``seconds``
    the benchmark's total wall time.

To plot communication against model size in a notebook::

    from ffkit.experiments import comm
    data = ffkit.results.load("bench_comm")["results"]
    comm.plot_communication(data, world_size=2)

or, by hand, with :func:`ffkit.plot.compare_curves` over ``(n, bytes_per_step)`` of each scheme
from ``result["sizes"]`` (log-log axes).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ffkit.distributed import CommStats, all_reduce_mean, launch_local, shard
from ffkit.methods.shared_seed import AllReduceGradient, SharedSeedForwardGradient
from ffkit.models import count_parameters, mlp

__all__ = ["measure", "plot_communication", "plot_step_time", "reference_run", "worker"]

IN_FEATURES = 784
CLASSES = 10


def _global_batch(step: int, size: int, seed: int = 1234) -> tuple[Tensor, Tensor]:
    """The synthetic global batch of ``step``: the same on every worker (each then takes its shard)."""
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    x = torch.randn(size, IN_FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (size,), generator=g)
    return x, y


class _Trainer:
    """One model, one optimizer, one gradient function; ``step()`` is one timed training step."""

    def __init__(self, width: int, grad_fn: Any, batch: int, world_size: int, rank: int) -> None:
        self.model = mlp([IN_FEATURES, width, width, CLASSES], generator_seed=0)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.grad_fn = grad_fn
        self.batch, self.world_size, self.rank = batch, world_size, rank
        self.t = 0
        self.parts: dict[str, list[float]] = {}  # per-step seconds of the gradient function's phases

    def step(self) -> tuple[float, float, tuple[int, int]]:
        """Returns (step seconds, seconds inside collectives, (bytes, calls) of the collectives)."""
        x, y = _global_batch(self.t, self.batch * self.world_size)
        xb, yb = shard(x, y, self.rank, self.world_size)
        stats: CommStats = self.grad_fn.stats
        before_s, before_b, before_c = stats.seconds, stats.bytes, stats.calls
        parts = dict(getattr(self.grad_fn, "seconds", {}))
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        self.grad_fn.step(self.model, (xb, yb))
        self.opt.step()
        elapsed = time.perf_counter() - start
        self.t += 1
        for key, value in getattr(self.grad_fn, "seconds", {}).items():
            self.parts.setdefault(key, []).append(value - parts[key])
        return elapsed, stats.seconds - before_s, (stats.bytes - before_b, stats.calls - before_c)


def _summary(times: list[float], comms: list[float], counts: list[tuple[int, int]], predicted: int) -> dict[str, Any]:
    bytes_per_step = {b for b, _ in counts}
    calls_per_step = {c for _, c in counts}
    if len(bytes_per_step) != 1 or len(calls_per_step) != 1:
        raise RuntimeError(f"bytes per step varied between steps: {sorted(bytes_per_step)}")
    step_s, comm_s = statistics.median(times), statistics.median(comms)
    return {
        "bytes_per_step": bytes_per_step.pop(),
        "predicted_bytes": predicted,
        "calls_per_step": calls_per_step.pop(),
        "step_seconds": step_s,
        "comm_seconds": comm_s,
        "compute_seconds": step_s - comm_s,
    }


def _measure(trainers: dict[str, _Trainer], rounds: int, steps: int) -> dict[str, tuple[list, list, list]]:
    """Alternate the trainers round by round (one warm-up step each first), collecting per-step data."""
    data: dict[str, tuple[list, list, list]] = {name: ([], [], []) for name in trainers}
    for tr in trainers.values():
        tr.step()  # warm-up: first-call overheads, connection set-up
        tr.parts.clear()
    for _ in range(rounds):
        for name, tr in trainers.items():
            for _ in range(steps):
                t, c, b = tr.step()
                data[name][0].append(t)
                data[name][1].append(c)
                data[name][2].append(b)
    return data


def _time_collective(numel: int, reps: int) -> float:
    """Median seconds of one :func:`all_reduce_mean` of ``numel`` float32 numbers, each call
    started right after a barrier, so that it measures the transfer rather than waiting for a
    slower worker."""
    import torch.distributed as dist

    buffer = torch.ones(numel)
    times = []
    for rep in range(reps + 1):
        dist.barrier()
        start = time.perf_counter()
        all_reduce_mean(buffer)
        if rep:  # the first call is a warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker(config: dict[str, Any]) -> dict[str, Any]:
    """What each process runs (module level so that ``spawn`` can find it)."""
    import torch.distributed as dist

    torch.manual_seed(0)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    batch, k = config["batch"], config["directions"]
    rounds, steps = config["rounds"], config["steps"]
    sizes = []
    for width in config["widths"]:
        trainers = {
            "shared_seed": _Trainer(width, SharedSeedForwardGradient(k, seed=11, sampler=config["sampler"]), batch, world_size, rank),
            "all_reduce": _Trainer(width, AllReduceGradient(), batch, world_size, rank),
        }
        n = count_parameters(trainers["all_reduce"].model)
        data = _measure(trainers, rounds, steps)
        record = {
            "world_size": world_size,
            "width": width,
            "n": n,
            "directions": k,
            "shared_seed": _summary(*data["shared_seed"], predicted=4 * k),
            "all_reduce": _summary(*data["all_reduce"], predicted=4 * n),
        }
        record["shared_seed"]["phase_seconds"] = {
            key: statistics.median(v) for key, v in trainers["shared_seed"].parts.items()
        }
        record["shared_seed"]["isolated_comm_seconds"] = _time_collective(k, rounds * steps)
        record["all_reduce"]["isolated_comm_seconds"] = _time_collective(n, rounds * steps)
        sizes.append(record)
    k_sweep = []
    if config["k_sweep"]:
        width = config["k_sweep_width"]
        for kk in config["k_sweep"]:
            tr = _Trainer(width, SharedSeedForwardGradient(kk, seed=11, sampler=config["sampler"]), batch, world_size, rank)
            data = _measure({"shared_seed": tr}, rounds, steps)
            summary = _summary(*data["shared_seed"], predicted=4 * kk)
            summary["phase_seconds"] = {key: statistics.median(v) for key, v in tr.parts.items()}
            k_sweep.append(
                {
                    "world_size": world_size,
                    "width": width,
                    "n": count_parameters(tr.model),
                    "directions": kk,
                    "shared_seed": summary,
                }
            )
    final = _equivalence_run(config["equivalence_steps"], batch, world_size, rank)
    return {"sizes": sizes, "k_sweep": k_sweep, "final_params": final}


def _equivalence_run(steps: int, batch: int, world_size: int, rank: int) -> Tensor:
    """Shared-seed SGD on a small MLP for ``steps`` steps; the flat parameter vector at the end."""
    tr = _Trainer(32, SharedSeedForwardGradient(4, seed=5), batch, world_size, rank)
    tr.opt = torch.optim.SGD(tr.model.parameters(), lr=0.05)
    for _ in range(steps):
        tr.step()
    return nn.utils.parameters_to_vector(tr.model.parameters()).detach().clone()


def reference_run(steps: int, batch: int, world_size: int) -> Tensor:
    """The same run in this process, as one worker on the same global batches."""
    return _equivalence_run(steps, batch * world_size, 1, 0)


def measure(
    world_sizes: Sequence[int],
    config: dict[str, Any],
    *,
    timeout: float = 600.0,
) -> dict[str, list[dict[str, Any]]]:
    """Launch W workers for each W of ``world_sizes`` (:func:`ffkit.distributed.launch_local`),
    each running :func:`worker` with ``config`` (keys ``batch``, ``directions``, ``widths``,
    ``rounds``, ``steps``, ``k_sweep``, ``k_sweep_width``, ``equivalence_steps``, ``sampler``);
    return the records ``sizes``, ``k_sweep`` and ``equivalence`` described in the module
    docstring. The K sweep runs at the smallest world size only."""
    sizes: list[dict[str, Any]] = []
    k_sweep: list[dict[str, Any]] = []
    equivalence: list[dict[str, Any]] = []
    for w in world_sizes:
        cfg = dict(config, k_sweep=config["k_sweep"] if w == min(world_sizes) else [])
        outcome = launch_local(worker, w, (cfg,), timeout=timeout, collective_timeout=120.0)
        lead = outcome[0]  # rank 0 reports; the bytes are the same on every rank
        for r in lead["sizes"]:
            r["bytes_ratio"] = r["all_reduce"]["bytes_per_step"] / r["shared_seed"]["bytes_per_step"]
            r["time_ratio"] = r["shared_seed"]["step_seconds"] / r["all_reduce"]["step_seconds"]
        sizes.extend(lead["sizes"])
        k_sweep.extend(lead["k_sweep"])
        finals = [res["final_params"] for res in outcome]
        ref = reference_run(cfg["equivalence_steps"], cfg["batch"], w)
        equivalence.append(
            {
                "world_size": w,
                "steps": cfg["equivalence_steps"],
                "max_abs_diff_vs_one_process": float((finals[0] - ref).abs().max()),
                "max_abs_diff_between_workers": max(float((f - finals[0]).abs().max()) for f in finals),
                "max_abs_param": float(ref.abs().max()),
            }
        )
    return {"sizes": sizes, "k_sweep": k_sweep, "equivalence": equivalence}


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
