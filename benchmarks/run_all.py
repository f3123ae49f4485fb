"""Every benchmark's headline configuration in one command, on whatever backend JAX
finds (CPU, GPU, TPU); one JSON file with the device, versions, date and figures.

    python benchmarks/run_all.py --out FILE.json [--quick] [--max-n N]

Sections (the JSON schema is `SCHEMA` below and in `benchmarks/README.md`):

- `attention`: float32 attention, d = 64, n = 4096, 8192, ..., 65,536 on
  accelerators, n = 4096 and 16,384 on CPU (capped by `--max-n`):
  `jax.nn.dot_product_attention`
  (`dpa`, one head `(1, n, 1, d)`, scale 1), the XLA floor `exp(A B^T) C`, the
  dense `SelfAttention` (random Q, K, V, softmax, tangent projection) and the
  chunked one (`evaluation=Chunked(1024)`); dense rows only up to `--dense-max-n` (their
  `n x n` arrays), plus float64 at n = 4096 (floor and dense field);
- `field_small` and `ensemble`: `benchmarks/ensemble.py` (batched small-n field
  against its floors; the 1000-member ensemble table);
- `grad_cost`: `benchmarks/grad_cost.py` (n = 256, d = 64, float64 and float32;
  3 rounds on CPU, its default 7 on accelerators);
- `memory`: `benchmarks/memory.py` at n = 65,536 (`baseline`, `field`,
  `grad_compiled`), each in a child process;
- `spectral`: `benchmarks/spectral.py` (`Spectral()` against `Chunked` at
  n = 65,536 on the circle and the 2-sphere, one evaluation at n = 10^6, the
  scaling exponents in n and beta, an adaptive solve of 10^6 particles).

`--quick` runs every section at tiny sizes (n = 128 attention with 64-row chunks,
4 ensemble members, a scipy DOP853 reference, no torchdiffeq and no
`SelfAttention.identity` rows, the gradient
at n = 8, memory at n = 2048 without the gradient, spectral at n = 2048).

Every figure is a median over interleaved rounds in one process
(`_common.compare`). A section that fails is recorded under `errors` (and the
command exits with status 1) instead of stopping the others. `--quick` shrinks
every size for a smoke test (the test suite runs it). Needs only the `test` extra
(scipy); the torchdiffeq row is skipped, with the reason recorded, without it.
"""

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _common import compare  # noqa: E402

import spherejax as sj  # noqa: E402
from spherejax.attention import uses_dot_product_attention as uses_dpa  # noqa: E402


jax.config.update("jax_enable_x64", True)

SCHEMA_VERSION = 1

# Schema: section -> required keys and their types ("number" = finite int/float,
# "rows" = list of dicts each holding the listed keys).
SCHEMA: dict = {
    "schema_version": int,
    "meta": {
        "date_utc": str,
        "backend": str,
        "device_kind": str,
        "device_count": int,
        "python": str,
        "platform": str,
        "cpu_count": int,
        "versions": dict,
        "quick": bool,
        "wall_s": "number",
    },
    "attention": ("rows", {"dtype": str, "n": int, "d": int, "ms": dict}),
    "field_small": (
        "rows",
        {"b": int, "n": int, "d": int, "SelfAttention/floor3": "number"},
    ),
    "ensemble": {
        "members": int,
        "rows": dict,
        "speedup": dict,
        "floor3_one_evaluation_ms": "number",
    },
    "grad_cost": ("rows", {"dtype": str, "n": int, "grad/forward": "number"}),
    "memory": ("rows", {"config": str, "n": int, "peak_rss_mb": "number"}),
    "spectral": {
        "circle": {"n": int, "speedup": "number", "relative_difference": "number"},
        "sphere": {"n": int, "speedup": "number", "relative_difference": "number"},
        "million": {"n": int, "seconds": "number"},
        "scaling_n": {"exponent": "number"},
        "scaling_beta": {"exponent": "number"},
        "solve": {"n": int, "seconds": "number", "steps": int},
    },
    "errors": dict,
}


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def validate(doc: dict, schema: dict = SCHEMA, where: str = "") -> list[str]:
    """Problems of `doc` against `schema` (empty list: valid)."""
    problems = []
    for key, spec in schema.items():
        path = f"{where}.{key}" if where else key
        if key not in doc:
            problems.append(f"missing `{path}`")
            continue
        v = doc[key]
        if spec == "number":
            if not _is_number(v):
                problems.append(f"`{path}` is not a finite number: {v!r}")
        elif isinstance(spec, type):
            if not isinstance(v, spec) or (spec is int and isinstance(v, bool)):
                problems.append(f"`{path}` is not {spec.__name__}: {v!r}")
        elif isinstance(spec, tuple):
            if not isinstance(v, list) or not v:
                problems.append(f"`{path}` is not a non-empty list")
                continue
            for i, row in enumerate(v):
                problems += validate(row, spec[1], f"{path}[{i}]")
        elif isinstance(spec, dict):
            if not isinstance(v, dict):
                problems.append(f"`{path}` is not an object")
            else:
                problems += validate(v, spec, path)
    return problems


