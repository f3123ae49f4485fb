"""The `fit` subcommand."""

import time

from .errors import SolverFailure
from .inputs import load_paths
from .output import Outputs, json_bytes, png_bytes
from .plots import plot_losses
from .preflight import check_float32


def fit_command(options: dict) -> dict:
    """The `fit` subcommand on validated `options` (see `config.FIT`).

    Model: `SelfAttention(Q, K, V, beta)` on the unit sphere, `Q, K, V` of shape
    `(d, d)` initialised at `I + 0.1 G / sqrt(d)` (Q, K) and `0.1 G / sqrt(d)` (V),
    `G` standard normal, `beta` fixed. Quality measure, on the training and on the
    held-out intervals: the relative velocity residual
    `sqrt(S_track / S_kin)`, the tracking action of the fitted field over the
    kinetic action of the data (`1` for the zero field, `0` for an exact fit up to
    the discretisation of the observed path).

    The held-out window is the last `holdout` fraction of the intervals in which
    the tokens move (`moving_intervals`); the training intervals precede it. Saved
    times after the last moving interval are at rest and are not used: there the
    velocity is ~0 (a collapsed cluster), `S_kin` is rounding noise and the ratio
    would measure that noise.
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
    check_float32(o, ("beta", "lr", "rtol"))
    ts_np, ys_np = load_paths(o["data"])
    dtype = jnp.float64 if o["x64"] else jnp.float32
    B, T, n, d = ys_np.shape
    if T - 1 - int(np.ceil(o["holdout"] * (T - 1))) < 2:
        raise ValueError(
            f"--holdout {o['holdout']} leaves fewer than 2 training intervals "
            f"of {T - 1}"
        )
    moving = moving_intervals(ts_np, ys_np)
    held = int(np.ceil(o["holdout"] * moving))
    if moving - held < 2:
        raise ValueError(
            f"--holdout {o['holdout']} leaves fewer than 2 training intervals of the "
            f"{moving} in which the tokens move (the last {T - 1 - moving} of "
            f"{T - 1} are at rest): save more times before the tokens collapse, "
            "or lower --holdout"
        )
    # training times ts[:split], held-out times ts[split - 1 : end], at rest after
    end = moving + 1
    split = end - held
    ts = jnp.asarray(ts_np, dtype)
    ys = jnp.asarray(ys_np, dtype)
    train = (ts[:split], ys[:, :split])
    test = (ts[split - 1 : end], ys[:, split - 1 : end])

    kq, kk, kv = jr.split(jr.PRNGKey(o["seed"]), 3)
    scale = 0.1 / np.sqrt(d)
    eye = jnp.eye(d, dtype=dtype)
    model = sj.SelfAttention(
        eye + scale * jr.normal(kq, (d, d), dtype),
        eye + scale * jr.normal(kk, (d, d), dtype),
        scale * jr.normal(kv, (d, d), dtype),
        jnp.asarray(o["beta"], dtype),
        normalization=sj.attention.normalization_from_name(o["normalization"]),
    )
    trainable = _trainable_qkv(model)
    if o["loss"] == "tracking":
        loss = sj.variational.TrackingLoss()
    else:
        loss = sj.variational.ShootingLoss(rtol=o["rtol"], atol=o["rtol"] * 1e-2)

    @jax.jit
    def residual(m, data):
        t, paths = data
        track = jax.vmap(
            lambda p: sj.variational.action(
                p, t, sj.variational.Tracking(m), sj.Sphere()
            )
        )(paths)
        kin = jax.vmap(
            lambda p: sj.variational.action(p, t, sj.variational.Kinetic(), sj.Sphere())
        )(paths)
        return jnp.sqrt(jnp.sum(track) / jnp.sum(kin))

    optimizer = optax.lbfgs() if o["optimizer"] == "lbfgs" else optax.adam(o["lr"])
    before = {
        k: float(residual(model, data))
        for k, data in (("train", train), ("heldout", test))
    }
    print(
        f"spherejax fit: {B} trajectories, T={T} times, n={n} d={d} "
        f"loss={o['loss']} optimizer={o['optimizer']} steps={o['steps']} "
        f"dtype={jnp.dtype(dtype).name}\n"
        f"training t in [{ts_np[0]:g}, {ts_np[split - 1]:g}] ({split - 1} intervals), "
        f"held out t in [{ts_np[split - 1]:g}, {ts_np[end - 1]:g}] ({held} intervals)"
        + (
            f", at rest t in [{ts_np[end - 1]:g}, {ts_np[-1]:g}] ({T - end} "
            f"intervals: kinetic energy below {REST:g} of its peak, not used)"
            if end < T
            else ""
        )
    )
    start = time.perf_counter()
    fitted, losses = sj.variational.fit(
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
        raise SolverFailure(
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
        f"loss {losses[0]:.4e} -> {losses[-1]:.4e}; {o['steps']} steps in "
        f"{seconds:.2f} s ({1e3 * seconds / o['steps']:.1f} ms/step "
        "including compilation)"
    )

    out = Outputs(o["out"])
    field_path = out.stage_model("field.sjx", fitted, sj.io.field_hyperparams(fitted))
    png = out.stage("fit.png", png_bytes(plot_losses(losses, o["loss"]), 110))
    summary = dict(
        command="fit",
        data=o["data"],
        loss=o["loss"],
        trajectories=B,
        times=T,
        heldout_times=held,
        train_window=[float(ts_np[0]), float(ts_np[split - 1])],
        heldout_window=[float(ts_np[split - 1]), float(ts_np[end - 1])],
        rest_intervals=T - end,
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
    out.stage("fit.json", json_bytes(summary))
    out.commit()
    print(f"wrote {png}")
    return summary


REST = 1e-4


def moving_intervals(ts, ys) -> int:
    r"""The number `m` of leading intervals of the observed paths in which the tokens
    move: the last interval whose kinetic energy
    $\sum_{b, i} |y_{b, k+1, i} - y_{b, k, i}|^2 / (t_{k+1} - t_k)^2$ is at least
    `REST` times its largest value is interval `m - 1`; later ones are at rest.
    Paths that never move are a `ValueError`."""
    import numpy as np

    steps = np.diff(np.asarray(ys, dtype=np.float64), axis=1)
    energy = np.sum(steps**2, axis=(0, 2, 3)) / np.diff(np.asarray(ts, np.float64)) ** 2
    peak = float(np.max(energy))
    if not peak > 0:
        raise ValueError(
            "--data: the tokens never move (every saved configuration is the same): "
            "there is no velocity to fit"
        )
    return int(np.nonzero(energy >= REST * peak)[0][-1]) + 1


def _trainable_qkv(model):
    """Trainable leaves of a `SelfAttention`: Q, K and V (beta stays fixed)."""
    import equinox as eqx
    import jax

    spec = jax.tree.map(lambda _: False, model)
    return eqx.tree_at(lambda m: (m.Q, m.K, m.V), spec, (True, True, True))
