"""Benchmark 3: reverse-mode gradient cost / forward cost of `solve`.

Problem of benchmark 2 (SA, n = 256, d = 64, beta = 4, T = 10, rtol = atol =
1e-6, default `Retract(Tsit5())`), random Q, K, V. Loss: a fixed linear
functional of the final state; gradient with respect to (Q, K, V, beta) by
`jax.grad` through `diffrax.RecursiveCheckpointAdjoint` (spherejax's default),
with its default checkpointing (binomial, sized by `max_steps`) and with one
checkpoint per step, and through `spherejax.ReplayAdjoint` (the accepted steps
replayed from their stored stages, no re-run; `max_steps=128`). Forward and
gradient are compiled first, then timed interleaved in this process (median over
rounds of the per-round ratio).

    python benchmarks/grad_cost.py [--n N] [--d D] [--dtypes float64,float32]
        [--rounds R]
"""

import argparse
import time

import diffrax
import jax
import jax.numpy as jnp
from _common import compare, header

import spherejax as sj


jax.config.update("jax_enable_x64", True)

N, D, BETA, T1 = 256, 64, 4.0, 10.0


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description="gradient cost / forward cost of solve")
    p.add_argument("--n", type=int, default=N)
    p.add_argument("--d", type=int, default=D)
    p.add_argument("--dtypes", default="float64,float32")
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args(argv)
    dtypes = [jnp.dtype(s) for s in a.dtypes.split(",")]
    return measure(a.n, a.d, dtypes, a.rounds)


def measure(N: int, D: int, dtypes, rounds: int = 7) -> list[dict]:
    """One row per dtype (also printed); `N`, `D` shadow the module defaults."""
    print(header("grad_cost"))
    rows = []
    for dtype in dtypes:
        keys = jax.random.split(jax.random.PRNGKey(0), 5)
        Q, K, V = (
            jnp.eye(D, dtype=dtype) + 0.1 * jax.random.normal(k, (D, D), dtype)
            for k in keys[:3]
        )
        y0 = sj.Sphere().random(keys[3], (N, D)).astype(dtype)
        target = jax.random.normal(keys[4], (N, D), dtype)
        beta = jnp.asarray(BETA, dtype)

        def loss(params, adjoint=None):
            Q, K, V, beta = params
            field = sj.SelfAttention(Q, K, V, beta)
            sol = sj.solve(field, y0, T1, adjoint=adjoint)
            return jnp.sum(sol.ys[-1] * target), sol.stats["num_steps"]

        params = (Q, K, V, beta)
        _, steps = jax.jit(loss)(params)
        steps = int(steps)
        per_step = diffrax.RecursiveCheckpointAdjoint(checkpoints=steps + 1)
        replay = sj.ReplayAdjoint(max_steps=128)
        fns = {
            "forward": jax.jit(lambda p: loss(p)[0]),
            "grad": jax.jit(jax.grad(lambda p: loss(p)[0])),
            "grad_per_step_ckpt": jax.jit(jax.grad(lambda p: loss(p, per_step)[0])),
            "grad_replay": jax.jit(jax.grad(lambda p: loss(p, replay)[0])),
        }
        args = {k: (params,) for k in fns}
        compile_s = {}
        for k in fns:
            t = time.perf_counter()
            fns[k] = fns[k].lower(*args[k]).compile()
            compile_s[k] = time.perf_counter() - t
        g_ref, g_rep = fns["grad"](params), fns["grad_replay"](params)
        rel = max(
            float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
            for a, b in zip(g_ref, g_rep)
        )
        med, ratio = compare(fns, args, rounds=rounds)
        print(
            f"dtype={jnp.dtype(dtype).name} n={N} d={D} steps={steps} "
            f"forward_ms={1e3 * med['forward']:.1f} grad_ms={1e3 * med['grad']:.1f} "
            f"grad/forward={ratio['grad']:.2f} "
            f"grad_ckpt_per_step_ms={1e3 * med['grad_per_step_ckpt']:.1f} "
            f"grad_ckpt_per_step/forward={ratio['grad_per_step_ckpt']:.2f} "
            f"grad_replay_ms={1e3 * med['grad_replay']:.1f} "
            f"grad_replay/forward={ratio['grad_replay']:.2f} "
            f"replay_vs_default_rel_diff={rel:.1e} "
            f"compile_s(fwd,grad)={compile_s['forward']:.1f},{compile_s['grad']:.1f}",
            flush=True,
        )
        rows.append(
            {
                "dtype": jnp.dtype(dtype).name,
                "n": N,
                "d": D,
                "steps": steps,
                "forward_ms": 1e3 * med["forward"],
                "grad/forward": ratio["grad"],
                "grad_ckpt_per_step/forward": ratio["grad_per_step_ckpt"],
                "grad_replay/forward": ratio["grad_replay"],
                "replay_vs_default_rel_diff": rel,
            }
        )
    return rows


if __name__ == "__main__":
    main()
