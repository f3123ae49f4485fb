"""`Spectral()` evaluation against `Chunked` on the circle and the 2-sphere (float64).

    python benchmarks/spectral.py [--quick] [--no-solve] [--out FILE.json]

- `circle` / `sphere`: one field evaluation of `IdentityAttention` (softmax) at
  n = 65,536 (circle beta = 9, sphere beta = 4): `Chunked(1024)` and `Spectral()`
  timed interleaved (`_common.compare`), their ratio and the relative difference
  `max|a - b| / max|b|`;
- `million`: one spectral field evaluation at n = 10^6 on the circle (beta = 9);
- `scaling_n`: spectral evaluation time on the circle at n = 2^14 ... 2^20 and the
  least-squares slope of log(time) against log(n) over the three largest sizes;
- `scaling_beta`: time at n = 2^18 for beta = 1, 4, 16, 64, the order of the
  series chosen for each, and the slope of log(time) against log(beta);
- `solve`: an adaptive solve (default solver, rtol 1e-6) of 10^6 particles on the
  circle to t = 20 at beta = 9, wall time and steps (skipped with `--no-solve`).

`--quick` shrinks every size (n = 2048, 10^6 -> 2^14, solve n = 4096 to t = 2) for a
smoke test; the test suite runs it. `run(quick)` returns the JSON document's
`spectral` section (`run_all.py` calls it).
"""

import argparse
import json
import math
import os
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import compare, header  # noqa: E402

import spherejax as sj  # noqa: E402


jax.config.update("jax_enable_x64", True)


def _tokens(n: int, d: int, seed: int = 0):
    return sj.Sphere().random(jax.random.PRNGKey(seed), (n, d))


def _spectral_fn(n: int, d: int, beta: float):
    field = sj.IdentityAttention(beta, evaluation=sj.Spectral())
    x = _tokens(n, d)
    fn = jax.jit(lambda y: field(0.0, y)).lower(x).compile()
    return fn, x, field


def _timed(fn, x, repeat: int = 3) -> float:
    jax.block_until_ready(fn(x))
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn(x))
        best = min(best, time.perf_counter() - t)
    return best


def _slope(xs, ts) -> float:
    return float(np.polyfit(np.log(xs), np.log(ts), 1)[0])


def against_chunked(n: int, d: int, beta: float, rounds: int) -> dict:
    spectral, x, _ = _spectral_fn(n, d, beta)
    chunked_field = sj.IdentityAttention(beta, evaluation=sj.Chunked(1024))
    chunked = jax.jit(lambda y: chunked_field(0.0, y)).lower(x).compile()
    med, ratio = compare(
        {"chunked": chunked, "spectral": spectral},
        {"chunked": (x,), "spectral": (x,)},
        rounds=rounds,
        min_time=0.05,
    )
    a, b = spectral(x), chunked(x)
    row = {
        "n": n,
        "d": d,
        "beta": beta,
        "chunked_ms": 1e3 * med["chunked"],
        "spectral_ms": 1e3 * med["spectral"],
        "speedup": 1.0 / ratio["spectral"],
        "relative_difference": float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))),
    }
    print(
        f"{'circle' if d == 2 else 'sphere'} n={n} beta={beta} "
        f"chunked_ms={row['chunked_ms']:.1f} spectral_ms={row['spectral_ms']:.2f} "
        f"speedup={row['speedup']:.0f}x rel_diff={row['relative_difference']:.1e}",
        flush=True,
    )
    return row


def run(quick: bool = False, solve: bool = True) -> dict:
    n_cmp = 2048 if quick else 65536
    rounds = 2 if quick else 3
    out = {
        "circle": against_chunked(n_cmp, 2, 9.0, rounds),
        "sphere": against_chunked(n_cmp, 3, 4.0, rounds),
    }
    n_big = 2**14 if quick else 10**6
    fn, x, _ = _spectral_fn(n_big, 2, 9.0)
    out["million"] = {"n": n_big, "beta": 9.0, "seconds": _timed(fn, x)}
    print(f"circle n={n_big} one evaluation: {out['million']['seconds']:.3f} s")
    ns = [2**k for k in (range(10, 13) if quick else range(14, 21))]
    ts = [_timed(*_spectral_fn(n, 2, 9.0)[:2]) for n in ns]
    out["scaling_n"] = {
        "n": ns,
        "seconds": ts,
        "exponent": _slope(ns[-3:], ts[-3:]),
    }
    print(f"time ~ n^{out['scaling_n']['exponent']:.2f} (n = {ns[-3]}..{ns[-1]})")
    n_beta = 2**12 if quick else 2**18
    betas = [1.0, 4.0, 16.0, 64.0]
    orders, tb = [], []
    for beta in betas:
        fn, x, field = _spectral_fn(n_beta, 2, beta)
        orders.append(field.evaluation.circle_order)
        tb.append(_timed(fn, x))
    out["scaling_beta"] = {
        "n": n_beta,
        "beta": betas,
        "order": orders,
        "seconds": tb,
        "exponent": _slope(betas, tb),
    }
    print(
        f"n={n_beta}: orders {orders} for beta {betas}; "
        f"time ~ beta^{out['scaling_beta']['exponent']:.2f}"
    )
    if solve:
        n_s, t1 = (4096, 2.0) if quick else (10**6, 20.0)
        field = sj.IdentityAttention(9.0, evaluation=sj.Spectral())
        x0 = _tokens(n_s, 2, seed=1)
        t = time.perf_counter()
        sol = sj.solve(field, x0, t1)
        jax.block_until_ready(sol.ys)
        wall = time.perf_counter() - t
        steps = int(sol.stats["num_steps"])
        out["solve"] = {"n": n_s, "t1": t1, "seconds": wall, "steps": steps}
        print(f"solve n={n_s} to t={t1}: {wall:.1f} s, {steps} steps")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-solve", action="store_true")
    p.add_argument("--out")
    a = p.parse_args(argv)
    print(header("spectral.py"), flush=True)
    doc = run(a.quick, not a.no_solve)
    doc["machine"] = f"{jax.devices()[0].device_kind} ({os.cpu_count()} cores)"
    doc["load_average"] = os.getloadavg()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
