"""Action functional, Euler–Lagrange residual, minimum-action paths and the RATTLE
tangent-bundle solver, checked against closed forms and float64 scipy references."""

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate
from helpers import scipy_reference, slope, unchecked

import spherejax as sj


def np_great_circle(x0, x1, s, r=1.0):
    """Great circle from x0 to x1 (rows), at fractions s in [0, 1], plain numpy."""
    x0, x1 = np.asarray(x0) / r, np.asarray(x1) / r
    c = np.clip(np.sum(x0 * x1, -1, keepdims=True), -1, 1)
    theta = np.arccos(c)
    u = x1 - c * x0
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    s = np.asarray(s)[:, None, None]
    return r * (np.cos(s * theta) * x0 + np.sin(s * theta) * u), theta[..., 0]


@pytest.mark.parametrize("radius", [1.0, 2.0])
def test_geodesic_and_kinetic_action_exact(getkey, radius):
    M = sj.Sphere(radius)
    n, d, T = 4, 4, 2.5
    x0, x1 = M.random(getkey(), (n, d)), M.random(getkey(), (n, d))
    # non-uniform times: the polygon is still exact
    ts = jnp.sort(jr.uniform(getkey(), (9,), minval=0.0, maxval=T)).at[0].set(0.0)
    ts = ts.at[-1].set(T)
    path = sj.variational.geodesic(x0, x1, ts, M)
    ref, theta = np_great_circle(x0, x1, np.asarray(ts) / T, radius)
    np.testing.assert_allclose(path, ref, atol=1e-12)
    assert M.violation(path) < 1e-12
    exact = np.sum((radius * theta) ** 2) / (2 * T)
    S = sj.variational.action(path, ts, sj.variational.Kinetic(), M)
    assert abs(float(S) - exact) < 1e-12 * max(1.0, exact)


def test_kinetic_action_euclidean_and_layernorm(getkey):
    # straight lines in R^d: S = |x1 - x0|^2 / (2T)
    E = sj.Euclidean()
    x0, x1 = jr.normal(getkey(), (3, 5)), jr.normal(getkey(), (3, 5))
    ts = jnp.linspace(0.0, 3.0, 7)
    S = sj.variational.action(
        sj.variational.geodesic(x0, x1, ts, E), ts, sj.variational.Kinetic(), E
    )
    assert abs(float(S) - float(jnp.sum((x1 - x0) ** 2)) / 6.0) < 1e-12
    # LayerNorm sphere: a great circle of radius sqrt(d) in the mean-zero plane
    L = sj.LayerNormSphere()
    x0, x1 = L.random(getkey(), (3, 5)), L.random(getkey(), (3, 5))
    path = sj.variational.geodesic(x0, x1, ts, L)
    assert L.violation(path) < 1e-12
    c = np.sum(np.asarray(x0) * np.asarray(x1), -1) / 5.0
    exact = np.sum(5.0 * np.arccos(c) ** 2) / 6.0
    assert (
        abs(float(sj.variational.action(path, ts, sj.variational.Kinetic(), L)) - exact)
        < 1e-12
    )


def test_action_second_order_on_smooth_path(getkey):
    # A non-geodesic smooth curve: a circle of latitude z = z0 at angular speed w.
    # |xdot|^2 = w^2 (1 - z0^2), so the exact kinetic action is T w^2 (1 - z0^2) / 2.
    M = sj.Sphere()
    z0, w, T = 0.6, 1.3, 2.0
    errs, hs = [], []
    for N in (8, 16, 32, 64):
        ts = np.linspace(0.0, T, N + 1)
        rho = np.sqrt(1 - z0**2)
        path = np.stack(
            [rho * np.cos(w * ts), rho * np.sin(w * ts), np.full_like(ts, z0)], -1
        )[:, None, :]
        S = float(
            sj.variational.action(
                jnp.asarray(path), jnp.asarray(ts), sj.variational.Kinetic(), M
            )
        )
        errs.append(abs(S - T * w**2 * rho**2 / 2))
        hs.append(T / N)
    # a latitude circle is shorter along the chord: the polygon underestimates, O(h^2)
    assert abs(slope(hs, errs) - 2) < 0.3


def test_euler_lagrange_residual_geodesic_and_perturbed(getkey):
    M = sj.Sphere()
    x0, x1 = M.random(getkey(), (3, 3)), M.random(getkey(), (3, 3))
    ts = jnp.concatenate([jnp.linspace(0.0, 1.0, 6), jnp.linspace(1.2, 2.0, 5)])
    path = sj.variational.geodesic(x0, x1, ts, M)
    R = sj.variational.euler_lagrange_residual(path, ts, sj.variational.Kinetic(), M)
    assert R.shape == (9, 3, 3)
    assert float(jnp.max(jnp.abs(R))) < 1e-11
    # tangent output
    assert float(jnp.max(jnp.abs(jnp.sum(R * path[1:-1], -1)))) < 1e-12
    eps = 1e-3
    bumped = M.project(path.at[5].add(eps * jr.normal(getkey(), (3, 3))))
    Rb = sj.variational.euler_lagrange_residual(bumped, ts, sj.variational.Kinetic(), M)
    # a bump of size eps in one node gives a residual ~ eps / h^2 = 0.1 there
    assert float(jnp.max(jnp.abs(Rb))) > 10 * eps


