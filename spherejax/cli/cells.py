"""Cells of a sweep: the grid, the hash, deterministic `.npz` bytes, reading a
finished cell back with checks, and the simulation of one cell (its seeds as one
ensemble)."""

import hashlib
import io
import json
import os
import zipfile

import numpy as np

from .config import attention_parts, build_solver
from .errors import SolverFailure
from .preflight import MAX_STEPS, energy_batch


FORMAT = "spherejax-sweep"
FORMAT_VERSION = 1
AXES = ("n", "d", "beta")


def grid(options: dict) -> list[dict]:
    """The cells: the Cartesian product of the `n`, `d`, `beta` lists (beta fastest)."""
    return [
        {"n": n, "d": d, "beta": beta}
        for n in options["n"]
        for d in options["d"]
        for beta in options["beta"]
    ]


def sweep_hash(options: dict) -> str:
    """Hash of everything that determines the results (not the output folder)."""
    content = {k: v for k, v in options.items() if k != "out"}
    text = json.dumps(
        {"format": FORMAT, "version": FORMAT_VERSION, "options": content},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def npz_bytes(arrays: dict) -> bytes:
    """A `.npz` (zip of `.npy`) with fixed timestamps and order: same arrays, same
    bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            array_buffer = io.BytesIO()
            array = np.asarray(arrays[name])
            if not array.flags.c_contiguous:
                array = array.copy(order="C")
            np.lib.format.write_array(array_buffer, array, allow_pickle=False)
            zf.writestr(info, array_buffer.getvalue())
    return buffer.getvalue()


def cell_path(out: str, k: int) -> str:
    return os.path.join(out, "cells", f"cell-{k:05d}.npz")


def _expected_shapes(options: dict, cell: dict) -> dict:
    s, t = options["seeds"], options["saves"]
    return {
        "cos12": (s, t),
        "energy": (s, t),
        "clusters": (s,),
        "final": (s, cell["n"], cell["d"]),
        "ts": (t,),
    }


def read_cell(path: str, k: int, h: str, options: dict, cell: dict) -> dict:
    """Load and check a finished cell; a corrupted or foreign file is an error."""
    remedy = "delete it (or the whole folder) to recompute"
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        header = json.loads(str(arrays.pop("header")))
    except Exception as e:  # zip, npy or JSON damage: all mean "corrupted"
        raise ValueError(
            f"result file {path} is corrupted ({type(e).__name__}: {e}); {remedy}."
        ) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"result file {path} is not a spherejax sweep cell; {remedy}.")
    if (
        header.get("sweep_hash") != h
        or header.get("cell") != k
        or header.get("params") != cell
    ):
        raise ValueError(
            f"result file {path} belongs to another sweep or cell (hash "
            f"{str(header.get('sweep_hash'))[:12]}, cell {header.get('cell')}; this "
            f"sweep is {h[:12]}, cell {k}); {remedy}."
        )
    for name, shape in _expected_shapes(options, cell).items():
        if name not in arrays or arrays[name].shape != shape:
            raise ValueError(
                f"result file {path} is corrupted (array {name!r} missing or of the "
                f"wrong shape); {remedy}."
            )
    return arrays


class Simulator:
    """Compiles one ensemble solve per `(n, d)` (all seeds of a cell together);
    `beta` is traced (no recompiles)."""

    def __init__(self, options: dict):
        self.options = options
        self.compiled = {}

    def _build(self, n: int, d: int):
        import equinox as eqx
        import jax
        import jax.numpy as jnp

        import spherejax as sj

        o = self.options
        solver = build_solver(o["solver"])
        sign = 1.0 if o["value"] == "identity" else -1.0
        batch = max(1, energy_batch(n, 8 if o["x64"] else 4) // o["seeds"])

        @eqx.filter_jit
        def run(beta, x0s, ts):
            eye = jnp.eye(d, dtype=x0s.dtype)
            field = sj.SelfAttention(
                eye,
                eye,
                sign * eye,
                beta,
                **attention_parts(o),
            )
            # The seeds of a cell are draws of one model, which need similar step
            # sizes: one shared step size for the whole cell, accepted when the worst
            # seed passes the error test (so every seed is integrated at least as
            # accurately as its own solve would be), costs no per-seed bookkeeping
            # in the loop and no per-seed copy of the saved states each step.
            ys = sj.solve_ensemble(
                field,
                x0s,
                ts[-1],
                step_size="shared",
                ts=ts,
                solver=solver,
                rtol=o["rtol"],
                atol=o["rtol"] * 1e-2,
                dt0=o["dt0"],
                max_steps=MAX_STEPS,
            ).ys
            assert ys is not None

            def one(ys):
                energy = jax.lax.map(
                    lambda y: sj.interaction_energy(y, beta), ys, batch_size=batch
                )
                cos12 = jnp.sum(ys[:, 0] * ys[:, 1], axis=-1)
                return cos12, energy, ys[-1]

            return jax.vmap(one)(ys)

        return run

    def __call__(self, cell: dict) -> dict:
        import jax
        import jax.numpy as jnp
        import jax.random as jr

        import spherejax as sj

        o = self.options
        n, d, beta = cell["n"], cell["d"], cell["beta"]
        if n < 2:
            raise ValueError("a sweep needs n >= 2 tokens (it records <x_1, x_2>)")
        dtype = jnp.float64 if o["x64"] else jnp.float32
        if (n, d) not in self.compiled:
            self.compiled[(n, d)] = self._build(n, d)
        keys = jax.vmap(lambda s: jr.fold_in(jr.PRNGKey(o["seed"]), s))(
            jnp.arange(o["seeds"])
        )
        x0s = jax.vmap(lambda k: sj.Sphere().random(k, (n, d), dtype))(keys)
        ts = jnp.linspace(0.0, o["t1"], o["saves"], dtype=dtype)
        cos12, energy, final = self.compiled[(n, d)](jnp.asarray(beta, dtype), x0s, ts)
        final = np.asarray(final)
        if not (np.all(np.isfinite(final)) and np.all(np.isfinite(cos12))):
            raise SolverFailure(
                f"the solution of the cell n={n} d={d} beta={beta:g} is not finite "
                "(overflow or NaN): use smaller betas, a smaller --rtol or --dt0, "
                "or --x64"
            )
        return {
            "ts": np.asarray(ts),
            "cos12": np.asarray(cos12),
            "energy": np.asarray(energy),
            "final": final,
            "clusters": np.array([sj.cluster_count(x, tol=o["eps"]) for x in final]),
        }


def assemble(options: dict, cells: list, results: list) -> dict:
    final = {
        "ts": results[0]["ts"],
        "n": np.array([c["n"] for c in cells]),
        "d": np.array([c["d"] for c in cells]),
        "beta": np.array([c["beta"] for c in cells], dtype=np.float64),
        "cos12": np.stack([r["cos12"] for r in results]),
        "energy": np.stack([r["energy"] for r in results]),
        "clusters": np.stack([r["clusters"] for r in results]),
        "eps": np.float64(options["eps"]),
    }
    final["p_close"] = (final["cos12"] >= 1 - options["eps"]).mean(axis=1)
    for k, r in enumerate(results):
        final[f"final_{k:05d}"] = r["final"]
    return final
