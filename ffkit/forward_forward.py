"""Forward-Forward (Hinton 2022): the objective of a layer, the network, and how it classifies.

A Forward-Forward network is a stack of layers z_l = relu(W_l h_{l−1} + b_l), each trained by an
objective of its own. Notation (the book's): a layer of width q has parameters θ_l = (W_l, b_l)
(n_l = q·p + q of them for fan-in p), pre-activation a = W_l h + b_l and activity z = relu(a).

* **Goodness** of a layer for one example (:func:`goodness`): the sum of squared activities
  G = Σ_j z_j² (``"sum"``, Hinton's choice), or their mean G = (1/q) Σ_j z_j² (``"mean"``, which
  does not grow with the width).
* **Probability that the example is positive** (real data): p = σ(G − θ) with a threshold θ
  (:func:`positive_probability`). The layer's loss on a batch of positive and negative examples,
  with s = +1 for a positive and s = −1 for a negative one, is the mean logistic loss

      L_l = mean_i log(1 + exp(−s_i (G_i − θ)))                                (:func:`ff_loss`)

  so that ∂L_l/∂G_i = −s_i σ(−s_i (G_i − θ)) / N, and through G = Σ z² the gradient with respect
  to the pre-activation is δ_ij = ∂L_l/∂a_ij = ∂L_l/∂G_i · 2 z_ij (for the ReLU, z = 0 exactly
  where the derivative is 0). Nothing of the layers above enters: the gradient of L_l with
  respect to θ_l is δᵀ h, one matrix product.
* **Normalisation** (:func:`normalize`): the next layer sees only the *direction* of z, h = z/‖z‖
  (``"length"``) or h = z / rms(z) with rms(z) = √((1/q) Σ_j z_j²) (``"rms"``, the same direction
  with ‖h‖ = √q, so that the scale of the next layer's input does not depend on its width). The
  goodness that decided the layer's verdict is thus hidden from the next layer, which has to
  find new evidence.
* **Peer normalisation** (optional, weight λ): a running mean m_j of unit j's activity on
  positive data, m ← μ m + (1 − μ) mean_i z_ij, and the penalty λ · (1/q) Σ_j (m_j − m̄)² that
  keeps every unit about as active as its peers (no dead or dominant units).

The network (:class:`FFNet`) can write the label into the input ("supervised" FF, the label's
one-hot code in the first C pixels, :mod:`ffkit.ff_data`), and classifies in two ways:

* **by goodness** (:meth:`FFNet.label_goodness`): run the image once with each of the C labels and
  pick the label whose goodness, summed over layers 2..L, is largest. All C labels go through in
  one batched pass; the first layer is computed once per image, because a one-hot label changes
  its pre-activation only by the label's column of W_1.
* **by a readout** (:meth:`FFNet.readout_logits`): one pass with a *neutral* label (1/C in every
  label pixel) and a linear softmax classifier on the normalised activities of layers 2..L.

The training step itself (positive and negative data, exact or forward-gradient local gradients)
is :class:`ffkit.methods.ForwardForward`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GOODNESS",
    "NORMS",
    "Dense",
    "FFNet",
    "LayerInput",
    "Normalize",
    "Overlay",
    "ff_loss",
    "goodness",
    "goodness_derivative",
    "normalize",
    "positive_probability",
]

#: The goodness functions: ``"sum"`` G = Σ_j z_j², ``"mean"`` G = (1/q) Σ_j z_j².
GOODNESS = ("sum", "mean")
#: The normalisations between layers: ``"rms"`` z / rms(z), ``"length"`` z / ‖z‖, ``"none"``.
NORMS = ("rms", "length", "none")
_EPS = 1e-8


def _check_choice(value: object, choices: Sequence[str], what: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


# --------------------------------------------------------------------------- the objective


def goodness(z: Tensor, kind: str = "sum") -> Tensor:
    """Goodness per example (row) of the activities ``z`` (N × q): Σ_j z_j² or (1/q) Σ_j z_j²."""
    _check_choice(kind, GOODNESS, "goodness")
    g = torch.linalg.vecdot(z, z)
    return g / z.shape[-1] if kind == "mean" else g


def goodness_derivative(kind: str, width: int) -> float:
    """The factor c in ∂G/∂z = c·z: 2 for the sum of squares, 2/q for the mean square."""
    _check_choice(kind, GOODNESS, "goodness")
    return 2.0 / width if kind == "mean" else 2.0


def positive_probability(g: Tensor, threshold: float) -> Tensor:
    """p(positive) = σ(G − θ)."""
    return torch.sigmoid(g - threshold)


def ff_loss(g: Tensor, threshold: float, sign: Tensor) -> Tensor:
    """The layer's loss: mean_i log(1 + exp(−s_i (G_i − θ))) = −mean_i log σ(s_i (G_i − θ)),
    with s_i = +1 for positive and −1 for negative examples."""
    return F.softplus(-sign * (g - threshold)).mean()


def normalize(z: Tensor, kind: str = "rms", eps: float = _EPS, *, sq: Tensor | None = None) -> Tensor:
    """Each row of ``z`` divided by its length (``"length"``), by its root mean square
    (``"rms"``), or unchanged (``"none"``); ``eps`` keeps an all-zero row at zero. ``sq``, the
    rows' squared lengths Σ_j z_j² if already known (the goodness), saves computing them again."""
    _check_choice(kind, NORMS, "normalisation")
    if kind == "none":
        return z
    if sq is None:
        sq = torch.linalg.vecdot(z, z)
    if kind == "rms":
        sq = sq / z.shape[-1]
    return z * torch.rsqrt(sq + eps).unsqueeze(-1)


