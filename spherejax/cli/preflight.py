"""Checks made before a solve starts: options that cannot succeed together, and
a memory estimate against the memory available."""

import math

from .errors import OutOfMemory, available_memory


MAX_STEPS = 1_000_000
GIB = 1 << 30


def check_solve(o: dict, eps: float, n: int, default_field: bool = True) -> None:
    """Refuse option combinations that cannot succeed (`ValueError`, exit 2).

    - `--solver euler` needs `--dt0` (no error estimate);
    - `--rtol` below the float resolution `eps` of the run's dtype can never be met;
    - a constant step `--dt0` needing more than `MAX_STEPS` steps over `[0, t1]`;
    - the unnormalised field, a sum of `n` terms `exp(beta <x_i, x_j>) x_j` with
      `Q = K = I`, can overflow the dtype when `beta + log n + 1 > log(max float)`
      (`log(max float)` is 88.7 in float32, 709.8 in float64).
    """
    if o["solver"] == "euler" and o["dt0"] is None:
        raise ValueError("--solver euler has no error estimate: give --dt0")
    if o["rtol"] < eps:
        raise ValueError(
            f"--rtol {o['rtol']:g} is below the float resolution {eps:.1e} of this "
            "run and cannot be met: use a larger --rtol"
            + (" or --x64" if eps > 1e-10 else "")
        )
    if o["dt0"] is not None and o["t1"] / o["dt0"] > MAX_STEPS:
        raise ValueError(
            f"--dt0 {o['dt0']:g} needs {o['t1'] / o['dt0']:.3g} steps to reach --t1 "
            f"{o['t1']:g} (limit {MAX_STEPS:,}): use --dt0 >= "
            f"{o['t1'] / MAX_STEPS:.3g}"
        )
    largest = math.log(2.0**128 if eps > 1e-10 else 1.7976931348623157e308)
    limit = math.floor(10 * (largest - math.log(max(n, 1)) - 1)) / 10
    if default_field and o["normalization"] == "unnormalized" and o["beta"] > limit:
        raise ValueError(
            f"--beta {o['beta']:g} with --normalization unnormalized overflows: "
            f"n exp(beta) exceeds the largest float of this run; use --beta <= "
            f"{limit:g}, --normalization softmax" + (" or --x64" if eps > 1e-10 else "")
        )


FLOAT32_MAX = float(2.0**128 * (1 - 2.0**-24))


def check_float32(o: dict, names) -> None:
    """Refuse (`ValueError`, exit 2) an option that a float32 run (no `--x64`)
    would turn into `inf`: each of `names` (a number, a list of numbers, or None)
    must have magnitude at most the largest float32, 3.4e38."""
    if o["x64"]:
        return
    for name in names:
        values = o[name] if isinstance(o[name], list) else [o[name]]
        for value in values:
            if value is not None and abs(value) > FLOAT32_MAX:
                raise ValueError(
                    f"--{name} {value:g} overflows float32 (largest {FLOAT32_MAX:.3g}):"
                    f" use a smaller --{name}, or --x64 for float64"
                )


def estimate_bytes(n: int, d: int, saves: int, itemsize: int, batch: int = 1) -> int:
    """Peak memory of a solve of `batch` systems of `n` tokens in `R^d` saved at
    `saves` times: a few `n x n` attention matrices per system (logits,
    exponentials, weights), the saved states, the solver's stages, and the runtime
    itself (about 0.5 GiB)."""
    attention = 6 * n * n * itemsize
    states = (2 * saves + 16) * n * d * itemsize
    return batch * (attention + states) + GIB // 2


def check_memory(need: int, what: str, remedy: str) -> None:
    """Refuse (`OutOfMemory`, exit 4) when `need` bytes exceed what is available."""
    have = available_memory()
    if have is not None and need > have:
        raise OutOfMemory(
            f"{what} needs about {need / GIB:.1f} GiB of memory but "
            f"{have / GIB:.1f} GiB are available: {remedy}"
        )


def energy_batch(n: int, itemsize: int, budget: int = 256 << 20) -> int:
    """Saved states per batch when computing energies (`n x n` each) within
    `budget` bytes."""
    return max(1, budget // max(1, 3 * n * n * itemsize))
