r"""Resumable parameter sweeps: a grid of `(n, d, beta)` x random seeds.

Layout of an output folder:

- `sweep.json`: the manifest (the sweep's validated options, its hash, the cells);
  written first, atomically.
- `cells/cell-00000.npz`, ...: one file per grid cell, written to a temporary file
  and moved into place with `os.replace` (atomic), so a killed sweep leaves only
  complete cells. Each holds the sweep's hash and its own parameters.
- `sweep.npz`: the final result, assembled from the cells in grid order with fixed
  zip timestamps, so an interrupted-and-resumed sweep writes the same bytes as an
  uninterrupted one. `summary.json` and `sweep.png` accompany it.

Rerunning the same command skips finished cells. A folder holding another sweep, a
corrupted cell or a cell from another sweep raises a `ValueError` (never silent
reuse).

Each cell simulates `seeds` random initial configurations (uniform on
$S^{d-1}$; the same seeds in every cell) of self-attention with `Q = K = I`,
`V = \pm I` and records, at `saves` times in `[0, t1]`, the inner product
$\langle x_1(t), x_2(t)\rangle$ and the energy, then the cluster count at `t1`. The
phase diagram of GLPR Fig. 3 is `P(<x_1, x_2> >= 1 - eps)` over `(t, beta)`.
"""

import hashlib
import io
import json
import os
import sys
import time
import zipfile

import numpy as np

from .config import build_solver
from .plots import plot_sweep


