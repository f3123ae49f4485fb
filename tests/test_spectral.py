"""`Spectral()` evaluation against dense attention (float64), on the circle and the
2-sphere: values, masks, weights, heads, gradients, solves, and refusals."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

import spherejax as sj


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _tokens(d, n=512, seed=0):
    return sj.Sphere().random(jax.random.PRNGKey(seed), (n, d))


def _weights(n, seed=3):
    w = jax.random.uniform(jax.random.PRNGKey(seed), (n,)) + 0.5
    return w / w.sum()


@pytest.mark.parametrize("d", [2, 3])
def test_identity_matches_dense(d):
    x = _tokens(d)
    w = _weights(x.shape[0])
    cases = (
        (sj.Softmax(), None, None),
        (sj.Unnormalized(), sj.Causal(), w),
        (sj.Softmax(), sj.Causal(), None),
        (sj.Unnormalized(), None, w),
    )
    for beta in (0.5, 4.0, 9.0, 30.0):
        for norm, mask, weights in cases[:2] if beta in (4.0, 30.0) else cases[2:]:
            kw = dict(normalization=norm, mask=mask, weights=weights)
            if True:
                spectral = sj.IdentityAttention(beta, evaluation=sj.Spectral(), **kw)
                dense = sj.IdentityAttention(beta, **kw)
                err = _rel(spectral.attention(x), dense.attention(x))
                assert err < 1e-11, (beta, norm, mask, err)


def test_circle_coefficients_are_bessel():
    """For `Q^T K = I` the circle's truncation order is where `I_p(beta)/I_0(beta)`
    has fallen below `tol` (scipy's Bessel functions)."""
    for beta in (0.5, 4.0, 9.0, 30.0):
        f = sj.IdentityAttention(beta, evaluation=sj.Spectral(1e-12))
        P = f.evaluation.circle_order
        ive = scipy.special.ive(np.arange(200), beta)
        tail = 2 * ive[P + 1 :].sum() / ive[0]
        assert tail <= 1e-12 < 2 * ive[P:].sum() / ive[0]


def test_sphere_coefficients_are_spherical_bessel():
    from spherejax._attention._spectral import _zonal_coefficients

    for x in (0.5, 4.0, 30.0):
        ell = np.arange(60)
        ref = (2 * ell + 1) * scipy.special.spherical_in(ell, x) * np.exp(-x)
        ours = _zonal_coefficients(np.float64(x), 59)
        big = ref > 1e-250
        np.testing.assert_allclose(ours[big], ref[big], rtol=1e-12)
        ours_jax = _zonal_coefficients(jnp.float64(x), 59, jnp)
        np.testing.assert_allclose(np.asarray(ours_jax)[big], ref[big], rtol=1e-12)


def _circle_general(beta, mask, n=512):
    k = jax.random.split(jax.random.PRNGKey(1), 10)
    kw = dict(
        O=jax.random.normal(k[4], (4, 2, 5)),
        weights=_weights(n),
        query_bias=0.3 * jax.random.normal(k[7], (4, 3)),
        key_bias=0.3 * jax.random.normal(k[8], (2, 3)),
        value_bias=jax.random.normal(k[9], (2, 5)),
        output_bias=jnp.ones(2),
        mask=mask,
    )
    Q = 0.5 * jax.random.normal(k[1], (4, 3, 2))
    K = 0.5 * jax.random.normal(k[2], (2, 3, 2))
    V = jax.random.normal(k[3], (2, 5, 2))
    return (
        sj.SelfAttention(Q, K, V, beta, evaluation=sj.Spectral(), **kw),
        sj.SelfAttention(Q, K, V, beta, **kw),
    )


def test_circle_general_matrices_heads_masks():
    """Any `Q`, `K` on the circle: 4 query heads over 2 key/value heads,
    factorised values, every bias, weights, key masks per head, windows."""
    x = _tokens(2)
    keep = jax.random.uniform(jax.random.PRNGKey(5), (4, 512)) > 0.3
    keep = keep.at[:, 0].set(True)  # every causal row keeps a key
    masks = (None, sj.Causal(), (sj.Causal(), sj.KeyMask(keep)), sj.SlidingWindow(17))
    for beta in (0.5, 4.0):
        for mask in masks:
            spectral, dense = _circle_general(beta, mask)
            err = _rel(spectral.attention(x), dense.attention(x))
            assert err < 1e-11, (beta, mask, err)


def _sphere_zonal(beta, mask, n=512):
    k = jax.random.split(jax.random.PRNGKey(2), 4)
    R = jnp.linalg.qr(jax.random.normal(k[0], (3, 3)))[0]
    Q = jnp.stack([1.3 * jnp.eye(3), 0.8 * R.T, -0.5 * R])  # Q^T K = 1.3 I, .8 R, ...
    K = jnp.stack([jnp.eye(3), jnp.eye(3), R])
    V = jax.random.normal(k[1], (3, 3, 3))
    kw = dict(weights=_weights(n), mask=mask)
    return (
        sj.SelfAttention(Q, K, V, beta, evaluation=sj.Spectral(), **kw),
        sj.SelfAttention(Q, K, V, beta, **kw),
    )


def test_sphere_zonal_matrices():
    x = _tokens(3)
    for beta in (0.5, 4.0, 9.0, 30.0):
        for mask in (None, sj.Causal()):
            spectral, dense = _sphere_zonal(beta, mask)
            err = _rel(spectral.attention(x), dense.attention(x))
            assert err < 1e-11, (beta, mask, err)


def _tangent(g, x):
    return g - jnp.sum(g * x, axis=-1, keepdims=True) * x


@pytest.mark.parametrize("build,d", [(_circle_general, 2), (_sphere_zonal, 3)])
def test_gradients_match_dense(build, d):
    x = _tokens(d, n=128)
    spectral, dense = build(4.0, sj.Causal(), n=128)

    def loss(f, x):
        return jnp.sum(jnp.sin(f(0.0, x)))

    gs, gxs = jax.grad(loss, argnums=(0, 1))(spectral, x)
    gd, gxd = jax.grad(loss, argnums=(0, 1))(dense, x)
    for name in ("beta", "Q", "K", "V", "weights"):
        assert _rel(getattr(gs, name), getattr(gd, name)) < 1e-10, name
    # tokens enter through their directions: the tangent parts agree
    assert _rel(_tangent(gxs, x), _tangent(gxd, x)) < 1e-10


@pytest.mark.parametrize("d", [2, 3])
def test_solve_matches_dense(d):
    """On the manifold the fields agree, so a Lie-group solver (every stage on the
    sphere) gives the same solution."""
    x0 = _tokens(d, n=256, seed=7)
    kw = dict(solver=sj.CG4a(), dt0=0.1, saveat=diffrax.SaveAt(t1=True))
    ys = sj.solve(sj.IdentityAttention(4.0, evaluation=sj.Spectral()), x0, 1.0, **kw)
    yd = sj.solve(sj.IdentityAttention(4.0), x0, 1.0, **kw)
    assert float(jnp.max(jnp.abs(ys.ys - yd.ys))) < 1e-9


def test_float32():
    x = _tokens(2).astype(jnp.float32)
    f = sj.IdentityAttention(jnp.float32(9.0), evaluation=sj.Spectral(1e-6))
    out = f.attention(x)
    assert out.dtype == jnp.float32
    ref = sj.IdentityAttention(9.0).attention(x.astype(jnp.float64))
    assert _rel(out.astype(jnp.float64), ref) < 1e-5


def test_refusals():
    with pytest.raises(ValueError, match="d = 4"):
        sj.SelfAttention.identity(4, 1.0, evaluation=sj.Spectral())
    with pytest.raises(ValueError, match="dimension 4"):
        sj.IdentityAttention(1.0, evaluation=sj.Spectral()).attention(_tokens(4, 8))
    A = jnp.diag(jnp.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="zonal"):
        sj.SelfAttention(A, jnp.eye(3), jnp.eye(3), 1.0, evaluation=sj.Spectral())
    with pytest.raises(ValueError, match="biases"):
        sj.SelfAttention(
            jnp.eye(3), jnp.eye(3), jnp.eye(3), 1.0, query_bias=jnp.ones(3),
            evaluation=sj.Spectral(),
        )  # fmt: skip
    for norm in (sj.Sinkhorn(10), sj.Hardmax()):
        with pytest.raises(ValueError, match=type(norm).__name__):
            sj.IdentityAttention(1.0, normalization=norm, evaluation=sj.Spectral())
    with pytest.raises(ValueError, match="RoPE"):
        sj.IdentityAttention(1.0, position=sj.RoPE(), evaluation=sj.Spectral())
    with pytest.raises(ValueError, match="LayerNormSphere"):
        sj.IdentityAttention(
            1.0, manifold=sj.LayerNormSphere(), evaluation=sj.Spectral()
        )
    for tol in (0.0, 1.0, -1e-3, 2.0, float("nan")):
        with pytest.raises(ValueError, match="tol"):
            sj.Spectral(tol)
    with pytest.raises(ValueError, match="traced"):
        jax.jit(lambda b: sj.IdentityAttention(b, evaluation=sj.Spectral()))(1.0)


def test_traced_beta_with_terms_and_runtime_check():
    x = _tokens(2, n=64)

    @jax.jit
    def out(beta):
        f = sj.IdentityAttention(beta, evaluation=sj.Spectral(terms=30))
        return f.attention(x)

    np.testing.assert_allclose(
        out(4.0), sj.IdentityAttention(4.0).attention(x), rtol=0, atol=1e-12
    )
    f = sj.IdentityAttention(1.0, evaluation=sj.Spectral())
    grown = eqx.tree_at(lambda f: f.beta, f, jnp.asarray(40.0))
    with pytest.raises(Exception, match="truncation"):
        jax.block_until_ready(jax.jit(lambda f: f.attention(x))(grown))


def test_scaling_page_example_runs():
    import pathlib
    import re

    page = pathlib.Path(__file__).resolve().parent.parent / "docs" / "scaling.md"
    section = page.read_text().split("## One device, low dimension", 1)[1]
    section = section.split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    namespace: dict = {}
    exec(compile(block, str(page), "exec"), namespace)
    assert namespace["sol"].ys.shape == (1, 200_000, 2)
    assert namespace["field"].evaluation.circle_order > 10
