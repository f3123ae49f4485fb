"""Work–precision benchmark of spherejax's manifold solvers.

Problem (a): softmax self-attention (SA) with Q = K = V = I on the unit sphere,
n = 64 tokens, d = 16, beta = 4, t in [0, 10], float64, uniformly random tokens.
Problem (b), for the splitting solvers: the same attention plus a token-wise
feed-forward term (tanh MLP, hidden width 64), so that there are two parts to
split.

Error: max over tokens and coordinates of |y(T) - y_ref(T)|, with y_ref from scipy's
DOP853 at rtol = atol = 1e-13 on an independent numpy implementation of the field.
Work: number of attention evaluations (counted with a host callback in a separate
run, so counting does not disturb the timings) and wall time of the jitted solve
(median of 3 runs after compilation; step size / tolerance are traced arguments,
so each solver compiles once).

Usage: `python benchmarks/work_precision.py [--n 64 --d 16 --beta 4 --T 10]
[--quick] [--readme benchmarks/README.md] [--png benchmarks/work_precision.png]`.
Prints one line per configuration, writes the PNG and replaces the section
"Work–precision" of the README with the results table.
"""

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import jax


jax.config.update("jax_enable_x64", True)

import diffrax
import jax.numpy as jnp
import numpy as np
import scipy.integrate

import spherejax as sj


# ---------------------------------------------------------------------------------
# Problem and independent reference
# ---------------------------------------------------------------------------------


def np_sa(x, beta):
    s = beta * x @ x.T
    k = np.exp(s - s.max(axis=1, keepdims=True))
    v = (k / k.sum(axis=1, keepdims=True)) @ x
    return v - np.sum(x * v, axis=1, keepdims=True) * x


def np_ffn(x, W1, b1, W2, b2):
    v = np.tanh(x @ W1.T + b1) @ W2.T + b2
    return v - np.sum(x * v, axis=1, keepdims=True) * x


def reference(x0, T, rhs):
    sol = scipy.integrate.solve_ivp(
        lambda t, y: rhs(y.reshape(x0.shape)).ravel(),
        (0.0, T),
        x0.ravel(),
        method="DOP853",
        rtol=1e-13,
        atol=1e-13,
    )
    assert sol.success
    return sol.y[:, -1].reshape(x0.shape)


_COUNT = [0]


def _bump():
    _COUNT[0] += 1


class Counted(sj.AbstractField):
    """Calls `field` and counts the calls (host callback)."""

    field: sj.AbstractField
    manifold: sj.AbstractManifold

    def __init__(self, field):
        self.field = field
        self.manifold = field.manifold

    def check_tokens(self, y):
        self.field.check_tokens(y)

    def __call__(self, t, y, args=None):
        jax.debug.callback(_bump)
        return self.field(t, y, args)


# ---------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------

DT = {
    1: (0.1, 0.03, 0.01, 0.003, 0.001),
    2: (0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002),
    3: (0.4, 0.2, 0.1, 0.05, 0.02, 0.01),
    4: (0.5, 0.25, 0.1, 0.05, 0.025, 0.01),
}
TOLS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12)


def configs_a():
    return [
        ("Retract(Euler)", sj.Retract(diffrax.Euler()), "fixed", DT[1]),
        ("Retract(RK4)", sj.Retract(sj.RK4()), "fixed", DT[4]),
        ("Retract(Tsit5)", sj.Retract(diffrax.Tsit5()), "adaptive", TOLS),
        ("Retract(Dopri8)", sj.Retract(diffrax.Dopri8()), "adaptive", TOLS),
        ("LieEuler", sj.LieEuler(), "fixed", DT[1]),
        ("CG2", sj.CG2(), "fixed", DT[2]),
        ("CG3", sj.CG3(), "fixed", DT[3]),
        ("CG4a", sj.CG4a(), "fixed", DT[4]),
        ("CG2_3", sj.CG2_3(), "adaptive", TOLS[:-2]),
        ("RKMK4", sj.RKMK4(), "fixed", DT[4]),
        ("RKMK4 (adaptive)", sj.RKMK4(), "adaptive", TOLS),
    ]