def _sa_problem(key, n=8, d=3):
    k1, k2, k3, k4 = jr.split(key, 4)
    Q, K, V = (jr.normal(k, (d, d)) / np.sqrt(d) for k in (k1, k2, k3))
    field = sj.SelfAttention(Q, K, V, 1.5)
    x0 = sj.Sphere().random(k4, (n, d))
    return field, x0, (np.asarray(Q)[None], np.asarray(K)[None], np.asarray(V)[None])


def test_euler_lagrange_residual_tracking_second_order(getkey):
    field, x0, (Q, K, V) = _sa_problem(getkey())
    M = field.manifold
    T = 2.0
    res, acts, hs = [], [], []
    fine_ts = np.linspace(0.0, T, 161)
    fine = scipy_reference(x0, T, Q, K, V, 1.5, ts=fine_ts)
    for N in (40, 80, 160):
        path = jnp.asarray(fine[:: 160 // N])
        ts = jnp.asarray(fine_ts[:: 160 // N])
        R = sj.variational.euler_lagrange_residual(
            path, ts, sj.variational.Tracking(field), M
        )
        res.append(float(jnp.max(jnp.abs(R))))
        acts.append(
            float(sj.variational.action(path, ts, sj.variational.Tracking(field), M))
        )
        hs.append(T / N)
    # residual O(h^2); tracking action O(h^4) (squared O(h^2) velocity defect)
    assert abs(slope(hs, res) - 2) < 0.3, res
    assert abs(slope(hs, acts) - 4) < 0.3, acts
    assert res[-1] < 1e-3
    # the same flow with a perturbed interior point: large residual
    bumped = M.project(path.at[N // 2].add(1e-2 * jr.normal(getkey(), path.shape[1:])))
    Rb = sj.variational.euler_lagrange_residual(
        bumped, ts, sj.variational.Tracking(field), M
    )
    assert float(jnp.max(jnp.abs(Rb))) > 1e3 * res[-1]


def test_minimum_action_path_converges_to_geodesic(getkey):
    M = sj.Sphere()
    n, d, T = 3, 3, 2.0
    x0, x1 = M.random(getkey(), (n, d)), M.random(getkey(), (n, d))
    ts = jnp.linspace(0.0, T, 17)
    noise = 0.1 * jr.normal(getkey(), (17, n, d))
    init = M.project(sj.variational.geodesic(x0, x1, ts, M) + noise)
    path, losses = sj.variational.minimum_action_path(
        x0, x1, ts, sj.variational.Kinetic(), M, init=init, steps=400
    )
    ref, theta = np_great_circle(x0, x1, np.asarray(ts) / T)
    exact = np.sum(theta**2) / (2 * T)
    assert float(losses[0]) > exact + 1e-2  # it did start away from the optimum
    assert (
        abs(float(sj.variational.action(path, ts, sj.variational.Kinetic(), M)) - exact)
        < 1e-6
    )
    np.testing.assert_allclose(path, ref, atol=1e-5)
    assert float(M.violation(path)) < 1e-12
    np.testing.assert_array_equal(path[0], x0)
    np.testing.assert_array_equal(path[-1], x1)


def _np_el_rhs(n, beta):
    """Plain-numpy EL equation of L = |v|^2/2 + U, U = -E_beta scaled by n, on S^{d-1}:
    xddot = P_x grad U - |v|^2 x, grad_i U = -(1/n) sum_j exp(beta <x_i, x_j>) x_j."""

    def rhs(t, y):
        x, v = y.reshape(2, n, -1)
        G = np.exp(beta * x @ x.T)
        f = -(G @ x) / n
        a = (
            f
            - np.sum(f * x, -1, keepdims=True) * x
            - np.sum(v * v, -1, keepdims=True) * x
        )
        return np.concatenate([v, a]).ravel()

    return rhs


def _rattle_setup(key, n=6, d=3, beta=2.0):
    M = sj.Sphere()
    k1, k2 = jr.split(key)
    L = sj.variational.KineticPotential(lambda x: -n * sj.interaction_energy(x, beta))
    x0 = M.random(k1, (n, d))
    v0 = M.to_tangent(x0, jr.normal(k2, (n, d)))
    return M, L, x0, v0


def test_rattle_order_against_scipy(getkey):
    n, beta = 6, 2.0
    M, L, x0, v0 = _rattle_setup(getkey(), n=n, beta=beta)
    t1 = 1.0
    ref = (
        scipy.integrate.solve_ivp(
            _np_el_rhs(n, beta),
            (0.0, t1),
            np.concatenate([np.asarray(x0), np.asarray(v0)]).ravel(),
            method="DOP853",
            rtol=1e-13,
            atol=1e-13,
        )
        .y[:, -1]
        .reshape(2, n, -1)
    )
    term = diffrax.ODETerm(L.vector_field(M))
    errs, hs = [], []
    for h in (0.1, 0.05, 0.025, 0.0125):
        sol = diffrax.diffeqsolve(
            term, sj.variational.Rattle(M), 0.0, t1, jnp.asarray(h), (x0, v0)
        )
        x, v = sol.ys[0][-1], sol.ys[1][-1]
        errs.append(float(max(np.max(np.abs(x - ref[0])), np.max(np.abs(v - ref[1])))))
        hs.append(h)
    assert abs(slope(hs, errs) - 2) < 0.3, errs


@pytest.mark.slow  # 6000 steps over [0, 100]
def test_rattle_constraints_and_energy_over_long_time(getkey):
    M, L, x0, v0 = _rattle_setup(getkey())
    term = diffrax.ODETerm(L.vector_field(M))
    ts = jnp.linspace(0.0, 100.0, 201)  # on both step grids: no interpolation
    H0 = float(L.energy(x0, v0))
    rms = []
    for h in (0.05, 0.025):
        sol = diffrax.diffeqsolve(
            term,
            sj.variational.Rattle(M),
            0.0,
            100.0,
            jnp.asarray(h),
            (x0, v0),
            saveat=diffrax.SaveAt(ts=ts),
            max_steps=4096,
        )
        xs, vs = sol.ys
        assert float(M.violation(xs)) < 1e-12
        assert float(jnp.max(jnp.abs(jnp.sum(xs * vs, -1)))) < 1e-12
        H = np.asarray(jax.vmap(L.energy)(xs, vs)) - H0
        # no secular drift: the error over [50, 100] is no worse than twice that
        # over [0, 50] (a first-order or non-symplectic method drifts linearly)
        assert np.max(np.abs(H[100:])) < 2 * np.max(np.abs(H[:100]))
        assert np.max(np.abs(H)) < 0.1 * abs(H0) * (h / 0.05) ** 2
        rms.append(np.sqrt(np.mean(H**2)))
    # energy error O(h^2): halving h divides it by ~4 (log2 ratio 2 +- 0.5)
    assert abs(np.log2(rms[0] / rms[1]) - 2) < 0.5, rms


def test_rattle_layernorm_and_euler_lagrange(getkey):
    # On the LayerNorm sphere both constraints (mean, norm) hold; the trajectory
    # solves the EL equation of KineticPotential to O(h^2).
    M = sj.LayerNormSphere()
    n, d = 4, 4
    L = sj.variational.KineticPotential(
        lambda x: jnp.sum(x[:, 0]) + 0.1 * jnp.sum(x[:, 1] ** 2)
    )
    x0 = M.random(getkey(), (n, d))
    v0 = M.to_tangent(x0, jr.normal(getkey(), (n, d)))
    term = diffrax.ODETerm(L.vector_field(M))
    res = []
    for h in (0.02, 0.01):
        ts = jnp.arange(0, 41, dtype=float) * h
        sol = diffrax.diffeqsolve(
            term,
            sj.variational.Rattle(M),
            0.0,
            ts[-1],
            jnp.asarray(h),
            (x0, v0),
            saveat=diffrax.SaveAt(ts=ts),
        )
        xs, vs = sol.ys
        assert float(M.violation(xs)) < 1e-12
        assert float(jnp.max(jnp.abs(jnp.sum(xs * vs, -1)))) < 1e-11
        assert float(jnp.max(jnp.abs(jnp.mean(vs, -1)))) < 1e-12
        res.append(
            float(
                jnp.max(jnp.abs(sj.variational.euler_lagrange_residual(xs, ts, L, M)))
            )
        )
    assert 3.0 < res[0] / res[1] < 5.5, res


@unchecked()
def test_errors():
    M = sj.Sphere()
    with pytest.raises(ValueError, match="path"):
        sj.variational.action(
            jnp.zeros((3, 3)), jnp.zeros(3), sj.variational.Kinetic(), M
        )
    with pytest.raises(ValueError, match="ts"):
        sj.variational.action(
            jnp.ones((3, 2, 3)), jnp.zeros(4), sj.variational.Kinetic(), M
        )
    with pytest.raises(ValueError, match="lagrangian"):
        sj.variational.action(
            jnp.ones((3, 2, 3)), jnp.arange(3.0), lambda t, x, v: 0.0, M
        )
    with pytest.raises(ValueError, match="5 points"):
        sj.variational.euler_lagrange_residual(
            jnp.ones((4, 2, 3)), jnp.arange(4.0), sj.variational.Kinetic(), M
        )
