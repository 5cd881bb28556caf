"""Tests of ffkit.pipeline: schedules of a training step against their closed forms."""

from __future__ import annotations

import pytest

from ffkit.pipeline import Task, schedule


def _check_no_overlap(tasks, workers_of) -> None:
    by_worker: dict[int, list[tuple[float, float]]] = {}
    for t in tasks:
        by_worker.setdefault(workers_of(t.row), []).append((t.start, t.start + t.duration))
    for spans in by_worker.values():
        spans.sort()
        assert all(a[1] <= b[0] + 1e-12 for a, b in zip(spans, spans[1:]))


def test_schedule_on_one_worker_is_the_sequential_step() -> None:
    f, b, u = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.1, 0.1, 0.1]
    bp = schedule("backprop", f, b, u)
    assert max(t.start + t.duration for t in bp) == pytest.approx(sum(f) + sum(b) + sum(u))
    updates = {t.row: t.start for t in bp if t.kind == "update"}
    # update locking: layer l is updated only after the backward sweep has come down from the top
    assert updates[2] < updates[1] < updates[0]
    assert updates[0] == pytest.approx(sum(f) + sum(b) + u[2] + u[1])
    fg = schedule("forward gradient", [2.0, 3.0, 4.0], None, u)
    assert max(t.start + t.duration for t in fg) == pytest.approx(9.0 + 0.3)
    _check_no_overlap(bp, lambda row: 0)
    _check_no_overlap(fg, lambda row: 0)


def test_pipeline_schedules_follow_the_closed_form() -> None:
    stages, micro, tf, tb = 4, 3, 1.0, 2.0
    f, b, u = [tf] * stages, [tb] * stages, [0.0] * stages
    bp = schedule("backprop", f, b, u, workers=stages, microbatches=micro)
    _check_no_overlap(bp, lambda row: row)
    # GPipe: forwards fill the pipe in (M + S - 1) slots, then the backwards drain it likewise
    assert max(t.start + t.duration for t in bp) == pytest.approx((micro + stages - 1) * (tf + tb))
    fg = schedule("forward gradient", f, None, u, workers=stages, microbatches=micro)
    updates = [t.start for t in fg if t.kind == "update"]
    assert updates == [pytest.approx((micro + stages - 1) * tf)] * stages
    with pytest.raises(ValueError, match="method"):
        schedule("sign step", f, b, u)
    with pytest.raises(ValueError, match="one duration per layer"):
        schedule("backprop", f, b[:2], u)
    with pytest.raises(ValueError, match="workers"):
        schedule("backprop", f, b, u, workers=5)


def test_schedule_returns_one_task_per_piece_and_stages_group_layers() -> None:
    f, b, u = [1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]
    bp = schedule("backprop", f, b, u)
    assert all(isinstance(t, Task) for t in bp)
    assert sorted((t.kind, t.row) for t in bp) == sorted((k, r) for k in ("forward", "backward", "update") for r in range(4))
    # two stages of two layers each: a stage's duration is the sum over its layers
    two = schedule("forward gradient", f, None, u, stages=2)
    forward = {t.row: t.duration for t in two if t.kind == "forward+tangent"}
    assert forward == {0: pytest.approx(3.0), 1: pytest.approx(7.0)}
    with pytest.raises(ValueError, match="stages"):
        schedule("backprop", f, b, u, stages=5)
    with pytest.raises(ValueError, match="stages"):
        schedule("backprop", f, b, u, stages=0)
    with pytest.raises(ValueError, match="microbatches"):
        schedule("backprop", f, b, u, microbatches=0)
    with pytest.raises(ValueError, match="one duration per layer"):
        schedule("backprop", f, None, u)
    with pytest.raises(ValueError, match="one duration per layer"):
        schedule("forward gradient", [], None, [])
