"""Benchmark 3b: the cost floor of reverse mode for the attention field.

Why `grad / forward` of `solve` sits above 4 (benchmark 3): this script measures,
in one process, for SA with n = 256, d = 64 (float64 and float32):

- `vjp/f`: one field evaluation's `jax.vjp` (forward + pullback) over one
  forward evaluation. Forward attention is two `n x n x d` matmuls; its pullback
  is four (`P^T g`, `g V^T`, `dS K`, `dS^T Q`), so the flop floor is 3.
- `scan`: 20 explicit Euler steps in `lax.scan`; its gradient stored (no
  recomputation: floor 3) and checkpointed per step (`jax.checkpoint`: the
  forward is recomputed once in the backward pass, floor 1 + 3 = 4, which is what
  diffrax's `RecursiveCheckpointAdjoint` does).

    python benchmarks/grad_floor.py
"""

import jax
import jax.numpy as jnp
from _common import compare, header

import spherejax as sj


jax.config.update("jax_enable_x64", True)

N, D, STEPS = 256, 64, 20


def main():
    print(header("grad_floor"))
    for dtype in (jnp.float64, jnp.float32):
        keys = jax.random.split(jax.random.PRNGKey(0), 5)
        params = tuple(
            jnp.eye(D, dtype=dtype) + 0.1 * jax.random.normal(k, (D, D), dtype)
            for k in keys[:3]
        ) + (jnp.asarray(4.0, dtype),)
        y0 = sj.Sphere().random(keys[3], (N, D)).astype(dtype)
        g = jax.random.normal(keys[4], (N, D), dtype)

        def f(params, y):
            return sj.SelfAttention(*params)(0.0, y, None)

        def euler(step):
            def run(params, y):
                return jax.lax.scan(
                    lambda y, _: (step(params, y), None), y, None, length=STEPS
                )[0]

            return run

        plain = euler(lambda p, y: y + 0.01 * f(p, y))
        ckpt = euler(lambda p, y: jax.checkpoint(lambda y: y + 0.01 * f(p, y))(y))

        def pullback(fn):
            def h(params, y):
                _, pb = jax.vjp(fn, params, y)
                return pb(g)

            return h

        cases = {
            "f": f,
            "vjp_f": pullback(f),
            "scan": plain,
            "grad_scan_stored": pullback(plain),
            "grad_scan_ckpt": pullback(ckpt),
        }
        fns = {k: jax.jit(v).lower(params, y0).compile() for k, v in cases.items()}
        med, _ = compare(fns, {k: (params, y0) for k in cases}, rounds=7)
        print(
            f"dtype={jnp.dtype(dtype).name} n={N} d={D} f_ms={1e3 * med['f']:.3f} "
            f"vjp/f={med['vjp_f'] / med['f']:.2f} (flop floor 3) "
            f"scan{STEPS}_ms={1e3 * med['scan']:.2f} "
            "grad/forward stored="
            f"{med['grad_scan_stored'] / med['scan']:.2f} (floor 3) "
            f"checkpointed={med['grad_scan_ckpt'] / med['scan']:.2f} (floor 4)",
            flush=True,
        )


if __name__ == "__main__":
    main()
