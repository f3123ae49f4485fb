"""Benchmark 4: peak memory of chunked attention at n = 65,536, d = 64.

Each configuration runs in a fresh child process (so peaks do not mix), which
prints its peak resident set size (`VmHWM` from `/proc/self/status`, the whole
process: Python, jax runtime, compiled code and buffers) and its run time:

- `baseline`: import spherejax, place the (n, d) tokens, run a trivial jitted op;
- `field`: one evaluation of `SelfAttention(..., evaluation=Chunked(1024))` (softmax,
  random Q, K, V, beta = 1, float32);
- `step`: one step of `solve` with the default `Retract(Tsit5())`
  (`dt0 = t1 = 0.01`: one initial evaluation + 6 stages);
- `grad_compiled`: XLA's compiled memory analysis (temporary buffers, not run)
  of `jax.grad` of a scalar of the field output with respect to beta and V, at
  n = 65,536: the backward pass recomputes score blocks;
- `grad`: the same gradient, run (peak RSS of forward + backward);
- `dense_field_8192` / `chunked_field_8192`: the dense and chunked field at
  n = 8192, to show what the dense path costs.

The dense `(n, n)` float32 score array alone would be n^2 * 4 bytes (17.2 GB at
n = 65,536, per head); the dense field needs several.

    python benchmarks/memory.py [config]
"""

import json
import os
import subprocess
import sys
import time


# MEMORY_N: a smaller n for smoke tests (benchmarks/run_all.py --quick)
N, D, CHUNK = int(os.environ.get("MEMORY_N", 65536)), 64, 1024


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(config: str):
    import jax
    import jax.numpy as jnp

    import spherejax as sj

    n = 8192 if config.endswith("8192") else N
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    Q, K, V = (jax.random.normal(k, (D, D), jnp.float32) / D**0.5 for k in keys[:3])
    x = sj.Sphere().random(keys[3], (n, D)).astype(jnp.float32)
    chunk = None if config.startswith("dense") else CHUNK
    field = sj.SelfAttention(Q, K, V, 1.0, evaluation=sj.Chunked(chunk))
    out = {"config": config, "n": n, "d": D, "chunk_size": chunk}
    t = time.perf_counter()
    if config == "baseline":
        jax.block_until_ready(jax.jit(lambda y: 2 * y)(x))
    elif config in ("field", "dense_field_8192", "chunked_field_8192"):
        v = jax.block_until_ready(jax.jit(lambda y: field(0.0, y))(x))
        out["max_tangent_error"] = float(jnp.max(jnp.abs(jnp.sum(v * x, -1))))
    elif config == "step":
        dt = jnp.float32(0.01)
        sol = sj.solve(field, x, dt, dt0=dt)
        y1 = jax.block_until_ready(sol.ys[-1])
        out["num_steps"] = int(sol.stats["num_steps"])
        out["violation"] = float(sj.Sphere().violation(y1))
    elif config in ("grad_compiled", "grad"):

        def loss(beta, V):
            f = sj.SelfAttention(Q, K, V, beta, evaluation=sj.Chunked(CHUNK))
            return jnp.sum(jnp.sin(f(0.0, x)))

        compiled = (
            jax.jit(jax.grad(loss, argnums=(0, 1))).lower(jnp.float32(1.0), V).compile()
        )
        mem = compiled.memory_analysis()
        if config == "grad":
            g_beta, _ = jax.block_until_ready(compiled(jnp.float32(1.0), V))
            out["grad_beta"] = float(g_beta)
        out["temp_mb"] = mem.temp_size_in_bytes / 2**20
        out["argument_mb"] = mem.argument_size_in_bytes / 2**20
        out["output_mb"] = mem.output_size_in_bytes / 2**20
    else:
        raise ValueError(config)
    out["run_s"] = round(time.perf_counter() - t, 1)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(out), flush=True)


def main():
    sys.path.insert(0, os.path.dirname(__file__))
    from _common import header

    print(header("memory"))
    print(
        f"dense (n, n) float32 array at n={N}: {N * N * 4 / 1e9:.1f} GB; "
        f"at n=8192: {8192 * 8192 * 4 / 1e6:.0f} MB"
    )
    configs = [
        "baseline",
        "field",
        "step",
        "grad_compiled",
        "grad",
        "dense_field_8192",
        "chunked_field_8192",
    ]
    if len(sys.argv) > 2:  # python memory.py --only grad field ...
        configs = sys.argv[2:]
    for config in configs:
        proc = subprocess.run(
            [sys.executable, __file__, config], capture_output=True, text=True
        )
        if proc.returncode != 0:
            print(f"config={config} failed: {proc.stderr[-500:]}")
            continue
        print(
            " ".join(f"{k}={v}" for k, v in json.loads(proc.stdout).items()), flush=True
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] != "--only":
        child(sys.argv[1])
    else:
        main()
