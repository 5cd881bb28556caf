"""One benchmark timer: variants timed side by side, in interleaved rounds, in one process.

A benchmark compares variants of the same work (backprop against a forward-gradient step, say).
Timing them one after the other lets a slow moment of the machine (another process, a frequency
change) land on one of them only. :func:`interleaved` instead runs rounds in which every variant
runs once, in turn, so disturbances hit all of them alike, and reports per variant the median
and the minimum over rounds (the minimum estimates the cost of the work itself on a machine that
is shared with other work; the median what a user sees). :func:`ratio_table` prints the ratios
against a baseline variant.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["Timing", "interleaved", "ratio_table"]


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one variant, one sample per round."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        """The median over rounds."""
        return statistics.median(self.samples)

    @property
    def minimum(self) -> float:
        """The fastest round."""
        return min(self.samples)

    @property
    def quartiles(self) -> tuple[float, float]:
        """The lower and upper quartile over rounds (equal to the median for fewer than 2 rounds)."""
        if len(self.samples) < 2:
            return self.median, self.median
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[0], q[2]

    def as_dict(self) -> dict[str, object]:
        """A JSON-serialisable summary with the samples."""
        lo, hi = self.quartiles
        return {"median": self.median, "min": self.minimum, "q1": lo, "q3": hi, "samples": list(self.samples)}


def _run(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def interleaved(
    variants: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    warmup: int = 2,
    min_seconds: float = 0.0,
) -> dict[str, Timing]:
    """Time every variant once per round, for ``rounds`` rounds, after ``warmup`` untimed calls each.

    A variant faster than ``min_seconds`` is timed over enough back-to-back calls to last about
    that long (so that the timer's and the scheduler's resolution do not dominate); the sample
    is the time per call. Within a round the variants run in an order that rotates from round to
    round, so none always runs first (after a warm cache) or last.
    """
    if not variants:
        raise ValueError("interleaved needs at least one variant")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if not math.isfinite(min_seconds) or min_seconds < 0:
        raise ValueError(f"min_seconds must be a finite number >= 0, got {min_seconds!r}")
    names = list(variants)
    number: dict[str, int] = {}
    for name in names:
        fn = variants[name]
        for _ in range(warmup):
            fn()
        number[name] = max(1, math.ceil(min_seconds / max(_run(fn, 1), 1e-9))) if min_seconds else 1
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_run(variants[name], number[name]))
    return {name: Timing(tuple(samples[name])) for name in names}


def ratio_table(
    timings: Mapping[str, Timing],
    baseline: str,
    *,
    statistic: str = "median",
) -> str:
    """A text table: each variant's time in ms and its ratio to ``baseline`` (by ``statistic``,
    ``"median"`` or ``"minimum"``), plus the interquartile range of the ratio's numerator in ms."""
    if baseline not in timings:
        raise ValueError(f"baseline {baseline!r} is not among the variants {list(timings)}")
    if statistic not in ("median", "minimum"):
        raise ValueError(f"statistic must be 'median' or 'minimum', got {statistic!r}")
    base = getattr(timings[baseline], statistic)
    width = max(len(n) for n in timings)
    lines = [f"{'variant':<{width}}  {'ms':>8}  {'IQR ms':>13}  {'x ' + baseline:>{max(8, len(baseline) + 2)}}"]
    for name, t in timings.items():
        lo, hi = t.quartiles
        value = getattr(t, statistic)
        lines.append(
            f"{name:<{width}}  {1e3 * value:>8.2f}  {1e3 * lo:>6.2f}-{1e3 * hi:<6.2f}  "
            f"{value / base:>{max(8, len(baseline) + 2)}.2f}"
        )
    return "\n".join(lines)
