"""`riemannian`, `fit` and the ready-made losses: synthetic recovery of an attention
field from its trajectories (judged by held-out velocity error, see
docs/contracts.md)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from helpers import scipy_reference, standard_promotion, unchecked

import spherejax as sj


def test_riemannian_rayleigh_quotient(getkey):
    # min x^T A x on the unit sphere: the eigenvector of the smallest eigenvalue.
    d = 6
    U = jnp.linalg.qr(jr.normal(getkey(), (d, d)))[0]
    A = U @ jnp.diag(jnp.arange(1.0, d + 1)) @ U.T  # eigenvalues 1..6, gap 1
    M = sj.Sphere()
    opt = sj.variational.riemannian(optax.sgd(0.05), M)
    x = M.random(getkey(), (d,))
    state = opt.init(x)
    f = lambda x: x @ A @ x
    # one step is exactly the retracted Riemannian gradient step
    g = jax.grad(f)(x)
    updates, _ = opt.update(g, state, x)
    expected = M.retract(x, -0.05 * M.to_tangent(x, g))
    np.testing.assert_allclose(optax.apply_updates(x, updates), expected, atol=1e-15)

    @jax.jit
    def run(x, state):
        def step(carry, _):
            x, state = carry
            updates, state = opt.update(jax.grad(f)(x), state, x)
            x = optax.apply_updates(x, updates)
            return (x, state), M.violation(x)

        (x, _), violations = jax.lax.scan(step, (x, state), None, length=400)
        return x, jnp.max(violations)

    x, worst = run(x, state)
    w, U = np.linalg.eigh(np.asarray(A))
    assert float(worst) < 1e-12
    assert abs(float(f(x)) - w[0]) < 1e-10
    assert min(np.linalg.norm(x - U[:, 0]), np.linalg.norm(x + U[:, 0])) < 1e-5


def test_riemannian_adam_keeps_points_on_layernorm(getkey):
    M = sj.LayerNormSphere()
    target = M.random(getkey(), (5, 4))
    x = M.random(getkey(), (5, 4))
    opt = sj.variational.riemannian(standard_promotion(optax.adam(0.05)), M)
    loss = lambda x: jnp.sum((x - target) ** 2)
    model, losses = sj.variational.fit(
        x, lambda x, _: loss(x), None, optimizer=opt, steps=300, progress=False
    )
    assert float(M.violation(model)) < 1e-12
    assert float(losses[-1]) < 1e-3 * float(losses[0])


N, D = 8, 3
BETA = 1.0


@pytest.fixture(scope="module")
def problem():
    """True field (Q, K, V random, beta = 1), training and held-out trajectories
    from a float64 scipy DOP853 reference on [0, 1]."""
    keys = jr.split(jr.PRNGKey(1234), 8)
    Q, K, V = (jr.normal(k, (D, D)) / np.sqrt(D) for k in keys[:3])
    true = sj.SelfAttention(Q, K, V, BETA)
    M = sj.Sphere()
    ts = np.linspace(0.0, 1.0, 11)
    npQKV = (np.asarray(Q)[None], np.asarray(K)[None], np.asarray(V)[None])

    def paths(key, b):
        x0 = np.asarray(M.random(key, (b, N, D)))
        return jnp.asarray(
            np.stack([scipy_reference(x, 1.0, *npQKV, BETA, ts=ts) for x in x0])
        )

    train, test = paths(keys[3], 8), paths(keys[4], 4)
    # Q and K enter only through Q^T K and beta only scales it (see docs/contracts.md):
    # fix Q = I and beta, and fit K (= Q^T K) and V, starting from uniform attention
    # and zero values. A filter selects the trainable leaves.
    init = sj.SelfAttention(jnp.eye(D), jnp.zeros((D, D)), jnp.zeros((D, D)), BETA)
    spec = jax.tree.map(eqx.is_inexact_array, init)
    spec = eqx.tree_at(lambda m: (m.Q, m.beta), spec, (False, False))
    return true, init, spec, jnp.asarray(ts), train, test


def velocity_error(field, true, states):
    X = states.reshape(-1, N, D)
    a = jax.vmap(field, (None, 0, None))(0.0, X, None)
    b = jax.vmap(true, (None, 0, None))(0.0, X, None)
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def test_fit_tracking_recovers_field(problem):
    true, init, spec, ts, train, test = problem
    assert velocity_error(init, true, test) > 0.5
    assert (
        float(sj.variational.TrackingLoss()(true, (ts, train))) < 1e-7
    )  # discretisation floor
    steps = 1000
    opt = standard_promotion(optax.adam(optax.cosine_decay_schedule(1e-2, steps, 1e-3)))
    model, losses = sj.variational.fit(
        init,
        sj.variational.TrackingLoss(),
        (ts, train),
        optimizer=opt,
        steps=steps,
        progress=False,
        filter_spec=spec,
    )
    assert losses.shape == (steps,)
    assert float(losses[-1]) < 1e-4 * float(losses[0])
    assert velocity_error(model, true, test) < 0.01
    # frozen leaves untouched; Q^T K and V (the identifiable parameters) recovered
    assert float(model.beta) == BETA
    np.testing.assert_array_equal(model.Q[0], np.eye(D))
    QtK = lambda m: m.Q[0].T @ m.K[0]
    assert (
        float(jnp.linalg.norm(QtK(model) - QtK(true)) / jnp.linalg.norm(QtK(true)))
        < 0.05
    )
    assert float(jnp.linalg.norm(model.V - true.V) / jnp.linalg.norm(true.V)) < 0.02


def test_fit_shooting_recovers_field(problem):
    true, init, spec, ts, train, test = problem
    # Shooting is less convex than tracking: from this start Adam converges, but
    # other seeds / step sizes can stall in a local minimum (tracking did not).
    steps = 800
    opt = standard_promotion(optax.adam(optax.cosine_decay_schedule(5e-2, steps, 1e-3)))
    loss = sj.variational.ShootingLoss(solver=sj.Retract(sj.RK4()), dt0=0.1)
    model, losses = sj.variational.fit(
        init,
        loss,
        (ts, train),
        optimizer=opt,
        steps=steps,
        progress=False,
        filter_spec=spec,
    )
    assert float(losses[-1]) < 1e-4 * float(losses[0])
    assert velocity_error(model, true, test) < 0.01


def test_endpoint_loss_values(problem):
    true, init, spec, ts, train, test = problem
    x0, x1 = train[:, 0], train[:, -1]
    plain = sj.variational.EndpointLoss(
        kinetic=0.0, num_saves=11, solver=sj.Retract(sj.RK4()), dt0=0.05
    )
    # the true flow reaches the targets (RK4 at dt 0.05 against DOP853 at 1e-13)
    assert float(plain(true, (1.0, x0, x1))) < 1e-10
    # the kinetic regulariser is the kinetic action of the flow, per token
    reg = sj.variational.EndpointLoss(
        kinetic=1.0, num_saves=11, solver=sj.Retract(sj.RK4()), dt0=0.05
    )
    kin = np.mean(
        [
            float(sj.variational.action(p, ts, sj.variational.Kinetic(), true.manifold))
            for p in train
        ]
    )
    assert abs(float(reg(true, (1.0, x0, x1))) - kin / N) < 1e-6
    assert float(plain(init, (1.0, x0, x1))) > 1e-2


def test_fit_errors():
    with pytest.raises(ValueError, match="steps"):
        sj.variational.fit(
            jnp.zeros(2),
            lambda m, d: jnp.sum(m),
            None,
            optimizer=optax.sgd(0.1),
            steps=0,
        )
    with unchecked(), pytest.raises(ValueError, match="manifold"):
        sj.variational.riemannian(optax.sgd(0.1), "sphere")


def test_losses_check_data_before_training():
    """`fit` has each loss check its data once, before compiling: wrong shapes,
    NaN and unordered times raise `ValueError` naming the part."""
    field = sj.SelfAttention.identity(3, 1.0)
    x = sj.Sphere().random(jr.PRNGKey(0), (2, 4, 3))
    ts = jnp.linspace(0.0, 1.0, 3)
    paths = jnp.stack([x] * 3, axis=1)  # (B, T, n, d)
    cases = [
        (
            sj.variational.TrackingLoss(),
            (ts[:2], paths),
            r"`ts` must hold one time .* \(3,\)",
        ),
        (
            sj.variational.TrackingLoss(),
            (ts[::-1], paths),
            "`ts` must be strictly increasing",
        ),
        (
            sj.variational.ShootingLoss(),
            (ts, paths.at[1, 2, 0, 0].set(jnp.nan)),
            "`paths` cont",
        ),
        (
            sj.variational.ShootingLoss(),
            paths,
            r"`data` must be the tuple `\(ts, paths\)`",
        ),
        (
            sj.variational.EndpointLoss(),
            (1.0, x, x[:, :3]),
            "`x0` and `x1` must have the same",
        ),
        (sj.variational.EndpointLoss(), (jnp.nan, x, x), "`t1` contains NaN"),
        (sj.mean_field.MeasureLoss(), (1.0, x[0], x[0, :, :2]), "same `d`"),
        (sj.mean_field.MeasureLoss(), (1.0, x[0, :, :2], x[0, :, :2]), "d=2"),
    ]
    for loss, data, match in cases:
        with pytest.raises(ValueError, match=match):
            sj.variational.fit(field, loss, data, optimizer=optax.sgd(0.1), steps=1)
