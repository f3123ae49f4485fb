"""Time of the equiangular reference curve drawn by `sweep` (60 values of beta).

Before: one `spherejax.equiangular` solve per beta (each call traces and compiles
its own solve). After: `spherejax.cli.plots.equiangular_boundary`, one vmapped,
jitted solve over all betas. Both are run in this process and their curves
compared. Usage: `python benchmarks/sweep_plot.py [--betas 60]`.
"""

import argparse
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
    parser.add_argument("--betas", type=int, default=60)
    args = parser.parse_args()
    import jax

    from spherejax.cli.plots import equiangular_boundary

    betas = np.linspace(0.5, 4.0, args.betas)
    tic = time.perf_counter()
    fast = equiangular_boundary(betas, 32, 1e-3, 10.0)
    t_fast = time.perf_counter() - tic
    tic = time.perf_counter()
    slow = loop_boundary(betas, 32, 1e-3, 10.0)
    t_slow = time.perf_counter() - tic
    same = np.array_equal(np.isnan(fast), np.isnan(slow)) and np.allclose(
        fast[~np.isnan(fast)], slow[~np.isnan(slow)], atol=1e-2
    )
    print(
        f"jax {jax.__version__} {jax.devices()[0].platform}; {args.betas} betas, "
        f"n = 32, t1 = 10: per-beta loop {t_slow:.1f} s, batched {t_fast:.1f} s "
        f"({t_slow / t_fast:.0f}x); same curve: {same}; "
        f"max |difference| {np.nanmax(np.abs(fast - slow)):.2g}"
    )


if __name__ == "__main__":
    main()
