"""Weight perturbation of an MLP with full or low-rank tangents, the forward-mode pass written out.

For an MLP (an ``nn.Sequential`` of ``Flatten``, ``Linear``, ``ReLU``, ``Tanh``, ``Identity``)
with cross-entropy loss, :class:`LowRankForwardGradient` carries the tangent through the layers
by the chain rule written out, layer by layer:

    z = W h + c,   ż = W ḣ + Ẇ h + ċ,   then ḣ' = ż ⊙ σ'(z) through the activation,

and reads the directional derivative ∇L·v = ⟨∂L/∂s, ṡ⟩ off the logits s, with
∂L/∂s = (softmax(s) − onehot(y))/B. The forward gradient (∇L·v) v is written into ``.grad``.

With ``rank=r`` every weight matrix gets the tangent Ẇ = A Bᵀ/√r (A of shape m × r, B of shape
n × r, :class:`ffkit.tangents.LowRank`): its contribution Ẇ h = A (Bᵀ h)/√r costs r (m + n) per
example instead of m n, drawing it costs r (m + n) random numbers instead of m n, and the
estimate for W is the outer product (∇L·v) A Bᵀ/√r. With ``rank=None`` the tangents are full
(the same draws as :class:`~ffkit.methods.ForwardGradient`, so the two give the same estimate).
The variances are :func:`ffkit.theory.tangent_variance` with
:func:`ffkit.theory.low_rank_second_moment`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffkit import tangents as tg
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

__all__ = ["LowRankForwardGradient", "mlp_layers"]

_ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Identity, nn.Flatten)


def mlp_layers(model: nn.Module) -> list[nn.Module]:
    """The modules of an MLP ``model`` (an ``nn.Sequential`` of Flatten, Linear, ReLU, Tanh,
    Identity), checked; a clear error for anything else."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"LowRankForwardGradient trains an nn.Sequential MLP, got {type(model).__name__}")
    layers = list(model)
    for i, m in enumerate(layers):
        if not isinstance(m, (nn.Linear, *_ACTIVATIONS)):
            raise TypeError(f"module {i} is a {type(m).__name__}; an MLP here has only Linear, ReLU, Tanh, Flatten, Identity")
    if not any(isinstance(m, nn.Linear) for m in layers):
        raise ValueError("the MLP has no Linear layer")
    return layers


@register("low-rank-fg")
class LowRankForwardGradient(Method):
    """FG-W for an MLP with rank-``rank`` weight tangents (full ones with ``rank=None``).

    Args:
        rank: r >= 1, or ``None`` for full tangents.
        directions: K tangents per step, averaged.
        sampler: the distribution of the factors' (or the full tangents') entries.
        seed: tangent k of step t comes from ``ffkit.tangents.generator(seed, t, k)``, parameter
            after parameter (a weight's A, then its B, then its bias).

    The loss is the mean cross-entropy of the last layer's output.
    """

    name = "low-rank-forward-gradient"

    def __init__(
        self, rank: int | None = 1, directions: int = 1, sampler: str | tg.Distribution = tg.DEFAULT, *, seed: int | None = None
    ) -> None:
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"rank must be an int >= 1 or None (full tangents), got {rank!r}")
        self.rank = rank
        self.directions = check_directions(directions)
        self.distribution = tg.get(sampler)
        self.seed = check_seed(seed)
        self.t = 0

    def __repr__(self) -> str:
        return (f"LowRankForwardGradient(rank={self.rank}, directions={self.directions}, "
                f"sampler={self.distribution.name!r}, seed={self.seed})")

    def _draw(self, params: list[Tensor], gen: torch.Generator) -> list[Tensor | tg.LowRank]:
        if self.rank is None:
            return tg.draw(params, self.distribution, gen)
        return tg.draw_low_rank(params, self.rank, self.distribution, gen)

    @torch.no_grad()
    def step(self, model: nn.Module, batch: Batch) -> StepResult:
        layers = mlp_layers(model)
        x, y = inputs_targets(batch, self)
        linears = [m for m in layers if isinstance(m, nn.Linear)]
        params: list[nn.Parameter] = []
        for lin in linears:
            params += [p for p in (lin.weight, lin.bias) if p is not None]
        if any(not p.requires_grad for p in params):
            raise ValueError("LowRankForwardGradient perturbs every Linear parameter; unfreeze them")
        loss_value = None
        for k in range(self.directions):
            gen = tg.generator(self.seed, self.t, k, x.device)
            tangent = self._draw(params, gen)
            of = dict(zip(map(id, params), tangent))
            h, dh = x, None
            for m in layers:
                if isinstance(m, nn.Linear):
                    z = F.linear(h, m.weight, m.bias)
                    v = of[id(m.weight)]
                    c_dot = of[id(m.bias)] if m.bias is not None else None
                    # ż = W ḣ + Ẇ h + ċ, each product accumulated into one buffer
                    if isinstance(v, tg.LowRank):
                        part = (h @ v.right).div_(v.rank**0.5)  # Bᵀ h / √r, r numbers per example
                        if dh is not None:
                            dz = F.linear(dh, m.weight, c_dot).addmm_(part, v.left.T)
                        elif c_dot is not None:
                            dz = torch.addmm(c_dot, part, v.left.T)
                        else:
                            dz = part @ v.left.T
                    else:
                        dz = F.linear(h, v, c_dot)
                        if dh is not None:
                            dz.addmm_(dh, m.weight.T)
                    h, dh = z, dz
                elif isinstance(m, nn.ReLU):
                    h = h.clamp_min(0)
                    dh = dh.mul_(h.sign()) if dh is not None else None  # 1[z > 0] as a float mask
                elif isinstance(m, nn.Tanh):
                    h = torch.tanh(h)
                    dh = dh.mul_(1 - h.square()) if dh is not None else None
                elif isinstance(m, nn.Flatten):
                    h = m(h)
                    dh = m(dh) if dh is not None else None
            if dh is None:
                raise ValueError("no tangent reached the output")
            log_p = torch.log_softmax(h, dim=-1)
            loss = -log_p.gather(1, y[:, None]).mean()
            err = log_p.exp_()
            err[torch.arange(len(y), device=y.device), y] -= 1
            dd = float((err * dh).sum()) / len(y)
            if k == 0:
                loss_value = check_finite(loss, "the training loss")
            if not math.isfinite(dd):
                raise DivergenceError(f"the directional derivative is {dd}")
            scale = dd / self.directions
            for p, v in zip(params, tangent):
                if isinstance(v, tg.LowRank):
                    alpha = scale / v.rank**0.5
                    if p.grad is None:  # scale the m × r factor, not the m × n product
                        p.grad = (v.left * alpha) @ v.right.T
                    else:
                        p.grad.addmm_(v.left, v.right.T, alpha=alpha)
                elif p.grad is None:
                    p.grad = v.mul_(scale)
                else:
                    p.grad.add_(v, alpha=scale)
        self.t += 1
        assert loss_value is not None
        return StepResult(loss_value)
