"""Chunked attention (`evaluation=sj.Chunked(size)`) against the dense evaluation
and numpy references."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import np_attention_velocity

import spherejax as sj
from spherejax._attention import _evaluation, uses_dot_product_attention


N, D, H = 13, 4, 2  # 13 tokens in blocks of 4 or 5: the last block is padded


def _problem(getkey, weighted=True):
    Q = 0.7 * jax.random.normal(getkey(), (H, 3, D))
    K = 0.7 * jax.random.normal(getkey(), (H, 3, D))
    V = jax.random.normal(getkey(), (H, D, D))
    x = sj.Sphere().random(getkey(), (N, D))
    w = None
    if weighted:
        w = np.asarray(jax.random.uniform(getkey(), (N,))) + 0.5
        w = w / w.sum()
    return x, Q, K, V, w


def _part(name: str, iterations: int) -> sj.AbstractNormalization:
    return sj.attention.normalization_from_name(name, iterations=iterations)


def _loss(field):
    def loss(x, V, beta):
        f = sj.SelfAttention(
            field.Q,
            field.K,
            V,
            beta,
            normalization=field.normalization,
            mask=field.mask,
            weights=field.weights,
            evaluation=field.evaluation,
        )
        return jnp.sum(jnp.sin(3 * f(0.0, x)))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


CASES = [
    ("softmax", False, 4),
    ("softmax", True, 5),
    ("unnormalized", False, 5),
    ("unnormalized", True, 4),
    ("hardmax", False, 4),
    ("hardmax", True, 5),
    ("sinkhorn", False, 4),
]


@pytest.mark.parametrize("normalization,causal,chunk", CASES)
def test_chunked_equals_dense_with_gradients(normalization, causal, chunk, getkey):
    x, Q, K, V, w = _problem(getkey)
    kw = dict(
        normalization=_part(normalization, 30),
        mask=sj.Causal() if causal else None,
        weights=w,
    )
    dense = sj.SelfAttention(Q, K, V, 1.7, **kw)
    chunked = sj.SelfAttention(Q, K, V, 1.7, evaluation=sj.Chunked(chunk), **kw)
    out = eqx.filter_jit(chunked)(0.0, x)
    np.testing.assert_allclose(
        out, eqx.filter_jit(dense)(0.0, x), rtol=1e-12, atol=1e-12
    )
    if normalization in ("softmax", "unnormalized"):  # and an independent reference
        ref = np_attention_velocity(
            x, *map(np.asarray, (Q, K, V)), 1.7, normalization, causal, w
        )
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    g_chunk = _loss(chunked)(x, V, jnp.asarray(1.7))
    g_dense = _loss(dense)(x, V, jnp.asarray(1.7))
    for a, b in zip(g_chunk, g_dense):
        scale = max(1.0, float(jnp.max(jnp.abs(b))))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * scale)
    if normalization != "hardmax":  # hardmax does not depend on beta
        assert abs(float(g_dense[2])) > 1e-3


def test_hardmax_ties_across_blocks():
    # all scores of a row equal: every key (in every block) is in the argmax set
    x = jnp.tile(jnp.array([[1.0, 0.0, 0.0]]), (N, 1))
    x = x.at[::3].set(jnp.array([0.0, 1.0, 0.0]))
    Q = jnp.array([[0.0, 0.0, 1.0]])  # Q x = 0: scores all zero
    out = sj.SelfAttention(
        Q, Q, jnp.eye(3), 1.0, normalization=sj.Hardmax(), evaluation=sj.Chunked(4)
    ).attention(x)
    np.testing.assert_allclose(
        out, jnp.broadcast_to(jnp.mean(x, 0), x.shape), atol=1e-15
    )


def test_chunked_sinkhorn_is_doubly_stochastic(getkey):
    # with V = I the output rows are sum_j A_ij x_j; with x = e_k basis-like tokens
    # (n = d) the output *is* A, so its rows and columns can be checked directly
    n = 6
    x = jnp.eye(n)
    Q = 0.3 * jax.random.normal(getkey(), (n, n))
    out = sj.SelfAttention(
        Q,
        Q,
        jnp.eye(n),
        2.0,
        normalization=sj.Sinkhorn(200),
        evaluation=sj.Chunked(4),
        manifold=sj.Euclidean(),
    ).attention(x)
    A = np.asarray(out)  # A_ij x_j summed over j = row i of A (x_j = e_j)
    np.testing.assert_allclose(A.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(A.sum(0), 1.0, atol=1e-10)


@pytest.mark.parametrize(
    "normalization", ["softmax", "unnormalized", "hardmax", "sinkhorn"]
)
def test_backward_memory_is_linear_in_n(normalization):
    # compile (do not run) the gradient at n = 4096: a dense backward would need
    # n^2 * 8 bytes = 134 MB per score-sized array; the chunked one stays far below
    n, d, c = 4096, 8, 128
    kw = dict(evaluation=sj.Chunked(c), normalization=_part(normalization, 10))
    x = jnp.zeros((n, d))

    def loss(beta, x):
        return jnp.sum(sj.SelfAttention.identity(d, beta, **kw)(0.0, x) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    mem = grad.lower(jnp.asarray(2.0), x).compile().memory_analysis()
    dense_bytes = n * n * 8
    assert 0 < mem.temp_size_in_bytes < dense_bytes / 20, mem.temp_size_in_bytes
    f = sj.SelfAttention.identity(d, 2.0, **kw)
    fwd = jax.jit(lambda y: f(0.0, y)).lower(x).compile().memory_analysis()
    assert fwd.temp_size_in_bytes < dense_bytes / 20, fwd.temp_size_in_bytes


@pytest.mark.parametrize("causal", [False, True])
def test_float32_softmax_routes_through_dot_product_attention(
    causal, getkey, monkeypatch
):
    # the route is taken on GPU/TPU; force it here to check it on CPU
    assert not uses_dot_product_attention(jnp.float32, sj.Softmax()) or (
        jax.default_backend() != "cpu"
    )
    monkeypatch.setattr(_evaluation, "_FORCE_DPA", True)
    x, Q, K, V, w = _problem(getkey)
    assert uses_dot_product_attention(jnp.float32, sj.Softmax(), (sj.Causal(),))
    assert not uses_dot_product_attention(jnp.float64, sj.Softmax())
    keys = sj.KeyMask(np.ones(N, bool))
    assert not uses_dot_product_attention(jnp.float32, sj.Softmax(), (keys,))
    assert not uses_dot_product_attention(jnp.float32, sj.Unnormalized())
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    mask = sj.Causal() if causal else None
    field = sj.SelfAttention(f32(Q), f32(K), f32(V), 1.7, mask=mask, weights=f32(w))
    out = field(0.0, f32(x))
    assert out.dtype == jnp.float32
    ref = np_attention_velocity(
        x, *map(np.asarray, (Q, K, V)), 1.7, "softmax", causal, w
    )
    np.testing.assert_allclose(out, ref, atol=2e-5)

    def loss(beta, dtype):
        f = sj.SelfAttention(
            Q.astype(dtype),
            K.astype(dtype),
            V.astype(dtype),
            beta,
            mask=mask,
            weights=jnp.asarray(w, dtype),
        )
        return jnp.sum(jnp.sin(f(0.0, x.astype(dtype))))

    g32 = jax.grad(loss)(jnp.float32(1.7), jnp.float32)
    g64 = jax.grad(loss)(jnp.float64(1.7), jnp.float64)
    np.testing.assert_allclose(g32, g64, rtol=1e-4)
