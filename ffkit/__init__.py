"""ffkit: training without backpropagation, in PyTorch.

The library behind the book *Understanding Forward-Forward*. The public API is re-exported
here; everything else is an implementation detail.
"""

from __future__ import annotations

from ffkit import data, distributed, fg, lean, models, plot, profile, train, variance
from ffkit._setup import setup
from ffkit.autodiff import Dual, jvp, module_jvp
from ffkit.data import load_dataset
from ffkit.distributed import SharedSeedForwardGradient
from ffkit.fg import ForwardGradient, forward_gradient
from ffkit.lean import lean_forward_gradient_step
from ffkit.train import fit
from ffkit.variance import measure_model

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "setup",
    "Dual",
    "jvp",
    "module_jvp",
    "load_dataset",
    "fit",
    "forward_gradient",
    "ForwardGradient",
    "lean_forward_gradient_step",
    "SharedSeedForwardGradient",
    "measure_model",
    "data",
    "distributed",
    "fg",
    "lean",
    "models",
    "plot",
    "profile",
    "train",
    "variance",
]
