"""A manifold defined here, outside the library, works with every solver family.

`SpherePair` is the product of two spheres of different radii, `S^2(r1) x S^2(r2)`
in `R^6` (each token row is `(a, b)` with `|a| = r1`, `|b| = r2`). It implements
the abstract members of `spherejax.AbstractManifold` in plain `jax.numpy`; the
attention flow on it is integrated with `Retract(Tsit5())`, `LieEuler`, `RKMK4`
and `Rattle` and checked against scipy's DOP853 on the ambient ODE written in
numpy (an independent float64 reference), and against the constraints.
"""

import diffrax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import scipy.integrate
from helpers import slope

import spherejax as sj


R1, R2, K = 1.0, 2.0, 3  # radii and the dimension of each factor's ambient space
N, D = 5, 2 * K
T1 = 1.0


def _rows(x):
    x = jnp.asarray(x)
    return x[..., :K], x[..., K:]


def _dot(u, v):
    return jnp.sum(u * v, axis=-1, keepdims=True)


class SpherePair(sj.AbstractManifold):
    """`S^{K-1}(R1) x S^{K-1}(R2)`: rows `(a, b)`, `|a| = R1`, `|b| = R2`."""

    def _each(self, fn, *arrays):
        parts = [_rows(x) for x in arrays]
        first = fn(R1, *[p[0] for p in parts])
        second = fn(R2, *[p[1] for p in parts])
        return jnp.concatenate([first, second], axis=-1)

    def check_dimension(self, d):
        if d != D:
            raise ValueError(f"`SpherePair` rows have {D} entries; got {d}.")

    def project(self, x):
        return self._each(
            lambda r, a: r * a / jnp.linalg.norm(a, axis=-1)[..., None], x
        )

    def to_tangent(self, x, v):
        return self._each(lambda r, a, u: u - _dot(a, u) * a / r**2, x, v)

    def exp(self, x, v):
        def one(r, a, u):
            # cos(theta) a + r sin(theta) u / |u|, theta = |u| / r, written through
            # theta^2 with Taylor series near 0 so that all derivatives are finite
            # at u = 0 (RATTLE's force uses two derivatives of exp there)
            s = _dot(u, u) / r**2
            small = s < 1e-4
            safe = jnp.where(small, 1.0, s)
            cos = jnp.where(small, 1 - s / 2 + s**2 / 24, jnp.cos(jnp.sqrt(safe)))
            sinc = jnp.where(
                small, 1 - s / 6 + s**2 / 120, jnp.sin(jnp.sqrt(safe)) / jnp.sqrt(safe)
            )
            return cos * a + sinc * u

        return self._each(one, x, v)

    def log(self, x, y):
        def one(r, a, b):
            c = _dot(a, b) / r**2
            u = b - c * a
            s = jnp.linalg.norm(u, axis=-1, keepdims=True) / r
            theta = jnp.arctan2(s, c)
            return jnp.where(s > 0, theta / jnp.where(s > 0, s, 1.0), 1.0) * u

        return self._each(one, x, y)

    def transport(self, x, y, v):
        return self._each(
            lambda r, a, b, u: u - _dot(b, u) / (r**2 + _dot(a, b)) * (a + b), x, y, v
        )

    def violation(self, x):
        a, b = _rows(x)
        err_a = jnp.abs(jnp.linalg.norm(a, axis=-1) - R1)
        err_b = jnp.abs(jnp.linalg.norm(b, axis=-1) - R2)
        return jnp.maximum(jnp.max(err_a), jnp.max(err_b))

    # the group SO(K) x SO(K), acting on each factor by rotations (Rodrigues)
    def group_exp(self, x, v, y):
        def one(r, a, u, p):
            g_p = (u * _dot(a, p) - a * _dot(u, p)) / r**2  # xi p
            g2_p = (u * _dot(a, g_p) - a * _dot(u, g_p)) / r**2  # xi^2 p
            theta = jnp.sqrt(_dot(u, u)) / r
            safe = jnp.where(theta > 0, theta, 1.0)
            c1 = jnp.where(theta > 0, jnp.sin(safe) / safe, 1.0)
            c2 = jnp.where(theta > 0, (1 - jnp.cos(safe)) / safe**2, 0.5)
            return p + c1 * g_p + c2 * g2_p

        return self._each(one, x, v, y)

    def lie_algebra(self, y0, m):
        a, b = _rows(y0)
        parts = (sj.Sphere(R1).lie_algebra(a, m), sj.Sphere(R2).lie_algebra(b, m))
        return sj.solvers.ProductAlgebra(parts, (K, K))

    def project_along_normal(self, x, y):
        def one(r, a, p):
            # p + lam a on the sphere: r^2 lam^2 + 2 <a, p> lam + |p|^2 - r^2 = 0
            b, q = _dot(a, p), _dot(p, p) - r**2
            return p + (-q / (b + jnp.sqrt(b * b - r**2 * q))) * a

        return self._each(one, x, y)


