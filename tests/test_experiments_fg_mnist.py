"""Tests of ffkit.experiments.fg_mnist (chapter 3's comparison) on tiny synthetic data.

No accuracy is asserted: the runs are a few steps long. What is checked is what the experiment
promises: the methods of a row, the same initialisation and batches for both methods, the tail
score, divergence handling, and the shape of the records.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ffkit.experiments import fg_mnist as exp
from ffkit.methods import Backprop, DivergenceError, ForwardGradient


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_make_method() -> None:
    assert isinstance(exp.make_method("backprop", 3), Backprop)
    fg = exp.make_method("forward gradient", 3)
    assert isinstance(fg, ForwardGradient) and fg.seed == 3 and fg.directions == 1 and fg.sampler == "gaussian"
    assert exp.make_method("forward gradient", 3, sampler="rademacher").sampler == "rademacher"
    with pytest.raises(ValueError, match="unknown method"):
        exp.make_method("adam", 0)


def test_tail_loss() -> None:
    assert exp.tail_loss({"loss": [8.0, 6.0, 4.0, 2.0, 1.0, 3.0, 5.0, 7.0]}) == pytest.approx(6.0)  # last 2 of 8
    assert exp.tail_loss({"loss": [4.0, 2.0]}) == 2.0  # at least one step
    assert exp.tail_loss({"loss": [1.0, 2.0, 3.0, 4.0]}, fraction=0.5) == 3.5
    assert exp.tail_loss({"diverged": True}) == math.inf
    assert exp.tail_loss({"loss": [1.0, math.nan]}) == math.inf


def test_test_metrics_are_the_cross_entropy_and_accuracy() -> None:
    x, y = _data(2500)  # more than one chunk of 2000
    model = exp.MODELS["logistic"]()
    with torch.no_grad():
        metrics = exp.test_metrics(model, x, y)
        logits = model(x)
    assert metrics["test_loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert metrics["test_accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))


def test_both_methods_start_from_the_same_model_and_batches() -> None:
    train, test = _data(), _data(32, seed=1)
    runs = {m: exp.train_run("logistic", m, 1e-3, 4, train, test, batch_size=16, eval_every=2, seed=5)
            for m in exp.METHODS}
    for history in runs.values():
        assert not history["diverged"] and history["parameters"] == 7850
        assert history["step"] == [1, 2, 3, 4] and history["eval_step"] == [2, 4]
        assert set(history["eval"]) == {"test_loss", "test_accuracy"}
    # the loss of step 1 is measured before any update: the same model on the same batch
    assert runs["backprop"]["loss"][0] == pytest.approx(runs["forward gradient"]["loss"][0], rel=1e-6)
    again = exp.train_run("logistic", "forward gradient", 1e-3, 4, train, batch_size=16, seed=5)
    assert again["loss"] == runs["forward gradient"]["loss"]  # repeatable


def test_divergence_and_tuning() -> None:
    train = _data()
    wild = exp.train_run("logistic", "forward gradient", 1e38, 20, train, batch_size=16)
    assert wild == {"diverged": True, "parameters": 7850}
    best, scores = exp.tune("logistic", "backprop", [1e38, 0.1, 0.03], 3, train)
    assert best in (0.1, 0.03) and scores[1e38] == math.inf and scores[best] == min(scores.values())
    with pytest.raises(DivergenceError, match="every learning rate"):
        exp.tune("logistic", "backprop", [1e38], 20, train)
    with pytest.raises(ValueError, match="unknown model"):
        exp.train_run("resnet", "backprop", 0.1, 1, train)


def test_run_records_every_model_method_and_seed() -> None:
    train, test = _data(), _data(32, seed=1)
    runs = exp.run(["logistic"], [0], train, test, steps=4, tune_steps=2, batch_size=16, eval_every=2)
    assert set(runs) == {"logistic"} and set(runs["logistic"]) == set(exp.METHODS)
    for method in exp.METHODS:
        record = runs["logistic"][method]["0"]
        assert record["lr"] in exp.LR_GRID[method]
        assert set(record["tuning"]) == {str(lr) for lr in exp.LR_GRID[method]}
        assert len(record["loss"]) == 4 and len(record["eval"]["test_accuracy"]) == 2
    with pytest.raises(ValueError, match="unknown models"):
        exp.run(["resnet"], [0], train, test)
    with pytest.raises(ValueError, match="seed"):
        exp.run(["logistic"], [], train, test)
