"""Benchmark 1: attention-field throughput against the XLA floor.

The floor is the least work any softmax-attention field must do:
`exp(A @ B.T) @ C` for `(n, d)` arrays (two `n x n x d` matmuls and `n^2`
exponentials), jitted by XLA. The field is `SelfAttention` (random Q, K, V,
beta = 1, softmax, tangent projection on the sphere). Both are timed interleaved
in this process; `ratio` is the median over rounds of field time / floor time.

    python benchmarks/field_throughput.py [--quick]
"""

import sys
import time

import jax
import jax.numpy as jnp
from _common import compare, header

import spherejax as sj
from spherejax._attention import _evaluation


jax.config.update("jax_enable_x64", True)


def main(quick: bool = False):
    print(header("field_throughput"))
    d = 64
    sizes = [256, 1024, 4096] if quick else [256, 1024, 4096, 16384]
    for dtype in (jnp.float32, jnp.float64):
        for n in sizes:
            if n == 16384 and dtype == jnp.float64:
                # dense float64 would need several 2 GiB n x n arrays (floor included)
                continue
            keys = jax.random.split(jax.random.PRNGKey(n), 4)
            Q, K, V = (jax.random.normal(k, (d, d), dtype) / d**0.5 for k in keys[:3])
            x = sj.Sphere().random(keys[3], (n, d)).astype(dtype)
            chunk = 1024
            dense = sj.SelfAttention(Q, K, V, 1.0)
            chunked = sj.SelfAttention(Q, K, V, 1.0, evaluation=sj.Chunked(chunk))
            fns = {
                "floor": jax.jit(lambda a, b, c: jnp.exp(a @ b.T) @ c),
                "field": jax.jit(lambda y: dense(0.0, y)),
                "chunked": jax.jit(lambda y: chunked(0.0, y)),
                "dpa": jax.jit(lambda y: dense(0.0, y)),
            }
            args = {k: (x,) for k in fns}
            args["floor"] = (x, x, x)
            if n <= chunk:
                del fns["chunked"], args["chunked"]
            if dtype != jnp.float32:
                del fns["dpa"], args["dpa"]
            compile_s = {}
            for k in fns:
                t = time.perf_counter()
                # "dpa": the dense field forced through jax.nn.dot_product_attention
                _evaluation._FORCE_DPA = k == "dpa"
                fns[k] = fns[k].lower(*args[k]).compile()
                _evaluation._FORCE_DPA = False
                compile_s[k] = time.perf_counter() - t
            rounds = 3 if n >= 16384 else 7
            med, ratio = compare(fns, args, rounds=rounds)
            dpa = sj.attention.uses_dot_product_attention(dtype, sj.Softmax())
            line = (
                f"dtype={jnp.dtype(dtype).name} n={n} d={d} "
                f"floor_ms={1e3 * med['floor']:.3f} field_ms={1e3 * med['field']:.3f} "
                f"field/floor={ratio['field']:.2f}"
            )
            if "chunked" in fns:
                line += (
                    f" chunked{chunk}_ms={1e3 * med['chunked']:.3f} "
                    f"chunked/floor={ratio['chunked']:.2f}"
                )
            if "dpa" in fns:
                line += f" dpa_ms={1e3 * med['dpa']:.3f} dpa/floor={ratio['dpa']:.2f}"
            line += f" field_uses_dpa={dpa} compile_s={compile_s['field']:.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
