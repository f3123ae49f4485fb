import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import spherejax as sj


MANIFOLDS = [
    sj.Sphere(),
    sj.Sphere(radius=2.5),
    sj.LayerNormSphere(),
    sj.LayerNormSphere(mean=0.3, std=1.7),
    sj.Euclidean(),
]
IDS = ["sphere", "sphere_r2.5", "layernorm", "layernorm_m0.3_s1.7", "euclidean"]
D = 5


def _normals(m, x):
    """Normal directions of the constraint at x, written from the definitions."""
    x = np.asarray(x)
    if isinstance(m, sj.Sphere):
        return [x]
    if isinstance(m, sj.LayerNormSphere):
        return [np.ones_like(x), x - m.mean]
    return []


def _point_and_tangent(m, key, scale=0.3):
    kx, kv = jr.split(key)
    x = m.random(kx, (4, D))
    v = scale * m.to_tangent(x, jr.normal(kv, (4, D)))
    return x, v


@pytest.mark.parametrize("m", MANIFOLDS, ids=IDS)
def test_project_is_idempotent_and_lands_on_manifold(m, getkey):
    z = 3.0 * jr.normal(getkey(), (6, D))
    p = m.project(z)
    assert float(m.violation(p)) < 1e-12
    np.testing.assert_allclose(m.project(p), p, atol=1e-12)


@pytest.mark.parametrize("m", MANIFOLDS[:4], ids=IDS[:4])
def test_project_is_nearest_point(m, getkey):
    # compare with the best of many random points on the manifold
    z = 2.0 * jr.normal(getkey(), (1, D))
    p = m.project(z)
    cands = m.random(getkey(), (20000, D))
    best = np.min(np.linalg.norm(np.asarray(cands - z), axis=-1))
    assert np.linalg.norm(np.asarray(p - z)) <= best + 1e-12


@pytest.mark.parametrize("m", MANIFOLDS, ids=IDS)
def test_to_tangent_is_orthogonal_to_normals_and_idempotent(m, getkey):
    x = m.random(getkey(), (4, D))
    v = jr.normal(getkey(), (4, D))
    t = m.to_tangent(x, v)
    for nrm in _normals(m, x):
        assert np.max(np.abs(np.sum(np.asarray(t) * nrm, axis=-1))) < 1e-12
    np.testing.assert_allclose(m.to_tangent(x, t), t, atol=1e-12)
    # orthogonal projection: the removed part is orthogonal to the tangent part
    assert np.max(np.abs(np.sum(np.asarray(v - t) * np.asarray(t), axis=-1))) < 1e-12


@pytest.mark.parametrize("m", MANIFOLDS, ids=IDS)
def test_retract_at_zero_and_its_derivative(m, getkey):
    x, v = _point_and_tangent(m, getkey())
    np.testing.assert_allclose(m.retract(x, jnp.zeros_like(v)), x, atol=1e-14)
    for fn in (m.retract, m.exp):
        _, dx = jax.jvp(lambda s: fn(x, s * v), (0.0,), (1.0,))
        np.testing.assert_allclose(dx, v, atol=1e-12)
        assert float(m.violation(fn(x, v))) < 1e-12


@pytest.mark.parametrize("m", MANIFOLDS, ids=IDS)
def test_log_inverts_exp_and_dist(m, getkey):
    x, v = _point_and_tangent(m, getkey(), scale=0.8)
    y = m.exp(x, v)
    np.testing.assert_allclose(m.log(x, y), v, atol=1e-12)
    np.testing.assert_allclose(
        m.dist(x, y), np.linalg.norm(np.asarray(v), axis=-1), atol=1e-12
    )


def test_sphere_exp_is_the_great_circle():
    m = sj.Sphere(radius=2.0)
    x = jnp.array([2.0, 0.0, 0.0])
    v = jnp.array([0.0, 0.7, 0.0])  # speed 0.7 on radius 2: angle 0.35
    np.testing.assert_allclose(
        m.exp(x, v), [2 * np.cos(0.35), 2 * np.sin(0.35), 0], atol=1e-15
    )
    np.testing.assert_allclose(
        m.dist(x, jnp.array([0.0, 0.0, -2.0])), np.pi, atol=1e-14
    )


@pytest.mark.parametrize("m", MANIFOLDS, ids=IDS)
def test_transport_is_tangent_isometric_and_follows_geodesic(m, getkey):
    x, v = _point_and_tangent(m, getkey(), scale=0.9)
    y = m.exp(x, v)
    _, w = _point_and_tangent(m, getkey())
    w = m.to_tangent(x, w)
    tw = m.transport(x, y, w)
    np.testing.assert_allclose(m.to_tangent(y, tw), tw, atol=1e-12)
    np.testing.assert_allclose(m.inner(y, tw, tw), m.inner(x, w, w), atol=1e-12)
    # the geodesic's own velocity is transported to its velocity at y
    _, vel_y = jax.jvp(lambda s: m.exp(x, s * v), (1.0,), (1.0,))
    np.testing.assert_allclose(m.transport(x, y, v), vel_y, atol=1e-12)


@pytest.mark.parametrize("m", MANIFOLDS, ids=IDS)
def test_gradients_finite_at_zero_tangent(m, getkey):
    x = m.random(getkey(), (3, D))
    zero = jnp.zeros_like(x)
    for fn in (
        lambda v: jnp.sum(m.exp(x, v) ** 2 * jnp.arange(D, dtype=x.dtype)),
        lambda v: jnp.sum(m.retract(x, v) * jnp.arange(D, dtype=x.dtype)),
        lambda v: jnp.sum(m.log(x, m.exp(x, v))),
        lambda v: jnp.sum(m.dist(x, m.exp(x, v)) ** 2),
    ):
        g = jax.grad(fn)(zero)
        h = jax.hessian(fn)(zero)
        assert np.all(np.isfinite(np.asarray(g))) and np.all(np.isfinite(np.asarray(h)))
    # derivative of dist^2 at x = y vanishes; exp's hessian (curvature) is finite
    g = jax.grad(lambda y: jnp.sum(m.dist(x, y) ** 2))(x)
    np.testing.assert_allclose(g, 0.0, atol=1e-12)


def test_layernorm_projection_is_layernorm(getkey):
    z = jr.normal(getkey(), (7, 9))
    m = sj.LayerNormSphere(mean=0.5, std=2.0)
    zn = np.asarray(z)
    ref = 2.0 * (zn - zn.mean(-1, keepdims=True)) / zn.std(-1, keepdims=True) + 0.5
    np.testing.assert_allclose(m.project(z), ref, atol=1e-13)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sj.Sphere(radius=0.0), "radius"),
        (lambda: sj.Sphere(radius=-1.0), "radius"),
        (lambda: sj.Sphere(radius=float("nan")), "radius"),
        (lambda: sj.LayerNormSphere(std=0.0), "std"),
        (lambda: sj.LayerNormSphere(mean=float("inf")), "mean"),
    ],
)
def test_bad_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_layer_norm_sphere_random_refuses_d_1():
    with pytest.raises(ValueError, match="needs dimension d >= 2; got 1"):
        sj.LayerNormSphere().random(jr.PRNGKey(0), (3, 1))
    x = np.asarray(sj.LayerNormSphere(0.5, 2.0).random(jr.PRNGKey(0), (3, 4)))
    np.testing.assert_allclose(x.mean(-1), 0.5, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(x - 0.5, axis=-1), 4.0, rtol=1e-12)