class Normalize(nn.Module):
    """:func:`normalize` as a module (for networks trained by backprop with the same layers)."""

    def __init__(self, kind: str = "rms", eps: float = _EPS) -> None:
        super().__init__()
        self.kind = _check_choice(kind, NORMS, "normalisation")
        self.eps = eps

    def forward(self, z: Tensor) -> Tensor:
        return normalize(z.flatten(1), self.kind, self.eps)

    def extra_repr(self) -> str:
        return repr(self.kind)


# --------------------------------------------------------------------------- layer inputs


class LayerInput:
    """The input X (N × p) of a linear layer, seen through the two products a layer needs:
    :meth:`mm` (X Wᵀ, the forward pass or, with a tangent Ẇ, its directional derivative) and
    :meth:`tmm` (Dᵀ X, the weight gradient for an output sensitivity D)."""

    rows: int

    def mm(self, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def tmm(self, d: Tensor) -> Tensor:
        raise NotImplementedError

    def row_sqnorms(self) -> Tensor:
        """‖x_r‖² of every row."""
        raise NotImplementedError


@dataclass
class Dense(LayerInput):
    """An ordinary input matrix X."""

    x: Tensor
    dtype: torch.dtype | None = None

    @property
    def rows(self) -> int:  # type: ignore[override]
        return self.x.shape[0]

    def mm(self, weight: Tensor) -> Tensor:
        return _mm(self.x, weight.t(), self.dtype)

    def tmm(self, d: Tensor) -> Tensor:
        return _mm(d.t(), self.x, self.dtype)

    def row_sqnorms(self) -> Tensor:
        return torch.linalg.vecdot(self.x, self.x)


@dataclass
class Overlay(LayerInput):
    """Images with labels written into their first C pixels, never materialised.

    Row r = g·B + i (copy g of image i) is x_r = s_r (base_i + ℓ_r), where ``base`` (B × D) holds
    the images with their label pixels zeroed, ``labels`` (G·B × C) the values written into the
    label pixels and ``scale`` (G·B) the input normalisation s_r. Then

        X Wᵀ = s ⊙ (repeat_G(base Wᵀ) + ℓ W[:, :C]ᵀ),

    one product with the B images however many label copies G there are, plus a product with
    only C columns; likewise Dᵀ X = (Σ_g (s⊙D)_g)ᵀ base, plus (s⊙D)ᵀ ℓ in the first C columns.
    """

    base: Tensor
    labels: Tensor
    scale: Tensor
    dtype: torch.dtype | None = None
    #: base Wᵀ by weight, shared by overlays of the same images (:meth:`relabel`)
    products: dict[tuple[int, int], Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        b, c = self.base.shape[0], self.labels.shape[1]
        if self.labels.shape[0] % b or self.scale.shape != (self.labels.shape[0],) or c > self.base.shape[1]:
            raise ValueError(
                f"an overlay needs G·B label rows and scales for B = {b} images, got labels "
                f"{tuple(self.labels.shape)} and scales {tuple(self.scale.shape)}"
            )

    @property
    def rows(self) -> int:  # type: ignore[override]
        return self.labels.shape[0]

    @property
    def copies(self) -> int:
        """G, the number of label copies of each image."""
        return self.labels.shape[0] // self.base.shape[0]

    def relabel(self, labels: Tensor, scale: Tensor) -> Overlay:
        """The same images with other label rows; products with the images are shared."""
        return Overlay(self.base, labels, scale, self.dtype, self.products)

    def mm(self, weight: Tensor) -> Tensor:
        c = self.labels.shape[1]
        key = (weight.data_ptr(), weight._version)
        if key not in self.products:
            self.products[key] = _mm(self.base, weight.t(), self.dtype)
        out = self.products[key].repeat(self.copies, 1)
        out.addmm_(self.labels, weight[:, :c].t().to(out.dtype))
        return out.mul_(self.scale.unsqueeze(1))

    def tmm(self, d: Tensor) -> Tensor:
        c = self.labels.shape[1]
        ds = d * self.scale.unsqueeze(1)
        grouped = ds.view(self.copies, self.base.shape[0], -1).sum(0) if self.copies > 1 else ds
        out = _mm(grouped.t(), self.base, self.dtype)
        out[:, :c].addmm_(ds.t(), self.labels)
        return out

    def row_sqnorms(self) -> Tensor:
        base = torch.linalg.vecdot(self.base, self.base).repeat(self.copies)
        return self.scale.square() * (base + torch.linalg.vecdot(self.labels, self.labels))

    def dense(self) -> Tensor:
        """The materialised input matrix (for tests and pictures)."""
        x = self.base.repeat(self.copies, 1)
        x[:, : self.labels.shape[1]] += self.labels
        return x * self.scale.unsqueeze(1)


def _mm(a: Tensor, b: Tensor, dtype: torch.dtype | None) -> Tensor:
    """a @ b, with the operands cast to ``dtype`` (bfloat16, say) and the result in float32."""
    if dtype is None or dtype == a.dtype:
        return a @ b
    return (a.to(dtype) @ b.to(dtype)).to(a.dtype)


# --------------------------------------------------------------------------- the network


class FFNet(nn.Module):
    """A fully connected Forward-Forward network: layers of ReLUs with normalisation between them,
    an optional label overlay and an optional linear softmax readout.

    Args:
        in_features: D, the number of input pixels (images are flattened).
        widths: the widths q_1, ..., q_L of the hidden layers (each ≥ 1).
        classes: C, the number of labels.
        overlay: whether the label is written into the first C pixels (supervised FF); then
            D ≥ C is required.
        norm: the normalisation between layers (:data:`NORMS`); also applied to the input when
            ``input_norm``.
        goodness: :data:`GOODNESS`.
        threshold: θ; by default the layer's width for ``"sum"`` (a mean square of 1 is the
            boundary) and 1 for ``"mean"``. One number for every layer, or one per layer.
        label_value: the value written into the label pixel of the true (or a wrong) label.
        readout: whether the network has a linear softmax readout.
        read_from: the (0-based) layers whose normalised activities the readout sees and whose
            goodness the goodness classifier sums; by default layers 2..L (all but the first),
            or the single layer of a one-layer network.
        peer: λ, the weight of peer normalisation (0 switches it off); ``peer_momentum`` μ.
        init: ``"normal"`` or ``"torch"`` (:meth:`reset_parameters`).
        seed: draws the initial weights from this seed instead of torch's global generator.

    ``forward(x)`` returns class scores (C columns) by the rule ``self.rule`` (``"goodness"`` or
    ``"readout"``), so :func:`ffkit.train.accuracy` works on it.
    """

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        *,
        classes: int = 10,
        overlay: bool = True,
        norm: str = "rms",
        input_norm: bool = True,
        goodness: str = "sum",
        threshold: float | Sequence[float] | None = None,
        label_value: float = 1.0,
        readout: bool = True,
        read_from: Sequence[int] | None = None,
        peer: float = 0.0,
        peer_momentum: float = 0.9,
        init: str = "normal",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        widths = list(widths)
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be a positive int, got {in_features!r}")
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths!r}")
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
            raise ValueError(f"classes must be an int >= 2, got {classes!r}")
        if overlay and in_features < classes:
            raise ValueError(
                f"images of {in_features} pixels cannot hold a label in their first {classes} pixels"
            )
        if not (0 <= peer < math.inf) or not (0 <= peer_momentum < 1):
            raise ValueError(f"peer must be >= 0 and peer_momentum in [0, 1), got {peer} and {peer_momentum}")
        self.in_features, self.widths, self.classes, self.overlay = in_features, widths, classes, bool(overlay)
        self.norm = _check_choice(norm, NORMS, "normalisation")
        self.input_norm = bool(input_norm)
        self.goodness_kind = _check_choice(goodness, GOODNESS, "goodness")
        if threshold is None:
            thresholds = [float(w) if goodness == "sum" else 1.0 for w in widths]
        elif isinstance(threshold, (int, float)):
            thresholds = [float(threshold)] * len(widths)
        else:
            thresholds = [float(t) for t in threshold]
        if len(thresholds) != len(widths) or not all(math.isfinite(t) for t in thresholds):
            raise ValueError(f"threshold must be a finite number or one per layer, got {threshold!r}")
        self.thresholds = thresholds
        self.label_value = float(label_value)
        default = list(range(1, len(widths))) if len(widths) > 1 else [0]
        self.read_from = list(default if read_from is None else read_from)
        if not self.read_from or any(not 0 <= i < len(widths) for i in self.read_from):
            raise ValueError(f"read_from must name layers 0..{len(widths) - 1}, got {read_from!r}")
        self.peer, self.peer_momentum = float(peer), float(peer_momentum)
        self.rule = "goodness" if overlay else "readout"
        sizes = [in_features] + widths
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.readout = nn.Linear(sum(widths[i] for i in self.read_from), classes) if readout else None
        for i, w in enumerate(widths):
            self.register_buffer(f"peer_mean_{i}", torch.zeros(w))
        self.init = _check_choice(init, ("normal", "torch"), "initialisation")
        self.reset_parameters(seed)
        if not readout:
            self.rule = "goodness"
        if not overlay and not readout:
            raise ValueError("a network without label overlay classifies only through a readout (readout=True)")

    def reset_parameters(self, seed: int | None = None) -> None:
        """Draw the initial weights (from ``seed`` if given, else from torch's generator).

        ``init="normal"``: W_l ~ N(0, 1/p) entrywise (p the fan-in) and b_l = 0, so that an
        RMS-normalised input (‖h‖² = p) gives pre-activations of unit variance and a goodness
        Σ_j z_j² of about q/2 at any width; ``"torch"``: PyTorch's default for ``nn.Linear``.
        The readout starts at zero either way.
        """
        state = torch.random.get_rng_state()
        try:
            if seed is not None:
                torch.manual_seed(seed)
            for layer in self.layers:
                layer.reset_parameters()
                if self.init == "normal":
                    nn.init.normal_(layer.weight, 0.0, layer.in_features**-0.5)
                    nn.init.zeros_(layer.bias)
            if self.readout is not None:
                nn.init.zeros_(self.readout.weight)
                nn.init.zeros_(self.readout.bias)
        finally:
            if seed is not None:
                torch.random.set_rng_state(state)
        for m in self.peer_means():
            m.zero_()

    # ----------------------------------------------------------------------- inputs

    def flatten(self, x: Tensor) -> Tensor:
        """``x`` as rows of D pixels; a clear error for the wrong size."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"images must be a floating-point tensor, got {type(x).__name__}")
        flat = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)
        if flat.shape[1] != self.in_features:
            raise ValueError(f"images have {flat.shape[1]} pixels, the network expects {self.in_features}")
        return flat

    def input_scale(self, sq_norm: Tensor) -> Tensor:
        """s = 1/rms(x) (or 1/‖x‖) from ‖x‖², or ones without input normalisation."""
        if not self.input_norm or self.norm == "none":
            return torch.ones_like(sq_norm)
        if self.norm == "rms":
            sq_norm = sq_norm / self.in_features
        return torch.rsqrt(sq_norm + _EPS)

    def overlay_input(
        self, x: Tensor, labels: Tensor, dtype: torch.dtype | None = None, *, like: LayerInput | None = None
    ) -> Overlay:
        """The first layer's input for images ``x`` (B) and label-pixel rows ``labels`` (G·B × C);
        ``like``, an overlay of the same images, shares its products with them."""
        if not self.overlay:
            raise ValueError("this network has no label overlay (overlay=False)")
        if isinstance(like, Overlay) and like.base.shape[0] == x.shape[0]:
            base = like.base
        else:
            base = self.flatten(x).clone()
            base[:, : self.classes] = 0
            like = None
        b = base.shape[0]
        if labels.shape[0] % b:
            raise ValueError(f"{labels.shape[0]} label rows are not a multiple of the {b} images")
        sq = torch.linalg.vecdot(base, base).repeat(labels.shape[0] // b)
        scale = self.input_scale(sq + torch.linalg.vecdot(labels, labels))
        return like.relabel(labels, scale) if isinstance(like, Overlay) else Overlay(base, labels, scale, dtype)

    def plain_input(self, x: Tensor, dtype: torch.dtype | None = None) -> Dense:
        """The first layer's input for images without label overlay."""
        flat = self.flatten(x)
        scale = self.input_scale(torch.linalg.vecdot(flat, flat))
        return Dense(flat * scale.unsqueeze(1), dtype)

    def one_hot(self, y: Tensor) -> Tensor:
        """Label-pixel rows of the labels ``y``: ``label_value`` at the label, 0 elsewhere."""
        if y.dim() != 1 or (y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.classes)):
            raise ValueError(f"labels must be a 1-D tensor of ints in 0..{self.classes - 1}")
        return F.one_hot(y, self.classes).to(self.layers[0].weight.dtype) * self.label_value

    def neutral(self, rows: int) -> Tensor:
        """Neutral label-pixel rows: ``label_value``/C in every label pixel."""
        w = self.layers[0].weight
        return torch.full((rows, self.classes), self.label_value / self.classes, dtype=w.dtype, device=w.device)

    def neutral_input(self, x: Tensor, dtype: torch.dtype | None = None) -> LayerInput:
        """The first layer's input for classification by the readout (neutral label, or plain)."""
        if self.overlay:
            return self.overlay_input(x, self.neutral(x.shape[0]), dtype)
        return self.plain_input(x, dtype)

    # ----------------------------------------------------------------------- passes

    def activities(self, inp: LayerInput, dtype: torch.dtype | None = None) -> list[Tensor]:
        """z_1, ..., z_L for the first-layer input ``inp`` (no gradients are recorded)."""
        out = []
        with torch.no_grad():
            for layer in self.layers:
                z = inp.mm(layer.weight).add_(layer.bias).relu_()
                out.append(z)
                inp = Dense(normalize(z, self.norm), dtype)
        return out

    def features(self, acts: Sequence[Tensor]) -> Tensor:
        """The readout's input: the normalised activities of the layers ``read_from``, side by side."""
        return torch.cat([normalize(acts[i], self.norm) for i in self.read_from], dim=1)

    def readout_logits(self, x: Tensor) -> Tensor:
        """Class scores of the readout on one neutral-label (or plain) pass."""
        if self.readout is None:
            raise ValueError("this network has no readout (readout=False)")
        with torch.no_grad():
            return self.readout(self.features(self.activities(self.neutral_input(x))))

    def label_goodness(self, x: Tensor) -> Tensor:
        """Goodness of each image with each label (B × C), summed over the layers ``read_from``.

        The C label copies of the B images form one batch of C·B rows; the first layer is
        computed once per image (:class:`Overlay`)."""
        if not self.overlay:
            raise ValueError("classification by goodness needs the label overlay (overlay=False)")
        b, c = x.shape[0], self.classes
        labels = self.one_hot(torch.arange(c, device=x.device).repeat_interleave(b))
        acts = self.activities(self.overlay_input(x, labels))
        total = sum(goodness(acts[i], self.goodness_kind) for i in self.read_from)
        assert isinstance(total, Tensor)
        return total.view(c, b).t()

    def scores(self, x: Tensor, rule: str | None = None) -> Tensor:
        """Class scores (B × C) by ``rule``: ``"goodness"`` or ``"readout"`` (``self.rule`` by default)."""
        rule = _check_choice(self.rule if rule is None else rule, ("goodness", "readout"), "classification rule")
        return self.label_goodness(x) if rule == "goodness" else self.readout_logits(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.scores(x)

    @torch.no_grad()
    def error(self, x: Tensor, y: Tensor, rule: str | None = None, batch_size: int = 1000) -> float:
        """The fraction of ``x`` misclassified by ``rule``."""
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"error needs equally many (>0) images and labels, got {len(x)} and {len(y)}")
        wrong = 0
        for i in range(0, len(x), batch_size):
            wrong += int((self.scores(x[i : i + batch_size], rule).argmax(1) != y[i : i + batch_size]).sum())
        return wrong / len(x)

    @torch.no_grad()
    def layer_features(self, x: Tensor, batch_size: int = 1000) -> list[Tensor]:
        """The normalised activities of every layer on a neutral-label (or plain) pass, one
        matrix (N × q_l) per layer: what a linear probe of each layer sees."""
        parts: list[list[Tensor]] = [[] for _ in self.layers]
        for i in range(0, len(x), batch_size):
            for store, z in zip(parts, self.activities(self.neutral_input(x[i : i + batch_size]))):
                store.append(normalize(z, self.norm))
        return [torch.cat(p) for p in parts]

    def peer_means(self) -> list[Tensor]:
        """The running mean activities m of peer normalisation, one vector per layer."""
        return [getattr(self, f"peer_mean_{i}") for i in range(len(self.widths))]
