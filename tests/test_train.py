"""Training attention flows on data (`spherejax.training`): the regularisers against
independent quadratures, gradients against finite differences, the kinetic
regulariser's effect, kill-and-resume, bad input and a loss turning NaN."""

import pathlib

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from helpers import standard_promotion

import spherejax as sj
from spherejax import training as T


ROOT = pathlib.Path(__file__).resolve().parent.parent
D, M, P = 4, 3, 2  # token dimension, feature vectors per example, their length


def _model(key, t1=2.0):
    k1, k2, k3 = jr.split(key, 3)
    Q = 0.5 * jr.normal(k2, (1, D, D))
    field = sj.SelfAttention(Q, Q, jnp.eye(D)[None], 1.0)
    return T.FlowModel(
        T.PatchEmbedding(k1, M, P, D), field, T.ClassReadout(k3, D, 2), t1=t1
    )


def _data(key, n):
    x = np.asarray(jr.normal(key, (n, M, P)))
    return x, (x[:, 0, 0] * x[:, 1, 1] > 0).astype(np.int64)


# one optimiser object for every training run below: the compiled step is shared
ADAM = standard_promotion(optax.adam(3e-2))
TRAIN = dict(optimizer=ADAM, steps=30, batch_size=16, key=jr.PRNGKey(0))


def _rademacher_like_forward(key, shape):
    return np.asarray(jr.rademacher(key, shape, dtype=jnp.float64))


def test_regularisers_equal_quadratures_and_nfe_counts_evaluations():
    model = _model(jr.PRNGKey(1))
    x = _data(jr.PRNGKey(2), 1)[0][0]
    key = jr.PRNGKey(3)
    out = T.forward(
        model, jnp.asarray(x), key=key, jacobian=True, rtol=1e-11, atol=1e-13
    )
    assert bool(out.ok)

    # reference: the path from `solve` at Gauss-Legendre nodes, the integrands from
    # the field and its full Jacobian (numpy), summed with the Gauss weights
    y0 = model.embedding(jnp.asarray(x))
    nodes, weights = np.polynomial.legendre.leggauss(24)
    T1 = model.t1
    ts, ws = 0.5 * T1 * (nodes + 1), 0.5 * T1 * weights
    path = sj.solve(model.field, y0, T1, ts=ts, rtol=1e-12, atol=1e-14).ys
    eps = _rademacher_like_forward(key, y0.shape).ravel()

    @jax.jit
    @jax.vmap
    def integrands(t, y):
        v = model.field(t, y, None)
        J = jax.jacfwd(lambda z: model.field(t, z, None).ravel())(y)
        return 0.5 * jnp.sum(v**2), J.reshape(v.size, v.size)

    kin_t, J_t = (np.asarray(a) for a in integrands(jnp.asarray(ts), path))
    kin = np.sum(ws * kin_t)
    jac = np.sum(ws * np.sum(np.einsum("i,tij->tj", eps, J_t) ** 2, axis=1))
    np.testing.assert_allclose(float(out.kinetic), kin, rtol=1e-6)
    np.testing.assert_allclose(float(out.jacobian), jac, rtol=1e-6)
    # the kinetic term is the library's kinetic action of the same path
    fine = np.linspace(0, T1, 801)
    ref_action = sj.variational.action(
        sj.solve(model.field, y0, T1, ts=fine, rtol=1e-12, atol=1e-14).ys,
        fine,
        sj.variational.Kinetic(),
        model.field.manifold,
    )
    np.testing.assert_allclose(float(out.kinetic), float(ref_action), rtol=1e-5)

    # the evaluation count: the field's calls counted by a host callback
    calls = []

    class Counted(sj.SelfAttention):
        def __call__(self, t, y, args=None):
            jax.debug.callback(lambda: calls.append(1))
            return super().__call__(t, y, args)

    f = model.field
    counted = Counted(f.Q, f.K, f.V, f.beta)
    cmodel = T.FlowModel(model.embedding, counted, model.readout, t1=T1)
    for kw in (dict(rtol=1e-6), dict(dt0=0.25, solver=diffrax.Heun())):
        calls.clear()
        nfe = int(jax.block_until_ready(T.forward(cmodel, jnp.asarray(x), **kw).nfe))
        assert nfe == len(calls), (kw, nfe, len(calls))
    assert nfe == 2 * 8  # Heun: two evaluations a step, 8 steps


def test_gradients_match_finite_differences():
    model = _model(jr.PRNGKey(4))
    x, y = _data(jr.PRNGKey(5), 1)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    key = jr.PRNGKey(6)

    def objective(p):
        m = eqx.combine(p, static)
        out = T.forward(m, jnp.asarray(x[0]), key=key, jacobian=True, dt0=0.125)
        task = T.cross_entropy(out.outputs, jnp.asarray(y[0]))
        return task + 0.3 * out.kinetic + 0.2 * out.jacobian

    grads = eqx.filter_grad(objective)(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(0)
    direction = jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(rng.standard_normal(a.shape)) for a in leaves]
    )
    analytic = sum(
        float(jnp.vdot(g, v))
        for g, v in zip(
            jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(direction)
        )
    )
    f = eqx.filter_jit(objective)
    h = 1e-5

    def moved(s):
        return jax.tree_util.tree_map(lambda a, v: a + s * v, params, direction)

    numeric = (float(f(moved(h))) - float(f(moved(-h)))) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6)
