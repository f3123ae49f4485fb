"""Shared helpers for the benchmark scripts (timing, header line)."""

import platform
import statistics
import time

import jax


def header(script: str) -> str:
    devs = jax.devices()
    return (
        f"# {script}: jax {jax.__version__}, device {devs[0].device_kind} x{len(devs)} "
        f"({jax.default_backend()}), python {platform.python_version()}"
    )


def run_once(fn, *args):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def compare(fns: dict, args: dict, rounds: int = 7, min_time: float = 0.2):
    """Time several (already compiled) callables *interleaved*, round after round,
    in this process. Each round times every callable (`number` calls, enough to
    last `min_time`) once, starting from a different one each round (on a shared
    machine the first callable of a round can run faster or slower than the
    rest; rotating spreads that over all of them). Returns `{name: median seconds
    per call}` and the median over rounds of the per-round ratios
    `{name: t_name / t_first}`: on a loaded machine the per-round ratio is much
    steadier than raw times."""
    names = list(fns)
    number = {}
    for k in names:
        one = run_once(fns[k], *args[k])
        number[k] = max(1, int(min_time / max(one, 1e-6)))
    per_round = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            for _ in range(number[k]):
                out = fns[k](*args[k])
            jax.block_until_ready(out)
            per_round[k].append((time.perf_counter() - t) / number[k])
    base = names[0]
    ratios = {
        k: statistics.median(a / b for a, b in zip(per_round[k], per_round[base]))
        for k in names
    }
    medians = {k: statistics.median(v) for k, v in per_round.items()}
    return medians, ratios
