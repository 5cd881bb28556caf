"""The small models the book trains: logistic regression, MLPs and a small CNN.

All take flattened or image-shaped MNIST-like input; ``in_features`` defaults to 28 x 28.
Ren et al.'s LocalMixer lives in :mod:`ffkit.local_mixer` and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def mlp(
    sizes: Sequence[int],
    *,
    activation: type[nn.Module] = nn.ReLU,
    flatten: bool = True,
    generator_seed: int | None = None,
) -> nn.Sequential:
    """A multilayer perceptron ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    ``activation`` follows every hidden layer (not the last). With ``flatten=True`` the input
    is flattened first, so image batches ``(N, 1, 28, 28)`` go in directly. ``generator_seed``
    initialises the weights from its own seed instead of torch's global generator.
    """
    sizes = list(sizes)
    if len(sizes) < 2 or any(int(s) != s or s < 1 for s in sizes):
        raise ValueError(f"mlp needs at least two positive integer sizes, got {sizes}")
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    model = nn.Sequential(*layers)
    if generator_seed is not None:
        reinitialize(model, generator_seed)
    return model


def logistic_regression(in_features: int = 784, classes: int = 10) -> nn.Sequential:
    """Multinomial logistic regression: one linear layer on the flattened input."""
    return mlp([in_features, classes])


def small_cnn(channels: int = 1, classes: int = 10, width: int = 16, image_size: int = 28) -> nn.Sequential:
    """Two 3x3 convolutions of ``width`` and ``2 * width`` channels, each followed by ReLU and 2x2
    max-pooling, then a linear classifier. About 20k parameters at the defaults."""
    if width < 1 or channels < 1 or classes < 2 or image_size < 4:
        raise ValueError("small_cnn needs width >= 1, channels >= 1, classes >= 2, image_size >= 4")
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * side * side, classes),
    )


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Re-draw every parameter of ``model`` with PyTorch's default initialisation, from ``seed``.

    Two models built with the same architecture and seed are identical, whatever else used the
    global generator in between.
    """
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    finally:
        torch.random.set_rng_state(state)
    return model


def count_parameters(model: nn.Module) -> int:
    """The number of trainable scalars, n in the book's notation."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


from ffkit.local_mixer import LocalMixer  # noqa: E402  (re-export; the module needs nothing from here)
