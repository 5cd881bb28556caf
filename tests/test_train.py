"""Tests of ffkit.train: fit drives any Method; callbacks; divergence; argument checks."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ffkit
from ffkit import models, train
from ffkit.methods import Backprop, DivergenceError, ForwardGradient, LeanForwardGradient, Method, StepResult


def toy_problem(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x, y


class Scripted(Method):
    """A method that updates nothing and reports the losses of a script, counting its calls."""

    name = "test-scripted"
    applies_update = True

    def __init__(self, losses: Sequence[float], lr: float | None = None) -> None:
        self.losses, self.calls = list(losses), 0
        if lr is not None:
            self.lr = lr

    def step(self, model: nn.Module, batch) -> StepResult:
        self.calls += 1
        return StepResult(loss=self.losses[self.calls - 1], details={"call": self.calls})


def _forever() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    return train.cycle(lambda: [(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long))])


def test_fit_with_backprop_learns_a_separable_problem() -> None:
    torch.manual_seed(0)
    x, y = toy_problem()
    model = models.mlp([4, 16, 2], flatten=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    data = train.cycle(lambda: ffkit.data.batches(x, y, 32, generator=torch.Generator().manual_seed(1)))
    modes = []

    def evaluate(m: nn.Module) -> dict[str, float]:
        modes.append((m.training, torch.is_grad_enabled()))
        return {"acc": train.accuracy(m, x, y)}

    history = ffkit.fit(model, Backprop(), data, opt, steps=200, eval_every=50, evaluate=evaluate)
    assert len(history.loss) == 200 and history.step == list(range(1, 201))
    assert history.eval_step == [50, 100, 150, 200]
    assert modes == [(False, False)] * 4 and model.training  # evaluated in eval mode, no grad; restored
    assert history.eval["acc"][-1] > 0.95
    assert sum(history.loss[-20:]) < sum(history.loss[:20]) / 3
    assert all(b >= a for a, b in zip(history.seconds, history.seconds[1:]))
    assert not history.stopped_early and history.details == []
    assert set(history.as_dict()) == {"step", "loss", "seconds", "eval_step", "eval", "stopped_early"}


def test_fit_equals_a_handwritten_loop() -> None:
    x, y = toy_problem(64)
    m1 = models.mlp([4, 8, 2], flatten=False, generator_seed=3)
    m2 = models.mlp([4, 8, 2], flatten=False, generator_seed=3)
    o1 = torch.optim.SGD(m1.parameters(), lr=0.1)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.1)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    history = ffkit.fit(m1, Backprop(), iter(batches), o1, steps=4)
    losses = []
    for xb, yb in batches:
        o2.zero_grad()
        loss = F.cross_entropy(m2(xb), yb)
        loss.backward()
        o2.step()
        losses.append(float(loss.detach()))
    assert history.loss == pytest.approx(losses, rel=1e-6)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2)


def test_divergence_names_the_step_and_the_learning_rate() -> None:
    x, y = toy_problem(64)
    model = models.mlp([4, 8, 2], flatten=False, generator_seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=1e30)
    data = train.cycle(lambda: ffkit.data.batches(x, y, 16))
    with pytest.raises(DivergenceError, match=r"at step \d+ \(learning rate 1e\+30\): .*lower the learning rate"):
        ffkit.fit(model, Backprop(), data, opt, steps=50)


def test_divergence_of_a_method_that_applies_its_own_update_names_its_rate() -> None:
    x, y = toy_problem(64)
    model = models.mlp([4, 8, 2], flatten=False, generator_seed=0)
    with pytest.raises(DivergenceError, match=r"at step \d+ \(learning rate 1e\+06\)"):
        ffkit.fit(model, LeanForwardGradient(lr=1e6, seed=0), train.cycle(lambda: [(x, y)]), steps=50)
    with pytest.raises(DivergenceError, match=r"at step 2 \(learning rate unknown\): the training loss became nan"):
        ffkit.fit(model, Scripted([1.0, math.nan]), _forever(), steps=5)
    with pytest.raises(DivergenceError, match=r"at step 1 \(learning rate 0.5\): the training loss became inf"):
        ffkit.fit(model, Scripted([math.inf], lr=0.5), _forever(), steps=5)


def test_fit_names_the_step_when_the_method_raises_a_divergence() -> None:
    x, y = toy_problem(64)
    model = models.mlp([4, 2], flatten=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    class Exploding(Backprop):
        calls = 0

        def grad(self, m, closure):
            self.calls += 1
            if self.calls == 3:
                raise DivergenceError("the loss is inf")
            return super().grad(m, closure)

    data = train.cycle(lambda: ffkit.data.batches(x, y, 16))
    with pytest.raises(DivergenceError, match=r"at step 3 \(learning rate 0.1\): the loss is inf"):
        ffkit.fit(model, Exploding(), data, opt, steps=10)


def test_methods_that_apply_their_update_train_without_an_optimizer_and_refuse_one() -> None:
    x, y = toy_problem(64)
    model = models.mlp([4, 8, 2], flatten=False, generator_seed=1)
    method = LeanForwardGradient(lr=0.05, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    history = ffkit.fit(model, method, train.cycle(lambda: [(x, y)]), steps=3)
    assert method.t == 3 and len(history.details) == 3 and len(history.details[0]["dots"]) == 1
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    with pytest.raises(ValueError, match="updates the parameters itself"):
        ffkit.fit(model, method, train.cycle(lambda: [(x, y)]), torch.optim.SGD(model.parameters(), lr=0.1), steps=1)
    assert method.t == 3  # refused before the first step


def test_methods_that_fill_grad_need_an_optimizer() -> None:
    x, y = toy_problem(64)
    model = models.mlp([4, 2], flatten=False)
    for method in (Backprop(), ForwardGradient(seed=0)):
        with pytest.raises(ValueError, match="needs an optimizer"):
            ffkit.fit(model, method, train.cycle(lambda: [(x, y)]), steps=1)
    with pytest.raises(ValueError, match="scheduler needs an optimizer"):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ffkit.fit(model, Scripted([1.0]), _forever(), steps=1,
                  scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=1))


def test_fit_rejects_bad_arguments() -> None:
    model = models.mlp([4, 2], flatten=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            ffkit.fit(model, Backprop(), iter([]), opt, steps=bad)
    with pytest.raises(ValueError, match="eval_every"):
        ffkit.fit(model, Backprop(), iter([]), opt, steps=1, eval_every=-1)
    with pytest.raises(ValueError, match="ran out after 0 of 1 steps"):
        ffkit.fit(model, Backprop(), iter([]), opt, steps=1)
    with pytest.raises(TypeError, match="ffkit.methods.Method"):
        ffkit.fit(model, F.cross_entropy, iter([]), opt, steps=1)  # the old API: a loss function
    with pytest.raises(TypeError, match="nn.Module"):
        ffkit.fit(lambda x: x, Backprop(), iter([]), opt, steps=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callbacks must be callable"):
        ffkit.fit(model, Backprop(), iter([]), opt, steps=1, callbacks=[3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="no batches"):
        next(train.cycle(lambda: iter([])))


# --------------------------------------------------------------------------- callbacks


def test_a_callback_that_stops_the_run_really_stops_it() -> None:
    model = models.mlp([4, 2], flatten=False)
    method = Scripted([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25])
    history = ffkit.fit(model, method, _forever(), steps=7, callbacks=[train.stop_below(2.5)])
    assert history.loss == [5.0, 4.0, 3.0, 2.0] and history.stopped_early and method.calls == 4
    # with a window, the mean of the last two losses must be below: (3 + 2)/2 = 2.5 is not, (2 + 1)/2 is
    method = Scripted([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25])
    history = ffkit.fit(model, method, _forever(), steps=7, callbacks=[train.stop_below(2.5, window=2)])
    assert method.calls == 5 and history.step == [1, 2, 3, 4, 5] and history.stopped_early
    # a stop at the last step is not an early stop
    history = ffkit.fit(model, Scripted([3.0, 1.0]), _forever(), steps=2, callbacks=[train.stop_below(2.0)])
    assert history.step == [1, 2] and not history.stopped_early
    for bad in ({"loss": math.nan}, {"loss": 1.0, "window": 0}, {"loss": 1.0, "window": 1.5}):
        with pytest.raises(ValueError):
            train.stop_below(**bad)


def test_every_callback_sees_every_step_and_the_run() -> None:
    model = models.mlp([4, 2], flatten=False)
    seen: list[tuple[int, float, object]] = []

    def record(info: train.StepInfo) -> None:
        assert info.model is model and info.history.step[-1] == info.step
        seen.append((info.step, info.result.loss, info.result.details["call"]))

    # the first callback stops the run at step 2; the second still sees step 2
    history = ffkit.fit(model, Scripted([3.0, 2.0, 1.0]), _forever(), steps=3,
                        callbacks=[lambda info: info.step == 2, record])
    assert seen == [(1, 3.0, 1), (2, 2.0, 2)] and history.stopped_early
    assert history.details == [{"call": 1}, {"call": 2}]


def test_a_run_stopped_at_an_evaluation_step_is_evaluated_once() -> None:
    model = models.mlp([4, 2], flatten=False)
    calls = []
    history = ffkit.fit(model, Scripted([1.0] * 10), _forever(), steps=10, eval_every=2,
                        evaluate=lambda m: calls.append(1) or {"n": float(len(calls))},
                        callbacks=[lambda info: info.step == 4])
    assert history.eval_step == [2, 4] and history.eval["n"] == [1.0, 2.0]
    history = ffkit.fit(model, Scripted([1.0] * 10), _forever(), steps=5, eval_every=2,
                        evaluate=lambda m: {"x": 0.0}, callbacks=[lambda info: info.step == 3])
    assert history.eval_step == [2, 3]  # and a run stopped between evaluations is evaluated where it stopped
    history = ffkit.fit(model, Scripted([1.0] * 10), _forever(), steps=4, eval_every=2, evaluate=lambda m: {"x": 0.0})
    assert history.eval_step == [2, 4]


def test_log_every_prints_the_step_and_loss() -> None:
    model = models.mlp([4, 2], flatten=False)
    stream = io.StringIO()
    ffkit.fit(model, Scripted([1.0, 0.5, 0.25, 0.125, 0.0625]), _forever(), steps=5,
              callbacks=[train.log_every(2, stream=stream)])
    lines = stream.getvalue().splitlines()
    assert [line.split()[:4] for line in lines] == [["step", "2", "loss", "0.5000"], ["step", "4", "loss", "0.1250"]]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="every"):
            train.log_every(bad)


def test_progress_draws_a_bar_on_the_given_stream() -> None:
    model = models.mlp([4, 2], flatten=False)
    stream = io.StringIO()
    history = ffkit.fit(model, Scripted([1.0] * 12), _forever(), steps=12, callbacks=[train.progress(12, stream=stream)])
    assert len(history.loss) == 12
    text = stream.getvalue()
    assert "0/12" in text  # the bar knows the total...
    assert text.endswith("\r") and text.rstrip("\r").endswith(" ")  # ...and was closed and cleared at step 12


def test_accuracy_counts_argmax_hits() -> None:
    model = torch.nn.Identity()
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert math.isclose(train.accuracy(model, scores, torch.tensor([0, 1, 1]), batch_size=2), 2 / 3)
    with pytest.raises(ValueError, match="equally many"):
        train.accuracy(model, scores, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="equally many"):
        train.accuracy(model, scores[:0], torch.tensor([], dtype=torch.long))
