"""Particles against their mean-field density on the circle, n = 10^3 ... 10^6
(float64, `Spectral()` attention, `CircleDensity` for the density).

    python benchmarks/mean_field_limit.py [--quick] [--part all|fixed|exit]
        [--out FILE.json]

Softmax self-attention with `Q = K = V = I` at beta = 4.

1. **Fixed times.** The density starts at
   `rho0 = (1 + 0.1 cos(theta) + 0.05 sin(3 theta)) / 2 pi` and is solved by
   `CircleDensity(4, 256)`; the particles start at n i.i.d. samples of rho0
   (`iid`) or at its quantiles `(j + 1/2)/n` (`quantile`). At t = 1, 2, 3 the
   distance `fourier_distance(theta(t), density, rho(t), modes=8)` and its rate in
   n (the least-squares slope of log D against log n). Three samplings: `iid`,
   `stratified` (one rho0-quantile of a uniform point in each of n equal
   probability strata: fluctuation O(n^{-3/2})) and `quantile` (the midpoints
   `(j + 1/2)/n`: for smooth periodic data the midpoint rule converges faster
   than any power, so D sits at the solvers' error, which this reports).
2. **Leaving the uniform state.** The uniform density is a stationary, linearly
   unstable state (mode k grows at `lambda_k = k^2 I_k(beta)/(beta I_0(beta))`,
   fastest at k = 3 for beta = 4). Particles sampled from it (`iid`, or
   `stratified`: one uniform point in each of n equal arcs) stay near it only
   until their sampling fluctuation has grown to O(1): the exit time
   `T(n) = inf{t : D(t) > 0.2}` against log n, with the linear-theory slopes
   `1/(2 lambda_max)` (fluctuation n^{-1/2}) and `3/(2 lambda_max)` (n^{-3/2})
   beside it. Stratified samples are run to n = 10^5 (their exit at 10^6 lies
   beyond t = 30).

`--quick` stops at n = 10^4 (the notebook's budget), `--max-n N` at N.
`--part fixed` or `--part exit` runs one of the two (the two can run side by side)
and writes its section into `--out`, keeping what the file already holds.
"""

import argparse
import datetime
import json
import os
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import header  # noqa: E402

import spherejax as sj  # noqa: E402


jax.config.update("jax_enable_x64", True)

BETA = 4.0
TIMES = (1.0, 2.0, 3.0)


def rho0(theta):
    return (1 + 0.1 * np.cos(theta) + 0.05 * np.sin(3 * theta)) / (2 * np.pi)


def _quantiles(u: np.ndarray) -> np.ndarray:
    """The rho0-quantiles of `u` in [0, 1]: Newton's method on the exact CDF
    `(theta + 0.1 sin(theta) + (1 - cos(3 theta)) / 60) / 2 pi`."""
    theta = 2 * np.pi * u
    for _ in range(30):
        cdf = (theta + 0.1 * np.sin(theta) + (1 - np.cos(3 * theta)) / 60) / (2 * np.pi)
        theta = theta - (cdf - u) / rho0(theta)
    return theta


def _particles(theta0: np.ndarray, t1: float, ts, rtol: float):
    x0 = jnp.asarray(np.stack([np.cos(theta0), np.sin(theta0)], axis=-1))
    field = sj.IdentityAttention(BETA, evaluation=sj.Spectral())
    sol = sj.solve(field, x0, t1, ts=ts, rtol=rtol, atol=rtol * 1e-2)
    ys = np.asarray(sol.ys)
    return np.arctan2(ys[..., 1], ys[..., 0])


def fixed_times(ns, rtol: float) -> dict:
    dens = sj.mean_field.CircleDensity(BETA, 256)
    theta_nodes = np.asarray(dens.nodes)
    ts = jnp.asarray(TIMES)
    sol = sj.mean_field.solve_density(
        dens, jnp.asarray(rho0(theta_nodes)), TIMES[-1], ts=ts, rtol=1e-11, atol=1e-13
    )
    out: dict = {"n": list(ns), "times": list(TIMES)}
    rng = np.random.default_rng(0)
    for kind in ("iid", "stratified", "quantile"):
        rows = []
        for n in ns:
            jitter = {"iid": None, "stratified": rng.random(n), "quantile": 0.5}[kind]
            u = rng.random(n) if jitter is None else (np.arange(n) + jitter) / n
            theta_t = _particles(_quantiles(u), TIMES[-1], ts, rtol)
            d = [
                float(sj.mean_field.fourier_distance(theta_t[i], dens, sol.ys[i], 8))
                for i in range(len(TIMES))
            ]
            rows.append(d)
            print(
                f"fixed-time {kind} n={n}: D(t={TIMES}) = "
                + " ".join(f"{v:.3e}" for v in d)
            )
        rows = np.asarray(rows)
        out[kind] = {
            "distance": rows.tolist(),
            "rate": [
                float(np.polyfit(np.log(ns), np.log(rows[:, i]), 1)[0])
                for i in range(len(TIMES))
            ],
        }
        print(f"fixed-time {kind}: rates in n {np.round(out[kind]['rate'], 2)}")
    return out


