"""Local losses and activity perturbation on a LocalMixer: Ren et al.'s (2023) six algorithms.

A :class:`~ffkit.local_mixer.LocalMixer` can be trained with one global loss (the final head's
cross-entropy L) or with *local* losses: the block heads' losses L_{b,p,g} per example b, patch p
and group g, with stop-gradients between blocks (:mod:`ffkit.local_mixer`). Its weights can get
their gradient by backprop, by perturbing the weights (FG-W) or by perturbing the activities
(FG-A). The six combinations of Ren et al.'s Table 3:

==========  ==========================  =======================================================
name        class                       what fills ``.grad`` of the blocks
==========  ==========================  =======================================================
BP          :class:`~ffkit.methods.Backprop`   ``L.backward()``
LG-BP       :class:`LocalBackprop`      ``(Σ_l L_l).backward()`` with stop-gradients between blocks
FG-W        :class:`WeightPerturbation`  (∇L·v) v, one weight tangent v for the batch (also
                                        orthogonal or low-rank tangents, ``tangent=``)
FG-A        :class:`ActivityPerturbation`  Σ_b (∇_u ℓ_b·u_b) u_b ⊙ m_b, pushed through the
                                        layer norm and an outer product with the layer's input
LG-FG-W     :class:`LocalWeightPerturbation`  v scaled entry by entry by the directional
                                        derivatives of the local losses the entry reaches
LG-FG-A     :class:`LocalActivityPerturbation`  FG-A with each tangent entry weighted by the
                                        directional derivative of its own local loss
==========  ==========================  =======================================================

**Activity perturbation** (FG-A). Every unit adds a per-example tangent u to its activities
after the layer norm and before the ReLU (:class:`~ffkit.local_mixer.Trace`); one forward-mode
pass with the weights held fixed carries all of them to the losses and gives, for every loss
L_j, its directional derivative d_j = ∇_u L_j · u. The estimate of ∂L/∂y at a unit is
d_j u ⊙ m, with m the ReLU's active units (an inactive unit's noise carries no signal, so it is
not used) and d_j the derivative of the loss (or losses) the entry reaches. Since
E[u uᵀ] = I it is unbiased. It becomes a weight gradient by the exact local rules: one backward
step through the layer norm (:func:`~ffkit.local_mixer.layer_norm_vjp`) and an outer product
with the unit's input (``param_grads`` of the layer). No backward pass runs through a block.

**Weight perturbation** (FG-W). The blocks' weights get a tangent v (drawn from
``ffkit.tangents.generator(seed, t, k)`` in ``named_parameters`` order); one forward-mode pass
gives the directional derivatives. Globally, g = (∇L·v) v. With local losses each entry of v
is scaled by the sum of the directional derivatives of the losses it is meant to reach
(``perturbation_scale`` of its layer: a group's rows by that group's losses, a token's row by
that patch's losses). Through the layer norm that follows every dense layer, a row of group g
also moves the other groups' features a little; those derivatives are left out, so the local
weight-perturbation estimate carries a small bias with respect to the local losses' gradient,
as in Ren et al.'s code. The chapter measures it.

**Heads** always get exact gradients: every head is one linear layer on a stop-gradient of its
input, so its gradient costs one small backward step. The block heads are trained only by the
local methods (the global ones never read them).

Each step averages K = ``directions`` tangents. Tangents default to Rademacher
(:data:`ffkit.tangents.DEFAULT`); Ren et al. use Gaussian ones (``sampler="gaussian"``).

**Engines.** The forward-mode pass runs either with the hand-written tangent rules of
:func:`~ffkit.local_mixer.tangent_forward` (``engine="jvp"``, the default) or with PyTorch's
:mod:`torch.autograd.forward_ad` through the model's ``forward`` (``engine="forward-ad"``).
Both compute the same directional derivatives (the tests compare them); the first costs about
what the plain operations cost, while PyTorch's forward AD spends most of a small layer's time
on dispatch (with PyTorch 2.13 on a CPU, a dual-number addition costs about 20 times a plain
one).

The functional cores :func:`activity_gradient` and :func:`weight_gradient` take the tangents
from the caller (any tangent source), so tests can feed them basis vectors and recover the
exact gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn

from ffkit import tangents as tg
from ffkit.local_mixer import GroupLinear, LocalMixer, Trace, layer_norm_jvp, layer_norm_vjp, tangent_forward, token_mean
from ffkit.methods.base import (
    Batch,
    DivergenceError,
    Method,
    StepResult,
    check_directions,
    check_finite,
    check_seed,
    inputs_targets,
    register,
)

__all__ = [
    "ENGINES",
    "ActivityPerturbation",
    "LocalActivityPerturbation",
    "LocalBackprop",
    "LocalWeightPerturbation",
    "MixerLosses",
    "WeightPerturbation",
    "activity_gradient",
    "activity_moments",
    "local_losses",
    "weight_gradient",
]

#: ``tangents(shape) -> Tensor``: where activity tangents come from.
TangentSource = Callable[[torch.Size], Tensor]


@dataclass
class MixerLosses:
    """The loss values of one pass: the final head's ``head`` and each block head's ``blocks``."""

    head: float
    blocks: list[float]

    def total(self, local: bool) -> float:
        """What a step reports: the final loss, or for local methods the sum of all local losses."""
        return self.head + sum(self.blocks) if local else self.head

    def details(self) -> dict[str, object]:
        return {"head_loss": self.head, "block_losses": list(self.blocks)}


def _mixer(model: nn.Module, method: object) -> LocalMixer:
    if not isinstance(model, LocalMixer):
        raise TypeError(f"{type(method).__name__} trains a ffkit.local_mixer.LocalMixer, got {type(model).__name__}")
    return model


def _add_grad(p: Tensor, g: Tensor) -> None:
    """``p.grad += g``; ``g`` must be a fresh tensor (it becomes ``p.grad`` when that is None)."""
    if not p.requires_grad:
        return
    if p.grad is None:
        p.grad = g
    else:
        p.grad.add_(g)


def local_losses(model: LocalMixer, x: Tensor, y: Tensor) -> tuple[Tensor, MixerLosses]:
    """Σ_l L_l + L_head with stop-gradients between blocks (LG-BP's objective), and its parts.

    L_l is block head l's mean cross-entropy on the spatial average of block l's output (the sum
    over patches and groups of the local losses L_{b,p,g} has the same gradient), L_head the
    final head's on a stop-gradient of the last block.
    """
    trace = Trace(local=True)
    head = F.cross_entropy(model(x, trace=trace), y)
    blocks = [F.cross_entropy(model.block_logits(i, h), y) for i, h in enumerate(trace.blocks)]
    total = head + sum(blocks)
    return total, MixerLosses(float(head.detach()), [float(b.detach()) for b in blocks])


# --------------------------------------------------------------------------- engines, heads, directional derivatives

#: How the tangents are carried forward: ``"jvp"``, the hand-written rules of
#: :func:`~ffkit.local_mixer.tangent_forward` (the default: the cost of the plain operations), or
#: ``"forward-ad"``, PyTorch's :mod:`torch.autograd.forward_ad` dual numbers through
#: :meth:`~ffkit.local_mixer.LocalMixer.forward` (the reference the tests compare with).
ENGINES = ("jvp", "forward-ad")

Pairs = list[tuple[Tensor, "Tensor | None"]]


def _step_result(method: Any, passes: Iterable[MixerLosses]) -> StepResult:
    """Run the K passes of one step (each adds its 1/K share to ``.grad``), advance the method's
    step counter, and report the losses of the first pass."""
    first = None
    for k, losses in enumerate(passes):
        if k == 0:
            first = losses
    method.t += 1
    assert first is not None
    return StepResult(check_finite(first.total(method.local), "the training loss"), first.details())


def _check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    return engine


def _run(
    model: LocalMixer,
    x: Tensor,
    *,
    local: bool,
    engine: str,
    tangents: TangentSource | None = None,
    weight_tangent: list[tuple[str, nn.Parameter, nn.Module, Tensor]] | None = None,
) -> tuple[Trace, Pairs]:
    """One forward-mode pass through the blocks; the trace and (output, tangent) of every block."""
    if engine == "jvp":
        by_layer: dict[nn.Module, tuple[Tensor, Tensor]] = {}
        if weight_tangent:
            parts: dict[nn.Module, dict[str, Tensor]] = {}
            for _, p, layer, v in weight_tangent:
                parts.setdefault(layer, {})["weight" if p is layer.weight else "bias"] = v
            for layer, part in parts.items():
                w = part.get("weight", torch.zeros_like(layer.weight))
                b = part.get("bias", torch.zeros_like(layer.bias))
                by_layer[layer] = (w, b)
        trace = tangent_forward(model, x, local=local, tangents=tangents, weight_tangents=by_layer)
        return trace, list(zip(trace.blocks, trace.block_tangents))
    trace = Trace(local=local, tangents=tangents)
    with fwAD.dual_level():
        if weight_tangent:
            duals = {name: fwAD.make_dual(p.detach(), tg.materialize(v)) for name, p, _, v in weight_tangent}
            torch.func.functional_call(model, duals, (x,), {"trace": trace}, strict=False)
        else:
            model(x, trace=trace)
        pairs = []
        for h in trace.blocks:
            primal, tangent = fwAD.unpack_dual(h)
            pairs.append((primal, None if tangent is None else tangent.clone()))
    return trace, pairs


def _exact_head(head: nn.Linear, features: Tensor, y: Tensor, *, fill: bool) -> tuple[float, Tensor]:
    """A head's mean cross-entropy on ``features`` f (B, C) and δ = ∂loss/∂f; with ``fill`` its
    exact parameter gradient is added to ``.grad``.

    The head is one linear layer, so everything is closed form: with s = f Wᵀ + c and
    e = (softmax(s) − onehot(y))/B, ∂loss/∂s = e, δ = e W, ∂loss/∂W = eᵀ f, ∂loss/∂c = Σ_b e_b.
    """
    logits = F.linear(features, head.weight, head.bias)
    log_p = torch.log_softmax(logits, dim=-1)
    loss = -log_p.gather(1, y[:, None]).mean()
    err = log_p.exp_()
    err[torch.arange(len(y), device=y.device), y] -= 1
    err.div_(len(y))
    if fill:
        _add_grad(head.weight, err.T @ features)
        _add_grad(head.bias, err.sum(0))
    return check_finite(loss, "the training loss"), err @ head.weight


def _directional(model: LocalMixer, pairs: Pairs, y: Tensor, local: bool, fill_heads: bool) -> tuple[list[Tensor], MixerLosses]:
    """The directional derivatives of the losses along the tangents of one pass.

    Local: one tensor (B, P, G) per block, d_{b,p,g} = (1/P) ⟨ḟ_{b,p,g}, δ_{b,g}⟩ with ḟ the tangent
    of the block head's features and δ = ∂L_l/∂(spatial average). Global: one tensor (B,),
    d_b = ⟨ḟ_b, δ_b⟩ for the final head's features. δ includes the 1/B of the mean. The heads'
    losses are linear layers on a layer norm, so ḟ follows from :func:`layer_norm_jvp`.
    """
    channels, groups = model.config.channels, model.groups
    last, d_last = pairs[-1]
    f, df, _, _ = layer_norm_jvp(token_mean(last), None if local or d_last is None else token_mean(d_last), channels)
    head_loss, delta = _exact_head(model.head, f, y, fill=fill_heads)
    if not local:
        if df is None:
            raise ValueError("no tangent reached the final head")
        return [(df * delta).sum(-1)], MixerLosses(head_loss, [])
    dds, block_losses = [], []
    for index, (h, dh) in enumerate(pairs):
        if dh is None:
            raise ValueError(f"no tangent reached block {index}'s head")
        f, df, _, _ = layer_norm_jvp(h, dh, channels // groups)
        loss, delta_l = _exact_head(model.block_heads[index], token_mean(f), y, fill=fill_heads)
        block_losses.append(loss)
        per_group = df.unflatten(-1, (groups, -1)) * delta_l.unflatten(-1, (groups, -1))[:, None]
        dds.append(per_group.sum(-1).div_(h.shape[1]))
    return dds, MixerLosses(head_loss, block_losses)


def _check_dd(dds: Sequence[Tensor]) -> None:
    for dd in dds:
        if not bool(torch.isfinite(dd).all()):
            raise DivergenceError("a directional derivative is NaN or infinite")


def _weighted(u: Tensor, dd: Tensor, scope: str, groups: int) -> Tensor:
    """Each entry (b, p, c) of a site's (masked) tangent u times the directional derivative of the
    loss it reaches: d_b (global), d_{b,p,g(c)} (scope "group") or Σ_g d_{b,p,g} (scope "patch")."""
    if dd.ndim == 1:  # global: one per example
        return u.mul_(dd[:, None, None])
    if scope == "patch":
        return u.mul_(dd.sum(-1, keepdim=True))
    return u.unflatten(-1, (groups, -1)).mul_(dd[..., None]).flatten(-2)


# --------------------------------------------------------------------------- functional cores


def activity_gradient(
    model: LocalMixer,
    x: Tensor,
    y: Tensor,
    tangents: TangentSource,
    *,
    local: bool,
    scale: float = 1.0,
    fill_heads: bool = True,
    engine: str = "jvp",
) -> MixerLosses:
    """Add ``scale`` × one activity-perturbation estimate (FG-A, or LG-FG-A with ``local``) to the
    blocks' ``.grad``; with ``fill_heads`` add the heads' exact gradients too. Returns the losses.

    ``tangents(shape)`` supplies each unit's tangent u (shape (B, P, C)), unit after unit in the
    order they run. One forward-mode pass with the weights fixed gives the directional
    derivatives d; each unit's estimate of ∂L/∂y is d u ⊙ m (m: the ReLU's active units), taken
    through the post-norm's backward step and the layer's outer-product rule.
    """
    model = _mixer(model, activity_gradient)
    _check_engine(engine)
    with torch.no_grad():
        trace, pairs = _run(model, x, local=local, engine=engine, tangents=tangents)
        dds, losses = _directional(model, pairs, y, local, fill_heads)
        _check_dd(dds)
        g = model.groups
        for site in trace.sites:
            dd = dds[0] if not local else dds[site.block]
            assert site.mask is not None
            grad_y = _weighted(site.u.mul_(site.mask), dd, site.unit.scope, g)
            grad_z = layer_norm_vjp(site.z, grad_y, site.unit.post, mean=site.mean, rstd=site.rstd)
            gw, gb = site.unit.linear.param_grads(site.h, grad_z)
            if scale != 1.0:
                gw.mul_(scale)
                gb.mul_(scale)
            _add_grad(site.unit.linear.weight, gw)
            _add_grad(site.unit.linear.bias, gb)
    return losses


def _backbone(model: LocalMixer) -> list[tuple[str, nn.Parameter, nn.Module]]:
    """(name, parameter, layer) of every trainable block parameter, in ``named_parameters`` order."""
    owner = {}
    for unit in model.units():
        for p in unit.linear.parameters():
            owner[id(p)] = unit.linear
    return [(n, p, owner[id(p)]) for n, p in model.backbone_parameters() if p.requires_grad]


def weight_gradient(
    model: LocalMixer,
    x: Tensor,
    y: Tensor,
    tangent: Sequence[Tensor | tg.LowRank],
    *,
    local: bool,
    scale: float = 1.0,
    fill_heads: bool = True,
    engine: str = "jvp",
) -> MixerLosses:
    """Add ``scale`` × one weight-perturbation estimate (FG-W, or LG-FG-W with ``local``) to the
    blocks' ``.grad``; with ``fill_heads`` add the heads' exact gradients too. Returns the losses.

    ``tangent`` holds v for every trainable block parameter in ``named_parameters`` order (the
    heads excluded); a weight matrix's v may be a :class:`~ffkit.tangents.LowRank`. Globally g = (∇L·v) v; locally each entry of v is scaled by the summed
    directional derivatives of the local losses it reaches (the layer's ``perturbation_scale``).
    """
    model = _mixer(model, weight_gradient)
    _check_engine(engine)
    named = _backbone(model)
    if len(tangent) != len(named):
        raise ValueError(f"the tangent has {len(tangent)} tensors for {len(named)} trainable block parameters")
    for (name, p, _), v in zip(named, tangent):
        if v.shape != p.shape:
            raise ValueError(f"tangent for {name} has shape {tuple(v.shape)}, the parameter {tuple(p.shape)}")
    with torch.no_grad():
        _, pairs = _run(
            model, x, local=local, engine=engine, weight_tangent=[(n, p, layer, v) for (n, p, layer), v in zip(named, tangent)]
        )
        dds, losses = _directional(model, pairs, y, local, fill_heads)
        _check_dd(dds)
        scales: dict[int, tuple[Tensor, Tensor]] = {}
        total = dds[0].sum() if not local else None
        for (name, p, layer), v in zip(named, tangent):
            if total is not None:
                factor: Tensor = total
            else:
                if id(layer) not in scales:
                    scales[id(layer)] = layer.perturbation_scale(dds[int(name.split(".")[1])])
                w_scale, b_scale = scales[id(layer)]
                factor = w_scale if p is layer.weight else b_scale
            _add_grad(p, tg.materialize(v) * (factor * scale))
    return losses


def activity_moments(model: LocalMixer, x: Tensor, y: Tensor, *, local: bool) -> dict[str, np.ndarray]:
    """The per-loss ingredients of :func:`ffkit.theory.activity_variance` for (LG-)FG-A on a batch.

    Returns ``grad_sq`` (‖G_j‖²), ``site_grad_sq`` (‖a_j‖²), ``fan`` (F_j) and ``weighted_fan``
    (H_j), one entry per loss j: per example (global) or per (example, group) (local). a_j, the
    gradient of L_j with respect to the perturbed activities, comes from autograd; ‖M_j e_i‖² is
    (J²)_ii (‖h‖² + 1), with J the post-norm's Jacobian, (J²)_ii = σ⁻² (1 − 1/s − (2 − ‖ŷ‖²/s) ŷ_i²/s)
    on a segment of s entries, and h the layer input that entry i's row multiplies (the bias adds
    the 1). Implemented for one-block, one-patch LocalMixers (S/1/1, M/1/16), whose losses own
    disjoint sets of activities and whose layers have no token mixing.
    """
    model = _mixer(model, activity_moments)
    if model.tokens != 1 or model.config.blocks != 1:
        raise ValueError("activity_moments is implemented for one-block, one-patch LocalMixers (S/1/1, M/1/16)")
    perturb: list[Tensor] = []

    def zeros(shape: torch.Size) -> Tensor:
        t = torch.zeros(shape, dtype=x.dtype, device=x.device, requires_grad=True)
        perturb.append(t)
        return t

    trace = Trace(local=local, tangents=zeros, additive=True)
    with torch.enable_grad():
        logits = model(x, trace=trace)
        if local:
            loss = sum(F.cross_entropy(model.block_logits(i, h), y) for i, h in enumerate(trace.blocks))
        else:
            loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, perturb)
    groups, channels = model.groups, model.config.channels
    size = channels // groups
    shape = (len(x), groups) if local else (len(x),)
    out = {k: torch.zeros(shape, dtype=torch.float64) for k in ("grad_sq", "site_grad_sq", "fan", "weighted_fan")}

    def per_unit(t: Tensor) -> Tensor:  # (B, C) -> per loss
        t = t.to(torch.float64)
        return t.unflatten(-1, (groups, size)).sum(-1) if local else t.sum(-1)

    with torch.no_grad():
        for site, a in zip(trace.sites, grads):
            a, h, z = a[:, 0], site.h[:, 0], site.z[:, 0]
            assert site.mask is not None
            mask = site.mask[:, 0]
            s = site.unit.post
            zs = z.unflatten(-1, (-1, s))
            y_hat, _, rstd = torch.native_layer_norm(zs, (s,), None, None, 1e-5)
            y_norm = y_hat.square().sum(-1, keepdim=True) / s
            diag = (rstd.square() * (1 - 1 / s - (2 - y_norm) * y_hat.square() / s)).flatten(-2)  # (B, C)
            if isinstance(site.unit.linear, GroupLinear):
                x_sq = h.unflatten(-1, (groups, size)).square().sum(-1) + 1  # (B, G)
                x_entry = x_sq.repeat_interleave(size, dim=-1)
                back = layer_norm_vjp(z, a, s)  # per group: stays in its group
                g_sq = back.square().unflatten(-1, (groups, size)).sum(-1) * x_sq
                grad_sq = g_sq if local else g_sq.sum(-1)
            else:
                x_sq = h.square().sum(-1, keepdim=True) + 1  # (B, 1)
                x_entry = x_sq.expand_as(a)
                if local:  # the loss of group g owns a's entries of group g; the norm spreads them over C
                    owned = a.unflatten(-1, (groups, size))
                    embedded = torch.zeros(len(a), groups, groups, size, dtype=a.dtype, device=a.device)
                    embedded[:, torch.arange(groups), torch.arange(groups)] = owned
                    back = layer_norm_vjp(z[:, None].expand(-1, groups, -1), embedded.flatten(-2), s)
                    grad_sq = back.square().sum(-1) * x_sq
                else:
                    grad_sq = layer_norm_vjp(z, a, s).square().sum(-1) * x_sq[:, 0]
            weight = diag * x_entry
            out["grad_sq"] += grad_sq.to(torch.float64)
            out["site_grad_sq"] += per_unit(a.square())
            out["fan"] += per_unit(weight * mask)
            out["weighted_fan"] += per_unit(a.square() * weight)
    return {k: v.numpy() for k, v in out.items()}


# --------------------------------------------------------------------------- methods


class _MixerMethod(Method):
    """A LocalMixer method with K seeded tangents per step."""

    local = False

    def __init__(
        self, directions: int = 1, sampler: str | tg.Distribution = tg.DEFAULT, *, seed: int | None = None, engine: str = "jvp"
    ) -> None:
        self.directions = check_directions(directions)
        self.distribution = tg.get(sampler)
        self.seed = check_seed(seed)
        self.engine = _check_engine(engine)
        self.t = 0

    @property
    def sampler(self) -> str:
        return self.distribution.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(directions={self.directions}, sampler={self.sampler!r}, seed={self.seed})"

    def _pass(self, model: LocalMixer, x: Tensor, y: Tensor, gen: torch.Generator, scale: float, first: bool) -> MixerLosses:
        raise NotImplementedError

    def step(self, model: nn.Module, batch: Batch) -> StepResult:
        model = _mixer(model, self)
        x, y = inputs_targets(batch, self)
        passes = (self._pass(model, x, y, tg.generator(self.seed, self.t, k, x.device), 1.0 / self.directions, k == 0)
                  for k in range(self.directions))
        return _step_result(self, passes)


@register("lg-bp")
class LocalBackprop(Method):
    """LG-BP: backprop of the local losses, Σ_l L_l + L_head with stop-gradients between blocks
    (:func:`local_losses`). Each block learns from its own head; the final head reads a
    stop-gradient of the last block."""

    name = "local-backprop"

    def step(self, model: nn.Module, batch: Batch) -> StepResult:
        model = _mixer(model, self)
        x, y = inputs_targets(batch, self)
        total, losses = local_losses(model, x, y)
        check_finite(total.detach(), "the training loss")
        total.backward()
        return StepResult(float(total.detach()), losses.details())


@register("fg-a")
class ActivityPerturbation(_MixerMethod):
    """FG-A: activity perturbation of the global loss (see the module docstring).

    Args:
        directions: K tangents per step, averaged.
        sampler: the distribution of the activity tangents (:mod:`ffkit.tangents`).
        seed: the run's tangent seed; tangent k of step t comes from
            ``ffkit.tangents.generator(seed, t, k)``, unit after unit.
        engine: ``"jvp"`` (hand-written tangent rules) or ``"forward-ad"`` (:data:`ENGINES`).
    """

    name = "activity-perturbation"

    def _pass(self, model: LocalMixer, x: Tensor, y: Tensor, gen: torch.Generator, scale: float, first: bool) -> MixerLosses:
        dist = self.distribution

        def draw(shape: torch.Size) -> Tensor:
            return dist.fill_(torch.empty(shape, dtype=x.dtype, device=x.device), gen)

        return activity_gradient(model, x, y, draw, local=self.local, scale=scale, fill_heads=first, engine=self.engine)


@register("lg-fg-a")
class LocalActivityPerturbation(ActivityPerturbation):
    """LG-FG-A: activity perturbation of the local losses, each tangent entry weighted by the
    directional derivative of the local loss (block, example, patch, group) it reaches."""

    name = "local-activity-perturbation"
    local = True


@register("weight-perturbation")
class WeightPerturbation(_MixerMethod):
    """FG-W on a LocalMixer: a weight tangent for the blocks, exact gradients for the heads.

    (The generic :class:`~ffkit.methods.ForwardGradient` perturbs every parameter, heads
    included.)

    Args:
        directions, sampler, seed, engine: as for :class:`ActivityPerturbation`.
        tangent: the tangent kind (:data:`ffkit.tangents.KINDS`): ``"iid"`` entries,
            ``"orthogonal"`` (the K directions orthogonal to each other) or ``"low-rank"``
            (every weight matrix gets a rank-``rank`` tangent).
        rank: the rank of low-rank tangents.
    """

    name = "mixer-fg-w"

    def __init__(
        self,
        directions: int = 1,
        sampler: str | tg.Distribution = tg.DEFAULT,
        *,
        seed: int | None = None,
        engine: str = "jvp",
        tangent: str = "iid",
        rank: int = 1,
    ) -> None:
        super().__init__(directions, sampler, seed=seed, engine=engine)
        if tangent not in tg.KINDS:
            raise ValueError(f"unknown tangent kind {tangent!r}; choose one of {', '.join(tg.KINDS)}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be an int >= 1, got {rank!r}")
        self.tangent = tangent
        self.rank = rank

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(directions={self.directions}, sampler={self.sampler!r}, "
                f"tangent={self.tangent!r}, rank={self.rank}, seed={self.seed})")

    def step(self, model: nn.Module, batch: Batch) -> StepResult:
        model = _mixer(model, self)
        x, y = inputs_targets(batch, self)
        named = _backbone(model)
        params = [p for _, p, _ in named]
        matrices = [p is layer.weight and p.ndim == 2 for _, p, layer in named]
        draws = tg.directions(params, self.directions, kind=self.tangent, distribution=self.distribution,
                              seed=self.seed, step=self.t, rank=self.rank, matrices=matrices)
        passes = (weight_gradient(model, x, y, v, local=self.local, scale=1.0 / self.directions,
                                  fill_heads=k == 0, engine=self.engine)
                  for k, v in enumerate(draws))
        return _step_result(self, passes)


@register("lg-fg-w")
class LocalWeightPerturbation(WeightPerturbation):
    """LG-FG-W: weight perturbation of the local losses; each entry of the weight tangent is
    scaled by the directional derivatives of the local losses it is meant to reach."""

    name = "local-weight-perturbation"
    local = True
