"""The training loop and the models it trains."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ffkit
from ffkit import models, train


def toy_problem(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x, y


def test_fit_with_backprop_learns_a_separable_problem() -> None:
    torch.manual_seed(0)
    x, y = toy_problem()
    model = models.mlp([4, 16, 2], flatten=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    data = train.cycle(lambda: ffkit.data.batches(x, y, 32, generator=torch.Generator().manual_seed(1)))
    history = ffkit.fit(model, F.cross_entropy, data, opt, steps=200, eval_every=50,
                        evaluate=lambda m: {"acc": train.accuracy(m, x, y)})
    assert len(history.loss) == 200 and history.step[-1] == 200
    assert history.eval_step == [50, 100, 150, 200]
    assert history.eval["acc"][-1] > 0.95
    assert sum(history.loss[-20:]) < sum(history.loss[:20]) / 3
    assert all(b >= a for a, b in zip(history.seconds, history.seconds[1:]))
    assert set(history.as_dict()) == {"step", "loss", "seconds", "eval_step", "eval"}


def test_fit_equals_a_handwritten_loop() -> None:
    x, y = toy_problem(64)
    m1 = models.mlp([4, 8, 2], flatten=False, generator_seed=3)
    m2 = models.mlp([4, 8, 2], flatten=False, generator_seed=3)
    o1 = torch.optim.SGD(m1.parameters(), lr=0.1)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.1)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    ffkit.fit(m1, F.cross_entropy, iter(batches), o1, steps=4)
    for xb, yb in batches:
        o2.zero_grad()
        F.cross_entropy(m2(xb), yb).backward()
        o2.step()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2)


def test_fit_stops_on_divergence() -> None:
    x, y = toy_problem(64)
    model = models.mlp([4, 8, 2], flatten=False)
    opt = torch.optim.SGD(model.parameters(), lr=1e30)
    data = train.cycle(lambda: ffkit.data.batches(x, y, 16))
    with pytest.raises(train.DivergenceError, match="step"):
        ffkit.fit(model, F.cross_entropy, data, opt, steps=50)


def test_fit_rejects_bad_arguments() -> None:
    model = models.mlp([4, 2], flatten=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="steps"):
        ffkit.fit(model, F.cross_entropy, iter([]), opt, steps=0)
    with pytest.raises(ValueError, match="ran out"):
        ffkit.fit(model, F.cross_entropy, iter([]), opt, steps=1)
    with pytest.raises(ValueError, match="no batches"):
        next(train.cycle(lambda: iter([])))


def test_models_shapes_and_parameter_counts() -> None:
    net = models.mlp([784, 1024, 1024, 10])
    assert models.count_parameters(net) == 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    cnn = models.small_cnn()
    assert cnn(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert models.count_parameters(models.logistic_regression()) == 7850
    a = models.mlp([5, 3], generator_seed=1)
    b = models.mlp([5, 3], generator_seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError):
        models.mlp([5])


def test_accuracy_counts_argmax_hits() -> None:
    model = torch.nn.Identity()
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert math.isclose(train.accuracy(model, scores, torch.tensor([0, 1, 1]), batch_size=2), 2 / 3)


def test_fit_names_the_step_when_the_gradient_function_diverges() -> None:
    x, y = toy_problem(64)
    model = models.mlp([4, 2], flatten=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []

    def exploding(m, closure):
        calls.append(1)
        if len(calls) == 3:
            raise train.DivergenceError("the loss is inf")
        return train.backprop_grad(m, closure)

    data = train.cycle(lambda: ffkit.data.batches(x, y, 16))
    with pytest.raises(train.DivergenceError, match="at step 3: the loss is inf"):
        ffkit.fit(model, F.cross_entropy, data, opt, steps=10, grad_fn=exploding)