def exit_times(ns, rtol: dict, threshold: float = 0.2) -> dict:
    lam = sj.mean_field.circle_growth_rates(BETA, np.arange(1, 9))
    lam_max = float(lam.max())
    dens = sj.mean_field.CircleDensity(BETA, 32)
    uniform = jnp.full(32, 1 / (2 * np.pi))
    out: dict = {
        "n": list(ns),
        "threshold": threshold,
        "lambda_max": lam_max,
        "k_max": int(np.argmax(lam) + 1),
        "linear_slope_iid": 1 / (2 * lam_max),
        "linear_slope_stratified": 3 / (2 * lam_max),
    }
    rng = np.random.default_rng(1)
    for kind, t1 in (("iid", 16.0), ("stratified", 30.0)):
        ts = jnp.linspace(0.0, t1, int(20 * t1) + 1)
        times = []
        kind_ns = [n for n in ns if kind == "iid" or n <= 100_000]
        for n in kind_ns:
            u = rng.random(n)
            theta0 = 2 * np.pi * (u if kind == "iid" else (np.arange(n) + u) / n)
            theta_t = _particles(theta0, t1, ts, rtol[kind])

            def distance(th):
                return sj.mean_field.fourier_distance(th, dens, uniform, 8)

            d = np.asarray(jax.vmap(distance)(jnp.asarray(theta_t)))
            above = np.nonzero(d > threshold)[0]
            if above.size == 0:
                raise RuntimeError(
                    f"{kind} n={n}: D stayed below {threshold} to t={t1}"
                )
            i = above[0]  # linear interpolation of the crossing in log D
            t_a, t_b = float(ts[i - 1]), float(ts[i])
            la, lb = np.log(d[i - 1]), np.log(d[i])
            times.append(t_a + (np.log(threshold) - la) / (lb - la) * (t_b - t_a))
            print(f"exit {kind} n={n}: D(0) = {d[0]:.2e}, T = {times[-1]:.3f}")
        slope = float(np.polyfit(np.log(kind_ns), times, 1)[0])
        out[kind] = {"n": kind_ns, "exit_time": times, "slope_per_log_n": slope}
        print(f"exit {kind}: dT/dlog n = {slope:.3f}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--part", choices=("all", "fixed", "exit"), default="all")
    p.add_argument("--max-n", type=int, default=None, help="largest n")
    p.add_argument("--out")
    a = p.parse_args(argv)
    print(header("mean_field_limit.py"), flush=True)
    ns = [1000, 3000, 10_000] if a.quick else [1000, 10_000, 100_000, 1_000_000]
    ns = [n for n in ns if a.max_n is None or n <= a.max_n]
    doc: dict = {}
    if a.out and os.path.exists(a.out):
        with open(a.out) as f:
            doc = json.load(f)
    doc.update(
        machine=f"{jax.devices()[0].device_kind} ({os.cpu_count()} cores)", beta=BETA
    )
    parts = {
        "fixed_times": lambda: fixed_times(ns, rtol=1e-10),
        # the exit is read at D = 0.2 from D(0) >= 1e-3 (i.i.d.): rtol 1e-6
        # suffices; stratified samples start at D(0) ~ 1e-8 and need 1e-9
        "exit": lambda: exit_times(ns, rtol={"iid": 1e-6, "stratified": 1e-9}),
    }
    for name, fn in parts.items():
        if a.part in ("all", name.split("_")[0]):
            start = time.perf_counter()
            doc[name] = fn()
            doc[name]["wall_s"] = time.perf_counter() - start
            doc[name]["date_utc"] = datetime.datetime.now(datetime.UTC).isoformat(
                timespec="seconds"
            )
            doc[name]["load_average"] = os.getloadavg()
            print(f"# {name}: {doc[name]['wall_s']:.0f} s", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
