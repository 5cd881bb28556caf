"""ffkit.setup makes runs repeatable and is quiet."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import ffkit


def draw() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_setup_reseeds_every_generator(capsys: pytest.CaptureFixture[str]) -> None:
    ffkit.setup(seed=7, plots=False)
    first = draw()
    ffkit.setup(seed=7, plots=False)
    assert draw() == first
    ffkit.setup(seed=8, plots=False)
    assert draw() != first
    assert capsys.readouterr() == ("", "")


def test_setup_fixes_threads_and_determinism() -> None:
    ffkit.setup(threads=1, plots=False)
    assert torch.get_num_threads() == 1
    assert torch.are_deterministic_algorithms_enabled()
    ffkit.setup(plots=False)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"seed": 1.5}, {"threads": 0}])
def test_setup_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ffkit.setup(**kwargs)
