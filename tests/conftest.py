"""Expensive measurements shared by several test files, each started once per session.

* ``launches``: the three 2-process runs of the distributed tests (a training run, a worker that
  dies, a worker that hangs), started together on first use because process start-up, not the
  work, is what takes time. ``ffkit.distributed.launch_local`` terminates every child in a
  ``finally``; leaving the executor waits until every launch has returned.
* ``step_profiles``: one training step of each method measured in a fresh process
  (``ffkit.profile.measure_step``), for the memory tests of ffkit.profile and of the shared-seed
  lean step, started together on first use.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

PROFILE_SHAPE = {"width": 512, "depth": 16, "batch": 64}
PROFILED = ("forward gradient", "lean forward gradient", "shared-seed lean forward gradient")


@pytest.fixture(scope="session")
def launches() -> Iterator[dict[str, Future]]:
    import distributed_workers as workers

    from ffkit.distributed import launch_local

    with ThreadPoolExecutor(3) as pool:
        yield {
            "train": pool.submit(launch_local, workers.train_all, 2, timeout=240, collective_timeout=60),
            "die": pool.submit(launch_local, workers.die_at_step_two, 2, (1,), timeout=240,
                               collective_timeout=workers.DIE_TIMEOUT),
            "hang": pool.submit(launch_local, workers.hang_at_step_two, 2, timeout=240,
                                collective_timeout=workers.HANG_TIMEOUT),
        }


@pytest.fixture(scope="session")
def two_process_runs(launches: dict[str, Future]) -> list[dict]:
    """What each of the two workers of the training run returned, in rank order."""
    return launches["train"].result()


@pytest.fixture(scope="session")
def profile_shape() -> dict[str, int]:
    """The (width, depth, batch) of :func:`ffkit.profile.problem` that ``step_profiles`` measures."""
    return dict(PROFILE_SHAPE)


@pytest.fixture(scope="session")
def step_profiles() -> Iterator[dict[str, Future]]:
    from ffkit.profile import measure_step

    with ThreadPoolExecutor(len(PROFILED)) as pool:
        yield {m: pool.submit(measure_step, m, repeats=0, **PROFILE_SHAPE) for m in PROFILED}
