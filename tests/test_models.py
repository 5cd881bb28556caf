"""Tests of ffkit.models: the shapes, parameter counts and seeded initialisation of the book's models."""

from __future__ import annotations

import pytest
import torch

from ffkit import models


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
