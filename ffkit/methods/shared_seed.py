"""Data parallelism that shares a seed instead of a gradient, and the standard all-reduce.

In data parallelism each of the W workers holds a copy of the parameters θ ∈ Rⁿ and a shard of the
global batch. With the per-shard loss a *mean*, the global loss is the average of the shard
losses, f(θ) = (1/W) Σ_r f_r(θ), and so is every derivative of it.

* **Standard data parallelism** (:class:`AllReduceGradient`) computes ∇f_r(θ) by backprop on each
  worker and all-reduces it: every step every worker hands n numbers (4n bytes in float32) to the
  collective, and gets back ∇f = (1/W) Σ_r ∇f_r.
* **Shared-seed forward gradient** (:class:`SharedSeedForwardGradient`). Every worker draws
  tangent k of step t from ``ffkit.tangents.generator(seed, t, k)``, so all of them hold the same
  v_1, …, v_K without sending any. Each worker computes its shard's K directional derivatives
  ∇f_r·v_k (one forward-mode pass each) and all-reduces those K scalars (4K bytes). By linearity
  (1/W) Σ_r ∇f_r·v_k = ∇f·v_k, so every worker forms the same forward gradient
  g = (1/K) Σ_k (∇f·v_k) v_k and takes the same step: the replicas never drift apart, and a
  W-worker run follows the one-worker run on the same global batch up to rounding.

The shared-seed step never holds K tangents at once: it computes the K numbers one tangent at a
time, averages them, and then draws the tangents again to form g. With ``lean=True`` it also
never holds g: the tangents are drawn layer by layer and the SGD update is applied in place, as in
:func:`ffkit.methods.lean.lean_forward_gradient_step`, with the all-reduce between the two phases.

The collectives, and the process supervision that starts workers, are in :mod:`ffkit.distributed`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ffkit import tangents as tg
from ffkit.distributed import CommStats, all_reduce_mean, check_agreement
from ffkit.methods.base import (
    Batch,
    DivergenceError,
    LossFn,
    LossMethod,
    StepResult,
    check_directions,
    check_lr,
    inputs_targets,
    register,
)
from ffkit.methods.forward_gradient import add_to_grad, module_directional
from ffkit.methods.lean import lean_forward_gradient_step

__all__ = ["AllReduceGradient", "SharedSeedForwardGradient"]


@register("shared-seed-fg")
class SharedSeedForwardGradient(LossMethod):
    """Shared-seed data-parallel forward gradients (a :class:`~ffkit.methods.base.Method`).

    Each call is one step t (``self.t``, from 0):

    1. for k = 1..K: draw v_k from ``tangents.generator(seed, t, k)`` (identical on every worker)
       and compute the shard's ∇f_r·v_k in forward mode;
    2. average the K numbers over the workers (:func:`ffkit.distributed.all_reduce_mean`: K
       scalars, 4K bytes in float32);
    3. add g = (1/K) Σ_k (∇f·v_k) v_k to each ``.grad`` (drawing v_2, …, v_K again), or, with
       ``lean=True``, apply θ ← θ − η g in place without ever holding g.

    Any ``torch.optim`` optimizer then takes the same step on every worker. The first call checks
    that every worker has the same K, seed, step, sampler and n (its bytes go to
    ``setup_stats``, not ``stats``). Raises :class:`~ffkit.methods.base.DivergenceError` on every
    worker at once if an averaged directional derivative is not finite (one worker's NaN would
    otherwise reach all of them).

    Args:
        directions: K ≥ 1.
        seed: the shared tangent seed; every worker must pass the same one.
        sampler: the tangent distribution (Rademacher by default).
        stats: a :class:`~ffkit.distributed.CommStats` that counts the step's communication.
        lean: apply the SGD step in place, streaming tangents layer by layer (an
            ``nn.Sequential`` model; ``lr`` required; :func:`ffkit.train.fit` then takes no
            optimizer).
        lr: the SGD learning rate of the lean step.
        loss: ``loss(output, target)`` for :meth:`step`; cross-entropy by default.
    """

    name = "shared-seed-forward-gradient"

    def __init__(
        self,
        directions: int = 1,
        *,
        seed: int = 0,
        sampler: str | tg.Distribution = tg.DEFAULT,
        stats: CommStats | None = None,
        lean: bool = False,
        lr: float | None = None,
        loss: LossFn | None = None,
    ) -> None:
        super().__init__(loss)
        self.directions = check_directions(directions)
        tg.mix_seed(seed, 0)  # validates the seed
        self.seed = seed
        self.distribution = tg.get(sampler)
        self.stats = stats if stats is not None else CommStats()
        if not isinstance(lean, bool):
            raise TypeError(f"lean must be True or False, got {lean!r}")
        if lean and lr is None:
            raise ValueError("the lean shared-seed step applies SGD itself and needs lr")
        if not lean and lr is not None:
            raise ValueError("lr belongs to the lean step; without lean=True the optimizer sets the rate")
        self.lean = lean
        self.applies_update = lean  # type: ignore[misc]
        self.lr = check_lr(lr) if lean else None
        self.t = 0
        #: cumulative wall-clock seconds of the local work: drawing tangents, the K JVPs, forming g
        self.seconds = {"sample": 0.0, "jvp": 0.0, "update": 0.0}
        #: the one-off check, at the first call, that all workers agree on K, seed, step, sampler, n
        self.setup_stats = CommStats()
        self._agreed = False

    @property
    def sampler(self) -> str:
        """The name of the tangent distribution."""
        return self.distribution.name

    def __repr__(self) -> str:
        return (f"SharedSeedForwardGradient(directions={self.directions}, seed={self.seed}, "
                f"sampler={self.sampler!r}, lean={self.lean})")

    def _agree(self, model: nn.Module) -> None:
        if self._agreed:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (requires_grad=True)")
        check_agreement(
            {"directions K": self.directions, "seed": self.seed % 2**62, "step": self.t,
             "sampler": tg.names().index(self.sampler), "parameters n": sum(p.numel() for p in params),
             "lean": int(self.lean)},
            device=params[0].device, stats=self.setup_stats, what="shared-seed forward gradient",
        )
        self._agreed = True

    def _reduce(self, dots: Tensor) -> Tensor:
        all_reduce_mean(dots, self.stats, what=f"shared-seed step {self.t}")
        if not bool(torch.isfinite(dots).all()):
            raise DivergenceError(f"an averaged directional derivative became {dots.tolist()} at step {self.t}")
        return dots

    def grad(self, model: nn.Module, closure: Callable[[], Tensor]) -> Tensor:
        if self.lean:
            raise TypeError("the lean shared-seed step updates the parameters itself: call step(model, batch)")
        self._agree(model)
        named, primals, directional = module_directional(model, closure, finite=False)
        device = primals[0].device
        dist, k_total = self.distribution, self.directions
        sample = jvp = 0.0
        first: list[Tensor] = []
        dots: list[float] = []
        value: Tensor | None = None
        with torch.no_grad():
            scratch: list[Tensor] | None = None
            for k in range(k_total):
                t0 = time.perf_counter()
                v = tg.draw(primals, dist, tg.generator(self.seed, self.t, k, device), out=scratch)
                t1 = time.perf_counter()
                primal, dot = directional(v)
                jvp += time.perf_counter() - t1
                sample += t1 - t0
                if k == 0:
                    first, value = v, primal
                    scratch = [torch.empty_like(p) for p in primals] if k_total > 1 else None
                dots.append(dot)
            d = self._reduce(torch.tensor(dots, dtype=primals[0].dtype, device=device))
            t3 = time.perf_counter()
            g = tg.combine(d[:1], [first], directions=k_total)
            for k in range(1, k_total):
                assert scratch is not None
                v = tg.draw(primals, dist, tg.generator(self.seed, self.t, k, device), out=scratch)
                tg.combine(d[k : k + 1], [v], out=g, directions=k_total)
            add_to_grad([p for _, p in named], g)
        self.seconds["sample"] += sample
        self.seconds["jvp"] += jvp
        self.seconds["update"] += time.perf_counter() - t3
        self.t += 1
        assert value is not None
        return value

    def step(self, model: nn.Module, batch: Batch) -> StepResult:
        if not self.lean:
            return super().step(model, batch)
        self._agree(model)
        x, y = inputs_targets(batch, self)
        assert self.lr is not None
        result = lean_forward_gradient_step(
            model,  # type: ignore[arg-type]
            x, lambda out: self.loss(out, y), lr=self.lr, seed=self.seed, step=self.t,
            directions=self.directions, sampler=self.distribution, reduce=self._reduce,
        )
        self.t += 1
        return StepResult(loss=result.loss, details={"dots": result.dots.tolist()})


@register("all-reduce-bp")
class AllReduceGradient(LossMethod):
    """Standard data parallelism: backprop on the shard, then the full gradient averaged over the
    workers in one :func:`~ffkit.distributed.all_reduce_mean` of n numbers (4n bytes in float32),
    added to each ``.grad`` (set if ``None``), as ``loss.backward()`` would. Returns the shard's loss.
    """

    name = "all-reduce-backprop"

    def __init__(self, *, stats: CommStats | None = None, loss: LossFn | None = None) -> None:
        super().__init__(loss)
        self.stats = stats if stats is not None else CommStats()
        self.t = 0
        #: the one-off check, at the first call, that all workers agree on the step and on n
        self.setup_stats = CommStats()
        self._agreed = False

    def grad(self, model: nn.Module, closure: Callable[[], Tensor]) -> Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        if not self._agreed:
            check_agreement({"step": self.t, "parameters n": sum(p.numel() for p in params)},
                            device=params[0].device, stats=self.setup_stats, what="all-reduced gradient")
            self._agreed = True
        earlier = [p.grad for p in params]  # only this closure's gradient is averaged
        for p in params:
            p.grad = None
        try:
            loss = closure()
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ValueError("closure() must return a scalar loss tensor")
            loss.backward()
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        finally:
            for p, e in zip(params, earlier):
                p.grad = e
        flat = torch.cat([g.reshape(-1) for g in grads])
        all_reduce_mean(flat, self.stats, what=f"all-reduce step {self.t}")
        if not bool(torch.isfinite(flat).all()):
            raise DivergenceError(f"the averaged gradient is not finite at step {self.t}")
        offset = 0
        with torch.no_grad():
            for p in params:
                g = flat[offset : offset + p.numel()].view_as(p)
                add_to_grad([p], [g.clone()])
                offset += p.numel()
        self.t += 1
        return loss.detach()
