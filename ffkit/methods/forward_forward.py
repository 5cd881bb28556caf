"""Forward-Forward training steps: every layer learns from its own objective, no backward pass.

:class:`ForwardForward` is a :class:`~ffkit.methods.base.Method` for an :class:`ffkit.forward_forward.FFNet`.
One step on a batch (x, y):

1. **data**. Supervised: the positives are the images with their own label in the first C
   pixels, the negatives the same images with a wrong label (uniform over the C − 1 others, or
   *hard*: drawn from the readout's softmax on a neutral-label pass, :mod:`ffkit.ff_data`).
   Unsupervised: the positives are the images, the negatives hybrids of two images.
2. **layers, bottom to top**. Layer l runs on the N = 2B positive and negative rows at once,
   computes its goodness G, its loss L_l = mean_i log(1 + exp(−s_i (G_i − θ_l))) (plus peer
   normalisation) and the gradient of L_l with respect to its own θ_l = (W_l, b_l). The next
   layer's input is the normalised activity: no signal ever goes down.
3. **readout** (if the network has one): a linear softmax classifier on the normalised
   activities of the top layers (of the neutral-label pass when supervised, of the real images
   when not), trained by its cross-entropy; the activities are its fixed input.

How a layer's gradient is obtained is the ``gradient`` option:

* ``"exact"``: with δ = ∂L_l/∂a (the pre-activation), δ_ij = ∂L_l/∂G_i · c z_ij (c = ∂G/∂z / z,
  :func:`ffkit.forward_forward.goodness_derivative`), the gradient is δᵀ h_{l−1} for W_l and
  Σ_i δ_i for b_l: one matrix product, written by hand (no autograd graph is recorded).
* ``"weight"``: a forward gradient per layer (weight perturbation). A tangent v_l = (Ẇ_l, ḃ_l) is
  drawn from :mod:`ffkit.tangents`; the tangent of the pre-activation ȧ = h Ẇᵀ + ḃ is pushed
  forward through the ReLU (ż = 1[a > 0] ⊙ ȧ), the goodness (Ġ_i = c Σ_j z_ij ż_ij) and the loss
  (L̇ = Σ_i ∂L_l/∂G_i · Ġ_i), and g_l = (1/K) Σ_k L̇_k v_{l,k}. That is forward-mode
  differentiation of the layer's loss alone, unbiased since E[v vᵀ] = I, with variance
  (n_l + κ − 2)‖∇L_l‖²/K for n_l the layer's parameter count (:mod:`ffkit.theory`).
* ``"activity"``: a forward gradient per layer that perturbs the pre-activations instead (Ren et
  al. 2023): a tangent u_i per example, masked to the active units (ũ = 1[a > 0] ⊙ u), gives the
  per-example directional derivative L̇_i = ∂L_l/∂G_i · c Σ_j z_ij ũ_ij, and the weight gradient
  estimate is Σ_i L̇_i ũ_i h_iᵀ: again no backward pass, with a tangent of q entries per example
  instead of q·p per layer.

Tangent k of step t is drawn from ``ffkit.tangents.generator(seed, t, k)``, tensor after tensor in
``named_parameters`` order (per layer: the weight's tangent, then the bias's; activity tangents
in place of them for ``"activity"``). The negatives of step t come from their own generator, so
the exact and the forward-gradient methods with the same seed see the same negatives.

A goodness that overflows or becomes NaN raises :class:`~ffkit.methods.base.DivergenceError`
naming the layer (and :func:`ffkit.train.fit` adds the step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ffkit import ff_data
from ffkit import tangents as tg
from ffkit.forward_forward import (
    Dense,
    FFNet,
    LayerInput,
    goodness_derivative,
    normalize,
)
from ffkit.methods.base import (
    Batch,
    DivergenceError,
    Method,
    StepResult,
    check_directions,
    check_seed,
    check_step,
    inputs_targets,
    register,
)

__all__ = ["DATA", "GRADIENTS", "NEGATIVES", "ForwardForward", "ForwardGradientForwardForward", "UnsupervisedForwardForward"]

#: Where positives and negatives come from.
DATA = ("supervised", "unsupervised")
#: How supervised negatives get their wrong label.
NEGATIVES = ("random", "hard")
#: How a layer's gradient is obtained.
GRADIENTS = ("exact", "weight", "activity")
_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}
_DATA_SALT = 0x5EED_DA7A


def _choice(value: object, choices: Sequence[str], what: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


def _add_grad(p: nn.Parameter, g: Tensor) -> None:
    if p.grad is None:
        p.grad = g.to(p.dtype)
    else:
        p.grad.add_(g)


@register("ff-supervised")
class ForwardForward(Method):
    """Forward-Forward: each layer of an :class:`~ffkit.forward_forward.FFNet` trained by its own
    goodness objective (see the module docstring for the step).

    Args:
        data: ``"supervised"`` (label overlay, wrong-label negatives) or ``"unsupervised"``
            (hybrid-image negatives; batches must be images N × 1 × H × W).
        negatives: ``"random"`` or ``"hard"`` wrong labels (supervised only; ``"hard"`` needs a
            readout).
        gradient: ``"exact"``, ``"weight"`` or ``"activity"`` (forward gradients per layer).
        directions: K, tangents per step for the forward-gradient estimators.
        sampler: the tangent distribution (:mod:`ffkit.tangents`), Rademacher by default.
        seed: seeds the negatives and the tangents; ``None`` draws one from torch's generator.
        dtype: ``"float32"`` or ``"bfloat16"`` (matrix products with bfloat16 operands, as under
            autocast; everything else in float32).
        blurs: how often the hybrid masks are blurred (unsupervised).

    ``step(model, (x, y))`` fills ``.grad`` of every layer and the readout and returns the sum of
    the local losses; ``details`` holds per layer the loss, the mean goodness of positives and of
    negatives, and the readout's loss.
    """

    name: ClassVar[str] = "ff"

    def __init__(
        self,
        *,
        data: str = "supervised",
        negatives: str = "random",
        gradient: str = "exact",
        directions: int = 1,
        sampler: str | tg.Distribution = tg.DEFAULT,
        seed: int | None = None,
        dtype: str = "float32",
        blurs: int = 6,
    ) -> None:
        self.data = _choice(data, DATA, "data")
        self.negatives = _choice(negatives, NEGATIVES, "negatives")
        if self.data == "unsupervised" and self.negatives == "hard":
            raise ValueError("hard negatives are wrong labels: they need data='supervised'")
        self.gradient = _choice(gradient, GRADIENTS, "gradient")
        self.directions = check_directions(directions)
        self.distribution = tg.get(sampler)
        self.seed = check_seed(seed)
        self.dtype_name = _choice(dtype, tuple(_DTYPES), "dtype")
        self.dtype = _DTYPES[dtype]
        if isinstance(blurs, bool) or not isinstance(blurs, int) or blurs < 0:
            raise ValueError(f"blurs must be a non-negative int, got {blurs!r}")
        self.blurs = blurs
        self.t = 0
        self._collect: list[dict[str, Tensor]] | None = None

    def __repr__(self) -> str:
        extra = f", directions={self.directions}, sampler={self.distribution.name!r}" if self.gradient != "exact" else ""
        return (f"{type(self).__name__}(data={self.data!r}, negatives={self.negatives!r}, "
                f"gradient={self.gradient!r}{extra}, seed={self.seed}, dtype={self.dtype_name!r})")

    # ----------------------------------------------------------------------- public entry points

    def step(self, model: nn.Module, batch: Batch) -> StepResult:
        result = self._run(model, batch, self.t, self.t, update_state=True)
        self.t += 1
        return result

    def gradient_of(self, model: nn.Module, batch: Batch, *, data_step: int = 0, tangent_step: int = 0) -> dict[str, Tensor]:
        """The gradient this method would write into ``.grad`` for ``batch``, by parameter name,
        with the negatives of step ``data_step`` and the tangents of step ``tangent_step``; the
        model (parameters, ``.grad``, peer-normalisation state) is left as it was. With a fixed
        ``data_step`` the exact method gives ∇L_l of every layer, and a forward-gradient method
        one draw per ``tangent_step`` (what :func:`ffkit.variance.measure` needs)."""
        check_step(data_step)
        check_step(tangent_step)
        saved_grads = {n: p.grad for n, p in model.named_parameters()}
        saved_buffers = {n: b.clone() for n, b in model.named_buffers()}
        try:
            for p in model.parameters():
                p.grad = None
            self._run(model, batch, data_step, tangent_step, update_state=False)
            return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        finally:
            for n, p in model.named_parameters():
                p.grad = saved_grads[n]
            for n, b in model.named_buffers():
                b.copy_(saved_buffers[n])

    def predicted_variance(self, model: nn.Module, batch: Batch, *, data_step: int = 0) -> dict[str, float]:
        """The total variance tr Cov(g_l) of this method's gradient estimate of every layer (and
        the readout), keyed like :func:`ffkit.variance.by_module` groups (``"layers.0"``, ...,
        ``"readout"``), on ``batch`` with the negatives of ``data_step``.

        For i.i.d. tangent entries of fourth moment κ (:func:`ffkit.theory.kurtosis`):

        * ``"weight"``: (n_l + κ − 2) ‖∇L_l‖² / K, chapter 5's formula with n = n_l, the layer's
          parameter count, because the layer's estimate sees only its own loss;
        * ``"activity"``: Σ_i (m_i + κ − 2) ‖δ_i‖² (‖x_i‖² + 1) / K, where x_i is row i of the
          layer's input, δ_i = ∂L_l/∂a_i and m_i the number of units its tangent covers (the
          active ones): row i's estimate ũ ũᵀ δ_i (x_i, 1)ᵀ has variance (m_i + κ − 2)‖δ_i‖²
          (‖x_i‖² + 1), and the rows' tangents are independent, so their variances add;
        * ``"exact"``: 0.
        """
        from ffkit.theory import kurtosis

        if self.gradient == "exact":
            return {name: 0.0 for name in _group_names(model)}
        kappa = kurtosis(self.distribution)
        self._collect = []
        try:
            self.gradient_of(model, batch, data_step=data_step, tangent_step=0)
            terms = self._collect
        finally:
            self._collect = None
        out = {}
        for name, t in zip(_group_names(model), terms):
            if self.gradient == "weight":
                value = (t["n"] + kappa - 2) * t["grad_sq"]
            else:
                value = ((t["m"] + kappa - 2) * t["m_sq"]).sum()
            out[name] = float(value) / self.directions
        return out

    # ----------------------------------------------------------------------- the step

    def _run(self, model: nn.Module, batch: Batch, data_step: int, tangent_step: int, *, update_state: bool) -> StepResult:
        if not isinstance(model, FFNet):
            raise TypeError(f"{type(self).__name__} trains an ffkit.forward_forward.FFNet, got {type(model).__name__}")
        x, y = inputs_targets(batch, self)
        if self.data == "supervised" and not model.overlay:
            raise ValueError("supervised Forward-Forward needs a network with the label overlay (overlay=True)")
        if self.data == "unsupervised" and model.overlay:
            raise ValueError("unsupervised Forward-Forward needs a network without label overlay (overlay=False)")
        if self.negatives == "hard" and model.readout is None:
            raise ValueError("hard negatives are drawn from the readout's softmax; the network has no readout")
        device = model.layers[0].weight.device
        x, y = x.to(device), y.to(device)
        b = x.shape[0]
        data_gen = tg.generator(self.seed ^ _DATA_SALT, data_step, 0, device)
        tangent_gens = [tg.generator(self.seed, tangent_step, k, device) for k in range(self.directions)]
        details: dict[str, Any] = {}
        with torch.no_grad():
            readout_features: Tensor | None = None
            if self.data == "supervised":
                first: LayerInput | None = None
                if model.readout is not None:
                    first = model.neutral_input(x, self.dtype)
                    readout_features = model.features(model.activities(first, self.dtype))
                if self.negatives == "hard":
                    assert readout_features is not None and model.readout is not None
                    wrong = ff_data.hard_labels(model.readout(readout_features), y, data_gen)
                else:
                    wrong = ff_data.wrong_labels(y, model.classes, data_gen)
                labels = torch.cat([model.one_hot(y), model.one_hot(wrong)])
                inp: LayerInput = model.overlay_input(x, labels, self.dtype, like=first)
            else:
                if x.dim() != 4:
                    raise ValueError(f"unsupervised Forward-Forward needs image batches N × 1 × H × W, got {tuple(x.shape)}")
                negative, _, _ = ff_data.hybrids(x, blurs=self.blurs, generator=data_gen)
                inp = model.plain_input(torch.cat([x, negative]), self.dtype)
            sign = torch.cat([torch.ones(b, device=device), -torch.ones(b, device=device)])
            stats = []
            top: list[Tensor] = []
            for index, layer in enumerate(model.layers):
                a = inp.mm(layer.weight).add_(layer.bias)
                z = torch.relu(a)
                sq = torch.linalg.vecdot(z, z)  # Σ_j z_j², the goodness up to the factor 1/q
                g = sq / z.shape[1] if model.goodness_kind == "mean" else sq
                theta = model.thresholds[index]
                margin = -sign * (g - theta)
                loss = torch.nn.functional.softplus(margin).mean()
                dloss_dg = -sign * torch.sigmoid(margin) / len(sign)  # ∂L_l/∂G_i
                c = goodness_derivative(model.goodness_kind, z.shape[1])
                peer_dz, peer_loss = self._peer(model, index, z[:b], update_state)
                stats.append(torch.stack([loss + peer_loss, g[:b].mean(), g[b:].mean()]))
                self._layer_gradient(layer, inp, a, z, dloss_dg, c, peer_dz, b, tangent_gens, details, index)
                inp = Dense(normalize(z, model.norm, sq=sq), self.dtype)
                if self.data == "unsupervised" and index in model.read_from:
                    top.append(z[:b])
            if self.data == "unsupervised" and model.readout is not None:
                readout_features = torch.cat([normalize(t, model.norm) for t in top], dim=1)
            readout_loss = torch.zeros((), device=device)
            if model.readout is not None:
                assert readout_features is not None
                readout_loss = self._readout_gradient(model.readout, readout_features, y, tangent_gens, details)
            table = torch.stack(stats).cpu()
        for index, (loss_l, pos, neg) in enumerate(table.tolist()):
            for what, value in (("goodness of the positives", pos), ("goodness of the negatives", neg), ("loss", loss_l)):
                if not math.isfinite(value):
                    raise DivergenceError(f"the {what} of layer {index + 1} is {value}")
        readout = float(readout_loss)
        if not math.isfinite(readout):
            raise DivergenceError(f"the readout's loss is {readout}")
        details.update(
            layer_loss=table[:, 0].tolist(), goodness_positive=table[:, 1].tolist(),
            goodness_negative=table[:, 2].tolist(), readout_loss=readout,
        )
        return StepResult(loss=float(table[:, 0].sum()) + readout, details=details)

    def _peer(self, model: FFNet, index: int, z_pos: Tensor, update_state: bool) -> tuple[Tensor | None, Tensor]:
        """Peer normalisation of layer ``index``: ∂/∂z of λ·(1/q)Σ_j (m_j − m̄)² for the positive
        rows (through the new running mean m = μ m_old + (1 − μ) mean_i z_i), and the penalty."""
        if model.peer == 0:
            return None, torch.zeros((), device=z_pos.device)
        mu, lam = model.peer_momentum, model.peer
        old = model.peer_means()[index]
        m = mu * old + (1 - mu) * z_pos.mean(0)
        centred = m - m.mean()
        q = z_pos.shape[1]
        dz = (lam * 2.0 / q * (1 - mu) / z_pos.shape[0]) * centred
        if update_state:
            old.copy_(m)
        return dz, lam * centred.square().mean()

    def _layer_gradient(
        self, layer: nn.Linear, inp: LayerInput, a: Tensor, z: Tensor, dloss_dg: Tensor, c: float,
        peer_dz: Tensor | None, b: int, gens: list[torch.Generator], details: dict[str, Any], index: int,
    ) -> None:
        """Add the exact or forward-gradient estimate of ∇_{θ_l} L_l to ``.grad``."""
        active = torch.ones(0)
        if self.gradient != "exact" or self._collect is not None:
            active = z.sign()  # 1[a > 0] as a float mask (z = relu(a); bool masks are slow on CPUs)
            if self.gradient == "activity" and peer_dz is not None:
                active[:b] = 1.0  # the peer term reaches inactive units of the positives
        if self.gradient == "exact" or self._collect is not None:
            delta = z * (c * dloss_dg).unsqueeze(1)  # δ = ∂L_l/∂a
            if peer_dz is not None:
                delta[:b] += peer_dz  # straight through the ReLU: inactive units feel it too
            if self._collect is not None:
                self._collect.append(_terms(inp, delta, active))
            if self.gradient == "exact":
                _add_grad(layer.weight, inp.tmm(delta))
                _add_grad(layer.bias, delta.sum(0))
                return
        k_total = self.directions
        dots = []
        if self.gradient == "weight":
            for gen in gens:
                w_dot, b_dot = tg.draw([layer.weight, layer.bias], self.distribution, gen)
                a_dot = inp.mm(w_dot).add_(b_dot)  # ȧ = h Ẇᵀ + ḃ
                if peer_dz is not None:  # the peer term sees ȧ straight through the ReLU
                    peer_dot = a_dot[:b].sum(0) @ peer_dz
                z_dot = a_dot.mul_(active)  # ż = 1[a>0] ⊙ ȧ
                g_dot = c * torch.linalg.vecdot(z, z_dot)  # Ġ
                l_dot = dloss_dg @ g_dot  # L̇ = Σ_i ∂L/∂G_i Ġ_i
                if peer_dz is not None:
                    l_dot = l_dot + peer_dot
                dots.append(float(l_dot))
                for p in (layer.weight, layer.bias):
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                tg.combine([dots[-1]], [[w_dot, b_dot]], out=[layer.weight.grad, layer.bias.grad], directions=k_total)
        else:
            for gen in gens:
                (u,) = tg.draw([a], self.distribution, gen)
                u.mul_(active)  # ũ: tangents only on the units the estimate must cover
                l_dot = (c * dloss_dg) * torch.linalg.vecdot(z, u)  # L̇_i, one per example
                if peer_dz is not None:
                    l_dot[:b] += u[:b] @ peer_dz
                dots.append(float(l_dot.sum()))
                est = u.mul_((l_dot / k_total).unsqueeze(1))  # (1/K) L̇_i ũ_i, the estimate of δ_i
                _add_grad(layer.weight, inp.tmm(est))
                _add_grad(layer.bias, est.sum(0))
        details.setdefault("directional", []).append(dots)

    def _readout_gradient(
        self, readout: nn.Linear, features: Tensor, y: Tensor, gens: list[torch.Generator], details: dict[str, Any]
    ) -> Tensor:
        """Cross-entropy of the readout on the (fixed) features; its exact or forward-gradient
        gradient into ``.grad``. Returns the loss."""
        inp = Dense(features, self.dtype)
        logits = inp.mm(readout.weight).add_(readout.bias)
        logp = torch.log_softmax(logits, dim=1)
        loss = -logp.gather(1, y.unsqueeze(1)).mean()
        delta = logp.exp()
        delta[torch.arange(len(y), device=y.device), y] -= 1
        delta /= len(y)  # ∂L/∂logits
        if self._collect is not None:
            self._collect.append(_terms(inp, delta, torch.ones_like(delta, dtype=torch.bool)))
        if self.gradient == "exact":
            _add_grad(readout.weight, inp.tmm(delta))
            _add_grad(readout.bias, delta.sum(0))
        elif self.gradient == "weight":
            for p in (readout.weight, readout.bias):
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            for gen in gens:
                w_dot, b_dot = tg.draw([readout.weight, readout.bias], self.distribution, gen)
                l_dot = float((delta * inp.mm(w_dot).add_(b_dot)).sum())  # L̇ = Σ ∂L/∂logits ⊙ ȧ
                tg.combine([l_dot], [[w_dot, b_dot]], out=[readout.weight.grad, readout.bias.grad],
                           directions=self.directions)
        else:
            for gen in gens:
                (u,) = tg.draw([logits], self.distribution, gen)
                l_dot = torch.linalg.vecdot(delta, u)
                est = u.mul_((l_dot / self.directions).unsqueeze(1))
                _add_grad(readout.weight, inp.tmm(est))
                _add_grad(readout.bias, est.sum(0))
        return loss


def _terms(inp: LayerInput, delta: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """What :meth:`ForwardForward.predicted_variance` needs of one layer: its parameter count n,
    ‖∇L‖² (of W and b), and per row the number m_i of units its tangent covers and
    ‖δ_i‖²(‖x_i‖² + 1), the squared norm of the row's exact contribution δ_i (x_i, 1)ᵀ."""
    gw, gb = inp.tmm(delta), delta.sum(0)
    return {
        "n": torch.tensor(float(gw.numel() + gb.numel())),
        "grad_sq": gw.double().square().sum() + gb.double().square().sum(),
        "m": mask.sum(1).double(),
        "m_sq": delta.double().square().sum(1) * (inp.row_sqnorms().double() + 1),
    }


def _group_names(model: nn.Module) -> list[str]:
    names = [f"layers.{i}" for i in range(len(model.layers))]  # type: ignore[arg-type]
    return names + (["readout"] if getattr(model, "readout", None) is not None else [])


@register()
class UnsupervisedForwardForward(ForwardForward):
    """Unsupervised Forward-Forward: hybrid-image negatives; labels train only the readout."""

    name: ClassVar[str] = "ff-unsupervised"

    def __init__(self, **options: Any) -> None:
        options.setdefault("data", "unsupervised")
        super().__init__(**options)


@register("ff-fg-w")
class ForwardGradientForwardForward(ForwardForward):
    """Forward-Forward whose layers (and readout) learn from forward gradients of their own losses:
    no backward pass anywhere. ``gradient="weight"`` (default) or ``"activity"``."""

    name: ClassVar[str] = "ff-fg"

    def __init__(self, **options: Any) -> None:
        options.setdefault("gradient", "weight")
        if options["gradient"] == "exact":
            raise ValueError("ForwardGradientForwardForward estimates gradients: gradient='weight' or 'activity'")
        super().__init__(**options)
