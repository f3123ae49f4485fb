"""`ReplayAdjoint`: reverse mode from stored stages.

References: diffrax's own `RecursiveCheckpointAdjoint` (autodiff through the
diffrax loop, an independent code path; its step sizes carry no gradient, so the
two must agree to rounding when both take the same steps) and central finite
differences of a constant-step solve.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import central_difference

import spherejax as sj


N, D = 7, 3
TS = jnp.array([0.0, 0.4, 1.1, 2.0])
TOL = dict(rtol=1e-8, atol=1e-8)


def _attention(key, heads=1, **kwargs):
    kq, kk, kv = jr.split(key, 3)
    shape = (heads, D, D)
    Q, K, V = (jnp.eye(D) + 0.4 * jr.normal(k, shape) for k in (kq, kk, kv))
    return sj.SelfAttention(Q, K, V, 1.5, **kwargs)


def _feedforward(key, manifold=sj.Sphere()):
    k1, k2, k3, k4 = jr.split(key, 4)
    m = 5
    return sj.FeedForward(
        jr.normal(k1, (m, D)),
        0.1 * jr.normal(k2, (m,)),
        jr.normal(k3, (D, m)) / m,
        0.1 * jr.normal(k4, (D,)),
        activation=jnp.tanh,
        manifold=manifold,
    )


def _grads(field, y0, target, adjoint, solver=None, ts=TS, **kwargs):
    """Gradient of <target, ys> w.r.t. every array of the field and y0."""

    def loss(field, y0):
        if adjoint is None:  # the reference: same step ends, diffrax's adjoint
            kwargs.setdefault(
                "stepsize_controller",
                diffrax.PIDController(**TOL, step_ts=ts),
            )
            sol = sj.solve(field, y0, ts[-1], ts=ts, solver=solver, **kwargs)
        else:
            sol = sj.solve(
                field,
                y0,
                ts[-1],
                ts=ts,
                solver=solver,
                adjoint=adjoint,
                **TOL,
                **kwargs,
            )
        return jnp.sum(sol.ys * target), sol.ys

    (value, ys), grads = eqx.filter_value_and_grad(loss, has_aux=True)(field, y0)
    return value, ys, grads


def _assert_close_trees(a, b, rtol):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) and len(la) > 0
    scale = max(float(jnp.max(jnp.abs(x))) for x in lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), rtol=0, atol=rtol * scale
        )


CASES = {
    "softmax": lambda k: _attention(k),
    "unnormalized": lambda k: _attention(k, normalization="unnormalized"),
    "causal, weighted": lambda k: _attention(
        k, causal=True, weights=jnp.linspace(1.0, 2.0, N) / 10.5
    ),
    "3 heads, radius 2": lambda k: _attention(k, heads=3, manifold=sj.Sphere(2.0)),
    "sinkhorn (generic pullback)": lambda k: _attention(k, normalization="sinkhorn"),
    "feedforward on LayerNormSphere (generic)": lambda k: _feedforward(
        k, sj.LayerNormSphere()
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_recursive_checkpoint(case, getkey):
    field = CASES[case](getkey())
    y0 = field.manifold.random(getkey(), (N, D))
    target = jr.normal(getkey(), (len(TS), N, D))
    v_ref, ys_ref, g_ref = _grads(field, y0, target, None)
    v, ys, g = _grads(field, y0, target, sj.ReplayAdjoint())
    np.testing.assert_allclose(np.asarray(ys), np.asarray(ys_ref), atol=1e-13)
    assert abs(float(v - v_ref)) < 1e-12
    _assert_close_trees(g, g_ref, 1e-11)
    # saved states lie on the manifold, the first is y0
    assert float(jnp.max(field.manifold.violation(ys))) < 1e-13
    np.testing.assert_allclose(np.asarray(ys[0]), np.asarray(y0), atol=1e-15)


@pytest.mark.parametrize(
    "inner", [diffrax.Dopri8(), diffrax.Bosh3()], ids=["Dopri8", "Bosh3"]
)
def test_other_runge_kutta_tableaus(inner, getkey):
    # Dopri8 is not first-same-as-last: every stage is evaluated in its own step
    field = _attention(getkey())
    y0 = sj.Sphere().random(getkey(), (N, D))
    target = jr.normal(getkey(), (len(TS), N, D))
    _, _, g_ref = _grads(field, y0, target, None, solver=inner)
    _, _, g = _grads(field, y0, target, sj.ReplayAdjoint(max_steps=1024), solver=inner)
    _assert_close_trees(g, g_ref, 1e-11)


def test_constant_step_against_finite_differences(getkey):
    field = _attention(getkey())
    y0 = sj.Sphere().random(getkey(), (N, D))
    target = jr.normal(getkey(), (N, D))
    direction = jr.normal(getkey(), field.V.shape)

    def loss(V, adjoint):
        f = eqx.tree_at(lambda f: f.V, field, V)
        sol = sj.solve(f, y0, 1.5, dt0=0.05, solver=sj.RK4(), adjoint=adjoint)
        return jnp.sum(sol.ys[-1] * target)

    grad = jax.grad(loss)(field.V, sj.ReplayAdjoint())
    fd = central_difference(lambda e: loss(field.V + e * direction, None), 0.0)
    np.testing.assert_allclose(float(jnp.sum(grad * direction)), float(fd), rtol=1e-7)


def test_ensemble_vmap(getkey):
    field = _attention(getkey())
    y0s = sj.Sphere().random(getkey(), (3, N, D))
    target = jr.normal(getkey(), (N, D))

    def loss(beta, y0):
        f = eqx.tree_at(lambda f: f.beta, field, beta)
        sol = sj.solve(f, y0, 2.0, adjoint=sj.ReplayAdjoint(), **TOL)
        return jnp.sum(sol.ys[-1] * target)

    batched = jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, 0))(
        field.beta, y0s
    )
    for i in range(3):
        one = jax.grad(loss, argnums=(0, 1))(field.beta, y0s[i])
        np.testing.assert_allclose(float(batched[0][i]), float(one[0]), rtol=1e-10)
        np.testing.assert_allclose(
            np.asarray(batched[1][i]), np.asarray(one[1]), atol=1e-10
        )


def test_forward_equals_default_solve(getkey):
    field = _attention(getkey())
    y0 = sj.Sphere().random(getkey(), (N, D))
    plain = sj.solve(field, y0, 2.0, **TOL)
    replay = sj.solve(field, y0, 2.0, adjoint=sj.ReplayAdjoint(), **TOL)
    # same controller, same error norm on the tokens: the same steps
    assert int(replay.stats["num_steps"]) == int(plain.stats["num_steps"])
    np.testing.assert_allclose(np.asarray(replay.ys), np.asarray(plain.ys), atol=1e-14)
    assert replay.ts.shape == (1,) and float(replay.ts[0]) == 2.0


def test_errors(getkey):
    field = _attention(getkey())
    y0 = sj.Sphere().random(getkey(), (N, D))
    adj = sj.ReplayAdjoint()
    with pytest.raises(ValueError, match="explicit Runge"):
        sj.solve(field, y0, 1.0, solver=sj.RKMK4(), dt0=0.1, adjoint=adj)
    with pytest.raises(ValueError, match="saves at `t1` or at `ts`"):
        sj.solve(field, y0, 1.0, saveat=diffrax.SaveAt(steps=True), adjoint=adj)
    with pytest.raises(ValueError, match="constant step saves the final state"):
        sj.solve(field, y0, 2.0, ts=TS, dt0=0.1, solver=sj.RK4(), adjoint=adj)
    layers = sj.Layerwise([field, field], jnp.array([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="jump times"):
        sj.solve(layers, y0, 1.0, adjoint=adj)
    with pytest.raises(ValueError, match="positive integer"):
        sj.ReplayAdjoint(max_steps=0)
    with pytest.raises(Exception, match="maximum number of solver steps"):
        sj.solve(field, y0, 5.0, adjoint=sj.ReplayAdjoint(max_steps=3), **TOL)


def test_float32(getkey):
    # float32 takes the recomputing pullback; it must still give the gradient
    field = _attention(getkey())
    field = jax.tree.map(
        lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, field
    )
    y0 = sj.Sphere().random(getkey(), (N, D)).astype(jnp.float32)
    target = jr.normal(getkey(), (N, D), jnp.float32)

    def loss(field, adjoint):
        sol = sj.solve(field, y0, 2.0, adjoint=adjoint, rtol=1e-5, atol=1e-5)
        assert sol.ys.dtype == jnp.float32
        return jnp.sum(sol.ys[-1] * target)

    g = eqx.filter_grad(loss)(field, sj.ReplayAdjoint())
    g_ref = eqx.filter_grad(loss)(field, None)
    _assert_close_trees(g, g_ref, 1e-4)


def test_shooting_loss(getkey):
    # observation times start after t0 = 0.5; the default adjoint interpolates at
    # them while ReplayAdjoint steps onto them: both approximate the same gradient
    true = _attention(getkey())
    ts = jnp.linspace(0.5, 2.5, 5)
    x0 = sj.Sphere().random(getkey(), (2, N, D))
    paths = jax.vmap(lambda x: sj.solve(true, x, ts[-1], t0=ts[0], ts=ts, **TOL).ys)(x0)
    guess = sj.SelfAttention.identity(D, 1.0)

    def grad(adjoint):
        loss = sj.variational.ShootingLoss(adjoint=adjoint, rtol=1e-10, atol=1e-10)
        return eqx.filter_grad(lambda f: loss(f, (ts, paths)))(guess)

    _assert_close_trees(grad(sj.ReplayAdjoint(max_steps=1024)), grad(None), 1e-7)


def test_diffeqsolve_directly(getkey):
    # ReplayAdjoint is a diffrax.AbstractAdjoint: diffeqsolve takes it as is and
    # gives what solve gives (and what diffrax's own adjoint gives)
    field = _attention(getkey())
    y0 = sj.Sphere().random(getkey(), (N, D))
    target = jr.normal(getkey(), (len(TS), N, D))
    _, ys_solve, g_solve = _grads(field, y0, target, sj.ReplayAdjoint())
    _, _, g_ref = _grads(field, y0, target, None)

    def loss(field, y0):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            sj.Retract(diffrax.Tsit5(), manifold=field.manifold),
            TS[0],
            TS[-1],
            None,
            y0,
            saveat=diffrax.SaveAt(ts=TS),
            stepsize_controller=diffrax.PIDController(**TOL),
            adjoint=sj.ReplayAdjoint(),
        )
        return jnp.sum(sol.ys * target), sol

    (_, sol), g = eqx.filter_value_and_grad(loss, has_aux=True)(field, y0)
    np.testing.assert_allclose(np.asarray(sol.ys), np.asarray(ys_solve), atol=1e-14)
    np.testing.assert_allclose(np.asarray(sol.ts), np.asarray(TS), atol=0)
    assert int(sol.stats["num_accepted_steps"]) >= len(TS) - 1
    _assert_close_trees(g, g_solve, 1e-13)
    _assert_close_trees(g, g_ref, 1e-11)
