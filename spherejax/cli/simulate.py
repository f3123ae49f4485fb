"""The `simulate` subcommand."""

import time
from collections.abc import Set as AbstractSet

from .config import attention_parts
from .errors import SolverFailure
from .inputs import load_x0
from .output import Outputs, json_bytes, npz_bytes, png_bytes
from .plots import plot_simulation
from .preflight import (
    MAX_STEPS,
    check_float32,
    check_memory,
    check_solve,
    energy_batch,
    estimate_bytes,
)


def _setup(o: dict, explicit, dtype):
    """The field and the initial tokens (options `o` completed in place)."""
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import spherejax as sj

    field = None
    if o["field"] is not None:
        clash = sorted(explicit & {"beta", "normalization", "value", "causal"})
        if clash:
            raise ValueError(f"--field sets the field: do not also give --{clash[0]}")
        field = _load_field(o["field"])
        o["beta"] = float(field.beta)
        o["normalization"] = sj.attention.normalization_name(field.normalization)
        o["causal"] = field.causal
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
        x0 = sj.Sphere().random(jr.PRNGKey(o["seed"]), (o["n"], o["d"]), dtype)
    if field is None:
        eye = jnp.eye(o["d"])
        V = eye if o["value"] == "identity" else -eye
        field = sj.SelfAttention(eye, eye, V, o["beta"], **attention_parts(o))
    return field, x0


def _load_field(path: str):
    """The `SelfAttention` field saved in `path`; every way the file can be wrong
    is a `ValueError` (bad input)."""
    import spherejax as sj

    try:
        return sj.io.load(path, like=sj.io.field_from_hyperparams)
    except ValueError as e:
        raise ValueError(f"--field {path}: {e}") from None
    except (OSError, MemoryError):
        raise
    except Exception as e:  # a parameter that numpy cannot read (e.g. pickled)
        while e.__cause__ is not None:  # equinox names the leaf; numpy the reason
            e = e.__cause__
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"--field {path} is not a valid model file: a parameter cannot be read "
            f"({reason})"
        ) from None


def _energies(ys, beta, itemsize):
    """Interaction energy of every saved state, a few states at a time (each
    needs `n x n` memory)."""
    import jax
    import numpy as np

    import spherejax as sj

    batch = energy_batch(ys.shape[1], itemsize)
    f = jax.jit(
        lambda y: jax.lax.map(
            lambda x: sj.interaction_energy(x, beta), y, batch_size=batch
        )
    )
    return np.asarray(f(ys))


def simulate(options: dict, explicit: AbstractSet[str] = frozenset()) -> dict:
    """The `simulate` subcommand on validated `options` (see `config.SIMULATE`)."""
    import jax

    if options["x64"]:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import spherejax as sj

    from .config import build_solver

    o = dict(options)
    check_float32(o, ("beta", "t1", "dt0", "rtol"))
    dtype = jnp.float64 if o["x64"] else jnp.float32
    info = jnp.finfo(dtype)
    field, x0 = _setup(o, explicit, dtype)
    n, d, beta = o["n"], o["d"], o["beta"]
    check_solve(o, float(info.eps), n, default_field=o["field"] is None)
    check_memory(
        estimate_bytes(n, d, o["saves"], info.bits // 8),
        f"simulate --n {n} --d {d} --saves {o['saves']} ({info.dtype.name})",
        "lower --n or --saves" + (" or drop --x64" if o["x64"] else ""),
    )
    if not bool(jnp.all(jnp.isfinite(field(0.0, x0)))):
        raise SolverFailure(
            "the field is not finite at the initial tokens (overflow): use a smaller "
            "beta" + ("" if o["x64"] else " or --x64")
        )
    print(
        f"spherejax simulate: n={n} d={d} beta={beta} "
        f"normalization={o['normalization']} value={o['value']} solver={o['solver']} "
        f"dtype={info.dtype.name} device={jax.devices()[0].platform}",
        flush=True,
    )
    ts = jnp.linspace(0.0, o["t1"], o["saves"], dtype=dtype)
    start = time.perf_counter()
    sol = sj.solve(
        field,
        x0,
        o["t1"],
        ts=ts,
        solver=build_solver(o["solver"]),
        rtol=o["rtol"],
        atol=o["rtol"] * 1e-2,
        dt0=o["dt0"],
        max_steps=MAX_STEPS,
        progress=o["progress"],
    )
    ys = jax.block_until_ready(sol.ys)
    seconds = time.perf_counter() - start
    if not bool(jnp.all(jnp.isfinite(ys))):
        raise SolverFailure(
            "the solution is not finite (overflow or NaN during the solve): use a "
            "smaller --dt0 or --rtol, a smaller --beta, or --x64"
        )
    energy = _energies(ys, beta, info.bits // 8)
    ts_np, ys_np = np.asarray(ts), np.asarray(ys)

    print(f"{'t':>8} {'energy':>12} {'clusters':>8} {'mean cos':>9} {'violation':>10}")
    rows = []
    for k in np.unique(np.linspace(0, len(ts_np) - 1, 6).round().astype(int)):
        cos = np.asarray(sj.pairwise_cosines(ys_np[k]))
        row = dict(
            t=float(ts_np[k]),
            energy=float(energy[k]),
            clusters=sj.cluster_count(ys_np[k]),
            mean_cos=float(cos[~np.eye(n, dtype=bool)].mean()) if n > 1 else 1.0,
            violation=float(sj.Sphere().violation(ys_np[k])),
        )
        rows.append(row)
        print(
            f"{row['t']:8.3f} {row['energy']:12.6f} {row['clusters']:8d} "
            f"{row['mean_cos']:9.4f} {row['violation']:10.1e}"
        )
    steps = int(sol.stats["num_steps"])
    print(f"{steps} steps in {seconds:.2f} s (including compilation)")

    out = Outputs(o["out"])
    figure = plot_simulation(ts_np, ys_np, energy, d, beta)
    png = out.stage("simulate.png", png_bytes(figure, 110))
    out.stage("simulate.npz", npz_bytes(ts=ts_np, ys=ys_np, energy=energy))
    field_path = out.path("field.sjx")
    out.stage_model("field.sjx", field, sj.io.field_hyperparams(field))
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
    out.stage("simulate.json", json_bytes(summary))
    out.commit()
    print(f"wrote {png}")
    return summary
