"""The `simulate` subcommand."""

import json
import os
import time

from .inputs import load_x0
from .plots import plot_simulation


def simulate(options: dict, explicit: set = frozenset()) -> dict:
    """The `simulate` subcommand on validated `options` (see `_config.SIMULATE`)."""
    import jax

    if options["x64"]:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import spherejax as sj

    from .config import build_solver

    o = dict(options)
    if o["solver"] == "euler" and o["dt0"] is None:
        raise ValueError("--solver euler has no error estimate: give --dt0")
    dtype = jnp.float64 if o["x64"] else jnp.float32
    manifold = sj.Sphere()

    if o["field"] is not None:
        clash = sorted(explicit & {"beta", "normalization", "value", "causal"})
        if clash:
            raise ValueError(f"--field sets the field: do not also give --{clash[0]}")
        field = sj.load(o["field"], like=sj.field_from_hyperparams)
        o["beta"] = float(field.beta)
        o["normalization"], o["causal"] = field.normalization, field.causal
        o["value"] = "saved"
        if "d" in explicit and o["d"] != field.dim:
            raise ValueError(f"--d {o['d']} does not match the field's d = {field.dim}")
        o["d"] = field.dim
    if o["x0"] is not None:
        x0 = load_x0(o["x0"])
        for name, size in (("n", x0.shape[0]), ("d", x0.shape[1])):
            if name in explicit and o[name] != size:
                raise ValueError(
                    f"--{name} {o[name]} does not match --x0 of shape {x0.shape}"
                )
        o["n"], o["d"] = x0.shape
        off = float(np.max(np.abs(np.linalg.norm(x0, axis=-1) - 1)))
        if off > 1e-6:
            raise ValueError(
                f"--x0 tokens are off the unit sphere (max ||x_i| - 1| = {off:.3g}); "
                "normalise each row"
            )
        x0 = jnp.asarray(x0, dtype)
    else:
        x0 = manifold.random(jr.PRNGKey(o["seed"]), (o["n"], o["d"]), dtype)
    if o["field"] is None:
        eye = jnp.eye(o["d"])
        V = eye if o["value"] == "identity" else -eye
        field = sj.SelfAttention(
            eye, eye, V, o["beta"], normalization=o["normalization"], causal=o["causal"]
        )
    n, d, beta = o["n"], o["d"], o["beta"]
    ts = jnp.linspace(0.0, o["t1"], o["saves"], dtype=dtype)
    start = time.perf_counter()
    sol = sj.solve(  # raises ValueError for tokens off the sphere or of the wrong d
        field,
        x0,
        o["t1"],
        ts=ts,
        solver=build_solver(o["solver"]),
        rtol=o["rtol"],
        atol=o["rtol"] * 1e-2,
        dt0=o["dt0"],
        max_steps=1_000_000,
        progress=o["progress"],
    )
    ys = jax.block_until_ready(sol.ys)
    seconds = time.perf_counter() - start
    if not bool(jnp.all(jnp.isfinite(ys))):
        raise ValueError("the solution is not finite (try a smaller --dt0 or --rtol)")
    energy = np.asarray(jax.vmap(lambda y: sj.interaction_energy(y, beta))(ys))
    ts_np, ys_np = np.asarray(ts), np.asarray(ys)

    print(
        f"spherejax simulate: n={n} d={d} beta={beta} "
        f"normalization={o['normalization']} value={o['value']} solver={o['solver']} "
        f"dtype={jnp.dtype(dtype).name} device={jax.devices()[0].platform}"
    )
    print(f"{'t':>8} {'energy':>12} {'clusters':>8} {'mean cos':>9} {'violation':>10}")
    rows = []
    for k in np.unique(np.linspace(0, len(ts_np) - 1, 6).round().astype(int)):
        cos = np.asarray(sj.pairwise_cosines(ys_np[k]))
        row = dict(
            t=float(ts_np[k]),
            energy=float(energy[k]),
            clusters=sj.cluster_count(ys_np[k], tol=1e-3),
            mean_cos=float(cos[~np.eye(n, dtype=bool)].mean()) if n > 1 else 1.0,
            violation=float(manifold.violation(ys_np[k])),
        )
        rows.append(row)
        print(
            f"{row['t']:8.3f} {row['energy']:12.6f} {row['clusters']:8d} "
            f"{row['mean_cos']:9.4f} {row['violation']:10.1e}"
        )
    steps = int(sol.stats["num_steps"])
    print(f"{steps} steps in {seconds:.2f} s (including compilation)")

    out = o["out"]
    os.makedirs(out, exist_ok=True)
    png = os.path.join(out, "simulate.png")
    plot_simulation(ts_np, ys_np, energy, d, beta, png)
    np.savez(os.path.join(out, "simulate.npz"), ts=ts_np, ys=ys_np, energy=energy)
    field_path = os.path.join(out, "field.sjx")
    sj.save(field_path, field, sj.field_hyperparams(field))
    summary = dict(
        command="simulate",
        n=n,
        d=d,
        beta=beta,
        normalization=o["normalization"],
        value=o["value"],
        causal=o["causal"],
        solver=o["solver"],
        steps=steps,
        seconds=seconds,
        rows=rows,
        png=png,
        field=field_path,
    )
    with open(os.path.join(out, "simulate.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {png}")
    return summary
