"""Linear probes: how much of the label a layer's representation makes linearly readable.

A probe of a layer is a multinomial logistic regression (a linear softmax classifier) trained on
that layer's activities with the network frozen. Its test error measures what the layer has
*extracted*: a layer whose probe error is lower than that of its input made the classes more
linearly separable, whatever objective trained it. Probing every layer of a Forward-Forward
network and of the same network trained by backprop compares the two as feature extractors on
equal terms (:func:`probe_layers`).

The probe minimises the mean cross-entropy L(W, b) = −mean_i log softmax(W f_i + b)_{y_i} with
Adam, minibatched, for a fixed number of epochs (no early stopping on the test set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ffkit.data import batches
from ffkit.methods.backprop import Backprop
from ffkit.train import fit

__all__ = ["ProbeResult", "linear_probe", "probe_layers"]


@dataclass(frozen=True)
class ProbeResult:
    """The errors (fractions) of a linear probe on the data it was trained on and on test data."""

    train_error: float
    test_error: float


def linear_probe(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    classes: int | None = None,
    epochs: int = 10,
    batch_size: int = 500,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> ProbeResult:
    """Train a linear softmax classifier on the features ``train = (F, y)`` (N × d, N labels) and
    report its error on them and on ``test``.

    The data are shuffled each epoch with a generator seeded by ``seed``; the weights start at
    zero, so a probe is a deterministic function of its inputs and settings.
    """
    (f, y), (ft, yt) = train, test
    if f.dim() != 2 or ft.dim() != 2 or f.shape[1] != ft.shape[1]:
        raise ValueError(f"features must be N × d matrices of equal d, got {tuple(f.shape)} and {tuple(ft.shape)}")
    if len(f) != len(y) or len(ft) != len(yt) or len(f) < batch_size:
        raise ValueError("features and labels must have equal lengths, with at least one batch of training data")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    c = int(max(int(y.max()), int(yt.max())) + 1) if classes is None else classes
    probe = nn.Linear(f.shape[1], c).to(f.device)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(f) // batch_size
    gen = torch.Generator().manual_seed(seed)

    def data():  # type: ignore[no-untyped-def]
        for _ in range(epochs):
            yield from batches(f, y, batch_size, generator=gen)

    fit(probe, Backprop(), data(), optimizer, steps=epochs * steps_per_epoch)
    return ProbeResult(_error(probe, f, y), _error(probe, ft, yt))


@torch.no_grad()
def _error(probe: nn.Module, f: Tensor, y: Tensor, chunk: int = 10000) -> float:
    wrong = sum(int((probe(f[i : i + chunk]).argmax(1) != y[i : i + chunk]).sum()) for i in range(0, len(f), chunk))
    return wrong / len(f)


def probe_layers(
    train_features: Sequence[Tensor],
    train_labels: Tensor,
    test_features: Sequence[Tensor],
    test_labels: Tensor,
    **options: object,
) -> list[ProbeResult]:
    """One :func:`linear_probe` per layer: ``train_features[l]`` and ``test_features[l]`` are the
    activities of layer l on the training and the test images."""
    if len(train_features) != len(test_features) or not train_features:
        raise ValueError("need the same (non-zero) number of training and test feature matrices")
    return [
        linear_probe((f, train_labels), (ft, test_labels), **options)  # type: ignore[arg-type]
        for f, ft in zip(train_features, test_features)
    ]
