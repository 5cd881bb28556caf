"""ffkit: training without backpropagation, in PyTorch.

The library behind the book *Understanding Forward-Forward*. The public API is re-exported
here; everything else is an implementation detail.
"""

from __future__ import annotations

from ffkit._setup import setup

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "setup",
]
