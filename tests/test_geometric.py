"""Geometric integrators: LieEuler, Crouch–Grossman, RKMK4, splitting.

References are independent: scipy DOP853 at rtol = atol = 1e-13 on plain-numpy
fields, and plain-numpy explicit Runge–Kutta steps for the Euclidean checks.
Compiled runners are cached per (solver, problem) so each configuration compiles
once; step sizes and horizons are traced arguments.
"""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
from helpers import (
    central_difference,
    np_attention_velocity,
    scipy_reference,
    slope,
    unchecked,
)

import spherejax as sj
from spherejax._group import expm_small


N, D, BETA = 4, 3, 1.0
LIE_SOLVERS = {
    "LieEuler": (sj.LieEuler(), 1),
    "CG2": (sj.CG2(), 2),
    "CG3": (sj.CG3(), 3),
    "CG4a": (sj.CG4a(), 4),
    "CG2_3": (sj.CG2_3(), 3),
    "RKMK4": (sj.RKMK4(), 4),
}
HS = (0.2, 0.1, 0.05)


def _y0(seed=0, n=N, d=D, manifold=sj.Sphere()):
    return manifold.random(jax.random.PRNGKey(seed), (n, d), jnp.float64)


@functools.cache
def _final_runner(name, problem):
    solver = {**{k: v[0] for k, v in LIE_SOLVERS.items()}, **_split_solvers()}[name]
    field = _fields()[problem]

    @jax.jit
    def run(y0, t1, dt0):
        sol = sj.solve(field, y0, t1, solver=solver, dt0=dt0, max_steps=1024)
        return sol.ys[-1]

    return run


def _fields():
    eye = jnp.eye(4)
    return {
        "sa": sj.SelfAttention.identity(D, BETA),
        "sa_ln": sj.SelfAttention(eye, eye, eye, 0.25, manifold=sj.LayerNormSphere()),
        "rigid": RigidBody(jnp.array([1 / 1.6, 1.0, 1.5])),
        "sa_ffn": sj.Sum(sj.SelfAttention.identity(D, BETA), _ffn()),
    }


def _split_solvers():
    return {"LieTrotter": sj.LieTrotter(), "Strang": sj.Strang()}


# --------------------------------------------------------------------------------
# Coefficients
# --------------------------------------------------------------------------------


def _tableau(solver):
    t = type(solver).tableau
    s = len(t.b)
    a = np.zeros((s, s))
    for i, row in enumerate(t.a, start=1):
        a[i, : len(row)] = row
    return (
        a,
        np.array(t.b),
        np.array(t.c),
        None if t.b_hat is None else np.array(t.b_hat),
    )


def _classical_conditions(a, b, c):
    """Residuals of the classical order conditions of orders 1..4."""
    e = np.ones_like(c)
    return {
        1: [b @ e - 1],
        2: [b @ c - 1 / 2],
        3: [b @ c**2 - 1 / 3, b @ a @ c - 1 / 6],
        4: [
            b @ c**3 - 1 / 4,
            b @ (c * (a @ c)) - 1 / 8,
            b @ a @ c**2 - 1 / 12,
            b @ a @ a @ c - 1 / 24,
        ],
    }


@pytest.mark.parametrize("name", ["CG2", "CG3", "CG4a", "CG2_3"])
def test_tableau_order_conditions(name):
    solver, p = LIE_SOLVERS[name]
    a, b, c, b_hat = _tableau(solver)
    np.testing.assert_allclose(a.sum(axis=1), c, atol=1e-15)
    cond = _classical_conditions(a, b, c)
    for q in range(1, p + 1):
        np.testing.assert_allclose(cond[q], 0, atol=2e-15, err_msg=f"order {q}")
    if p < 4:  # the method really has order p, not more
        assert np.max(np.abs(cond[p + 1])) > 1e-3
    if p >= 3:
        # The extra Crouch–Grossman condition of order 3 (Owren–Marthinsen 1999):
        # sum_i b_i^2 c_i + 2 sum_{i<j} b_i c_i b_j = 1/3.
        s = len(b)
        lhs = sum(b[i] ** 2 * c[i] for i in range(s)) + 2 * sum(
            b[i] * c[i] * b[j] for i in range(s) for j in range(i + 1, s)
        )
        assert abs(lhs - 1 / 3) < 2e-15
    if b_hat is not None:  # CG2_3's embedded weights: order 2 exactly
        cond_hat = _classical_conditions(a, b_hat, c)
        np.testing.assert_allclose(cond_hat[1] + cond_hat[2], 0, atol=1e-14)
        assert np.max(np.abs(cond_hat[3])) > 1e-2


