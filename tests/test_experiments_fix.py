"""Held-out evaluation schedule of the MNIST experiment, and the per-layer timing profile's
statistics (medians, quartiles, within-repeat sweep ratios)."""

from __future__ import annotations

import math

import pytest
import torch

from ffkit.experiments import fg_mnist, parallel


def test_eval_schedule_is_dense_early_and_ends_at_the_last_step() -> None:
    steps = fg_mnist.eval_schedule(1000, 100)
    assert steps[:20] == list(range(1, 21))
    assert steps == sorted(set(steps))
    assert steps[-1] == 1000
    assert all(s % 5 == 0 for s in steps if 20 < s <= 100)
    assert all(s % 50 == 0 for s in steps if s > 100)
    assert fg_mnist.eval_schedule(7) == list(range(1, 8))
    with pytest.raises(ValueError):
        fg_mnist.eval_schedule(0)


def _toy_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_train_run_records_held_out_metrics_at_the_schedule() -> None:
    train, test = _toy_data(256, 0), _toy_data(50, 1)
    schedule = fg_mnist.eval_schedule(25)
    h = fg_mnist.train_run("logistic", "backprop", 0.1, 25, train, test, batch_size=32, eval_size=20, seed=0,
                           eval_steps=schedule)
    assert h["eval_step"] == fg_mnist.eval_schedule(25)
    assert len(h["eval"]["test_loss"]) == len(h["eval_step"]) == len(h["eval"]["test_accuracy"])
    assert set(h["final"]) == {"test_loss", "test_accuracy"}
    assert len(h["loss"]) == 25 and not h["diverged"]
    # the same seed gives the same run, evaluations included
    again = fg_mnist.train_run("logistic", "backprop", 0.1, 25, train, test, batch_size=32, eval_size=20, seed=0,
                               eval_steps=schedule)
    assert again["eval"] == h["eval"] and again["loss"] == h["loss"]


def test_train_run_without_test_set_records_no_evaluations() -> None:
    h = fg_mnist.train_run("logistic", "forward gradient", 1e-3, 5, _toy_data(64, 2), batch_size=16, seed=1)
    assert "final" not in h and "eval_step" in h and h["eval_step"] == []


def test_layer_profile_reports_medians_quartiles_and_sweep_ratios() -> None:
    depth = 3
    out = parallel.layer_profile(32, depth, 16, 2, 3)
    for key in ("full_batch", "microbatch"):
        for sampler in ("rademacher", "gaussian"):
            medians = out["samplers"][sampler][key]
            quartiles = out["samplers"][sampler][key + "_quartiles"]
            assert set(medians) == {"forward", "backward", "update", "forward+tangent", "update (regenerated)"}
            for piece, values in medians.items():
                assert len(values) == depth
                for (q1, med, q3), m in zip(quartiles[piece], values):
                    assert q1 <= med <= q3 and med == m and q1 > 0
            ratio = out["sweep_ratio"][key][sampler]
            assert len(ratio["samples"]) == 3 and all(r > 0 for r in ratio["samples"])
            q1, med, q3 = ratio["quartiles"]
            assert q1 <= med <= q3
    assert out["full_batch"] == out["samplers"]["rademacher"]["full_batch"] == out["full_batch_median"]
    assert set(out["whole_step_seconds"]) == {"inference", "backprop", "lean forward gradient"}