M = SpherePair()


def _np_tangent(x, v):
    x, v = np.asarray(x), np.asarray(v)
    out = []
    for sl, r in ((slice(0, K), R1), (slice(K, D), R2)):
        a, u = x[:, sl], v[:, sl]
        out.append(u - np.sum(a * u, axis=1, keepdims=True) * a / r**2)
    return np.concatenate(out, axis=1)


def _problem(key):
    kq, kk, kv, kx = jr.split(key, 4)
    Q, K_, V = (jnp.eye(D) + 0.5 * jr.normal(k, (D, D)) for k in (kq, kk, kv))
    field = sj.SelfAttention(Q, K_, V, 1.3, manifold=M)
    y0 = M.random(kx, (N, D))
    return field, y0, (np.asarray(Q), np.asarray(K_), np.asarray(V))


def _np_flow(y0, Q, K_, V, beta=1.3):
    """DOP853 on the ambient ODE `xdot = P_x(softmax attention)` in numpy."""

    def rhs(t, y):
        x = y.reshape(N, D)
        s = beta * (x @ Q.T) @ (x @ K_.T).T
        a = np.exp(s - s.max(axis=1, keepdims=True))
        a /= a.sum(axis=1, keepdims=True)
        return _np_tangent(x, a @ (x @ V.T)).ravel()

    sol = scipy.integrate.solve_ivp(
        rhs, (0.0, T1), np.asarray(y0).ravel(), method="DOP853", rtol=1e-13, atol=1e-13
    )
    assert sol.success
    return sol.y[:, -1].reshape(N, D)


def test_new_manifold_is_a_manifold(getkey):
    x = M.random(getkey(), (N, D))
    v = M.to_tangent(x, jr.normal(getkey(), (N, D)))
    assert float(M.violation(x)) < 1e-14
    assert float(M.violation(M.exp(x, 0.3 * v))) < 1e-14
    np.testing.assert_allclose(M.log(x, M.exp(x, 0.3 * v)), 0.3 * v, atol=1e-12)
    # one Lie-Euler step is the exponential map on each factor (geodesic rotation)
    np.testing.assert_allclose(
        M.group_exp(x, 0.3 * v, x), M.exp(x, 0.3 * v), atol=1e-13
    )
    # RATTLE's position step: on M, and off y only along the normals at x
    y = x + 0.1 * v
    z = M.project_along_normal(x, y)
    assert float(M.violation(z)) < 1e-14
    np.testing.assert_allclose(M.to_tangent(x, z - y), 0.0, atol=1e-14)


def test_attention_flow_on_new_manifold(getkey):
    field, y0, (Q, K_, V) = _problem(getkey())
    ref = _np_flow(y0, Q, K_, V)
    assert np.max(np.abs(ref - np.asarray(y0))) > 0.1  # the tokens do move

    for solver in (sj.Retract(diffrax.Tsit5()), sj.RKMK4()):
        sol = sj.solve(field, y0, T1, solver=solver, rtol=1e-10, atol=1e-10)
        assert float(M.violation(sol.ys)) < 1e-12
        np.testing.assert_allclose(sol.ys[-1], ref, atol=1e-7)

    # LieEuler (the group action alone): first order, on the manifold
    errs, hs = [], (0.02, 0.01)
    for h in hs:
        sol = sj.solve(field, y0, T1, solver=sj.LieEuler(), dt0=h, max_steps=200)
        assert float(M.violation(sol.ys)) < 1e-12
        errs.append(float(np.max(np.abs(np.asarray(sol.ys[-1]) - ref))))
    assert abs(slope(hs, errs) - 1) < 0.3, errs
    assert errs[-1] < 0.05, errs