# --------------------------------------------------------------------------------
# Euclidean space: the tableaux are classical Runge–Kutta methods
# --------------------------------------------------------------------------------


def _np_sa_flat(x, beta):
    s = beta * x @ x.T
    k = np.exp(s - s.max(axis=1, keepdims=True))
    return (k / k.sum(axis=1, keepdims=True)) @ x


def _np_erk(f, y, h, a, b, c):
    ks = []
    for i in range(len(b)):
        ks.append(f(y + h * sum(a[i, j] * ks[j] for j in range(i))))
    return y + h * sum(bj * k for bj, k in zip(b, ks)), ks


RK4_A = np.array([[0, 0, 0, 0], [0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1, 0]], float)
RK4_B = np.array([1, 2, 2, 1]) / 6
RK4_C = np.array([0, 0.5, 0.5, 1])


@pytest.mark.parametrize("name", list(LIE_SOLVERS))
def test_euclidean_is_classical_runge_kutta(name):
    solver, _ = LIE_SOLVERS[name]
    solver = solver.with_manifold(sj.Euclidean())
    field = sj.SelfAttention.identity(D, 1.5, manifold=sj.Euclidean())
    y0 = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (N, D)))
    h = 0.3
    terms = diffrax.ODETerm(field)
    t0, t1 = jnp.asarray(0.0), jnp.asarray(h)
    state = solver.init(terms, t0, t1, jnp.asarray(y0), None)
    y1, y_err, _, _, _ = solver.step(terms, t0, t1, jnp.asarray(y0), None, state, False)

    f = lambda y: _np_sa_flat(y, 1.5)  # noqa: E731
    if name == "LieEuler":
        expected, err = y0 + h * f(y0), None
    elif name == "RKMK4":
        expected, ks = _np_erk(f, y0, h, RK4_A, RK4_B, RK4_C)
        # embedded third-order solution with the FSAL stage f(y1)
        hat = y0 + h * (ks[0] / 6 + ks[1] / 3 + ks[2] / 3 + f(expected) / 6)
        err = hat - expected
    else:
        a, b, c, b_hat = _tableau(solver)
        expected, ks = _np_erk(f, y0, h, a, b, c)
        err = (
            None
            if b_hat is None
            else h * sum((bh - bb) * k for bh, bb, k in zip(b_hat, b, ks))
        )
    np.testing.assert_allclose(np.asarray(y1), expected, rtol=0, atol=1e-14)
    if err is None:
        assert y_err is None
    else:
        np.testing.assert_allclose(np.asarray(y_err), err, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------------
# Order, manifold preservation (attention flow on the sphere and LayerNorm sphere)
# --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LIE_SOLVERS))
def test_order_and_violation_sphere(name):
    _, p = LIE_SOLVERS[name]
    run = _final_runner(name, "sa")
    y0 = _y0()
    T = 2.0
    eye = np.eye(D)[None]
    ref = scipy_reference(np.asarray(y0), T, eye, eye, eye, BETA)[-1]
    errs = [
        float(np.max(np.abs(np.asarray(run(y0, jnp.asarray(T), jnp.asarray(h))) - ref)))
        for h in HS
    ]
    assert abs(slope(HS, errs) - p) < 0.3, errs
    # Long horizon, large fixed step: still on the sphere to round-off.
    y_long = run(y0, jnp.asarray(200.0), jnp.asarray(0.5))
    assert float(sj.Sphere().violation(y_long)) <= 1e-12
    assert np.all(np.isfinite(np.asarray(y_long)))


def _np_ln_velocity(x, beta):
    d = x.shape[1]
    v = _np_sa_flat(x, beta)
    v = v - v.mean(axis=1, keepdims=True)
    return v - np.sum(x * v, axis=1, keepdims=True) * x / d


@pytest.mark.parametrize("name", ["LieEuler", "CG3", "CG4a", "RKMK4"])
def test_order_and_violation_layernorm(name):
    _, p = LIE_SOLVERS[name]
    manifold = sj.LayerNormSphere()
    run = _final_runner(name, "sa_ln")
    y0 = _y0(1, d=4, manifold=manifold)
    T = 2.0
    x0 = np.asarray(y0)
    sol = scipy.integrate.solve_ivp(
        lambda t, y: _np_ln_velocity(y.reshape(x0.shape), 0.25).ravel(),
        (0, T),
        x0.ravel(),
        method="DOP853",
        rtol=1e-13,
        atol=1e-13,
    )
    ref = sol.y[:, -1].reshape(x0.shape)
    hs = (0.4, 0.2, 0.1)
    errs = [
        float(np.max(np.abs(np.asarray(run(y0, jnp.asarray(T), jnp.asarray(h))) - ref)))
        for h in hs
    ]
    assert abs(slope(hs, errs) - p) < 0.3, errs
    y_long = run(y0, jnp.asarray(200.0), jnp.asarray(0.5))
    assert float(manifold.violation(y_long)) <= 1e-12


# --------------------------------------------------------------------------------
# Free rigid body on S^2
# --------------------------------------------------------------------------------


class RigidBody(sj.AbstractField):
    """Euler's equations of the free rigid body, `u' = u x (I^{-1} u)`: `|u|` is a
    Casimir (the solution stays on the unit sphere), `sum u_k^2 / I_k` the energy."""

    inv_inertia: jax.Array
    manifold: sj.AbstractManifold = sj.Sphere()

    def __call__(self, t, y, args=None):
        del t, args
        return self.manifold.to_tangent(y, jnp.cross(y, y * self.inv_inertia))


RB_INERTIA = np.array([1.6, 1.0, 2 / 3])
RB_U0 = np.array([[0.0, np.sqrt(0.9), np.sqrt(0.1)]])
RB_T = 20.0


@functools.cache
def _rigid_reference():
    sol = scipy.integrate.solve_ivp(
        lambda t, u: np.cross(u, u / RB_INERTIA),
        (0, RB_T),
        RB_U0[0],
        method="DOP853",
        rtol=1e-13,
        atol=1e-13,
    )
    return sol.y[:, -1]


def _energy(u):
    return float(np.sum(np.asarray(u) ** 2 / RB_INERTIA))


@pytest.mark.parametrize("name", ["LieEuler", "CG2", "CG3", "CG4a", "RKMK4"])
def test_rigid_body(name):
    _, p = LIE_SOLVERS[name]
    run = _final_runner(name, "rigid")
    y0 = jnp.asarray(RB_U0)
    ref = _rigid_reference()
    hs = (0.1, 0.05, 0.025)
    finals = [np.asarray(run(y0, jnp.asarray(RB_T), jnp.asarray(h)))[0] for h in hs]
    errs = [np.max(np.abs(u - ref)) for u in finals]
    energy_drift = [abs(_energy(u) - _energy(RB_U0[0])) for u in finals]
    casimir = [abs(np.linalg.norm(u) - 1.0) for u in finals]
    assert max(casimir) <= 1e-14
    assert abs(slope(hs, errs) - p) < 0.3, errs
    # The energy drift shrinks at least at the method's order (CG2's midpoint
    # tableau even gains one order on this problem).
    assert slope(hs, energy_drift) > p - 0.3, energy_drift


# --------------------------------------------------------------------------------
# Adaptive stepping (CG2_3, RKMK4 with PIDController)
# --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CG2_3", "RKMK4"])
def test_adaptive(name):
    solver, _ = LIE_SOLVERS[name]
    field = _fields()["sa"]
    y0 = _y0()
    T = 2.0
    eye = np.eye(D)[None]
    ref = scipy_reference(np.asarray(y0), T, eye, eye, eye, BETA)[-1]

    @jax.jit
    def run(y0, tol):
        sol = sj.solve(field, y0, jnp.asarray(T), solver=solver, rtol=tol, atol=tol)
        return sol.ys[-1], sol.stats["num_accepted_steps"]

    tols = (1e-4, 1e-6, 1e-8)
    out = [run(y0, jnp.asarray(tol)) for tol in tols]
    errs = [float(np.max(np.abs(np.asarray(y) - ref))) for y, _ in out]
    steps = [int(s) for _, s in out]
    assert steps[0] < steps[1] < steps[2], steps
    assert errs[0] > errs[1] > errs[2], errs
    for tol, err in zip(tols, errs):
        assert 1e-3 * tol < err < 10 * tol, (tol, err)
    for y, _ in out:
        assert float(sj.Sphere().violation(y)) <= 1e-12


# --------------------------------------------------------------------------------
# Splitting: attention + feed-forward
# --------------------------------------------------------------------------------


def _ffn():
    k1, k2 = jax.random.split(jax.random.PRNGKey(11))
    W1 = jax.random.normal(k1, (8, D)) / np.sqrt(D)
    W2 = jax.random.normal(k2, (D, 8)) / np.sqrt(8)
    b1 = jnp.linspace(-0.5, 0.5, 8)
    b2 = jnp.linspace(0.3, -0.3, D)
    return sj.FeedForward(W1, b1, W2, b2, activation=jnp.tanh)


def _np_ffn_velocity(x, ffn):
    W1, b1, W2, b2 = (np.asarray(a) for a in (ffn.W1, ffn.b1, ffn.W2, ffn.b2))
    v = np.tanh(x @ W1.T + b1) @ W2.T + b2
    return v - np.sum(x * v, axis=1, keepdims=True) * x


@pytest.mark.parametrize("name, p", [("LieTrotter", 1), ("Strang", 2)])
def test_splitting_order_and_violation(name, p):
    ffn = _ffn()
    eye = np.eye(D)[None]
    y0 = _y0(2)
    T = 1.0
    x0 = np.asarray(y0)

    def rhs(t, y):
        x = y.reshape(x0.shape)
        v = np_attention_velocity(x, eye, eye, eye, BETA) + _np_ffn_velocity(x, ffn)
        return v.ravel()

    sol = scipy.integrate.solve_ivp(
        rhs, (0, T), x0.ravel(), method="DOP853", rtol=1e-13, atol=1e-13
    )
    ref = sol.y[:, -1].reshape(x0.shape)
    run = _final_runner(name, "sa_ffn")
    hs = (0.1, 0.05, 0.025)
    errs = [
        float(np.max(np.abs(np.asarray(run(y0, jnp.asarray(T), jnp.asarray(h))) - ref)))
        for h in hs
    ]
    assert abs(slope(hs, errs) - p) < 0.3, errs
    y_long = run(y0, jnp.asarray(200.0), jnp.asarray(0.5))
    assert float(sj.Sphere().violation(y_long)) <= 1e-12


def test_lie_trotter_euler_is_post_ln_block():
    """LieTrotter(attn, ffn, solver=Retract(Euler())) with h = 1 is the post-LN block
    LN(u'' + FFN(u'')), u'' = LN(u + Attn(u)) (velocities tangent-projected)."""
    attn, ffn = sj.SelfAttention.identity(D, BETA), _ffn()
    solver = sj.LieTrotter(attn, ffn, solver=sj.Retract(diffrax.Euler()))
    y0 = _y0(4)
    y1 = sj.solve(
        sj.Sum(attn, ffn), y0, jnp.asarray(1.0), solver=solver, dt0=jnp.asarray(1.0)
    ).ys[-1]
    eye = np.eye(D)[None]
    u = np.asarray(y0)
    u = u + np_attention_velocity(u, eye, eye, eye, BETA)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    u = u + _np_ffn_velocity(u, ffn)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(y1), u, rtol=0, atol=1e-14)