def _versions() -> dict:
    out = {}
    for pkg in ("jax", "jaxlib", "diffrax", "equinox", "numpy", "scipy", "torch"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    out["spherejax"] = sj.__version__
    return out


def attention(
    sizes, dense_max_n: int, rounds: int, f64_n: int | None, chunk: int = 1024
) -> list[dict]:
    d = 64
    rows = []
    configs = [("float32", n) for n in sizes]
    if f64_n is not None:
        configs.append(("float64", f64_n))
    for dtype_name, n in configs:
        dtype = jnp.dtype(dtype_name)
        keys = jax.random.split(jax.random.PRNGKey(n), 4)
        Q, K, V = (jax.random.normal(k, (d, d), dtype) / d**0.5 for k in keys[:3])
        x = sj.Sphere().random(keys[3], (n, d)).astype(dtype)
        dense = sj.SelfAttention(Q, K, V, 1.0)
        chunked = sj.SelfAttention(Q, K, V, 1.0, evaluation=sj.Chunked(chunk))
        fns, args = {}, {}
        if n <= dense_max_n:
            fns["floor"] = jax.jit(lambda a, b, c: jnp.exp(a @ b.T) @ c)
            args["floor"] = (x, x, x)
            fns["field_dense"] = jax.jit(lambda y: dense(0.0, y))
            args["field_dense"] = (x,)
            if dtype_name == "float32":
                qkv = (jnp.einsum("kd,nd->nk", M, x)[None, :, None] for M in (Q, K, V))
                fns["dpa"] = jax.jit(
                    lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=1.0)
                )
                args["dpa"] = tuple(qkv)
        if n > chunk:
            fns["field_chunked"] = jax.jit(lambda y: chunked(0.0, y))
            args["field_chunked"] = (x,)
        compile_s = {}
        for k in fns:
            t = time.perf_counter()
            fns[k] = fns[k].lower(*args[k]).compile()
            compile_s[k] = time.perf_counter() - t
        med, ratio = compare(fns, args, rounds=rounds, min_time=0.1)
        row = {
            "dtype": dtype_name,
            "n": n,
            "d": d,
            "chunk_size": chunk,
            "field_uses_dpa": uses_dpa(dtype, sj.Softmax()),
            "ms": {k: 1e3 * v for k, v in med.items()},
            "compile_s": compile_s,
        }
        first = next(iter(fns))
        for k in fns:
            if k != first:
                row[f"{k}/{first}"] = ratio[k]
        if "dpa" in fns:
            for k in ("field_dense", "field_chunked"):
                if k in fns:
                    row[f"{k}/dpa"] = ratio[k] / ratio["dpa"]
        print(
            f"attention dtype={dtype_name} n={n} "
            + " ".join(f"{k}_ms={v:.3f}" for k, v in row["ms"].items())
            + " "
            + " ".join(f"{k}={v:.2f}" for k, v in row.items() if "/" in k),
            flush=True,
        )
        rows.append(row)
    return rows


