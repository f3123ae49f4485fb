"""Token and feature continua (quadrature convergence) and the Gaussian covariance
closure of attention without normalisation."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
from helpers import np_attention_velocity, slope

import spherejax as sj


def _dop853(y0, rhs, T):
    sol = scipy.integrate.solve_ivp(
        lambda t, y: rhs(y.reshape(y0.shape)).ravel(),
        (0.0, T),
        y0.ravel(),
        method="DOP853",
        rtol=1e-13,
        atol=1e-13,
    )
    assert sol.success
    return sol.y[:, -1].reshape(y0.shape)


def test_quadrature_rules():
    for rule in sj._continuum.RULES:
        s, w = sj.mean_field.quadrature(7, rule, interval=(0.0, 2.0))
        assert np.all((s > 0) & (s < 2)) and abs(float(jnp.sum(w)) - 2.0) < 1e-14
    s, w = sj.mean_field.quadrature(5, "gauss")
    # Gauss-Legendre with 5 nodes integrates degree 9 exactly, not degree 10
    assert abs(float(jnp.sum(w * s**9)) - 0.1) < 1e-15
    assert abs(float(jnp.sum(w * s**10)) - 1 / 11) > 1e-8
    s, w = sj.mean_field.quadrature(8, "midpoint")
    assert abs(float(jnp.sum(w * s)) - 0.5) < 1e-15
    with pytest.raises(ValueError, match="rule"):
        sj.mean_field.quadrature(4, "simpson")


# ---------------------------------------------------------------- token continuum
_rng = np.random.default_rng(0)
_d = 3
_QT, _KT, _VT = (_rng.normal(size=(1, _d, _d)) for _ in range(3))


def _profile(s):
    # smooth, not periodic in s: the midpoint rule is genuinely second order
    return jnp.stack([jnp.cos(2 * s), jnp.sin(3 * s) + 0.2, s**2 - 0.3])


def _token_observables(num, rule, T=1.0):
    """int x(s, T) ds and int x x^T ds by the particle system on `num` nodes."""
    s, w, y0 = sj.mean_field.token_continuum(_profile, num, rule)
    w, y0 = np.asarray(w), np.asarray(y0)
    y = _dop853(y0, lambda x: np_attention_velocity(x, _QT, _KT, _VT, 1.0, w=w), T)
    second = np.einsum("j,ja,jb->ab", w, y, y)
    return np.concatenate([w @ y, second.ravel()]), (w, y0, y)


def test_token_continuum_converges_at_quadrature_rate():
    ref, _ = _token_observables(48, "gauss")
    nums = [8, 16, 32]
    mid = [np.max(np.abs(_token_observables(m, "midpoint")[0] - ref)) for m in nums]
    assert abs(slope(1.0 / np.array(nums), mid) - 2.0) < 0.3, mid
    gauss = [
        np.max(np.abs(_token_observables(m, "gauss")[0] - ref)) for m in (4, 8, 12)
    ]
    # spectral: each refinement gains more than a decade, far beyond second order
    assert gauss[1] < gauss[0] / 30 and gauss[2] < gauss[1] / 30, gauss
    assert gauss[2] < mid[-1] / 100


def test_token_continuum_with_library_solver():
    _, (w, y0, y_ref) = _token_observables(12, "gauss")
    field = sj.SelfAttention(_QT, _KT, _VT, 1.0, weights=w)
    y = sj.solve(field, y0, 1.0, rtol=1e-11, atol=1e-12).ys[-1]
    np.testing.assert_allclose(y, y_ref, atol=1e-8)
    # the (non-uniform) weights matter: uniform weights give another velocity
    v_uniform = np_attention_velocity(y0, _QT, _KT, _VT, 1.0)
    assert np.max(np.abs(field(0.0, jnp.asarray(y0)) - v_uniform)) > 1e-2


# ---------------------------------------------------------------- feature continuum
def _q(a, b):
    return jnp.cos(a - b) + a * b


def _k(a, b):
    return jnp.exp(-((a - b) ** 2)) + 0.5 * a


def _v(a, b):
    return 0.8 * jnp.sin(3 * a + b) - 0.5 * a * b


def _u0(y):
    y = np.asarray(y)
    return np.stack([np.exp(y), 1 + y**2, np.cos(3 * y), y - 0.5 * y**3])


def _feature_observables(num, rule, T=1.0):
    """L2 Gram matrix <u_i, u_j> and moments int u_i(y) y dy at time T."""
    nodes, w, Q, K, V = sj.mean_field.feature_continuum(_q, _k, _v, num, rule)
    u0 = np.array(sj.mean_field.to_features(_u0(nodes), w))
    u0 /= np.linalg.norm(u0, axis=1, keepdims=True)  # unit L2 norm
    Q, K, V = (np.asarray(a)[None] for a in (Q, K, V))
    u = _dop853(u0, lambda x: np_attention_velocity(x, Q, K, V, 1.0), T)
    moments = u @ (np.sqrt(np.asarray(w)) * np.asarray(nodes))
    return np.concatenate([(u @ u.T).ravel(), moments]), (nodes, w, Q, K, V, u0, u)


def test_feature_continuum_is_discretisation_invariant():
    ref, _ = _feature_observables(24, "gauss")
    nums = [8, 16, 32]
    mid = [np.max(np.abs(_feature_observables(m, "midpoint")[0] - ref)) for m in nums]
    assert abs(slope(1.0 / np.array(nums), mid) - 2.0) < 0.3, mid
    gauss = [
        np.max(np.abs(_feature_observables(m, "gauss")[0] - ref)) for m in (4, 6, 8)
    ]
    assert gauss[2] < 1e-9 and gauss[1] < gauss[0] / 100, gauss
    # the observables are not trivial: tokens moved
    first, _ = _feature_observables(8, "gauss", T=1e-9)
    assert np.max(np.abs(first - ref)) > 1e-2


def test_feature_operator_is_the_integral_operator():
    # (W u)(eta) = int w(xi, eta) u(xi) dxi with w = xi * eta, u = 1: eta / 2
    nodes, w = sj.mean_field.quadrature(6, "gauss")
    W = sj.mean_field.feature_operator(lambda a, b: a * b, nodes, w)
    out = sj.mean_field.from_features(W @ sj.mean_field.to_features(jnp.ones(6), w), w)
    np.testing.assert_allclose(out, nodes / 2, atol=1e-14)
    # weighted coordinates carry the L2 norm: int_0^1 y^2 dy = 1/3
    np.testing.assert_allclose(
        jnp.sum(sj.mean_field.to_features(nodes, w) ** 2), 1 / 3, atol=1e-14
    )


def test_feature_continuum_with_library_solver():
    _, (nodes, w, Q, K, V, u0, u_ref) = _feature_observables(8, "gauss")
    field = sj.SelfAttention(Q[0], K[0], V[0], 1.0)
    u = sj.solve(field, u0, 1.0, rtol=1e-11, atol=1e-12).ys[-1]
    np.testing.assert_allclose(u, u_ref, atol=1e-8)


# ---------------------------------------------------------------- Gaussian closure
def test_gaussian_particles_follow_covariance_closure():
    rng = np.random.default_rng(7)
    n, d = 4000, 2
    Q = np.array([[1.0, 0.3], [-0.2, 0.8]])
    K = np.array([[0.9, -0.1], [0.4, 1.1]])
    V = 2.5 * np.array([[0.5, 0.4], [-0.3, 0.6]])
    mu0 = np.array([0.2, -0.1])
    S0 = 0.4 * np.array([[0.5, 0.1], [0.1, 0.3]])
    # Gaussian samples whitened so that their empirical mean and covariance are
    # exactly (mu0, S0): the comparison then measures the dynamics, not the O(n^-1/2)
    # sampling error of the initial moments
    z = rng.normal(size=(n, d))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z.T, bias=True))).T
    x0 = mu0 + z @ np.linalg.cholesky(S0).T
    field = sj.SelfAttention(Q, K, V, 1.0, manifold=sj.Euclidean())
    xT = np.asarray(sj.solve(field, x0, 1.0, solver=sj.RK4(), dt0=0.2).ys[-1])
    means, covs = sj.mean_field.gaussian_closure(
        mu0, S0, Q, K, V, 1.0, jnp.array([0.0, 1.0])
    )
    C = np.cov(xT.T, bias=True)
    rel = np.linalg.norm(C - covs[-1]) / np.linalg.norm(covs[-1])
    assert rel < 0.02, rel
    # the covariance really evolved, and the mean follows too
    assert np.linalg.norm(covs[-1] - S0) / np.linalg.norm(S0) > 0.5
    assert np.max(np.abs(xT.mean(axis=0) - np.asarray(means[-1]))) < 0.02
    # with A = 0 the covariance is frozen and the mean
    # grows as exp(tV) mu0
    means0, covs0 = sj.mean_field.gaussian_closure(
        mu0, S0, 0 * Q, K, V, 1.0, jnp.array([0.0, 0.5])
    )
    np.testing.assert_allclose(covs0[-1], S0, atol=1e-14)
    np.testing.assert_allclose(means0[-1], scipy.linalg.expm(0.5 * V) @ mu0, atol=1e-10)
