"""Data-parallel MLP training on torch.distributed (shared-seed forward gradient or all-reduce); run under torchrun.

Every worker reads the same global batches (same shuffling seed), keeps its shard
(:func:`ffkit.distributed.shard`) and trains its replica with :func:`ffkit.train.fit` and one of

* ``--scheme shared-seed``: :class:`ffkit.distributed.SharedSeedForwardGradient`, K = ``--directions``
  scalars all-reduced per step;
* ``--scheme all-reduce``: :class:`ffkit.distributed.AllReduceGradient`, the n gradient entries
  all-reduced per step.

Launch, e.g. for two processes on this machine::

    torchrun --standalone --nproc-per-node 2 -m ffkit dp-train --scheme shared-seed --directions 4

Without ``torchrun`` (no ``RANK`` in the environment) it trains as a single worker. Rank 0 prints
the loss, the bytes it handed to the collectives per step (with the prediction 4K or 4n), and a
fingerprint of the final parameters that is identical on every worker and for every world size
up to rounding.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from ffkit.data import batches, load_dataset
from ffkit.distributed import init_from_env, shard
from ffkit.methods import AllReduceGradient, Method, SharedSeedForwardGradient
from ffkit.models import count_parameters, mlp
from ffkit.train import accuracy, cycle, fit


def _synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable stand-in for MNIST: labels from a fixed random linear map of random images."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    w = torch.randn(784, 10, generator=g)
    return x, (x.flatten(1) @ w).argmax(dim=1)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffkit dp-train", description=__doc__.splitlines()[0])
    parser.add_argument("--scheme", choices=("shared-seed", "all-reduce"), default="shared-seed")
    parser.add_argument("--directions", type=int, default=4, help="K, tangents per step (shared-seed)")
    parser.add_argument("--sampler", choices=("gaussian", "rademacher"), default="gaussian")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64, help="global batch (a multiple of the world size)")
    parser.add_argument("--width", type=int, default=128, help="hidden width of the MLP 784-w-10")
    parser.add_argument("--lr", type=float, default=None, help="SGD step (default 0.01 shared-seed, 0.1 all-reduce)")
    parser.add_argument("--data", choices=("mnist", "synthetic"), default="mnist")
    parser.add_argument("--limit", type=int, default=10_000, help="training examples used")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a stuck collective fails")
    args = parser.parse_args(argv)
    for name in ("directions", "steps", "batch", "width", "limit"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")

    if "RANK" in os.environ:
        rank, world_size = init_from_env(timeout=args.timeout)
    else:
        rank, world_size = 0, 1
    try:
        if args.batch % world_size:
            raise ValueError(f"--batch {args.batch} is not a multiple of the world size {world_size}")
        torch.manual_seed(args.seed)
        if args.data == "mnist":
            x, y = load_dataset("mnist", "train", limit=args.limit)
            x_test, y_test = load_dataset("mnist", "test", limit=2000)
        else:
            x, y = _synthetic(args.limit + 2000, args.seed)
            x, y, x_test, y_test = x[: args.limit], y[: args.limit], x[args.limit :], y[args.limit :]
        model = mlp([784, args.width, 10], generator_seed=args.seed)
        grad_fn: Method
        if args.scheme == "shared-seed":
            grad_fn = SharedSeedForwardGradient(args.directions, seed=args.seed, sampler=args.sampler)
            predicted, lr = 4 * args.directions, 0.01
        else:
            grad_fn = AllReduceGradient()
            predicted, lr = 4 * count_parameters(model), 0.1
        lr = args.lr if args.lr is not None else lr
        order = torch.Generator().manual_seed(args.seed)  # the same global batches on every worker
        data = (shard(xb, yb, rank, world_size) for xb, yb in cycle(lambda: batches(x, y, args.batch, generator=order)))
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        history = fit(model, grad_fn, data, opt, steps=args.steps)
        theta = nn.utils.parameters_to_vector(model.parameters()).detach()
        if rank == 0:
            first, last = history.loss[0], sum(history.loss[-10:]) / len(history.loss[-10:])
            print(f"{args.scheme}, {world_size} worker(s), n = {count_parameters(model)} parameters, {args.steps} steps")
            print(f"  shard loss: first {first:.4f}, mean of the last 10 steps {last:.4f}")
            print(f"  test accuracy {accuracy(model, x_test, y_test):.4f}")
            print(f"  bytes handed to all_reduce per step: {grad_fn.stats.bytes // args.steps} (predicted {predicted})")  # type: ignore[attr-defined]
            print(f"  parameter fingerprint: sum {float(theta.double().sum()):.6f}, sum of squares {float(theta.double().square().sum()):.6f}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