@unchecked()
def test_splitting_needs_parts():
    with pytest.raises(ValueError, match="Sum"):
        sj.solve(_fields()["sa"], _y0(), 1.0, solver=sj.LieTrotter(), dt0=0.5)
    with pytest.raises(ValueError, match="fields"):
        sj.LieTrotter(sj.CG3())


# --------------------------------------------------------------------------------
# Gradients (RecursiveCheckpointAdjoint) against central differences
# --------------------------------------------------------------------------------


# Compiling a reverse-mode solve costs 15-60 s each on the 2-core CI machine (more
# under load); the default run covers both building blocks (rank-two rotations:
# LieEuler, CG3; small-subspace exponentials: RKMK4), the rest are marked slow.
_slow = pytest.mark.slow
GRAD_SOLVERS = [
    "LieEuler",
    "CG3",
    "RKMK4",
    pytest.param("CG2", marks=_slow),
    pytest.param("CG4a", marks=_slow),
    pytest.param("CG2_3", marks=_slow),
    pytest.param("LieTrotter", marks=_slow),
    pytest.param("Strang", marks=_slow),
]


@pytest.mark.parametrize("name", GRAD_SOLVERS)
def test_gradient_matches_finite_differences(name):
    split = name in ("LieTrotter", "Strang")
    if split:
        # the splitting's own composition is what is checked here (each inner
        # solver's gradient has its own case): the cheapest inner step, LieEuler,
        # keeps the reverse-mode compilation short
        solver = getattr(sj, name)(solver=sj.LieEuler())
    else:
        solver = LIE_SOLVERS[name][0]
    ffn = _ffn()
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(N, D)))

    @jax.jit
    def loss_and_grad(beta, y0):
        def loss(beta, y0):
            attn = sj.SelfAttention.identity(D, beta)
            field = sj.Sum(attn, ffn) if split else attn
            yT = sj.solve(
                field, y0, jnp.asarray(1.5), solver=solver, dt0=jnp.asarray(0.25)
            ).ys[-1]
            return jnp.sum(weights * yT)

        return jax.value_and_grad(loss, argnums=(0, 1))(beta, y0)

    beta = jnp.asarray(1.3)
    y0 = _y0(5)
    _, (g_beta, g_y0) = loss_and_grad(beta, y0)
    fd = central_difference(
        # a python float, as `beta` above: one compilation (a numpy scalar is not
        # weakly typed and would compile the solve and its gradient again)
        lambda b: loss_and_grad(jnp.asarray(float(b)), y0)[0],
        np.asarray(1.3),
        1e-5,
    )
    np.testing.assert_allclose(float(g_beta), float(fd), rtol=1e-6)
    # Directional derivative along a tangent direction of the initial tokens.
    v = sj.Sphere().to_tangent(y0, jax.random.normal(jax.random.PRNGKey(9), y0.shape))
    eps = 1e-5
    plus = loss_and_grad(beta, sj.Sphere().project(y0 + eps * v))[0]
    minus = loss_and_grad(beta, sj.Sphere().project(y0 - eps * v))[0]
    fd_dir = (float(plus) - float(minus)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.sum(g_y0 * v)), fd_dir, rtol=1e-6)
    # A rest point (all tokens equal: zero velocity) gives finite gradients.
    _, (gb0, gy0) = loss_and_grad(beta, jnp.tile(y0[:1], (N, 1)))
    assert np.isfinite(float(gb0)) and np.all(np.isfinite(np.asarray(gy0)))


