"""Time of the equiangular reference curve drawn by `sweep` (60 values of beta).

Before: one `spherejax.equiangular` solve per beta (each call traces and compiles
its own solve). After: `spherejax.cli.plots.equiangular_boundary`, one vmapped,
jitted solve over all betas. Both are run in this process and their curves
compared on a subset of the betas (the loop's time per beta is constant, so its
total for all betas is that time times their number). Usage:
`python benchmarks/sweep_plot.py [--betas 60] [--loop-betas 8]`.
"""

import argparse
import datetime
import os
import platform
import time

import numpy as np


def loop_boundary(betas, n, eps, t1, normalization="softmax"):
    """The per-beta loop (the reference)."""
    import spherejax as sj

    ts = np.linspace(0.0, t1, 2001)
    out = []
    for beta in betas:
        rho = np.asarray(
            sj.equiangular(ts, float(beta), n, 0.0, normalization, rtol=1e-6, atol=1e-9)
        )
        above = np.nonzero(rho >= 1 - eps)[0]
        out.append(ts[above[0]] if above.size else np.nan)
    return np.array(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--betas", type=int, default=60, help="betas of the curve")
    parser.add_argument(
        "--loop-betas", type=int, default=8, help="betas timed with the loop"
    )
    args = parser.parse_args()
    import jax

    from spherejax.cli.plots import equiangular_boundary

    betas = np.linspace(0.5, 4.0, args.betas)
    tic = time.perf_counter()
    fast = equiangular_boundary(betas, 32, 1e-3, 10.0)
    t_fast = time.perf_counter() - tic
    sub = betas[:: max(1, args.betas // args.loop_betas)][: args.loop_betas]
    tic = time.perf_counter()
    slow = loop_boundary(sub, 32, 1e-3, 10.0)
    per_beta = (time.perf_counter() - tic) / len(sub)
    ref = fast[np.isin(betas, sub)]
    same = np.array_equal(np.isnan(ref), np.isnan(slow))
    diff = float(np.nanmax(np.abs(ref - slow)))
    print(
        f"{datetime.date.today()} {platform.machine()} {os.cpu_count()} CPUs, jax "
        f"{jax.__version__} {jax.devices()[0].platform}; n = 32, t1 = 10, eps = 1e-3"
    )
    print(
        f"per-beta loop: {per_beta:.1f} s per beta ({len(sub)} timed), "
        f"{per_beta * args.betas:.0f} s for {args.betas} betas; batched: "
        f"{t_fast:.1f} s for {args.betas} betas; same crossing times on the "
        f"{len(sub)} shared betas: {same and diff <= 10.0 / 2000} (max diff {diff:.2g})"
    )


if __name__ == "__main__":
    main()
