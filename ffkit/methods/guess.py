"""Forward gradients along a guessed direction (Fournier et al. 2023), on a LocalMixer.

A random tangent v makes (∇L·v) v unbiased but almost orthogonal to ∇L (cos ≈ √(2/(πn))). A
*guess* U of the gradient, cheap to compute, makes a better tangent: one forward-mode pass gives
∇L·U, and

    g = (∇L·U) U / ‖U‖²

is the projection of ∇L onto U. It is biased, E[g] = (U Uᵀ/‖U‖²) ∇L for a fixed guess, with
‖∇L − g‖² = (1 − cos²(U, ∇L)) ‖∇L‖², and has no variance beyond the guess's own; its cosine
with ∇L is |cos(U, ∇L)|. Fournier et al. take U from local losses. Here the guess is the
gradient of the LocalMixer's local losses (what LG-BP follows, :func:`~ffkit.methods.local.local_losses`),
optionally mixed with a random tangent: U = Û + σ z/√n with Û the unit guess, z ~ the tangent
distribution, σ = ``noise`` (σ = 0: the pure guess; large σ: a random direction).

The global loss is the final head's cross-entropy; the heads get exact gradients, as in the
other LocalMixer methods (:mod:`ffkit.methods.local`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ffkit import tangents as tg
from ffkit.methods.base import Batch, Method, StepResult, check_finite, check_seed, inputs_targets, register
from ffkit.methods.local import _add_grad, _backbone, _check_engine, _directional, _mixer, _run, local_losses

__all__ = ["GuessedForwardGradient"]


@register("guess-fg")
class GuessedForwardGradient(Method):
    """The projection of the global gradient onto a guessed direction (Fournier et al. 2023).

    Args:
        noise: σ >= 0, the weight of a random tangent mixed into the unit guess (0: none).
        sampler: the distribution of that random tangent.
        seed: its seed (tangent of step t from ``ffkit.tangents.generator(seed, t, 0)``).
        engine: how the forward-mode pass runs (:data:`ffkit.methods.local.ENGINES`).

    A step's ``details`` hold ∇L·U (``"dd"``) and ‖U‖ (``"guess_norm"``).
    """

    name = "guessed-forward-gradient"

    def __init__(
        self, noise: float = 0.0, sampler: str | tg.Distribution = tg.DEFAULT, *, seed: int | None = None, engine: str = "jvp"
    ) -> None:
        if not (isinstance(noise, (int, float)) and not isinstance(noise, bool) and math.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        self.noise = float(noise)
        self.distribution = tg.get(sampler)
        self.seed = check_seed(seed)
        self.engine = _check_engine(engine)
        self.t = 0

    def __repr__(self) -> str:
        return f"GuessedForwardGradient(noise={self.noise}, sampler={self.distribution.name!r}, seed={self.seed})"

    def guess(self, model: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
        """U for the blocks' trainable parameters, in ``named_parameters`` order."""
        named = _backbone(_mixer(model, self))
        params = [p for _, p, _ in named]
        with torch.enable_grad():
            total, _ = local_losses(model, x, y)
            grads = torch.autograd.grad(total, params, allow_unused=True)
        u = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
        norm = math.sqrt(sum(float(g.square().sum()) for g in u))
        if self.noise == 0.0:
            return u
        n = sum(p.numel() for p in params)
        z = tg.draw(params, self.distribution, tg.generator(self.seed, self.t, 0, x.device))
        scale = self.noise / math.sqrt(n)
        return [g / (norm if norm > 0 else 1.0) + scale * zi for g, zi in zip(u, z)]

    @torch.no_grad()
    def step(self, model: nn.Module, batch: Batch) -> StepResult:
        model = _mixer(model, self)
        x, y = inputs_targets(batch, self)
        named = _backbone(model)
        u = self.guess(model, x, y)
        norm_sq = sum(float(g.square().sum()) for g in u)
        if norm_sq == 0.0:
            raise ValueError("the guessed direction is zero")
        _, pairs = _run(model, x, local=False, engine=self.engine,
                        weight_tangent=[(n, p, layer, g) for (n, p, layer), g in zip(named, u)])
        dds, losses = _directional(model, pairs, y, False, True)
        dd = check_finite(dds[0].sum(), "the directional derivative")
        for (_, p, _), g in zip(named, u):
            _add_grad(p, g * (dd / norm_sq))
        self.t += 1
        return StepResult(check_finite(losses.head, "the training loss"),
                          {"dd": dd, "guess_norm": math.sqrt(norm_sq)})
