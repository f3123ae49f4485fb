"""Command line: `python -m spherejax {simulate,sweep,bench} ...`.

Options come from flags or from a TOML config (`--config FILE`, tables `[simulate]`
and `[sweep]`); flags override the config. Every bad input (flags out of range,
unknown names, NaN/inf, unreadable or inconsistent files, tokens off the sphere)
ends with one line `error: ...` on stderr, exit code 2, and nothing written.
See `docs/cli.md` for the table of bad inputs tried.
"""

import argparse
import json
import os
import sys
import time

from ._config import NORMALIZATIONS, SOLVERS, SPECS, VALUES, flag_type, merge


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _add_options(sub, section, help_texts):
    """One flag per option of `section`; absent flags stay absent (so a config
    file's value is not overridden by a default)."""
    spec = SPECS[section]
    choices = {"normalization": NORMALIZATIONS, "solver": SOLVERS, "value": VALUES}
    for name in spec:
        kwargs = dict(default=argparse.SUPPRESS, help=help_texts.get(name))
        if name in ("causal", "x64"):
            sub.add_argument(f"--{name}", action="store_true", **kwargs)
        elif name in choices:
            sub.add_argument(f"--{name}", choices=choices[name], **kwargs)
        else:
            sub.add_argument(f"--{name}", type=flag_type(section, name), **kwargs)
    sub.add_argument(
        "--config", default=None, help=f"TOML file with a [{section}] table of options"
    )


HELP = {
    "n": "number of tokens",
    "d": "dimension (3: tokens on S^2)",
    "beta": "inverse temperature",
    "t1": "end time",
    "normalization": "attention normalisation",
    "value": "V = +I (clustering) or -I (repulsion)",
    "solver": "inner diffrax solver (wrapped in Retract)",
    "rtol": "relative tolerance (atol = rtol / 100)",
    "dt0": "constant step size (needed by euler)",
    "saves": "number of saved times in [0, t1]",
    "seed": "random seed of the initial tokens",
    "causal": "causal mask (token i attends to j <= i)",
    "x64": "float64 (default float32)",
    "out": "output folder",
    "x0": ".npy file of initial tokens, shape (n, d), on the unit sphere",
    "field": "field file written by spherejax.save (e.g. out/field.sjx)",
}


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m spherejax", description="spherejax: attention flows on spheres."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate",
        help="tokens under self-attention on the sphere: summary + PNG",
        description="Simulate n tokens under self-attention (Q = K = I, V = +-I, or a "
        "saved field) on the sphere S^{d-1}; print time, energy and cluster count; "
        "write simulate.png, simulate.npz, simulate.json and field.sjx to --out.",
    )
    _add_options(sim, "simulate", HELP)
    swp = sub.add_parser(
        "sweep",
        help="resumable grid of (n, d, beta) x seeds, e.g. the phase diagram",
        description="Run a grid of (n, d, beta) (comma-separated lists) x random seeds; "
        "each cell is written atomically to --out/cells as it finishes, so rerunning "
        "the same command resumes. Writes sweep.npz, summary.json and sweep.png.",
    )
    _add_options(
        swp,
        "sweep",
        {
            **HELP,
            "n": "number(s) of tokens, e.g. 16,32",
            "d": "dimension(s), e.g. 2,3",
            "beta": "inverse temperature(s), e.g. 0.5,1,2,4",
            "seeds": "random initial configurations per cell",
            "eps": "closeness threshold: P(<x1, x2> >= 1 - eps)",
        },
    )
    bench = sub.add_parser(
        "bench",
        help="time the attention field and a solve",
        description="Time one evaluation of the self-attention field and one solve "
        "(compilation timed separately); print one line per size.",
    )
    bench.add_argument("--n", type=flag_type("sweep", "n"), default=[64, 256])
    bench.add_argument("--d", type=flag_type("simulate", "d"), default=16)
    bench.add_argument("--repeats", type=flag_type("simulate", "saves"), default=5)
    bench.add_argument("--x64", action="store_true")
    bench.add_argument("--out", type=flag_type("simulate", "out"), default=None)
    return parser


def _explicit(args, config_path, section) -> set:
    """Names set by a flag or by the config file (not defaults)."""
    names = set(vars(args)) & set(SPECS[section])
    if config_path is not None:
        from ._config import read_config

        names |= set(read_config(config_path, section))
    return names


def _load_x0(path):
    import numpy as np

    try:
        x0 = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"--x0 file not found: {path}") from None
    except Exception as e:
        raise ValueError(f"--x0 {path} is not a readable .npy array ({e})") from None
    if not isinstance(x0, np.ndarray) or x0.ndim != 2:
        raise ValueError(
            f"--x0 must hold an (n, d) array of tokens; got shape {getattr(x0, 'shape', '?')}"
        )
    if not np.issubdtype(x0.dtype, np.number) or np.issubdtype(x0.dtype, np.complexfloating):
        raise ValueError(f"--x0 must hold real numbers; got dtype {x0.dtype}")
    if not np.all(np.isfinite(x0)):
        raise ValueError("--x0 contains NaN or inf")
    return x0


