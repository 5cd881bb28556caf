"""Pytest's setup for the whole repository: the notebook kernels that nbval starts inherit the
environment in which ``python -m ffkit notebooks`` stored the outputs (ffkit._book.REPLAY_ENV)."""

from ffkit._book import pin_replay_environment

pin_replay_environment()