def test_rattle_on_new_manifold(getkey):
    # x'' = P_x c + constraint force on each factor (a constant force: "gravity")
    c = np.asarray(jr.normal(getkey(), (N, D)))
    L = sj.variational.KineticPotential(lambda x: jnp.sum(x * c))
    x0 = M.random(getkey(), (N, D))
    v0 = M.to_tangent(x0, jr.normal(getkey(), (N, D)))

    def rhs(t, y):
        x, v = y[: N * D].reshape(N, D), y[N * D :].reshape(N, D)
        acc = _np_tangent(x, c)
        for sl, r in ((slice(0, K), R1), (slice(K, D), R2)):
            vv = np.sum(v[:, sl] ** 2, axis=1, keepdims=True)
            acc[:, sl] -= vv * x[:, sl] / r**2
        return np.concatenate([v.ravel(), acc.ravel()])

    y0 = np.concatenate([np.asarray(x0).ravel(), np.asarray(v0).ravel()])
    ref = scipy.integrate.solve_ivp(
        rhs, (0.0, T1), y0, method="DOP853", rtol=1e-13, atol=1e-13
    ).y[:, -1]
    ref_x, ref_v = ref[: N * D].reshape(N, D), ref[N * D :].reshape(N, D)

    term = diffrax.ODETerm(L.vector_field(M))
    errs, hs = [], (0.05, 0.025)
    for h in hs:
        sol = diffrax.diffeqsolve(
            term,
            sj.variational.Rattle(M),
            0.0,
            T1,
            jnp.asarray(h),
            (x0, v0),
            max_steps=64,
        )
        x, v = sol.ys[0][-1], sol.ys[1][-1]
        assert float(M.violation(x)) < 1e-12
        np.testing.assert_allclose(M.to_tangent(x, v), v, atol=1e-12)
        errs.append(
            max(float(np.max(np.abs(x - ref_x))), float(np.max(np.abs(v - ref_v))))
        )
    assert abs(slope(hs, errs) - 2) < 0.3, errs


def test_radius_sphere_with_lie_solvers(getkey):
    # the Pre-LN flow on R x S^{d-1}: RKMK4 (product algebra) and CG2 (product
    # action) against DOP853 on the Cartesian ODE xdot = A(x / |x|) in numpy
    n, d, beta = 4, 3, 0.8
    kq, kk, kv, kx = jr.split(getkey(), 4)
    Q, K_, V = (jnp.eye(d) + 0.5 * jr.normal(k, (d, d)) for k in (kq, kk, kv))
    flow = sj.transformers.PreLNFlow(sj.SelfAttention(Q, K_, V, beta))
    x0 = np.asarray(sj.Sphere().random(kx, (n, d)))
    Qn, Kn, Vn = np.asarray(Q), np.asarray(K_), np.asarray(V)

    def rhs(t, y):
        x = y.reshape(n, d)
        th = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = beta * (th @ Qn.T) @ (th @ Kn.T).T
        a = np.exp(s - s.max(axis=1, keepdims=True))
        a /= a.sum(axis=1, keepdims=True)
        return (a @ (th @ Vn.T)).ravel()

    ref = scipy.integrate.solve_ivp(
        rhs, (0.0, T1), x0.ravel(), method="DOP853", rtol=1e-13, atol=1e-13
    ).y[:, -1]
    ref = ref.reshape(n, d)
    y0 = sj.transformers.to_polar(x0)
    manifold = sj.transformers.RadiusSphere()
    sol = sj.solve(flow, y0, T1, solver=sj.RKMK4(), rtol=1e-10, atol=1e-10)
    assert float(manifold.violation(sol.ys)) < 1e-12
    np.testing.assert_allclose(sj.transformers.from_polar(sol.ys[-1]), ref, atol=1e-7)
    sol = sj.solve(flow, y0, T1, solver=sj.CG2(), dt0=0.01, max_steps=200)
    assert float(manifold.violation(sol.ys)) < 1e-12
    np.testing.assert_allclose(sj.transformers.from_polar(sol.ys[-1]), ref, atol=1e-3)
