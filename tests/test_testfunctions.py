"""Tests of ffkit.testfunctions: minima, gradients against closed forms, shapes."""

from __future__ import annotations

import pytest
import torch

from ffkit.testfunctions import BEALE_MINIMUM, ROSENBROCK_MINIMUM, beale, grid, rosenbrock


@pytest.mark.parametrize(("f", "minimum"), [(rosenbrock, ROSENBROCK_MINIMUM), (beale, BEALE_MINIMUM)])
def test_minimum_is_a_zero_with_zero_gradient(f, minimum) -> None:
    theta = torch.tensor(minimum, dtype=torch.float64, requires_grad=True)
    value = f(theta)
    (grad,) = torch.autograd.grad(value, theta)
    assert float(value.detach()) == 0.0
    assert float(grad.abs().max()) == 0.0
    # and it is a strict minimum among nearby points
    g = torch.Generator().manual_seed(0)
    nearby = theta.detach() + 1e-3 * torch.randn(100, 2, generator=g, dtype=torch.float64)
    assert bool((f(nearby) > 0).all())


def test_rosenbrock_gradient_closed_form() -> None:
    theta = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(rosenbrock(theta), theta)
    x, y = -1.2, 1.0
    expected = [-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)]
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64))


def test_grid_shapes_and_bad_input() -> None:
    X, Y, pts = grid((-2, 2), (-1, 3), 50)
    assert X.shape == Y.shape == (50, 50) and pts.shape == (50, 50, 2)
    assert beale(pts).shape == (50, 50)
    torch.testing.assert_close(rosenbrock(pts)[3, 7], rosenbrock(torch.tensor([X[3, 7], Y[3, 7]])))
    with pytest.raises(ValueError, match="last dimension"):
        rosenbrock(torch.zeros(3))
    with pytest.raises(ValueError, match="points"):
        grid((0, 1), (0, 1), 1)
