"""Expensive measurements shared by several test files, each run once per session in the background.

* ``launches``: the three 2-process runs of the distributed tests (a training run, a worker that
  dies, a worker that hangs). ``ffkit.distributed.launch_local`` terminates every child in a
  ``finally``.
* ``step_profiles``: one training step of each forward-gradient method measured in a fresh
  process (``ffkit.profile.measure_step``), for the memory tests of ffkit.profile and of the
  shared-seed lean step.

Both consist mostly of starting Python processes that import torch. They start as soon as the
collected tests are known to need them, in background threads, so that they run while the other
tests do; a test that needs them waits for the result. The session ends only once all of them have
returned.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

PROFILE_SHAPE = {"width": 512, "depth": 16, "batch": 64}
PROFILED = ("forward gradient", "lean forward gradient", "shared-seed lean forward gradient")

_pools: list[ThreadPoolExecutor] = []
_started: dict[str, dict[str, Future]] = {}


def _launches(pool: ThreadPoolExecutor) -> dict[str, Future]:
    import distributed_workers as workers

    from ffkit.distributed import launch_local

    return {
        "train": pool.submit(launch_local, workers.train_all, 2, timeout=240, collective_timeout=60),
        "die": pool.submit(launch_local, workers.die_at_step_two, 2, (1,), timeout=240,
                           collective_timeout=workers.DIE_TIMEOUT),
        "hang": pool.submit(launch_local, workers.hang_at_step_two, 2, timeout=240,
                            collective_timeout=workers.HANG_TIMEOUT),
    }


def _profiles(pool: ThreadPoolExecutor) -> dict[str, Future]:
    from ffkit.profile import measure_step

    return {m: pool.submit(measure_step, m, repeats=0, **PROFILE_SHAPE) for m in PROFILED}


_JOBS: dict[str, tuple[Callable[[ThreadPoolExecutor], dict[str, Future]], frozenset[str]]] = {
    # job: (how to start it, the fixtures that need it)
    "launches": (_launches, frozenset({"launches", "two_process_runs"})),
    "profiles": (_profiles, frozenset({"step_profiles"})),
}


def _start(job: str) -> dict[str, Future]:
    if job not in _started:
        pool = ThreadPoolExecutor(3, thread_name_prefix=f"ffkit-tests-{job}")
        _pools.append(pool)
        _started[job] = _JOBS[job][0](pool)
    return _started[job]


def pytest_collection_finish(session: pytest.Session) -> None:
    needed = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    for job, (_, fixtures) in _JOBS.items():
        if needed & fixtures:
            _start(job)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for pool in _pools:
        pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def launches() -> dict[str, Future]:
    return _start("launches")


@pytest.fixture(scope="session")
def two_process_runs(launches: dict[str, Future]) -> list[dict]:
    """What each of the two workers of the training run returned, in rank order."""
    return launches["train"].result()


@pytest.fixture(scope="session")
def profile_shape() -> dict[str, int]:
    """The (width, depth, batch) of :func:`ffkit.profile.problem` that ``step_profiles`` measures."""
    return dict(PROFILE_SHAPE)


@pytest.fixture(scope="session")
def step_profiles() -> dict[str, Future]:
    return _start("profiles")
