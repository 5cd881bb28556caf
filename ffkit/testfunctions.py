"""Two-dimensional optimisation test functions, f: R² → R, for trajectory plots.

Each takes a tensor whose last dimension holds the two coordinates (x, y) and returns f over the
other dimensions, so the same function evaluates one point θ (shape ``(2,)``, a scalar
result, differentiable in forward and reverse mode) or a whole grid for a contour plot
(shape ``(H, W, 2)``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["BEALE_MINIMUM", "ROSENBROCK_MINIMUM", "beale", "grid", "rosenbrock"]

#: Where each function attains its minimum value 0.
ROSENBROCK_MINIMUM: tuple[float, float] = (1.0, 1.0)
BEALE_MINIMUM: tuple[float, float] = (3.0, 0.5)


def _xy(theta: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(theta, Tensor) or theta.shape[-1:] != (2,):
        raise ValueError(f"expected a tensor whose last dimension has size 2, got {getattr(theta, 'shape', theta)!r}")
    return theta[..., 0], theta[..., 1]


def rosenbrock(theta: Tensor, a: float = 1.0, b: float = 100.0) -> Tensor:
    """f(x, y) = (a − x)² + b (y − x²)²: a curved narrow valley, minimum 0 at (a, a²)."""
    x, y = _xy(theta)
    return (a - x) ** 2 + b * (y - x**2) ** 2


def beale(theta: Tensor) -> Tensor:
    """f(x, y) = (1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)², minimum 0 at (3, 0.5)."""
    x, y = _xy(theta)
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def grid(
    xlim: tuple[float, float], ylim: tuple[float, float], points: int = 200
) -> tuple[np.ndarray, np.ndarray, Tensor]:
    """Mesh ``X, Y`` (NumPy, for ``plt.contour``) and the stacked float64 tensor ``(points, points, 2)``."""
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    xs = torch.linspace(*xlim, points, dtype=torch.float64)
    ys = torch.linspace(*ylim, points, dtype=torch.float64)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    return X.numpy(), Y.numpy(), torch.stack([X, Y], dim=-1)