def configs_b(attn, ffn):
    return [
        ("Retract(Euler)", sj.Retract(diffrax.Euler()), "fixed", DT[1]),
        ("CG2", sj.CG2(), "fixed", DT[2]),
        ("RKMK4", sj.RKMK4(), "fixed", DT[4]),
        (
            "LieTrotter(Retract(Euler)) [post-LN block]",
            sj.LieTrotter(attn, ffn, solver=sj.Retract(diffrax.Euler())),
            "fixed",
            DT[1],
        ),
        (
            "Strang(ffn, attn; CG2)",
            sj.Strang(ffn, attn, solver=sj.CG2()),
            "fixed",
            DT[2],
        ),
        (
            "Strang(ffn, attn; RKMK4)",
            sj.Strang(ffn, attn, solver=sj.RKMK4()),
            "fixed",
            DT[2],
        ),
    ]


def make_runner(field, solver, kind, T, dtype):
    t1 = jnp.asarray(T, dtype)

    @jax.jit
    def run(y0, p):
        if kind == "fixed":
            sol = sj.solve(field, y0, t1, solver=solver, dt0=p, max_steps=20_000)
        else:
            sol = sj.solve(
                field, y0, t1, solver=solver, rtol=p, atol=p, max_steps=100_000
            )
        return sol.ys[-1], sol.stats["num_steps"]

    return run


def bench(label, field, counted_field, solver, kind, params, y0, ref, T, out):
    run = make_runner(field, solver, kind, T, y0.dtype)
    count = (
        None
        if counted_field is None
        else make_runner(counted_field, solver, kind, T, y0.dtype)
    )
    dev = jax.devices()[0]
    for p in params:
        p_arr = jnp.asarray(p, y0.dtype)
        y, steps = run(y0, p_arr)
        jax.block_until_ready(y)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            jax.block_until_ready(run(y0, p_arr))
            times.append(time.perf_counter() - t)
        evals = None  # splitting solvers: counted afterwards by `bench_split`
        if count is not None:
            _COUNT[0] = 0
            jax.block_until_ready(count(y0, p_arr))
            jax.effects_barrier()
            evals = _COUNT[0]
        err = float(np.max(np.abs(np.asarray(y) - ref)))
        viol = float(field.manifold.violation(y))
        wall = statistics.median(times)
        row = dict(
            label=label,
            param=p,
            kind=kind,
            evals=evals,
            steps=int(steps),
            wall=wall,
            err=err,
            viol=viol,
        )
        out.append(row)
        name = "dt" if kind == "fixed" else "rtol"
        print(
            f"{label:44s} {name}={p:<8g} "
            f"evals={'(below)' if evals is None else evals:<7} "
            f"steps={int(steps):<6d} "
            f"wall={wall * 1e3:9.2f} ms  err={err:.3e}  violation={viol:.1e}  "
            f"jax={jax.__version__} device={dev.platform}:{dev.device_kind}",
            flush=True,
        )


# ---------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------


def cost_at(rows, target, key):
    """Work needed to reach error `target`: log-log interpolation between the
    cheapest configuration below the target and the previous one; None if the
    target is not reached."""
    pts = sorted((r[key], r["err"]) for r in rows)
    best = None
    for i, (w, e) in enumerate(pts):
        if e <= target:
            if i == 0 or pts[i - 1][1] <= target:
                c = w
            else:
                (w0, e0) = pts[i - 1]
                frac = (math.log(target) - math.log(e0)) / (math.log(e) - math.log(e0))
                c = math.exp(math.log(w0) + frac * (math.log(w) - math.log(w0)))
            best = c if best is None else min(best, c)
    return best


def winners(results, targets, key):
    labels = list(dict.fromkeys(r["label"] for r in results))
    out = {}
    for target in targets:
        costs = []
        for lab in labels:
            c = cost_at([r for r in results if r["label"] == lab], target, key)
            if c is not None:
                costs.append((c, lab))
        costs.sort()
        out[target] = costs
    return out