# --------------------------------------------------------------------------------
# Dense output, building blocks, errors
# --------------------------------------------------------------------------------


def test_dense_output_projected_and_accurate():
    field = _fields()["sa"]
    y0 = _y0(6)
    ts = np.linspace(0.0, 2.0, 17)  # most save points fall inside steps
    sol = sj.solve(
        field, y0, jnp.asarray(2.0), solver=sj.CG4a(), dt0=jnp.asarray(0.3), ts=ts
    )
    eye = np.eye(D)[None]
    ref = scipy_reference(np.asarray(y0), 2.0, eye, eye, eye, BETA, ts=ts)
    assert float(sj.Sphere().violation(sol.ys)) <= 1e-12
    assert np.max(np.abs(np.asarray(sol.ys) - ref)) < 1e-4


def test_expm_small_matches_scipy():
    a = (
        np.random.default_rng(1).normal(size=(3, 5, 5))
        * np.array([0.01, 1.0, 40.0])[:, None, None]
    )
    got = np.asarray(expm_small(jnp.asarray(a)))
    for k in range(3):
        ref = scipy.linalg.expm(a[k])
        assert np.max(np.abs(got[k] - ref)) <= 1e-12 * max(1.0, np.max(np.abs(ref)))


@pytest.mark.parametrize("scale", [0.05, 3.0])  # no squaring / squarings needed
def test_expm_small_gradient_matches_scipy_differences(scale):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4, 6, 6)) * scale
    w = rng.normal(size=(4, 6, 6))
    grad = np.asarray(jax.grad(lambda a: jnp.sum(w * expm_small(a)))(jnp.asarray(a)))
    eps = 1e-6
    for k, (i, j) in enumerate([(0, 1), (2, 5), (4, 4), (5, 0)]):
        da = np.zeros((6, 6))
        da[i, j] = eps
        fd = np.sum(
            w[k] * (scipy.linalg.expm(a[k] + da) - scipy.linalg.expm(a[k] - da))
        ) / (2 * eps)
        assert abs(grad[k, i, j] - fd) <= 1e-6 * max(1.0, abs(fd))


