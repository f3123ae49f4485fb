"""Run by tests/test_sharding.py in a fresh process with 8 forced CPU devices.

Compares sharded evaluations (ensemble axis and token axis) with the same
computation on one device and prints the maximum differences as JSON.
"""

import os


os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import json

import jax
import jax.numpy as jnp
import numpy as np


jax.config.update("jax_enable_x64", True)

import spherejax as sj  # noqa: E402


def maxdiff(a, b):
    return float(
        max(
            np.max(np.abs(np.asarray(x) - np.asarray(y)))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
        )
    )


def main():
    out = {"device_count": jax.device_count()}
    mesh = sj.sharding.make_mesh()
    key = jax.random.PRNGKey(0)
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    d = 4
    Q = 0.8 * jax.random.normal(k1, (2, 3, d))
    K = 0.8 * jax.random.normal(k2, (2, 3, d))
    V = jax.random.normal(k3, (2, d, d))
    t1 = 1.0
    ts = jnp.array([0.5, 1.0])
    # a fixed-step solver keeps compile times (the cost of this check) down
    kw = dict(ts=ts, solver=sj.RK4(), dt0=0.125)

    # ensemble axis: 8 members of 6 tokens, one member per device
    y0s = sj.Sphere().random(k4, (8, 6, d))

    def ens_loss(V, beta, sharded):
        field = sj.SelfAttention(Q, K, V, beta)
        if sharded:
            ys = sj.sharding.sharded_solve(
                field, sj.sharding.shard_ensemble(y0s, mesh), t1, mesh=mesh, **kw
            )
        else:
            ys = jax.vmap(lambda y: sj.solve(field, y, t1, **kw).ys)(y0s)
        return jnp.sum(jnp.sin(ys)), ys

    g_sh, ys_sh = jax.jit(
        jax.grad(ens_loss, argnums=(0, 1), has_aux=True), static_argnums=2
    )(V, 1.5, True)
    g_1, ys_1 = jax.jit(
        jax.grad(ens_loss, argnums=(0, 1), has_aux=True), static_argnums=2
    )(V, 1.5, False)
    out["ensemble_solve"] = maxdiff(ys_sh, ys_1)
    out["ensemble_grad"] = maxdiff(g_sh, g_1)
    out["ensemble_devices"] = len(ys_sh.sharding.device_set)
    out["ensemble_grad_norm"] = float(jnp.abs(g_1[1]))

    # token axis: 32 tokens, 4 per device
    n = 32
    y0 = sj.Sphere().random(k5, (n, d))
    w = np.linspace(1.0, 2.0, n)
    w = w / w.sum()
    field_err = 0.0
    for norm, causal, chunk in [("softmax", True, 3), ("hardmax", False, None)]:
        f = sj.SelfAttention(
            Q, K, V, 1.5, normalization=norm, causal=causal, weights=w, chunk_size=chunk
        )
        sharded = jax.jit(lambda y, f=f: sj.sharding.TokenSharded(f, mesh)(0.0, y))(
            sj.sharding.shard_tokens(y0, mesh)
        )
        field_err = max(field_err, maxdiff(sharded, f(0.0, y0)))
        out[f"token_field_devices_{norm}"] = len(sharded.sharding.device_set)
    out["token_field"] = field_err

    def tok_loss(V, beta, sharded):
        field = sj.SelfAttention(Q, K, V, beta, weights=w, causal=True)
        if sharded:
            field = sj.sharding.TokenSharded(field, mesh)
            y = sj.sharding.shard_tokens(y0, mesh)
        else:
            y = y0
        ys = sj.solve(field, y, t1, **kw).ys
        return jnp.sum(jnp.sin(ys)), ys

    g_sh, ys_sh = jax.jit(
        jax.grad(tok_loss, argnums=(0, 1), has_aux=True), static_argnums=2
    )(V, 1.5, True)
    g_1, ys_1 = jax.jit(
        jax.grad(tok_loss, argnums=(0, 1), has_aux=True), static_argnums=2
    )(V, 1.5, False)
    out["token_solve"] = maxdiff(ys_sh, ys_1)
    out["token_grad"] = maxdiff(g_sh, g_1)
    out["token_grad_norm"] = float(jnp.abs(g_1[1]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