def plot(panels, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(panels), 2, figsize=(13, 5.2 * len(panels)), squeeze=False
    )
    for row, (title, results) in zip(axes, panels):
        labels = list(dict.fromkeys(r["label"] for r in results))
        for lab in labels:
            rs = sorted(
                (r for r in results if r["label"] == lab), key=lambda r: r["evals"]
            )
            style = "-o" if "Retract" not in lab else "--s"
            row[0].loglog(
                [r["evals"] for r in rs], [r["err"] for r in rs], style, ms=3, label=lab
            )
            row[1].loglog(
                [r["wall"] * 1e3 for r in rs],
                [r["err"] for r in rs],
                style,
                ms=3,
                label=lab,
            )
        row[0].set_xlabel("attention evaluations")
        row[1].set_xlabel("wall time (ms)")
        for ax in row:
            ax.set_ylabel("max error at T")
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
            ax.axhline(1e-4, color="k", lw=0.5)
            ax.axhline(1e-10, color="k", lw=0.5)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def table(results):
    lines = [
        "| solver | step / rtol | attention evals | steps | wall (ms) | max error "
        "| violation |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['param']:g} | {r['evals']} | {r['steps']} | "
            f"{r['wall'] * 1e3:.2f} | {r['err']:.2e} | {r['viol']:.0e} |"
        )
    return lines


def summary(title, results):
    lines = [f"**{title}**", ""]
    for key, unit in (("evals", "attention evaluations"), ("wall", "wall time")):
        for target, costs in winners(results, (1e-4, 1e-10), key).items():
            if not costs:
                lines.append(f"- error {target:g}, by {unit}: no solver reached it.")
                continue
            fmt = (
                (lambda c: f"{c:.0f}")
                if key == "evals"
                else (lambda c: f"{c * 1e3:.1f} ms")
            )
            best_c, best = costs[0]
            if len(costs) > 1:
                second_c, second = costs[1]
                margin = (
                    f"{second_c / best_c:.2f}x cheaper than the runner-up "
                    f"{second} ({fmt(second_c)})"
                )
            else:
                margin = "the only solver to reach it"
            lines.append(
                f"- error {target:g}, by {unit}: **{best}** ({fmt(best_c)}), {margin}."
            )
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--beta", type=float, default=4.0)
    ap.add_argument("--T", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--quick", action="store_true", help="fewer step sizes (smoke test)"
    )
    ap.add_argument("--skip-b", action="store_true", help="skip the splitting panel")
    ap.add_argument(
        "--png", default=str(Path(__file__).with_name("work_precision.png"))
    )
    ap.add_argument("--readme", default=str(Path(__file__).with_name("README.md")))
    args = ap.parse_args(argv)

    n, d, beta, T = args.n, args.d, args.beta, args.T
    dev = jax.devices()[0]
    print(
        f"# jax {jax.__version__}, device {dev.platform}:{dev.device_kind}; "
        f"SA n={n} d={d} beta={beta} T={T}, float64",
        flush=True,
    )
    key_y, key_w1, key_w2 = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    y0 = sj.Sphere().random(key_y, (n, d), jnp.float64)
    x0 = np.asarray(y0)
    attn = sj.SelfAttention.identity(d, beta)
    hidden = 64
    W1 = jax.random.normal(key_w1, (hidden, d)) / math.sqrt(d)
    W2 = jax.random.normal(key_w2, (d, hidden)) / math.sqrt(hidden)
    b1 = jnp.linspace(-0.5, 0.5, hidden)
    b2 = jnp.zeros(d)
    ffn = sj.FeedForward(W1, b1, W2, b2, activation=jnp.tanh)

    def thin(params):
        return params[::2] if args.quick else params

    t = time.perf_counter()
    ref_a = reference(x0, T, lambda x: np_sa(x, beta))
    print(
        "# reference (a): scipy DOP853 rtol=atol=1e-13, "
        f"{time.perf_counter() - t:.1f} s",
        flush=True,
    )
    results_a = []
    for label, solver, kind, params in configs_a():
        bench(
            label,
            attn,
            Counted(attn),
            solver,
            kind,
            thin(params),
            y0,
            ref_a,
            T,
            results_a,
        )

    panels = [(f"(a) SA, n={n}, d={d}, beta={beta:g}, T={T:g}", results_a)]
    results_b = []
    if not args.skip_b:
        np_w = [np.asarray(a) for a in (W1, b1, W2, b2)]
        ref_b = reference(x0, T, lambda x: np_sa(x, beta) + np_ffn(x, *np_w))
        attn_c = Counted(attn)
        for label, solver, kind, params in configs_b(attn, ffn):
            if isinstance(solver, (sj.LieTrotter, sj.Strang)):
                counted_solver = type(solver)(
                    *[attn_c if f is attn else f for f in solver.fields],
                    solver=solver.solver,
                )
                field, counted_field = sj.Sum(attn, ffn), sj.Sum(attn_c, ffn)
                # the timed run uses the uncounted parts, the counting run the
                # counted ones
                bench_split(
                    label,
                    field,
                    counted_field,
                    solver,
                    counted_solver,
                    kind,
                    thin(params),
                    y0,
                    ref_b,
                    T,
                    results_b,
                )
            else:
                bench(
                    label,
                    sj.Sum(attn, ffn),
                    sj.Sum(attn_c, ffn),
                    solver,
                    kind,
                    thin(params),
                    y0,
                    ref_b,
                    T,
                    results_b,
                )
        panels.append(
            (
                f"(b) SA + FFN (splitting), n={n}, d={d}, beta={beta:g}, T={T:g}",
                results_b,
            )
        )

    plot(panels, args.png)
    write_readme(args, panels, dev)


