"""ffkit: training without backpropagation, in PyTorch.

The library behind the book *Understanding Forward-Forward*. The names below are the public
API; the submodules (``ffkit.tangents``, ``ffkit.methods``, ``ffkit.plot``, ...) load on first
use, so ``import ffkit`` does not import matplotlib.

========================  ===============================================================
floor                     modules
========================  ===============================================================
foundations               ``autodiff``, ``tangents``, ``data``, ``models``, ``theory``,
                          ``quadratic``, ``pipeline``, ``distributed``, ``bench``,
                          ``results``, ``plot``, ``testfunctions``, ``local_mixer``,
                          ``forward_forward``, ``ff_data``, ``_setup``, ``_book`` (the
                          notebooks' conventions)
methods                   ``methods`` (backprop, forward gradients, lean, shared seed,
                          local losses, structured and guessed tangents, Forward-Forward),
                          ``perturbation``
training and measuring    ``train``, ``variance``, ``profile``, ``probes``, ``experiments``
command line              ``commands`` (``python -m ffkit``)
========================  ===============================================================

A module imports only from its own floor or the floors above it in this table.
"""

from __future__ import annotations

import importlib
from typing import Any

from ffkit._setup import setup
from ffkit.autodiff import Dual, jvp, module_jvp
from ffkit.data import load_dataset
from ffkit.methods import (
    Backprop,
    DivergenceError,
    ForwardGradient,
    LeanForwardGradient,
    Method,
    SharedSeedForwardGradient,
    StepResult,
    forward_gradient,
    lean_forward_gradient_step,
)
from ffkit.train import fit

__version__ = "0.2.0"

_SUBMODULES = (
    "autodiff",
    "bench",
    "data",
    "distributed",
    "experiments",
    "ff_data",
    "forward_forward",
    "methods",
    "models",
    "perturbation",
    "pipeline",
    "plot",
    "probes",
    "profile",
    "quadratic",
    "results",
    "tangents",
    "testfunctions",
    "theory",
    "train",
    "variance",
)
_LAZY = {"measure_model": "variance"}

__all__ = [
    "__version__",
    "setup",
    "Dual",
    "jvp",
    "module_jvp",
    "load_dataset",
    "fit",
    "Method",
    "StepResult",
    "DivergenceError",
    "Backprop",
    "forward_gradient",
    "ForwardGradient",
    "LeanForwardGradient",
    "lean_forward_gradient_step",
    "SharedSeedForwardGradient",
    "measure_model",
    *_SUBMODULES,
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"ffkit.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(f"ffkit.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ffkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
