"""Measure losses against independent references (scipy's exact optimal
transport, closed-form kernel means) and measure-to-measure fitting."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import standard_promotion, unchecked
from scipy.optimize import linprog

import spherejax as sj


def _unit(rng, shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _exact_ot(x, y, a, b):
    """Unregularised OT with cost |x - y|^2 / 2 by linear programming."""
    n, m = len(a), len(b)
    C = 0.5 * np.sum((x[:, None] - y[None]) ** 2, axis=-1)
    A_eq = np.vstack([np.kron(np.eye(n), np.ones(m)), np.kron(np.ones(n), np.eye(m))])
    res = linprog(C.ravel(), A_eq=A_eq, b_eq=np.concatenate([a, b]), bounds=(0, None))
    assert res.success
    return res.fun


def test_sinkhorn_divergence_against_linear_programming():
    rng = np.random.default_rng(1)
    x, y = _unit(rng, (5, 3)), _unit(rng, (6, 3))
    a, b = rng.random(5) + 0.5, rng.random(6) + 0.5
    a, b = a / a.sum(), b / b.sum()
    exact = _exact_ot(x, y, a, b)
    errs = [
        abs(float(sj.mean_field.sinkhorn_divergence(x, y, eps, a=a, b=b)) - exact)
        for eps in (1e-1, 1e-2, 1e-3)
    ]
    # S_eps -> OT_0 as eps -> 0 (here the error is about 0.3 eps)
    assert errs[2] < 1e-3 * exact, errs
    assert errs[0] > errs[1] > errs[2], errs
    # symmetric, zero on the diagonal, positive off it
    s_xy = sj.mean_field.sinkhorn_divergence(x, y, 1e-2, a=a, b=b)
    s_yx = sj.mean_field.sinkhorn_divergence(y, x, 1e-2, a=b, b=a)
    assert abs(float(s_xy - s_yx)) <= 1e-9
    assert abs(float(sj.mean_field.sinkhorn_divergence(x, x, 1e-2, a=a, b=a))) <= 1e-12
    assert float(s_xy) > 0


def test_sinkhorn_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    x, y = _unit(rng, (6, 3)), _unit(rng, (4, 3))
    f = jax.jit(lambda z: sj.mean_field.sinkhorn_divergence(z, y, 5e-2))
    g = np.asarray(jax.grad(f)(jnp.asarray(x)))
    for i, k in ((0, 0), (3, 2), (5, 1)):
        e = np.zeros_like(x)
        e[i, k] = 1e-6
        fd = (float(f(x + e)) - float(f(x - e))) / 2e-6
        assert abs(g[i, k] - fd) <= 1e-6 * max(1.0, abs(fd)), (i, k, g[i, k], fd)


def test_mmd_closed_forms():
    rng = np.random.default_rng(3)
    x = _unit(rng, (7, 3))
    kappa = 3.0
    # against the uniform measure on S^2 (a product Gauss rule, exact to round-off
    # for this entire kernel): E_y k(x, y) = (1 - e^{-2 kappa}) / (2 kappa)
    nodes, w = sj.mean_field.sphere_quadrature(40, 80)
    mean = (1 - np.exp(-2 * kappa)) / (2 * kappa)
    ref = np.mean(np.exp(kappa * (x @ x.T - 1))) - mean
    got = float(sj.mean_field.mmd2(x, nodes, kappa, b=w / (4 * np.pi)))
    assert abs(got - ref) <= 1e-12
    # two Dirac masses: 2 - 2 exp(kappa (<x, y> - 1))
    p, q = x[:1], x[1:2]
    two = 2 - 2 * np.exp(kappa * (float(np.dot(p[0], q[0])) - 1))
    assert abs(float(sj.mean_field.mmd2(p, q, kappa)) - two) <= 1e-14
    assert abs(float(sj.mean_field.mmd2(x, x, kappa))) <= 1e-14


@unchecked()
def test_measure_bad_input():
    x = np.eye(3)
    with pytest.raises(ValueError, match="epsilon"):
        sj.mean_field.sinkhorn_divergence(x, x, 0.0)
    with pytest.raises(ValueError, match="same `d`"):
        sj.mean_field.sinkhorn_divergence(x, np.ones((2, 2)))
    with pytest.raises(ValueError, match="`a`"):
        sj.mean_field.sinkhorn_divergence(x, x, a=np.ones(2) / 2)
    with pytest.raises(ValueError, match="kappa"):
        sj.mean_field.mmd2(x, x, -1.0)
    with pytest.raises(ValueError, match="divergence"):
        sj.mean_field.MeasureLoss(divergence="wasserstein")


def _cap_and_rotation(n=256, radius=0.5, alpha=0.8, seed=0):
    """A cap of `n` points (uniform in area) around e_z and its image under the
    rotation by `alpha` about e_x; the generator A (skew) and the rigid flow's
    kinetic action per point, (1/2) mean |A x|^2 over unit time."""
    rng = np.random.default_rng(seed)
    u, phi = rng.random(n), 2 * np.pi * rng.random(n)
    ct = 1 - u * (1 - np.cos(radius))
    st = np.sqrt(1 - ct**2)
    x0 = np.stack([st * np.cos(phi), st * np.sin(phi), ct], axis=-1)
    c, s = np.cos(alpha), np.sin(alpha)
    R = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    A = alpha * np.array([[0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
    rigid = 0.5 * np.mean(np.sum((x0 @ A.T) ** 2, axis=-1))
    return x0, x0 @ R.T, A, rigid


def _identity(z):
    return z


def test_skew_feedforward_realises_the_rotation():
    """The flow class reaches mu_1: a linear FeedForward with the skew generator
    carries mu_0 exactly onto mu_1 with the rigid action."""
    x0, x1, A, rigid = _cap_and_rotation(n=64)
    ff = sj.FeedForward(np.eye(3), np.zeros(3), A, np.zeros(3), activation=_identity)
    loss = sj.mean_field.MeasureLoss(kinetic=1.0)
    div, kin = loss.parts(ff, (1.0, jnp.asarray(x0), jnp.asarray(x1)))
    assert abs(float(div)) < 1e-10
    assert abs(float(kin) - rigid) < 1e-4 * rigid  # polygon quadrature of the action


@pytest.mark.slow
def test_fit_measure_to_rotated_cap():
    """Fit a two-layer attention + linear feed-forward flow from a cap of 256
    points to its rotated image: Sinkhorn divergence (epsilon = 0.01) below 1e-3,
    kinetic action at most 1.1 times the rigid rotation's."""
    x0, x1, _, rigid = _cap_and_rotation()

    def layer():
        att = sj.SelfAttention(np.eye(3), np.eye(3), np.zeros((3, 3)), 1.0)
        ff = sj.FeedForward(
            np.eye(3), np.zeros(3), np.zeros((3, 3)), np.zeros(3), activation=_identity
        )
        return sj.Sum(att, ff)

    model = sj.Layerwise([layer(), layer()], jnp.array([0.0, 0.5, 1.0]))
    spec = jax.tree.map(eqx.is_inexact_array, model)
    spec = eqx.tree_at(lambda m: m.stacked.fields[0].beta, spec, False)
    loss = sj.mean_field.MeasureLoss(kinetic=1e-2, epsilon=1e-2)
    data = (1.0, jnp.asarray(x0), jnp.asarray(x1))
    model, losses = sj.variational.fit(
        model,
        loss,
        data,
        optimizer=standard_promotion(optax.adam(5e-2)),
        steps=60,
        progress=False,
        filter_spec=spec,
    )
    div, kin = jax.jit(sj.mean_field.MeasureLoss(epsilon=1e-2, tol=1e-10).parts)(
        model, data
    )
    assert float(div) < 1e-3, float(div)
    assert float(kin) <= 1.1 * rigid, (float(kin), rigid)
    assert float(losses[-1]) < 0.05 * float(losses[0])
