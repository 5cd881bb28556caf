"""Timelines of a training step: when each layer's work can start, on one worker or a pipeline.

Given per-layer durations (measured by :func:`ffkit.profile.layer_timings`), :func:`schedule`
places every piece of one step (forward, backward, update; or forward-with-tangent and update)
at the earliest time its inputs are ready and its worker is free. Backprop's backward pass makes
layer l wait for every layer above it (backward locking); a forward-gradient step needs no
backward pass, but every layer still waits for the global loss, known only after the whole
forward sweep, before it can update (update locking). :func:`ffkit.plot.timeline` draws the
result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["Task", "schedule"]


class Task(NamedTuple):
    """One bar of a timeline: ``row`` (layer or worker), ``start`` and ``duration`` (seconds), ``kind``."""

    row: int
    start: float
    duration: float
    kind: str


def schedule(
    method: str,
    forward: Sequence[float],
    backward: Sequence[float] | None,
    update: Sequence[float],
    *,
    stages: int | None = None,
    workers: int = 1,
    microbatches: int = 1,
) -> list[Task]:
    """Start times of every piece of one training step, from per-layer durations.

    The L layers are cut into ``stages`` contiguous groups of (nearly) equal count (default: one
    per layer), stage s runs on worker ⌊s·workers/stages⌋, and the batch is split into
    ``microbatches`` that flow through the stages (a pipeline; the durations given must be those
    of one micro-batch). A piece starts as soon as what it needs is done and its worker is free,
    in this order:

    * ``method="backprop"``: forward (s, m) after forward (s−1, m); then, once a stage has
      run all its forwards, backward (s, m) after backward (s+1, m), micro-batch by micro-batch
      (GPipe's schedule); stage s's update after its last backward. Each stage waits for the
      one above it: update locking.
    * ``method="forward gradient"``: forward-with-tangent (s, m) after (s−1, m); ∇f·v is known
      when the last stage has finished the last micro-batch (its sum over micro-batches is one
      scalar to broadcast, whose cost is ignored here), and every stage's update can start then.

    Returns the bars as :class:`Task` tuples with ``row`` = stage.
    """
    if method not in ("backprop", "forward gradient"):
        raise ValueError(f"method must be 'backprop' or 'forward gradient', got {method!r}")
    n = len(forward)
    if n == 0 or len(update) != n or (method == "backprop" and (backward is None or len(backward) != n)):
        raise ValueError("forward, backward and update need one duration per layer (and at least one layer)")
    stages = n if stages is None else stages
    if not 1 <= stages <= n:
        raise ValueError(f"stages must be between 1 and the number of layers {n}, got {stages}")
    if not 1 <= workers <= stages or microbatches < 1:
        raise ValueError(f"need 1 <= workers <= stages and microbatches >= 1, got {workers}, {microbatches}")
    groups = np.array_split(np.arange(n), stages)
    f = [float(sum(forward[i] for i in g)) for g in groups]
    u = [float(sum(update[i] for i in g)) for g in groups]
    b = [float(sum(backward[i] for i in g)) for g in groups] if backward is not None else None
    free = [0.0] * workers
    tasks: list[Task] = []

    def run(stage: int, ready: float, duration: float, kind: str) -> float:
        w = stage * workers // stages
        start = max(ready, free[w])
        free[w] = start + duration
        tasks.append(Task(stage, start, duration, kind))
        return start + duration

    kind = "forward" if method == "backprop" else "forward+tangent"
    f_end = [[0.0] * microbatches for _ in range(stages)]
    for m in range(microbatches):
        for s in range(stages):
            f_end[s][m] = run(s, f_end[s - 1][m] if s else 0.0, f[s], kind)
    if method == "backprop":
        assert b is not None
        b_end = [[0.0] * microbatches for _ in range(stages)]
        for m in range(microbatches):
            for s in reversed(range(stages)):
                ready = max(f_end[s][m], b_end[s + 1][m] if s + 1 < stages else 0.0)
                b_end[s][m] = run(s, ready, b[s], "backward")
                if m == microbatches - 1:
                    run(s, b_end[s][m], u[s], "update")
    else:
        known = f_end[stages - 1][microbatches - 1]
        for s in range(stages):
            run(s, known, u[s], "update")
    return tasks
