"""Benchmark forward vs reverse mode: R_f, R_b on an MLP and time to the full gradient vs n.

Runs :mod:`ffkit.experiments.modes` (variants interleaved round by round in one process) and
writes ``chapters/results/bench_modes.json``::

    python -m ffkit bench-modes --threads 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ffkit
from ffkit import results
from ffkit.experiments import modes as exp

DEFAULT_OUT = Path("chapters/results/bench_modes.json")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffkit bench-modes", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[784, 1024, 1024, 10], help="MLP layer sizes")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds per variant")
    parser.add_argument("--hidden", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64],
                        help="hidden widths h of the 8-h-4 MLP for the full-gradient timing (n = 13h + 4)")
    parser.add_argument("--gradient-rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine, threads that wait for each other "
                        "at every operation add more noise than they save time)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write ('-' for none)")
    args = parser.parse_args(argv)
    if args.rounds < 3 or args.gradient_rounds < 1 or args.batch < 1 or len(args.sizes) < 2:
        parser.error("need --rounds >= 3, --gradient-rounds >= 1, --batch >= 1 and two or more --sizes")

    ffkit.setup(seed=0, threads=args.threads, plots=False)
    costs = exp.cost_ratios(args.sizes, args.batch, args.rounds)
    full = exp.full_gradient_times(args.hidden, args.gradient_rounds)
    settings = {"sizes": args.sizes, "batch": args.batch, "rounds": args.rounds, "hidden": args.hidden,
                "gradient_rounds": args.gradient_rounds, "threads": args.threads}
    data = results.envelope(results.command_line(argv, name="bench-modes"), settings,
                            {"cost": costs, "full_gradient": full})

    sizes = "-".join(map(str, args.sizes))
    print(f"MLP {sizes}, batch {args.batch}, n = {costs['n_parameters']:,} parameters, "
          f"{args.rounds} interleaved rounds, {args.threads} threads")
    print(f"{'variant':<26}{'median time':>14}{'x forward pass':>16}{'quartiles':>18}")
    for name, seconds in costs["median_seconds"].items():
        q1, q3 = costs["ratio_quartiles"][name]
        print(f"{name:<26}{seconds * 1e3:>11.2f} ms{costs['median_ratio'][name]:>16.2f}{f'{q1:.2f}-{q3:.2f}':>18}")
    print(f"R_f = {costs['R_f']:.2f}   R_b = {costs['R_b']:.2f}")
    print("\ntime to the full gradient of an 8-h-4 MLP loss (medians)")
    print(f"{'n':>6}{'n JVPs, loop':>16}{'n JVPs, vmap':>16}{'one VJP':>12}{'loop / VJP':>12}")
    for i, n in enumerate(full["n"]):
        loop, vmap, vjp_s = full["n JVPs, loop"][i], full["n JVPs, vmap"][i], full["one VJP"][i]
        print(f"{n:>6}{loop * 1e3:>13.2f} ms{vmap * 1e3:>13.2f} ms{vjp_s * 1e3:>9.2f} ms{loop / vjp_s:>12.1f}")
    if str(args.out) != "-":
        print(f"\nwrote {results.write(args.out, data)}")
    return 0