def simulate(options: dict, explicit: set = frozenset()) -> dict:
    """The `simulate` subcommand on validated `options` (see `_config.SIMULATE`)."""
    import jax

    if options["x64"]:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import spherejax as sj

    from ._sweep import build_solver

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
        x0 = _load_x0(o["x0"])
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
    _plot(ts_np, ys_np, energy, d, beta, png)
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


def _plot(ts, ys, energy, d, beta, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig = plt.figure(figsize=(10, 4.5))
    if d == 3:
        ax = fig.add_subplot(1, 2, 1, projection="3d")
        u, v = np.mgrid[0 : 2 * np.pi : 40j, 0 : np.pi : 20j]
        ax.plot_wireframe(
            np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", lw=0.4
        )
        for i in range(ys.shape[1]):
            ax.plot(*ys[:, i].T, lw=1.0)
        ax.scatter(*ys[0].T, s=10, c="k", label="t = 0")
        ax.scatter(*ys[-1].T, s=40, c="r", marker="*", label=f"t = {ts[-1]:g}")
        ax.set_box_aspect((1, 1, 1))
        ax.legend(loc="upper left", fontsize=8)
    else:
        ax = fig.add_subplot(1, 2, 1)
        cos = np.einsum("tid,tjd->tij", ys, ys)
        off = ~np.eye(ys.shape[1], dtype=bool)
        ax.plot(ts, cos[:, off][:, :: max(1, off.sum() // 200)], lw=0.5, color="C0")
        ax.set_xlabel("t")
        ax.set_ylabel("<x_i, x_j>")
    ax.set_title(f"tokens on S^{d - 1}, beta = {beta:g}")
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.plot(ts, energy)
    ax2.set_xlabel("t")
    ax2.set_ylabel("interaction energy E_beta")
    ax2.set_title("energy vs time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench(n_values, d, repeats, x64, out) -> list:
    """Time the SA field (one evaluation) and a short solve; one line per size."""
    import timeit

    import jax

    if x64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jax.random as jr

    import spherejax as sj

    dtype = jnp.float64 if x64 else jnp.float32
    rows = []
    print(f"jax {jax.__version__} devices={jax.devices()}")
    for n in n_values:
        x = sj.Sphere().random(jr.PRNGKey(0), (n, d), dtype)
        field = sj.SelfAttention.identity(d, 1.0)
        f = jax.jit(lambda y: field(0.0, y))
        tic = time.perf_counter()
        jax.block_until_ready(f(x))
        compile_field = time.perf_counter() - tic
        field_ms = 1e3 * min(
            timeit.repeat(lambda: jax.block_until_ready(f(x)), number=1, repeat=repeats)
        )
        t1 = jnp.asarray(1.0, dtype)
        g = jax.jit(lambda y: sj.solve(field, y, t1, dt0=jnp.asarray(0.05, dtype),
                                       solver=sj.Retract(sj.RK4())).ys[-1])
        tic = time.perf_counter()
        jax.block_until_ready(g(x))
        compile_solve = time.perf_counter() - tic
        solve_ms = 1e3 * min(
            timeit.repeat(lambda: jax.block_until_ready(g(x)), number=1, repeat=repeats)
        )
        row = dict(n=n, d=d, dtype=jnp.dtype(dtype).name, compile_field_s=compile_field,
                   field_ms=field_ms, compile_solve_s=compile_solve,
                   solve_20_rk4_steps_ms=solve_ms)
        rows.append(row)
        print(f"{n=} {d=} dtype={row['dtype']} {compile_field=:.2f}s {field_ms=:.3f} "
              f"{compile_solve=:.2f}s solve(20 RK4 steps)={solve_ms:.2f} ms")
    if out is not None:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "bench.json"), "w") as fh:
            json.dump(dict(command="bench", jax=jax.__version__,
                           device=str(jax.devices()[0]), rows=rows), fh, indent=2)
    return rows


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "bench":
            bench(args.n, args.d, args.repeats, args.x64, args.out)
            return 0
        section = args.command
        flags = {k: v for k, v in vars(args).items() if k in SPECS[section]}
        options = merge(section, args.config, flags)
        explicit = _explicit(args, args.config, section)
        if section == "simulate":
            simulate(options, explicit)
        elif section == "sweep":
            if options["x64"]:
                import jax

                jax.config.update("jax_enable_x64", True)
            if options["solver"] == "euler" and options["dt0"] is None:
                raise ValueError("--solver euler has no error estimate: give --dt0")
            from ._sweep import run_sweep

            run_sweep(options)
    except ValueError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
