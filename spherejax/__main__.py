"""Command line: `python -m spherejax {simulate,sweep,fit,bench} ...`.

Options come from flags or from a TOML config (`--config FILE`, tables `[simulate]`,
`[sweep]` and `[fit]`); flags override the config. Every bad input (flags out of range,
unknown names, NaN/inf, unreadable or inconsistent files, tokens off the sphere)
ends with one line `error: ...` on stderr, exit code 2, and nothing written.
See `docs/cli.md` for the table of bad inputs tried.
"""

import argparse
import json
import os
import sys
import time

from ._config import (
    LOSSES,
    NORMALIZATIONS,
    OPTIMIZERS,
    SOLVERS,
    SPECS,
    VALUES,
    flag_type,
    merge,
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _add_options(sub, section, help_texts):
    """One flag per option of `section`; absent flags stay absent (so a config
    file's value is not overridden by a default)."""
    spec = SPECS[section]
    choices = {
        "normalization": NORMALIZATIONS,
        "solver": SOLVERS,
        "value": VALUES,
        "loss": LOSSES,
        "optimizer": OPTIMIZERS,
    }
    for name in spec:
        kwargs = dict(default=argparse.SUPPRESS, help=help_texts.get(name))
        if name in ("causal", "x64", "progress"):
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
    "progress": "show diffrax's progress meter (tqdm if installed) during the solve",
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
    fitp = sub.add_parser(
        "fit",
        help="fit a self-attention field to observed trajectories (Optax)",
        description="Fit SelfAttention(Q, K, V) on the unit sphere to trajectories in "
        "an .npz file (arrays ts (T,) and ys (T, n, d) or (B, T, n, d), e.g. the "
        "simulate.npz that `simulate` writes) by minimising the tracking action "
        "(no solve) or the shooting loss (through solve). The last --holdout fraction "
        "of the time intervals is held out. Writes fit.json, fit.png and field.sjx "
        "(usable as `simulate --field`).",
    )
    _add_options(
        fitp,
        "fit",
        {
            **HELP,
            "data": ".npz with ts (T,) and ys (T, n, d) or (B, T, n, d) on the unit sphere",
            "loss": "tracking (action, no solve) or shooting (through solve)",
            "optimizer": "lbfgs (optax.lbfgs, line search) or adam",
            "steps": "optimiser steps",
            "lr": "learning rate of adam (lbfgs uses its line search)",
            "beta": "inverse temperature of the fitted field (kept fixed)",
            "holdout": "fraction of the time intervals held out for evaluation",
            "rtol": "solver tolerance of the shooting loss (atol = rtol / 100)",
            "seed": "random seed of the initial parameters",
            "out": "output folder",
        },
    )
    bench = sub.add_parser(
        "bench",
        help="time the attention field (vs the XLA floor) and a solve",
        description="Time one evaluation of the self-attention field, the XLA floor "
        "exp(X X^T) X measured in the same process (the ratio is the figure to "
        "compare across machines), and a 20-step RK4 solve (compilation timed "
        "separately); print one line per size. benchmarks/ has the full scripts.",
    )
    _add_options(
        bench,
        "bench",
        {
            "n": "token count(s), e.g. 256,1024",
            "d": "dimension",
            "repeats": "timed repeats (the minimum is reported)",
            "x64": "float64 (default float32)",
            "out": "folder for bench.json (optional)",
        },
    )
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
    if not np.issubdtype(x0.dtype, np.number) or np.issubdtype(
        x0.dtype, np.complexfloating
    ):
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
        progress=o["progress"],
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
            np.cos(u) * np.sin(v),
            np.sin(u) * np.sin(v),
            np.cos(v),
            color="0.85",
            lw=0.4,
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


def _load_paths(path):
    """`ts (T,)` and `ys (B, T, n, d)` from an .npz file, validated."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: np.asarray(f[name]) for name in f.files}
    except FileNotFoundError:
        raise ValueError(f"--data file not found: {path}") from None
    except Exception as e:  # not a zip, pickled objects, a bare .npy, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"--data {path} is not a readable .npz file ({msg})") from None
    if not {"ts", "ys"} <= set(arrays):
        raise ValueError(
            f"--data {path} must hold arrays `ts` and `ys`; it has {sorted(arrays)}"
        )
    ts, ys = arrays["ts"], arrays["ys"]
    if ys.ndim == 3:
        ys = ys[None]
    if ts.ndim != 1 or ys.ndim != 4 or ys.shape[1] != ts.shape[0]:
        raise ValueError(
            f"--data needs ts of shape (T,) and ys of shape (T, n, d) or (B, T, n, d); "
            f"got ts {ts.shape} and ys {ys.shape}"
        )
    for name, a in (("ts", ts), ("ys", ys)):
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(
                f"--data `{name}` must hold real floats; got dtype {a.dtype}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"--data `{name}` contains NaN or inf")
    if ts.shape[0] < 3:
        raise ValueError(f"--data needs at least 3 saved times; got {ts.shape[0]}")
    if not np.all(np.diff(ts) > 0):
        raise ValueError("--data `ts` must be strictly increasing")
    off = float(np.max(np.abs(np.linalg.norm(ys, axis=-1) - 1)))
    if off > 1e-5:
        raise ValueError(
            f"--data tokens are off the unit sphere (max ||x_i| - 1| = {off:.3g})"
        )
    return ts, ys


def fit_command(options: dict) -> dict:
    """The `fit` subcommand on validated `options` (see `_config.FIT`).

    Model: `SelfAttention(Q, K, V, beta)` on the unit sphere, `Q, K, V` of shape
    `(d, d)` initialised at `I + 0.1 G / sqrt(d)` (Q, K) and `0.1 G / sqrt(d)` (V),
    `G` standard normal, `beta` fixed. Quality measure, on the training and on the
    held-out intervals: the relative velocity residual
    `sqrt(S_track / S_kin)`, the tracking action of the fitted field over the
    kinetic action of the data (`1` for the zero field, `0` for an exact fit up to
    the discretisation of the observed path).
    """
    import jax

    if options["x64"]:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    import optax

    import spherejax as sj

    o = dict(options)
    if o["data"] is None:
        raise ValueError("fit needs --data FILE.npz (ts and ys; e.g. simulate.npz)")
    ts_np, ys_np = _load_paths(o["data"])
    dtype = jnp.float64 if o["x64"] else jnp.float32
    B, T, n, d = ys_np.shape
    held = int(np.ceil(o["holdout"] * (T - 1)))
    if T - 1 - held < 2:
        raise ValueError(
            f"--holdout {o['holdout']} leaves fewer than 2 training intervals of {T - 1}"
        )
    split = T - held  # training times ts[:split], held-out times ts[split - 1:]
    ts = jnp.asarray(ts_np, dtype)
    ys = jnp.asarray(ys_np, dtype)
    train = (ts[:split], ys[:, :split])
    test = (ts[split - 1 :], ys[:, split - 1 :])

    kq, kk, kv = jr.split(jr.PRNGKey(o["seed"]), 3)
    scale = 0.1 / np.sqrt(d)
    eye = jnp.eye(d, dtype=dtype)
    model = sj.SelfAttention(
        eye + scale * jr.normal(kq, (d, d), dtype),
        eye + scale * jr.normal(kk, (d, d), dtype),
        scale * jr.normal(kv, (d, d), dtype),
        jnp.asarray(o["beta"], dtype),
        normalization=o["normalization"],
    )
    trainable = _trainable_qkv(model)
    if o["loss"] == "tracking":
        loss = sj.TrackingLoss()
    else:
        loss = sj.ShootingLoss(rtol=o["rtol"], atol=o["rtol"] * 1e-2)

    @jax.jit
    def residual(m, data):
        t, paths = data
        track = jax.vmap(lambda p: sj.action(p, t, sj.Tracking(m), sj.Sphere()))(paths)
        kin = jax.vmap(lambda p: sj.action(p, t, sj.Kinetic(), sj.Sphere()))(paths)
        return jnp.sqrt(jnp.sum(track) / jnp.sum(kin))

    optimizer = optax.lbfgs() if o["optimizer"] == "lbfgs" else optax.adam(o["lr"])
    before = {
        k: float(residual(model, data))
        for k, data in (("train", train), ("heldout", test))
    }
    print(
        f"spherejax fit: {B} trajectories, T={T} times ({T - split} held out), n={n} d={d} "
        f"loss={o['loss']} optimizer={o['optimizer']} steps={o['steps']} dtype={jnp.dtype(dtype).name}"
    )
    start = time.perf_counter()
    fitted, losses = sj.fit(
        model,
        loss,
        train,
        optimizer=optimizer,
        steps=o["steps"],
        progress=True,
        filter_spec=trainable,
    )
    losses = np.asarray(jax.block_until_ready(losses))
    seconds = time.perf_counter() - start
    if not np.all(np.isfinite(losses)):
        raise ValueError(
            "the fit diverged (loss not finite): try --optimizer adam "
            "with a smaller --lr"
        )
    after = {
        k: float(residual(fitted, data))
        for k, data in (("train", train), ("heldout", test))
    }
    print(f"{'':10} {'relative velocity residual':>28}")
    print(f"{'':10} {'initial':>13} {'fitted':>14}")
    for k in ("train", "heldout"):
        print(f"{k:10} {before[k]:13.4e} {after[k]:14.4e}")
    print(
        f"loss {losses[0]:.4e} -> {losses[-1]:.4e}; {o['steps']} steps in {seconds:.2f} s "
        f"({1e3 * seconds / o['steps']:.1f} ms/step including compilation)"
    )

    out = o["out"]
    os.makedirs(out, exist_ok=True)
    field_path = os.path.join(out, "field.sjx")
    sj.save(field_path, fitted, sj.field_hyperparams(fitted))
    png = os.path.join(out, "fit.png")
    _plot_losses(losses, o["loss"], png)
    summary = dict(
        command="fit",
        data=o["data"],
        loss=o["loss"],
        trajectories=B,
        times=T,
        heldout_times=T - split,
        n=n,
        d=d,
        optimizer=o["optimizer"],
        steps=o["steps"],
        lr=o["lr"],
        beta=o["beta"],
        normalization=o["normalization"],
        seconds=seconds,
        ms_per_step=1e3 * seconds / o["steps"],
        loss_first=float(losses[0]),
        loss_last=float(losses[-1]),
        residual_initial=before,
        residual_fitted=after,
        field=field_path,
        png=png,
    )
    with open(os.path.join(out, "fit.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {png}")
    return summary


def _trainable_qkv(model):
    """Trainable leaves of a `SelfAttention`: Q, K and V (beta stays fixed)."""
    import equinox as eqx
    import jax

    spec = jax.tree.map(lambda _: False, model)
    return eqx.tree_at(lambda m: (m.Q, m.K, m.V), spec, (True, True, True))


def _plot_losses(losses, name, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(losses)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{name} loss")
    ax.set_title("spherejax fit")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench(options: dict) -> list:
    """The `bench` subcommand: time the SA field against the XLA floor
    `exp(X X^T) X` (two `n x n x d` matmuls and `n^2` exponentials), and a short
    solve; one line per `n`."""
    import timeit

    import jax

    if options["x64"]:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jax.random as jr

    import spherejax as sj

    d, repeats, out = options["d"], options["repeats"], options["out"]
    dtype = jnp.float64 if options["x64"] else jnp.float32
    rows = []

    def best_ms(f, x):
        jax.block_until_ready(f(x))
        runs = timeit.repeat(
            lambda: jax.block_until_ready(f(x)), number=1, repeat=repeats
        )
        return 1e3 * min(runs)

    print(
        f"spherejax bench: jax {jax.__version__} device={jax.devices()[0]} "
        f"dtype={jnp.dtype(dtype).name} d={d} (best of {repeats})"
    )
    print(
        f"{'n':>7} {'field ms':>10} {'floor ms':>10} {'field/floor':>12} "
        f"{'compile s':>10} {'solve ms':>10}"
    )
    for n in options["n"]:
        x = sj.Sphere().random(jr.PRNGKey(0), (n, d), dtype)
        field = sj.SelfAttention.identity(d, 1.0)
        f = jax.jit(lambda y: field(0.0, y))
        floor = jax.jit(lambda y: jnp.exp(y @ y.T) @ y)
        field_ms, floor_ms = best_ms(f, x), best_ms(floor, x)
        t1, dt0 = jnp.asarray(1.0, dtype), jnp.asarray(0.05, dtype)
        g = jax.jit(
            lambda y: sj.solve(field, y, t1, dt0=dt0, solver=sj.Retract(sj.RK4())).ys[
                -1
            ]
        )
        tic = time.perf_counter()
        jax.block_until_ready(g(x))
        compile_s = time.perf_counter() - tic
        solve_ms = best_ms(g, x)
        row = dict(
            n=n,
            d=d,
            dtype=jnp.dtype(dtype).name,
            field_ms=field_ms,
            floor_ms=floor_ms,
            field_over_floor=field_ms / floor_ms,
            compile_solve_s=compile_s,
            solve_20_rk4_steps_ms=solve_ms,
        )
        rows.append(row)
        print(
            f"{n:7d} {field_ms:10.3f} {floor_ms:10.3f} {field_ms / floor_ms:12.2f} "
            f"{compile_s:10.2f} {solve_ms:10.2f}"
        )
    if out is not None:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "bench.json"), "w") as fh:
            json.dump(
                dict(
                    command="bench",
                    jax=jax.__version__,
                    device=str(jax.devices()[0]),
                    rows=rows,
                ),
                fh,
                indent=2,
            )
        print(f"wrote {os.path.join(out, 'bench.json')}")
    return rows


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        section = args.command
        flags = {k: v for k, v in vars(args).items() if k in SPECS[section]}
        options = merge(section, args.config, flags)
        explicit = _explicit(args, args.config, section)
        if section == "simulate":
            simulate(options, explicit)
        elif section == "fit":
            fit_command(options)
        elif section == "bench":
            bench(options)
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
