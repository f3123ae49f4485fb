"""Benchmark 2: time to solve SA to a 1e-6 error, against scipy and torchdiffeq.

Problem: softmax self-attention on the unit sphere, `Q = K = V = I`, n = 256,
d = 64, beta = 4, t in [0, 10], float64, one random initial state. Reference:
scipy `DOP853` at `rtol = atol = 1e-13` (checked against spherejax at 1e-12).
For each solver the tolerance ladder `rtol = atol = 1e-4, 1e-5, ...` is walked
until the final state is within 1e-6 (max abs) of the reference; that solve is
then timed: all solvers interleaved, round after round, and the figure is the
median over rounds of the per-round time ratio (after compilation). All in one
process.

- spherejax: `solve(field, y0, 10.0, rtol=tol, atol=tol)` (default solver
  `Retract(Tsit5())`, and `Retract(Dopri8())`, the order of DOP853), jitted, with
  the general `SelfAttention.identity` field and with `IdentityAttention` (no
  projections computed, as in the peers' fields);
- scipy: `solve_ivp(method="DOP853")` with a numpy field (the same projected
  velocity), final state renormalised;
- torchdiffeq: `odeint(method="dopri5")` on CPU with a torch field (same
  velocity), final state renormalised.

Peers come from the `bench` extra (`pip install -e .[bench]`, plus
`torch==2.13.0` on this machine).

    python benchmarks/solve_peers.py
"""

import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import scipy.integrate
from _common import compare, header

import spherejax as sj


jax.config.update("jax_enable_x64", True)

N, D, BETA, T1, TARGET = 256, 64, 4.0, 10.0, 1e-6
TOLS = [10.0**-k for k in range(4, 13)]


def np_field(x):
    s = BETA * (x @ x.T)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    v = (p @ x) / p.sum(axis=1, keepdims=True)
    return v - np.sum(v * x, axis=1, keepdims=True) * x


def scipy_solve(y0, tol):
    sol = scipy.integrate.solve_ivp(
        lambda t, y: np_field(y.reshape(N, D)).ravel(),
        (0.0, T1),
        y0.ravel(),
        method="DOP853",
        rtol=tol,
        atol=tol,
        t_eval=[T1],
    )
    y = sol.y[:, -1].reshape(N, D)
    return y / np.linalg.norm(y, axis=1, keepdims=True), sol.nfev


def make_torch():
    import torch
    import torchdiffeq

    torch.set_default_dtype(torch.float64)

    def f(t, x):
        s = BETA * (x @ x.T)
        v = torch.softmax(s, dim=1) @ x
        return v - torch.sum(v * x, dim=1, keepdim=True) * x

    def run(y0, tol):
        with torch.no_grad():
            y = torchdiffeq.odeint(
                f,
                torch.from_numpy(np.array(y0)),
                torch.tensor([0.0, T1]),
                method="dopri5",
                rtol=tol,
                atol=tol,
            )[-1]
            y = y / torch.linalg.norm(y, dim=1, keepdim=True)
        return y.numpy(), None

    return run, torch.__version__


def make_jax(tol, solver=None, identity=False):
    # the general field computes Q x, K x, V x (three n x d x d products); the
    # peers' fields and `IdentityAttention` hard-code Q = K = V = I
    field = (
        sj.IdentityAttention(BETA) if identity else sj.SelfAttention.identity(D, BETA)
    )

    @jax.jit
    def run(y0):
        sol = sj.solve(field, y0, T1, rtol=tol, atol=tol, solver=solver)
        return sol.ys[-1], sol.stats["num_steps"]

    return run


def main():
    print(header("solve_peers"))
    y0 = np.asarray(sj.Sphere().random(jax.random.PRNGKey(0), (N, D)))
    t = time.perf_counter()
    ref, ref_nfev = scipy_solve(y0, 1e-13)
    print(
        f"reference: DOP853 rtol=atol=1e-13 nfev={ref_nfev} "
        f"time_s={time.perf_counter() - t:.1f}"
    )
    check = np.asarray(make_jax(1e-12)(jnp.asarray(y0))[0])
    print(
        f"reference check: |spherejax(1e-12) - reference| = "
        f"{np.max(np.abs(check - ref)):.1e}"
    )
    solvers = {
        "spherejax": None,
        "spherejax_dopri8": diffrax.Dopri8(),
        "spherejax_identity": None,
        "scipy_dop853": None,
        "torchdiffeq_dopri5": None,
    }
    torch_run, torch_version = make_torch()
    fns = {}
    for name in solvers:
        for tol in TOLS:
            if name.startswith("spherejax"):
                run = make_jax(tol, solvers[name], identity=name.endswith("identity"))
                yj = jnp.asarray(y0)
                t = time.perf_counter()
                y, steps = jax.block_until_ready(run(yj))
                compile_s = time.perf_counter() - t
                fn = lambda run=run, yj=yj: run(yj)  # noqa: E731
                extra = f"steps={int(steps)} compile_s={compile_s:.2f}"
            elif name == "scipy_dop853":
                y, nfev = scipy_solve(y0, tol)
                fn = lambda tol=tol: scipy_solve(y0, tol)  # noqa: E731
                extra = f"nfev={nfev}"
            else:
                y, _ = torch_run(y0, tol)
                fn = lambda tol=tol: torch_run(y0, tol)  # noqa: E731
                extra = f"torch={torch_version}"
            err = float(np.max(np.abs(np.asarray(y) - ref)))
            if err <= TARGET:
                break
        fns[name] = fn
        print(f"solver={name} tol={tol:.0e} err={err:.2e} {extra}", flush=True)
    # interleaved rounds (every solver once per round), median of per-round ratios:
    # on a shared machine the ratio is much steadier than raw times
    med, ratio = compare(fns, {k: () for k in fns}, rounds=9, min_time=0.3)
    for name in fns:
        print(
            f"solver={name} median_s={med[name]:.4f} time/spherejax={ratio[name]:.2f}"
        )
    peers = ("scipy_dop853", "torchdiffeq_dopri5")
    for base in ("spherejax", "spherejax_dopri8", "spherejax_identity"):
        print(
            f"ratios (peer time / {base} time, interleaved, same process): "
            + " ".join(f"{p}={ratio[p] / ratio[base]:.2f}x" for p in peers),
            flush=True,
        )


if __name__ == "__main__":
    main()
