"""Command line: `python -m spherejax simulate ...`."""

import argparse
import json
import math
import os
import sys
import time


SOLVERS = ("tsit5", "dopri5", "dopri8", "rk4", "heun", "euler")


def _positive_int(name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer; got {text!r}")
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1; got {value}")
        return value

    return parse


def _finite_float(name, positive=False):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number; got {text!r}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be finite; got {text}")
        if positive and value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0; got {value}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spherejax", description="spherejax: attention flows on spheres."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate",
        help="tokens under self-attention on the sphere: summary + PNG",
        description="Simulate n tokens under self-attention (Q = K = V = I) on the "
        "sphere S^{d-1}; print time, energy and cluster count; write a PNG.",
    )
    sim.add_argument("--n", type=_positive_int("--n"), default=32, help="number of tokens")
    sim.add_argument("--d", type=_positive_int("--d"), default=3, help="dimension (3: S^2)")
    sim.add_argument("--beta", type=_finite_float("--beta", True), default=1.0)
    sim.add_argument("--t1", type=_finite_float("--t1", True), default=20.0, help="end time")
    sim.add_argument(
        "--normalization",
        choices=("softmax", "unnormalized", "sinkhorn", "hardmax"),
        default="softmax",
    )
    sim.add_argument("--solver", choices=SOLVERS, default="tsit5")
    sim.add_argument("--rtol", type=_finite_float("--rtol", True), default=1e-6)
    sim.add_argument("--dt0", type=_finite_float("--dt0", True), default=None)
    sim.add_argument("--saves", type=_positive_int("--saves"), default=201)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--causal", action="store_true")
    sim.add_argument("--x64", action="store_true", help="float64 (default float32)")
    sim.add_argument("--out", default="out", help="output folder (PNG, NPZ, JSON)")
    return parser


def _make_solver(name):
    import diffrax

    import spherejax as sj

    inner = {
        "tsit5": diffrax.Tsit5,
        "dopri5": diffrax.Dopri5,
        "dopri8": diffrax.Dopri8,
        "rk4": sj.RK4,
        "heun": diffrax.Heun,
        "euler": diffrax.Euler,
    }[name]()
    return sj.Retract(inner)


def simulate(args) -> dict:
    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import spherejax as sj

    if args.solver == "euler" and args.dt0 is None:
        raise ValueError("--solver euler has no error estimate: give --dt0")
    dtype = jnp.float64 if args.x64 else jnp.float32
    manifold = sj.Sphere()
    x0 = manifold.random(jr.PRNGKey(args.seed), (args.n, args.d), dtype)
    field = sj.SelfAttention.identity(
        args.d, args.beta, normalization=args.normalization, causal=args.causal
    )
    ts = jnp.linspace(0.0, args.t1, args.saves, dtype=dtype)
    start = time.perf_counter()
    sol = sj.solve(
        field,
        x0,
        args.t1,
        ts=ts,
        solver=_make_solver(args.solver),
        rtol=args.rtol,
        atol=args.rtol * 1e-2,
        dt0=args.dt0,
        max_steps=1_000_000,
    )
    ys = jax.block_until_ready(sol.ys)
    seconds = time.perf_counter() - start
    energy = np.asarray(jax.vmap(lambda y: sj.interaction_energy(y, args.beta))(ys))
    ts_np, ys_np = np.asarray(ts), np.asarray(ys)

    print(
        f"spherejax simulate: n={args.n} d={args.d} beta={args.beta} "
        f"normalization={args.normalization} solver={args.solver} "
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
            mean_cos=float(cos[~np.eye(args.n, dtype=bool)].mean()) if args.n > 1 else 1.0,
            violation=float(manifold.violation(ys_np[k])),
        )
        rows.append(row)
        print(
            f"{row['t']:8.3f} {row['energy']:12.6f} {row['clusters']:8d} "
            f"{row['mean_cos']:9.4f} {row['violation']:10.1e}"
        )
    steps = int(sol.stats["num_steps"])
    print(f"{steps} steps in {seconds:.2f} s (including compilation)")

    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "simulate.png")
    _plot(ts_np, ys_np, energy, args, png)
    np.savez(os.path.join(args.out, "simulate.npz"), ts=ts_np, ys=ys_np, energy=energy)
    summary = dict(
        command="simulate",
        n=args.n,
        d=args.d,
        beta=args.beta,
        normalization=args.normalization,
        solver=args.solver,
        steps=steps,
        seconds=seconds,
        rows=rows,
        png=png,
    )
    with open(os.path.join(args.out, "simulate.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {png}")
    return summary


def _plot(ts, ys, energy, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig = plt.figure(figsize=(10, 4.5))
    if args.d == 3:
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
    ax.set_title(f"tokens on S^{args.d - 1}, beta = {args.beta:g}")
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.plot(ts, energy)
    ax2.set_xlabel("t")
    ax2.set_ylabel("interaction energy E_beta")
    ax2.set_title("energy vs time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "simulate":
            simulate(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
