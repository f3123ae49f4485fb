"""Fit a layerwise attention flow to all-MiniLM-L6-v2's per-layer hidden states and
compare its held-out tracking action with the best constant-velocity baseline.

    PYTHONPATH=. python benchmarks/minilm_fit.py         # the cached paths (no torch)
    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/minilm_fit.py --live  # more text

Default: the cache (`spherejax.models.minilm_dataset()`, 9 sentences of 10 tokens;
train on the first 6, hold out 3). `--live` (needs the `real` extra) also runs the model
on 30 more sentences of 10 tokens (`MORE`), trains on the same 6 and holds out 33.

Flow: `LowRankLayerFlow` (per layer: GLPR attention `Q = K = I, V = alpha I` with a
learnt `beta`, plus a rank-`r` linear token-wise term and a drift), started at the
baseline and fitted by Adam on the tracking action (`TrackingLoss`). Baseline: the
closed-form best constant velocity per layer (`constant_velocity_baseline`).
Ablation: the same flow with `alpha = 0` frozen (no token interaction).
Prints the ratios (fitted / baseline, held-out and train), per layer, and the
per-step fit time (the difference of a 1-step and an `steps + 1`-step fit, so
compilation cancels).
"""

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import spherejax as sj


MORE = [
    "Heavy snow closed the mountain roads today.",
    "The children built a snowman outside.",
    "Our neighbour plays the violin every morning.",
    "A strong wind knocked down the fence.",
    "The soup needs a little more salt.",
    "The library stays open until nine tonight.",
    "The students wrote an essay about history.",
    "Farmers hope for rain before the harvest.",
    "The baby laughed at the funny clown.",
    "We watched the sunset from the hill.",
    "My sister is learning to speak Japanese.",
    "He forgot his umbrella on the bus.",
    "Prices rose sharply after the long winter.",
    "The company sold its factory last year.",
    "The doctor told him to stay home.",
    "They painted the kitchen a bright yellow.",
    "The river burst its banks last week.",
    "Our team won the match at last.",
    "The teacher explained the problem very clearly.",
    "A black cat crossed the quiet street.",
    "The pilot landed the plane in fog.",
    "She planted tomatoes and beans in spring.",
    "The old clock in the hall stopped.",
    "The nurse checked his pulse and temperature.",
    "The engine made a strange noise today.",
    "We ate fresh fish by the harbour.",
    "The choir sang beautifully at the wedding.",
    "The printer ran out of paper again.",
    "His grandfather repaired clocks for fifty years.",
    "The shop closed early on Sunday afternoon.",
]


def fit_flow(ts, train, base, rank, steps, attention=True, lr=1e-2):
    c = jnp.stack([base.layer(k).b2 for k in range(base.num_layers)])
    init = sj.models.LowRankLayerFlow.init(
        ts, train.shape[-1], rank, key=jr.PRNGKey(0), c=c
    )
    spec = jax.tree.map(eqx.is_inexact_array, init)
    if not attention:
        spec = eqx.tree_at(lambda m: (m.alpha, m.beta), spec, (False, False))
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, 1e-2))
    start = time.perf_counter()
    flow, losses = sj.variational.fit(
        init,
        sj.variational.TrackingLoss(),
        (ts, train),
        optimizer=opt,
        steps=steps,
        progress=False,
        filter_spec=spec,
    )
    jax.block_until_ready(losses)
    return flow, losses, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", action="store_true")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    data = sj.models.minilm_dataset()
    ts, train, held_out = data.ts, data.paths[:6], data.paths[6:]
    if args.live:
        fresh = sj.models.minilm_trajectories(MORE)
        held_out = jnp.concatenate([held_out, jnp.stack(fresh).astype(train.dtype)])
        held_out = sj.LayerNormSphere().project(held_out)
    print(
        f"# minilm_fit: train {train.shape[0]} sentences, "
        f"held out {held_out.shape[0]}, "
        f"n = {train.shape[2]}, rank {args.rank}, {args.steps} Adam steps, "
        f"jax {jax.__version__} {jax.devices()[0].device_kind}"
    )
    start = time.perf_counter()
    base = sj.models.constant_velocity_baseline(ts, train)
    print(f"baseline (closed form): {time.perf_counter() - start:.2f} s")
    b_test = np.asarray(sj.models.interval_actions(base, ts, held_out))
    for attention in (True, False):
        name = "attention + token-wise" if attention else "token-wise only (alpha = 0)"
        _, _, t1 = fit_flow(ts, train, base, args.rank, 1, attention)
        flow, losses, tn = fit_flow(
            ts, train, base, args.rank, args.steps + 1, attention
        )
        per_step = (tn - t1) / args.steps
        f_test = np.asarray(sj.models.interval_actions(flow, ts, held_out))
        r_train = float(sj.models.tracking_ratio(flow, base, ts, train))
        print(
            f"{name:28s} held-out ratio {f_test.sum() / b_test.sum():.3f}  train ratio "
            f"{r_train:.3f}  loss {float(losses[0]):.2f} -> {float(losses[-1]):.2f}  "
            f"{1e3 * per_step:.1f} ms/step, first step (compile) {t1:.1f} s"
        )
        print(
            "   per layer held-out ratio:",
            " ".join(f"{r:.3f}" for r in f_test / b_test),
        )
        if attention:
            print(
                "   alpha:",
                " ".join(f"{a:.2f}" for a in np.asarray(flow.alpha)),
                "  beta*d:",
                " ".join(f"{b:.1f}" for b in 384 * np.asarray(flow.beta)),
            )


if __name__ == "__main__":
    main()
