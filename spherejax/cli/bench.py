"""The `bench` subcommand."""

import time

from .output import Outputs, json_bytes


def bench(options: dict) -> list:
    """The `bench` subcommand: time the SA field against the XLA floor
    `exp(X X^T) X` (two `n x n x d` matmuls and `n^2` exponentials), and a short
    solve; one line per `n`."""
    import timeit

    import jax

    if options["x64"]:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jax.random as jr

    import spherejax as sj

    d, repeats, out = options["d"], options["repeats"], options["out"]
    dtype = jnp.float64 if options["x64"] else jnp.float32
    rows = []

    def best_ms(f, x):
        jax.block_until_ready(f(x))
        runs = timeit.repeat(
            lambda: jax.block_until_ready(f(x)), number=1, repeat=repeats
        )
        return 1e3 * min(runs)

    print(
        f"spherejax bench: jax {jax.__version__} device={jax.devices()[0]} "
        f"dtype={jnp.dtype(dtype).name} d={d} (best of {repeats})"
    )
    print(
        f"{'n':>7} {'field ms':>10} {'floor ms':>10} {'field/floor':>12} "
        f"{'compile s':>10} {'solve ms':>10}"
    )
    for n in options["n"]:
        x = sj.Sphere().random(jr.PRNGKey(0), (n, d), dtype)
        field = sj.SelfAttention.identity(d, 1.0)
        f = jax.jit(lambda y: field(0.0, y))
        floor = jax.jit(lambda y: jnp.exp(y @ y.T) @ y)
        field_ms, floor_ms = best_ms(f, x), best_ms(floor, x)
        t1, dt0 = jnp.asarray(1.0, dtype), jnp.asarray(0.05, dtype)
        solver = sj.Retract(solver=sj.RK4())

        def last(y, field=field):
            ys = sj.solve(field, y, t1, dt0=dt0, solver=solver).ys
            assert ys is not None
            return ys[-1]

        g = jax.jit(last)
        tic = time.perf_counter()
        jax.block_until_ready(g(x))
        compile_s = time.perf_counter() - tic
        solve_ms = best_ms(g, x)
        row = dict(
            n=n,
            d=d,
            dtype=jnp.dtype(dtype).name,
            field_ms=field_ms,
            floor_ms=floor_ms,
            field_over_floor=field_ms / floor_ms,
            compile_solve_s=compile_s,
            solve_20_rk4_steps_ms=solve_ms,
        )
        rows.append(row)
        print(
            f"{n:7d} {field_ms:10.3f} {floor_ms:10.3f} {field_ms / floor_ms:12.2f} "
            f"{compile_s:10.2f} {solve_ms:10.2f}"
        )
    if out is not None:
        outputs = Outputs(out)
        report = dict(
            command="bench",
            jax=jax.__version__,
            device=str(jax.devices()[0]),
            rows=rows,
        )
        path = outputs.stage("bench.json", json_bytes(report))
        outputs.commit()
        print(f"wrote {path}")
    return rows