FORMAT = "spherejax-sweep"
FORMAT_VERSION = 1
AXES = ("n", "d", "beta")
TMP = ".tmp-"


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


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}{TMP}{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _npz_bytes(arrays: dict) -> bytes:
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


def _cell_path(out: str, k: int) -> str:
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


def _read_cell(path: str, k: int, h: str, options: dict, cell: dict) -> dict:
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


class _Simulator:
    """Compiles one vmapped solve per `(n, d)`; `beta` is traced (no recompiles)."""

    def __init__(self, options: dict):
        self.options = options
        self.compiled = {}

    def _build(self, n: int, d: int):
        import equinox as eqx
        import jax
        import jax.numpy as jnp

        from .._energy import interaction_energy
        from .._field import SelfAttention
        from .._integrate import solve

        o = self.options
        solver = build_solver(o["solver"])
        sign = 1.0 if o["value"] == "identity" else -1.0

        @eqx.filter_jit
        def run(beta, x0s, ts):
            eye = jnp.eye(d, dtype=x0s.dtype)
            field = SelfAttention(
                eye,
                eye,
                sign * eye,
                beta,
                normalization=o["normalization"],
                causal=o["causal"],
            )

            def one(x0):
                ys = solve(
                    field,
                    x0,
                    ts[-1],
                    ts=ts,
                    solver=solver,
                    rtol=o["rtol"],
                    atol=o["rtol"] * 1e-2,
                    dt0=o["dt0"],
                    max_steps=1_000_000,
                ).ys
                energy = jax.vmap(lambda y: interaction_energy(y, beta))(ys)
                cos12 = jnp.sum(ys[:, 0] * ys[:, 1], axis=-1)
                return cos12, energy, ys[-1]

            return jax.vmap(one)(x0s)

        return run

    def __call__(self, cell: dict) -> dict:
        import jax
        import jax.numpy as jnp
        import jax.random as jr

        from .._diagnostics import cluster_count
        from .._manifold import Sphere

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
        x0s = jax.vmap(lambda k: Sphere().random(k, (n, d), dtype))(keys)
        ts = jnp.linspace(0.0, o["t1"], o["saves"], dtype=dtype)
        cos12, energy, final = self.compiled[(n, d)](jnp.asarray(beta, dtype), x0s, ts)
        final = np.asarray(final)
        return {
            "ts": np.asarray(ts),
            "cos12": np.asarray(cos12),
            "energy": np.asarray(energy),
            "final": final,
            "clusters": np.array([cluster_count(x, tol=o["eps"]) for x in final]),
        }


def _check_folder(out: str, manifest: dict) -> None:
    """Refuse a folder that holds anything but (part of) this same sweep."""
    path = os.path.join(out, "sweep.json")
    if not os.path.isdir(out):
        return
    if not os.path.exists(path):
        stray = [f for f in os.listdir(out) if TMP not in f]
        if stray:
            raise ValueError(
                f"--out {out} is a non-empty folder without a sweep manifest "
                f"(holds {stray[0]!r}); use a new folder"
            )
        return
    try:
        with open(path) as f:
            old = json.load(f)
        ok = isinstance(old, dict) and old.get("format") == FORMAT
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ok = False
    if not ok:
        raise ValueError(f"{path} is not a spherejax sweep manifest (corrupted?)")
    if old.get("hash") != manifest["hash"]:
        old_options = old.get("options", {})
        diff = [
            k
            for k in sorted(set(old_options) | set(manifest["options"]))
            if k != "out" and old_options.get(k) != manifest["options"].get(k)
        ]
        detail = (
            f"{diff[0]} = {old_options.get(diff[0])!r} there, "
            f"{manifest['options'].get(diff[0])!r} here"
            if diff
            else "different hash"
        )
        raise ValueError(
            f"--out {out} holds a different sweep ({detail}); use another --out "
            "or delete it"
        )


def run_sweep(options: dict, *, log=None) -> dict:
    """Run (or resume) the sweep described by validated `options` (see
    `config.SWEEP`) in the folder `options["out"]`; returns the summary."""
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if log is None else log
    out = options["out"]
    cells = grid(options)
    h = sweep_hash(options)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "hash": h,
        "options": options,
        "cells": cells,
    }
    _check_folder(out, manifest)
    if any(c["n"] < 2 for c in cells):
        raise ValueError("--n must be >= 2 for a sweep (it records <x_1, x_2>)")

    os.makedirs(os.path.join(out, "cells"), exist_ok=True)
    manifest_path = os.path.join(out, "sweep.json")
    if not os.path.exists(manifest_path):
        _write_atomic(manifest_path, json.dumps(manifest, indent=2).encode())
    for folder in (out, os.path.join(out, "cells")):  # leftovers of a killed run
        for name in os.listdir(folder):
            if TMP in name:
                os.remove(os.path.join(folder, name))

    simulate = _Simulator(options)
    results, done, start = [], 0, time.perf_counter()
    for k, cell in enumerate(cells):
        path = _cell_path(out, k)
        label = " ".join(f"{a}={cell[a]:g}" for a in AXES)
        if os.path.exists(path):
            results.append(_read_cell(path, k, h, options, cell))
            log(f"sweep: cell {k + 1}/{len(cells)} ({label}) already done, skipped")
            continue
        tic = time.perf_counter()
        arrays = simulate(cell)
        header = {"format": FORMAT, "sweep_hash": h, "cell": k, "params": cell}
        _write_atomic(
            path, _npz_bytes({**arrays, "header": np.array(json.dumps(header))})
        )
        results.append(arrays)
        done += 1
        log(
            f"sweep: cell {k + 1}/{len(cells)} ({label}) done in "
            f"{time.perf_counter() - tic:.2f} s"
        )

    final = _assemble(options, cells, results)
    _write_atomic(os.path.join(out, "sweep.npz"), _npz_bytes(final))
    summary = {
        "command": "sweep",
        "hash": h,
        "cells": len(cells),
        "computed": done,
        "skipped": len(cells) - done,
        "seconds": time.perf_counter() - start,
        "grid": cells,
        "p_close_final": final["p_close"][:, -1].tolist(),
        "mean_clusters": final["clusters"].mean(axis=1).tolist(),
        "npz": os.path.join(out, "sweep.npz"),
    }
    png = os.path.join(out, "sweep.png")
    plot_sweep(options, cells, final, png)
    summary["png"] = png
    _write_atomic(
        os.path.join(out, "summary.json"), json.dumps(summary, indent=2).encode()
    )
    log(
        f"sweep: {len(cells)} cells ({done} computed, {len(cells) - done} reused); "
        f"wrote {summary['npz']}"
    )
    return summary


def _assemble(options: dict, cells: list, results: list) -> dict:
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