def memory(n: int, configs) -> list[dict]:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memory.py")
    rows = []
    env = dict(os.environ, MEMORY_N=str(n))
    for config in configs:
        proc = subprocess.run(
            [sys.executable, script, config], capture_output=True, text=True, env=env
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory.py {config} failed: {proc.stderr[-1000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print("memory " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="run every benchmark's headline")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--max-n", type=int, default=None, help="largest attention n")
    p.add_argument("--dense-max-n", type=int, default=None)
    p.add_argument("--members", type=int, default=None, help="ensemble size")
    a = p.parse_args(argv)
    start = time.perf_counter()
    backend = jax.default_backend()
    accel = backend != "cpu"
    if a.quick:
        sizes, f64_n, rounds, chunk = [128], 128, 2, 64
        dense_max = a.dense_max_n or 128
        mem_n, members = 2048, a.members or 4
        grad_args = "--n 8 --d 3 --dtypes float64 --rounds 2".split()
        mem_configs = ["baseline", "field"]
    else:
        max_n = a.max_n or (65536 if accel else 16384)
        # on CPU the doubling steps add time, not information: 4096 and 16,384
        ladder = (4096, 8192, 16384, 32768, 65536) if accel else (4096, 16384)
        sizes = [n for n in ladder if n <= max_n]
        f64_n, rounds = 4096, 3
        dense_max = a.dense_max_n or (65536 if accel else 16384)
        mem_n, members = 65536, a.members or 1000
        grad_args = [] if accel else ["--rounds", "3"]
        mem_configs, chunk = ["baseline", "field", "grad_compiled"], 1024
    devs = jax.devices()
    doc: dict = {
        "schema_version": SCHEMA_VERSION,
        "meta": {
            "date_utc": datetime.datetime.now(datetime.UTC).isoformat(
                timespec="seconds"
            ),
            "backend": backend,
            "device_kind": devs[0].device_kind,
            "device_count": len(devs),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count() or 0,
            "versions": _versions(),
            "quick": a.quick,
            "argv": sys.argv[1:] if argv is None else list(argv),
        },
        "errors": {},
    }
    print(f"# run_all: {doc['meta']}", flush=True)

    def section(name, fn):
        t = time.perf_counter()
        try:
            doc[name] = fn()
        except Exception as e:  # recorded, reported, and the exit status is 1
            traceback.print_exc()
            doc["errors"][name] = f"{type(e).__name__}: {e}"
        doc["meta"][f"{name}_s"] = time.perf_counter() - t

    import ensemble as ens
    import grad_cost

    section("attention", lambda: attention(sizes, dense_max, rounds, f64_n, chunk))
    shapes = [(8, 8, 3)] if a.quick else [(1000, 32, 3), (256, 32, 16)]
    section("field_small", lambda: ens.field_ratios(shapes, rounds=3 if a.quick else 7))
    section(
        "ensemble",
        lambda: ens.ensemble(
            members,
            rounds=2 if a.quick else 3,
            peers=not a.quick,
            general_field=not a.quick,
        ),
    )
    section("grad_cost", lambda: grad_cost.main(grad_args))
    section("memory", lambda: memory(mem_n, mem_configs))
    import spectral

    section("spectral", lambda: spectral.run(quick=a.quick))
    doc["meta"]["wall_s"] = time.perf_counter() - start

    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1, default=float)
    problems = validate(doc)
    for prob in problems:
        print(f"schema: {prob}", file=sys.stderr)
    print(f"# wrote {a.out} in {doc['meta']['wall_s']:.0f} s", flush=True)
    return 1 if doc["errors"] or problems else 0


if __name__ == "__main__":
    sys.exit(main())
