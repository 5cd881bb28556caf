"""Tests of ffkit.bench: the interleaved timer's bookkeeping (on a fake clock) and the ratio table.

No real time is measured: ``time.perf_counter`` inside ffkit.bench is replaced by a clock that
advances only when a variant runs, by that variant's fixed cost, so every sample is known exactly.
"""

from __future__ import annotations

import math
import statistics

import pytest

from ffkit import bench
from ffkit.bench import Timing, interleaved, ratio_table


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", fake)
    return fake


def _variants(clock: FakeClock, costs: dict[str, float], log: list[str]):
    def make(name: str, cost: float):
        def run() -> None:
            log.append(name)
            clock.now += cost

        return run

    return {name: make(name, cost) for name, cost in costs.items()}


def test_every_variant_runs_warmup_plus_rounds_times_in_rotating_order(clock: FakeClock) -> None:
    log: list[str] = []
    costs = {"a": 1e-3, "b": 2e-3, "c": 4e-3}
    timings = interleaved(_variants(clock, costs, log), rounds=4, warmup=2)
    # the warm-up calls each variant `warmup` times in a row, then the timed rounds follow
    warm, rounds = log[:6], log[6:]
    assert warm == ["a", "a", "b", "b", "c", "c"]
    # round r starts at variant r mod 3: abc, bca, cab, abc
    assert rounds == list("abc" "bca" "cab" "abc")
    assert {name: log.count(name) for name in costs} == {name: 2 + 4 for name in costs}
    for name, cost in costs.items():
        assert timings[name].samples == pytest.approx((cost,) * 4)


def test_min_seconds_repeats_a_fast_variant_back_to_back(clock: FakeClock) -> None:
    log: list[str] = []
    costs = {"fast": 1e-3, "slow": 0.05}
    timings = interleaved(_variants(clock, costs, log), rounds=3, warmup=1, min_seconds=0.02)
    # the variant is timed once after the warm-up to size its repetitions: ceil(0.02 / 0.001) = 20
    # calls of "fast" per sample, and one of "slow", which already lasts longer than 0.02 s
    assert log.count("fast") == 1 + 1 + 3 * 20 and log.count("slow") == 1 + 1 + 3 * 1
    assert timings["fast"].samples == pytest.approx((1e-3,) * 3)  # seconds per call
    assert timings["slow"].samples == pytest.approx((0.05,) * 3)


def test_interleaved_rejects_bad_arguments(clock: FakeClock) -> None:
    ok = {"a": lambda: None}
    with pytest.raises(ValueError, match="at least one variant"):
        interleaved({}, rounds=1)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="rounds"):
            interleaved(ok, rounds=bad)
    for bad in (-1, 0.5, False):
        with pytest.raises(ValueError, match="warmup"):
            interleaved(ok, rounds=1, warmup=bad)
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="min_seconds"):
            interleaved(ok, rounds=1, min_seconds=bad)


def test_timing_statistics() -> None:
    t = Timing((0.004, 0.001, 0.003, 0.002, 0.010))
    assert t.median == 0.003 and t.minimum == 0.001
    lo, hi = t.quartiles
    q = statistics.quantiles(t.samples, n=4, method="inclusive")
    assert (lo, hi) == (q[0], q[2]) == (0.002, 0.004)
    assert t.as_dict() == {"median": 0.003, "min": 0.001, "q1": 0.002, "q3": 0.004, "samples": list(t.samples)}
    single = Timing((0.5,))
    assert single.quartiles == (0.5, 0.5)


def test_ratio_table_lists_each_variant_against_the_baseline() -> None:
    timings = {"backprop": Timing((0.002, 0.004, 0.003)), "forward gradient": Timing((0.006, 0.009, 0.012))}
    lines = ratio_table(timings, "backprop").splitlines()
    assert lines[0].split()[:2] == ["variant", "ms"] and lines[0].rstrip().endswith("x backprop")
    assert len(lines) == 3
    base, fg = lines[1].split(), lines[2].split()
    assert base[0] == "backprop" and base[1] == "3.00" and base[-1] == "1.00"
    assert fg[:2] == ["forward", "gradient"] and fg[2] == "9.00" and fg[-1] == "3.00"  # 9 ms / 3 ms
    assert fg[3] == "7.50-10.50"  # the interquartile range of its samples, in ms
    by_min = ratio_table(timings, "backprop", statistic="minimum").splitlines()
    assert by_min[2].split()[2] == "6.00" and by_min[2].split()[-1] == "3.00"  # 6 ms / 2 ms
    with pytest.raises(ValueError, match="baseline 'adam'"):
        ratio_table(timings, "adam")
    with pytest.raises(ValueError, match="statistic"):
        ratio_table(timings, "backprop", statistic="mean")
