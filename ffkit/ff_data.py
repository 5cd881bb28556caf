"""Positive and negative data for Forward-Forward: label overlays, wrong labels, hybrid images.

Forward-Forward trains every layer to tell *positive* data (real) from *negative* data (made up).
What the negative data is decides what the layers learn (Hinton 2022):

* **supervised**: a positive example is an image with its own label written into its first C
  pixels (:func:`overlay`, a one-hot code); a negative example is the same image with a *wrong*
  label. :func:`wrong_labels` draws the wrong label uniformly from the C − 1 others, as
  (y + k) mod C with k uniform on 1..C−1, so it is never the true label (drawing it from all C
  and accepting the true one by chance, a bug of popular implementations, turns a tenth of the
  negatives into positives). :func:`hard_labels` draws it in proportion to how likely the network
  currently thinks each wrong label is (the softmax of a neutral-label pass), which spends the
  negatives on the confusions that are left.
* **unsupervised**: a negative example is a *hybrid* of two real images, x⁻ = m ⊙ x₁ + (1 − m) ⊙
  x₂, through a mask m with large connected regions (:func:`hybrid_masks`): random bits, blurred
  repeatedly with the filter [¼, ½, ¼] along rows and columns, thresholded at ½. A hybrid has
  the short-range statistics of a digit (strokes) but not its long-range shape, so a layer can
  tell it from a real digit only by looking at shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["hard_labels", "hybrid_masks", "hybrids", "overlay", "wrong_labels"]


def overlay(x: Tensor, labels: Tensor | None, classes: int = 10, *, value: float = 1.0) -> Tensor:
    """Images ``x`` (N × ...) flattened to rows, with the first ``classes`` pixels replaced by the
    one-hot code ``value``·e_y of ``labels`` (N ints), or by the neutral label (``value``/C in
    every label pixel) where ``labels`` is ``None``.

    Raises ``ValueError`` for images of fewer than ``classes`` pixels (nowhere to write the
    label) and labels outside 0..C−1.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError("x must be a floating-point tensor of images")
    flat = x.reshape(x.shape[0], -1).clone()
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ValueError(f"classes must be an int >= 2, got {classes!r}")
    if flat.shape[1] < classes:
        raise ValueError(f"images of {flat.shape[1]} pixels cannot hold a label in their first {classes} pixels")
    if labels is None:
        flat[:, :classes] = value / classes
        return flat
    _check_labels(labels, flat.shape[0], classes)
    flat[:, :classes] = 0
    flat[torch.arange(flat.shape[0], device=flat.device), labels] = value
    return flat


def _check_labels(y: Tensor, n: int, classes: int) -> None:
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != n or y.is_floating_point():
        raise ValueError(f"labels must be a 1-D integer tensor of length {n}")
    if n and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"labels must lie in 0..{classes - 1}, got {int(y.min())}..{int(y.max())}")


def _draw_device(generator: torch.Generator | None, default: torch.device | str) -> torch.device | str:
    """Where to draw: a generator draws on its own device (a CUDA one on the GPU), else ``default``."""
    return generator.device if generator is not None else default


def wrong_labels(y: Tensor, classes: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """A wrong label for each label of ``y``, uniform on the C − 1 others: (y + k) mod C, k ~ U{1..C−1}."""
    _check_labels(y, y.shape[0] if isinstance(y, Tensor) and y.dim() == 1 else -1, classes)
    shift = torch.randint(1, classes, y.shape, generator=generator, device=_draw_device(generator, y.device))
    shift = shift.to(y.device)
    return (y + shift) % classes


def hard_labels(logits: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A wrong label for each row, drawn with probability ∝ softmax(logits) over the wrong labels.

    Rows whose softmax puts (numerically) all its mass on the true label fall back to a uniform
    wrong label."""
    if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        raise ValueError(f"logits must be N × C for N = {y.shape[0]} labels, got {tuple(logits.shape)}")
    classes = logits.shape[1]
    _check_labels(y, logits.shape[0], classes)
    p = torch.softmax(logits.float(), dim=1)
    p[torch.arange(len(y), device=y.device), y] = 0
    total = p.sum(1, keepdim=True)
    uniform = torch.ones_like(p)
    uniform[torch.arange(len(y), device=y.device), y] = 0
    p = torch.where(total > 1e-12, p, uniform)
    return torch.multinomial(p, 1, generator=generator).squeeze(1)


def hybrid_masks(
    n: int,
    shape: tuple[int, int] = (28, 28),
    *,
    blurs: int = 6,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``n`` masks (n × H × W, values 0 or 1) with large connected regions: random bits, blurred
    ``blurs`` times by [¼, ½, ¼] along rows and along columns (edges repeated), thresholded at ½.

    Each blur adds a variance of ½ px² along each axis, so after b blurs every value averages the
    bits over a window of standard deviation √(b/2) px: more blurs, larger regions. Values of
    exactly ½ go to the second image (0); they are common after a single blur, where the first
    image gets about 44 % of the pixels instead of half."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if isinstance(blurs, bool) or not isinstance(blurs, int) or blurs < 0:
        raise ValueError(f"blurs must be a non-negative int, got {blurs!r}")
    h, w = shape
    m = torch.randint(0, 2, (n, h, w), generator=generator, device=_draw_device(generator, device))
    m = m.to(device).float()
    for _ in range(blurs):
        p = torch.cat([m[:, :, :1], m, m[:, :, -1:]], dim=2)
        m = 0.25 * p[:, :, :-2] + 0.5 * p[:, :, 1:-1] + 0.25 * p[:, :, 2:]
        p = torch.cat([m[:, :1], m, m[:, -1:]], dim=1)
        m = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
    return (m > 0.5).float()


def hybrids(
    x: Tensor, *, blurs: int = 6, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Negative images for unsupervised FF: each image of ``x`` (N × 1 × H × W, N ≥ 2) mixed with
    another image of the batch (``x`` rolled by a random offset 1..N−1, so never with itself)
    through a :func:`hybrid_masks` mask. Returns (hybrids, masks, index of the second image)."""
    if x.dim() != 4 or x.shape[1] != 1 or x.shape[0] < 2:
        raise ValueError(f"hybrids needs N >= 2 one-channel images N × 1 × H × W, got {tuple(x.shape)}")
    n, _, h, w = x.shape
    offset = int(torch.randint(1, n, (), generator=generator, device=_draw_device(generator, "cpu")))
    partner = (torch.arange(n, device=x.device) + offset) % n
    masks = hybrid_masks(n, (h, w), blurs=blurs, generator=generator, device=x.device).unsqueeze(1)
    return masks * x + (1 - masks) * x[partner], masks, partner
