"""Speed of the circle density solver (`CircleDensity`, 256 nodes) over T = 30.

One line per configuration: compile time (first call, excluded from the run
time), the best of 5 timed runs of the compiled solve, the accepted steps, the
mass error and the smallest density relative to the largest (negative means
unresolved). Float64, the default tolerances of `solve_density`
(rtol 1e-8, atol 1e-10), initial data: the uniform density plus 1e-3 times a
random combination of modes 1..8.

Without diffusion the clusters contract like e^{-t} and leave any fixed grid
after a finite time (about t = 12 here at beta = 4), so the T = 30 runs use a
small diffusion nu (the mean-field limit of noisy tokens), which keeps the
clusters at width about sqrt(nu) (resolved by 256 nodes for nu >= 0.005); the
nu = 0 run stops inside its resolved horizon. The step count is set by the
explicit method's stability limit (advection at the highest mode, and nu k^2).

Run: `python benchmarks/density_circle.py` (about a minute on 2 CPU cores).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import header, run_once

import spherejax as sj


jax.config.update("jax_enable_x64", True)


CONFIGS = ((4.0, 0.0, 10.0), (4.0, 0.005, 30.0), (9.0, 0.005, 30.0), (9.0, 0.01, 30.0))


def main():
    print(header("density_circle"))
    print(f"# {time.strftime('%Y-%m-%d', time.gmtime())}, CPU, float64")
    rng = np.random.default_rng(0)
    phases = rng.uniform(0, 2 * np.pi, 8)
    for beta, nu, t1 in CONFIGS:
        dens = sj.mean_field.CircleDensity(beta, 256, diffusion=nu)
        theta = np.asarray(dens.nodes)
        modes = sum(np.cos(k * theta + phases[k - 1]) for k in range(1, 9))
        rho0 = jnp.asarray((1 + 1e-3 * modes) / (2 * np.pi))
        fn = jax.jit(lambda r, d=dens, t1=t1: sj.mean_field.solve_density(d, r, t1))
        compile_s = run_once(fn, rho0)
        run_s = min(run_once(fn, rho0) for _ in range(5))
        sol = fn(rho0)
        ys = sol.ys
        assert ys is not None
        mass_err = float(jnp.abs(dens.mass(ys[-1]) - 1))
        min_rel = float(jnp.min(ys[-1]) / jnp.max(ys[-1]))
        steps = int(sol.stats["num_accepted_steps"])
        print(
            f"{beta=} {nu=} modes=256 T={t1:g} {compile_s=:.2f} {run_s=:.3f} "
            f"{steps=} {mass_err=:.1e} {min_rel=:.1e}"
        )


if __name__ == "__main__":
    main()
