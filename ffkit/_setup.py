"""One call that makes a notebook or a script reproducible."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

DEFAULT_SEED = 0
DEFAULT_THREADS = 2


def setup(seed: int = DEFAULT_SEED, threads: int = DEFAULT_THREADS, *, plots: bool = True) -> None:
    """Fix every source of run-to-run variation that the book controls.

    * seeds Python's ``random``, NumPy's global generator and torch's default generator with ``seed``;
    * fixes torch's intra-op thread count to ``threads`` (results of reductions depend on it);
    * switches on ``torch.use_deterministic_algorithms``;
    * rounds printed tensors and arrays to 4 significant decimals, so that stored notebook
      outputs do not depend on the last bits of a float;
    * applies the book's plotting style (:func:`ffkit.plot.use_style`) unless ``plots=False``.

    It returns nothing and prints nothing.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.set_printoptions(precision=4, sci_mode=False)
    np.set_printoptions(precision=4, suppress=True)
    if plots:
        from ffkit.plot import use_style

        use_style()