def bench_split(
    label, field, counted_field, solver, counted_solver, kind, params, y0, ref, T, out
):
    """`bench` for splitting solvers, whose parts (not the summed field) are counted."""
    rows = []
    bench(label, field, None, solver, kind, params, y0, ref, T, rows)
    count = make_runner(counted_field, counted_solver, kind, T, y0.dtype)
    for r in rows:
        _COUNT[0] = 0
        jax.block_until_ready(count(y0, jnp.asarray(r["param"], y0.dtype)))
        jax.effects_barrier()
        r["evals"] = _COUNT[0]
        print(
            f"{'':44s} (attention evaluations for dt={r['param']:g}: {r['evals']})",
            flush=True,
        )
    out.extend(rows)


def write_readme(args, panels, dev):
    head = "## Work–precision"
    lines = [
        head,
        "",
        f"`python benchmarks/work_precision.py` (jax {jax.__version__}, "
        f"{dev.platform}:{dev.device_kind}, float64; "
        f"n={args.n}, d={args.d}, beta={args.beta:g}, T={args.T:g}"
        + (", --quick" if args.quick else "")
        + "). Error: max |y(T) - y_ref(T)| against scipy DOP853 (rtol = atol = 1e-13)"
        " on an independent numpy field. Work: attention evaluations (counted) and wall"
        " time of the jitted solve (median of 3). Fixed-step solvers run at several"
        " `dt`, adaptive ones (PIDController) at several `rtol = atol`. Costs at a"
        " target error are log-log interpolated between measured points.",
        "",
        f"![work-precision]({Path(args.png).name})",
        "",
    ]
    for title, results in panels:
        lines += summary(title, results) + [""]
    for title, results in panels:
        lines += [f"<details><summary>{title}: all measurements</summary>", ""]
        lines += table(results) + ["", "</details>", ""]
    readme = Path(args.readme)
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        text = (
            text[:start]
            + "\n".join(lines)
            + ("" if nxt < 0 else "\n" + text[nxt + 1 :])
        )
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines)
    readme.write_text(text.rstrip("\n") + "\n")


if __name__ == "__main__":
    sys.exit(main())
