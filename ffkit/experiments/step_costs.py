"""What one training step costs: forward-gradient variants timed side by side with backprop.

A *step* is what :func:`ffkit.train.fit` does per batch: ``zero_grad``, the method's ``step``
(filling ``.grad``) and a plain SGD update. :func:`mlp_variants` and :func:`mixer_variants`
build the steps to compare on one model and one batch; :func:`time_steps` times them with
:func:`ffkit.bench.interleaved` (round-robin in one process, so that load on the machine hits
all of them alike) and returns each variant's ratio to a baseline.

* MLPs (:data:`MLP_GRID`, Baydin et al.'s 784-1024-1024-10 and wider/deeper ones): backprop,
  ffkit's :class:`~ffkit.methods.ForwardGradient` (PyTorch forward AD), the same full-rank
  weight perturbation with the forward pass written out, and rank-one weight tangents
  (:class:`~ffkit.methods.LowRankForwardGradient`).
* LocalMixers: Ren et al.'s six algorithms, the activity perturbation also through PyTorch's
  forward AD, and the estimator variants of chapter 6 (K directions, orthogonal, low-rank,
  guessed directions).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from ffkit.bench import Timing, interleaved
from ffkit.local_mixer import LocalMixer
from ffkit.methods import Backprop, ForwardGradient, GuessedForwardGradient, LowRankForwardGradient, Method
from ffkit.methods.local import (
    ActivityPerturbation,
    LocalActivityPerturbation,
    LocalBackprop,
    LocalWeightPerturbation,
    WeightPerturbation,
)
from ffkit.models import mlp

__all__ = ["MLP_GRID", "MIXER_GRID", "mixer_variants", "mlp_variants", "ratios", "time_steps"]

#: (layer sizes, batch) of the MLP step benchmark.
MLP_GRID: tuple[tuple[tuple[int, ...], int], ...] = (
    ((784, 1024, 1024, 10), 64),
    ((784, 1024, 1024, 10), 256),
    ((784, 2048, 2048, 10), 64),
    ((784, 2048, 2048, 10), 256),
    ((784, 1024, 1024, 1024, 1024, 10), 256),
)
#: (architecture, batch) of the LocalMixer step benchmark.
MIXER_GRID: tuple[tuple[str, int], ...] = (("S/1/1", 128), ("M/1/16", 128), ("M/1/16", 256))

Step = Callable[[], object]


def _step(model: torch.nn.Module, method: Method, batch: tuple[torch.Tensor, torch.Tensor]) -> Step:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-9)  # the model barely moves

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        method.step(model, batch)
        optimizer.step()

    return run


def mlp_variants(sizes: Sequence[int], batch: int, *, seed: int = 0) -> dict[str, Step]:
    """Steps on one MLP and one batch of random inputs: ``backprop``, ``FG (forward AD)``,
    ``FG full, written out`` and ``FG rank 1``."""
    model = mlp(list(sizes), generator_seed=seed)
    g = torch.Generator().manual_seed(seed)
    data = (torch.randn(batch, sizes[0], generator=g), torch.randint(0, sizes[-1], (batch,), generator=g))
    methods: dict[str, Method] = {
        "backprop": Backprop(),
        "FG (forward AD)": ForwardGradient(seed=seed),
        "FG full, written out": LowRankForwardGradient(rank=None, seed=seed),
        "FG rank 1": LowRankForwardGradient(rank=1, seed=seed),
    }
    return {name: _step(model, m, data) for name, m in methods.items()}


def mixer_variants(arch: str, batch: int, *, seed: int = 0, estimators: bool = False) -> dict[str, Step]:
    """Steps on one LocalMixer and one batch of random images: Ren et al.'s six algorithms and
    LG-FG-A through PyTorch's forward AD; with ``estimators`` also the chapter's estimator
    variants (FG-W with K = 4, 16, 64 directions, orthogonal and rank-one tangents, and the
    guessed direction)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LocalMixer(arch)
    g = torch.Generator().manual_seed(seed)
    data = (torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g))
    methods: dict[str, Method] = {
        "BP": Backprop(),
        "LG-BP": LocalBackprop(),
        "FG-W": WeightPerturbation(seed=seed),
        "FG-A": ActivityPerturbation(seed=seed),
        "LG-FG-W": LocalWeightPerturbation(seed=seed),
        "LG-FG-A": LocalActivityPerturbation(seed=seed),
        "LG-FG-A (forward AD)": LocalActivityPerturbation(seed=seed, engine="forward-ad"),
    }
    if estimators:
        for k in (4, 16, 64):
            methods[f"FG-W, K={k}"] = WeightPerturbation(directions=k, seed=seed)
        methods["FG-W, K=16 orthogonal"] = WeightPerturbation(directions=16, tangent="orthogonal", seed=seed)
        methods["FG-W, rank 1"] = WeightPerturbation(tangent="low-rank", rank=1, seed=seed)
        methods["guess (local gradient)"] = GuessedForwardGradient(seed=seed)
    return {name: _step(model, m, data) for name, m in methods.items()}


def time_steps(
    variants: Mapping[str, Step], *, rounds: int = 20, warmup: int = 3, min_seconds: float = 0.0
) -> dict[str, Timing]:
    """Seconds per step of every variant, timed round-robin (:func:`ffkit.bench.interleaved`);
    each sample averages back-to-back steps over at least ``min_seconds``."""
    return interleaved(variants, rounds=rounds, warmup=warmup, min_seconds=min_seconds)


def ratios(timings: Mapping[str, Timing], baseline: str) -> dict[str, dict[str, float]]:
    """Each variant's time over ``baseline``'s, by median and by minimum over the rounds."""
    if baseline not in timings:
        raise ValueError(f"baseline {baseline!r} is not among {list(timings)}")
    base = timings[baseline]
    return {
        name: {"median": t.median / base.median, "minimum": t.minimum / base.minimum}
        for name, t in timings.items()
    }