def test_lie_solver_without_manifold_raises():
    term = diffrax.ODETerm(lambda t, y, args: y)
    y0 = jnp.ones((2, 3)) / jnp.sqrt(3.0)
    with pytest.raises(ValueError, match="needs a `manifold`"):
        diffrax.diffeqsolve(term, sj.LieEuler(), 0.0, 0.1, 0.05, y0)


def test_layernorm_with_nonzero_centre():
    """`LayerNormSphere(mean, std)` with a nonzero centre: the action is centred."""
    mean, std, beta = 0.7, 2.0, 0.05
    manifold = sj.LayerNormSphere(mean=mean, std=std)
    eye = jnp.eye(4)
    field = sj.SelfAttention(eye, eye, eye, beta, manifold=manifold)
    y0 = manifold.random(jax.random.PRNGKey(7), (3, 4), jnp.float64)
    x0 = np.asarray(y0)

    def rhs(t, y):
        x = y.reshape(x0.shape)
        v = _np_sa_flat(x, beta)
        v = v - v.mean(axis=1, keepdims=True)
        xc = x - mean
        return (v - np.sum(xc * v, axis=1, keepdims=True) * xc / (4 * std**2)).ravel()

    T = 2.0
    ref = (
        scipy.integrate.solve_ivp(
            rhs, (0, T), x0.ravel(), method="DOP853", rtol=1e-13, atol=1e-13
        )
        .y[:, -1]
        .reshape(x0.shape)
    )
    assert np.max(np.abs(ref - x0)) > 0.1  # the tokens do move
    for solver in (sj.RKMK4(), sj.CG3()):
        y1 = sj.solve(
            field, y0, jnp.asarray(T), solver=solver, dt0=jnp.asarray(0.1)
        ).ys[-1]
        assert float(manifold.violation(y1)) <= 1e-12
        assert np.max(np.abs(np.asarray(y1) - ref)) < 1e-4
