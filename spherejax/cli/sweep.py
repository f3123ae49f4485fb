r"""The `sweep` subcommand: a resumable grid of `(n, d, beta)` x random seeds.

Layout of an output folder:

- `sweep.json`: the manifest (the sweep's validated options, its hash, the cells);
  written first, atomically.
- `cells/cell-00000.npz`, ...: one file per grid cell, written to a temporary file
  and moved into place with `os.replace` (atomic), so a killed sweep leaves only
  complete cells. Each holds the sweep's hash and its own parameters.
- `sweep.npz`: the final result, assembled from the cells in grid order with fixed
  zip timestamps, so an interrupted-and-resumed sweep writes the same bytes as an
  uninterrupted one. `summary.json` and `sweep.png` accompany it.
- `.sweep.lock`: locked (`fcntl.flock`) while a sweep runs in the folder; a
  second sweep on the same folder is refused. The kernel releases the lock when
  the process ends, even on SIGKILL.

A sweep killed at any instant resumes: rerunning the same command skips finished
cells, removes leftover temporary files, and accepts a folder left before the
manifest was written (empty, or holding only the lock, an empty `cells/` and
temporary files). A folder holding anything else, another sweep, a corrupted cell
or a cell from another sweep is refused (never silent reuse).

Each cell simulates `seeds` random initial configurations (uniform on
$S^{d-1}$; the same seeds in every cell) of self-attention with `Q = K = I`,
`V = \pm I` and records, at `saves` times in `[0, t1]`, the inner product
$\langle x_1(t), x_2(t)\rangle$ and the energy, then the cluster count at `t1`. The
phase diagram of GLPR Fig. 3 is `P(<x_1, x_2> >= 1 - eps)` over `(t, beta)`.
"""

import json
import os
import sys
import time

import numpy as np

from .cells import (
    FORMAT,
    FORMAT_VERSION,
    Simulator,
    assemble,
    cell_path,
    grid,
    npz_bytes,
    read_cell,
    sweep_hash,
)
from .files import is_temporary
from .folder import check_folder, locked
from .output import json_bytes, png_bytes, write_atomic
from .plots import plot_sweep
from .preflight import check_float32, check_memory, check_solve, estimate_bytes


AXES = ("n", "d", "beta")


def _check_options(options: dict, cells: list) -> None:
    import jax.numpy as jnp

    if any(c["n"] < 2 for c in cells):
        raise ValueError("--n must be >= 2 for a sweep (it records <x_1, x_2>)")
    check_float32(options, ("beta", "t1", "dt0", "rtol"))
    info = jnp.finfo(jnp.float64 if options["x64"] else jnp.float32)
    n = max(options["n"])
    check_solve({**options, "beta": max(options["beta"])}, float(info.eps), n)
    need = max(
        estimate_bytes(
            c["n"], c["d"], options["saves"], info.bits // 8, options["seeds"]
        )
        for c in cells
    )
    check_memory(
        need, f"a sweep cell of {options['seeds']} seeds", "lower --n or --seeds"
    )


def run_sweep(options: dict, *, log=None) -> dict:
    """Run (or resume) the sweep described by validated `options` (see
    `config.SWEEP`) in the folder `options["out"]`; returns the summary."""
    if options["x64"]:
        import jax

        jax.config.update("jax_enable_x64", True)
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
    _check_options(options, cells)
    check_folder(out, manifest)  # before writing anything
    os.makedirs(out, exist_ok=True)
    with locked(out):
        check_folder(out, manifest)  # again, now that no other sweep can write
        return _run_locked(options, cells, manifest, log)


def _run_locked(options: dict, cells: list, manifest: dict, log) -> dict:
    out, h = options["out"], manifest["hash"]
    manifest_path = os.path.join(out, "sweep.json")
    if not os.path.exists(manifest_path):
        write_atomic(manifest_path, json.dumps(manifest, indent=2).encode())
    os.makedirs(os.path.join(out, "cells"), exist_ok=True)
    for folder in (out, os.path.join(out, "cells")):  # leftovers of a killed run
        for name in os.listdir(folder):
            if is_temporary(name):
                os.remove(os.path.join(folder, name))

    simulate = Simulator(options)
    results, done, start = [], 0, time.perf_counter()
    for k, cell in enumerate(cells):
        path = cell_path(out, k)
        label = " ".join(f"{a}={cell[a]:g}" for a in AXES)
        if os.path.exists(path):
            results.append(read_cell(path, k, h, options, cell))
            log(f"sweep: cell {k + 1}/{len(cells)} ({label}) already done, skipped")
            continue
        tic = time.perf_counter()
        arrays = simulate(cell)
        header = {"format": FORMAT, "sweep_hash": h, "cell": k, "params": cell}
        write_atomic(
            path, npz_bytes({**arrays, "header": np.array(json.dumps(header))})
        )
        results.append(arrays)
        done += 1
        log(
            f"sweep: cell {k + 1}/{len(cells)} ({label}) done in "
            f"{time.perf_counter() - tic:.2f} s"
        )

    final = assemble(options, cells, results)
    write_atomic(os.path.join(out, "sweep.npz"), npz_bytes(final))
    png = os.path.join(out, "sweep.png")
    write_atomic(png, png_bytes(plot_sweep(options, cells, final), 100))
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
        "png": png,
    }
    write_atomic(os.path.join(out, "summary.json"), json_bytes(summary))
    log(
        f"sweep: {len(cells)} cells ({done} computed, {len(cells) - done} reused); "
        f"wrote {summary['npz']}"
    )
    return summary
