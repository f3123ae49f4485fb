import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import np_attention_velocity

import spherejax as sj


N, D, H, KD = 7, 4, 2, 3


def _params(key, heads=H):
    kq, kk, kv = jr.split(key, 3)
    Q = jr.normal(kq, (heads, KD, D)) / 2
    K = jr.normal(kk, (heads, KD, D)) / 2
    V = jr.normal(kv, (heads, D, D))
    return Q, K, V


@pytest.mark.parametrize("normalization", ["softmax", "unnormalized"])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_numpy_reference(normalization, causal, getkey):
    Q, K, V = _params(getkey())
    x = sj.Sphere().random(getkey(), (N, D))
    w = np.asarray(jr.uniform(getkey(), (N,), minval=0.5, maxval=1.5))
    w = w / w.sum()
    f = sj.SelfAttention(
        Q, K, V, 1.7, normalization=normalization, causal=causal, weights=w
    )
    ref = np_attention_velocity(
        x, *map(np.asarray, (Q, K, V)), 1.7, normalization, causal, w
    )
    np.testing.assert_allclose(f(0.0, x), ref, rtol=1e-12, atol=1e-13)


def test_single_head_shapes_equal_one_head(getkey):
    Q, K, V = _params(getkey(), heads=1)
    x = sj.Sphere().random(getkey(), (N, D))
    f1 = sj.SelfAttention(Q[0], K[0], V[0], 2.0)
    f3 = sj.SelfAttention(Q, K, V, 2.0)
    np.testing.assert_allclose(f1(0.0, x), f3(0.0, x), atol=1e-15)


MANIFOLDS = [sj.Sphere(), sj.Sphere(radius=3.0), sj.LayerNormSphere()]


@pytest.mark.parametrize(
    "normalization", ["softmax", "unnormalized", "sinkhorn", "hardmax"]
)
@pytest.mark.parametrize("manifold", MANIFOLDS, ids=["sphere", "sphere3", "layernorm"])
def test_outputs_tangent_and_permutation_equivariant(normalization, manifold, getkey):
    Q, K, V = _params(getkey())
    x = manifold.random(getkey(), (N, D))
    f = sj.SelfAttention(Q, K, V, 1.3, normalization=normalization, manifold=manifold)
    v = f(0.0, x)
    radius2 = np.sum(np.asarray(x - getattr(manifold, "mean", 0.0)) ** 2, axis=-1)
    cos = np.sum(np.asarray(v) * np.asarray(x - getattr(manifold, "mean", 0.0)), -1)
    vnorm = np.linalg.norm(np.asarray(v), axis=-1)
    # |<x_i, f_i>| relative to |x_i| |f_i| (USA velocities on radius 3 reach 1e4)
    assert np.max(np.abs(cos / np.sqrt(radius2) / np.maximum(vnorm, 1.0))) < 1e-12
    if isinstance(manifold, sj.LayerNormSphere):
        assert np.max(np.abs(np.asarray(v).sum(-1))) < 1e-12
    perm = np.asarray(jr.permutation(getkey(), N))
    np.testing.assert_allclose(f(0.0, x[perm]), v[perm], atol=1e-12)


def test_jit_and_vmap_agree(getkey):
    Q, K, V = _params(getkey())
    f = sj.SelfAttention(Q, K, V, 2.0, causal=True)
    xs = sj.Sphere().random(getkey(), (5, N, D))
    eager = jnp.stack([f(0.0, x) for x in xs])
    np.testing.assert_allclose(
        jax.jit(jax.vmap(lambda x: f(0.0, x)))(xs), eager, atol=1e-13
    )
    np.testing.assert_allclose(jax.vmap(lambda x: f(0.0, x))(xs), eager, atol=1e-13)


def test_causal_first_token_at_rest_and_triangular(getkey):
    Q, K, V = _params(getkey())
    f = sj.SelfAttention(Q, K, V, 5.0, causal=True)
    x = sj.Sphere().random(getkey(), (N, D))
    # token 1 only sees itself: with V = I its velocity P_x1(x1) vanishes (to round-off)
    f_id = sj.SelfAttention(
        Q, K, jnp.broadcast_to(jnp.eye(D), (H, D, D)), 5.0, causal=True
    )
    assert np.max(np.abs(np.asarray(f_id(0.0, x)[0]))) < 1e-15
    assert np.min(np.linalg.norm(np.asarray(f_id(0.0, x)[1:]), axis=-1)) > 1e-3
    A = sj.attention_matrix(x, Q, K, 5.0, causal=True)
    assert np.all(np.asarray(jnp.triu(A, k=1)) == 0.0)
    # changing a later token does not move an earlier one
    y = x.at[4].set(sj.Sphere().random(getkey(), (D,)))
    np.testing.assert_array_equal(f(0.0, y)[:4], f(0.0, x)[:4])


def test_sinkhorn_is_doubly_stochastic(getkey):
    Q, K, _ = _params(getkey())
    x = sj.Sphere().random(getkey(), (N, D))
    A = np.asarray(
        sj.attention_matrix(x, Q, K, 2.0, normalization="sinkhorn", sinkhorn_iters=500)
    )
    np.testing.assert_allclose(A.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(A.sum(-2), 1.0, atol=1e-10)
    assert np.all(A > 0)
    # Sinkhorn's theorem: A = diag(a) exp(beta S) diag(b); check the log-rank structure
    S = 2.0 * np.einsum(
        "hkd,nd,hke,me->hnm", np.asarray(Q), np.asarray(x), np.asarray(K), np.asarray(x)
    )
    R = np.log(A) - S  # must equal f_i + g_j
    Rc = R - R[:, :, :1] - R[:, :1, :] + R[:, :1, :1]
    np.testing.assert_allclose(Rc, 0.0, atol=1e-10)


def test_sinkhorn_weighted_marginals(getkey):
    Q, K, _ = _params(getkey(), heads=1)
    x = sj.Sphere().random(getkey(), (N, D))
    w = np.asarray(jr.uniform(getkey(), (N,), minval=0.2, maxval=1.0))
    w = w / w.sum()
    A = np.asarray(
        sj.attention_matrix(
            x,
            Q,
            K,
            1.0,
            normalization="sinkhorn",
            log_weights=jnp.log(w),
            sinkhorn_iters=500,
        )
    )[0]
    np.testing.assert_allclose(A.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(w @ A, w, atol=1e-12)


def test_hardmax_matches_argmax_rule(getkey):
    Q, K, V = _params(getkey(), heads=1)
    x = sj.Sphere().random(getkey(), (N, D))
    f = sj.SelfAttention(Q, K, V, 1.0, normalization="hardmax")
    xn = np.asarray(x)
    s = (xn @ np.asarray(Q[0]).T) @ (xn @ np.asarray(K[0]).T).T
    raw = xn[np.argmax(s, axis=1)] @ np.asarray(V[0]).T
    ref = raw - np.sum(raw * xn, -1, keepdims=True) * xn
    np.testing.assert_allclose(f(0.0, x), ref, atol=1e-13)
    # and it is the beta -> infinity limit of softmax
    soft = sj.SelfAttention(Q, K, V, 1e5)(0.0, x)
    np.testing.assert_allclose(soft, ref, atol=1e-8)


def test_hardmax_ties_share_weight():
    # x_1 and x_2 tie for token 0's argmax: they share its attention equally
    x = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    Q = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # <Qx_i, Kx_j>
    K = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).at[2, 1].set(1.0)
    A = sj.attention_matrix(x, Q, K, 1.0, normalization="hardmax")[0]
    # scores for row 0: x0_0 * x_j[1] = (0, 1, -1): unique argmax j=1
    np.testing.assert_allclose(A[0], [0, 1, 0], atol=0)
    # rows 1, 2 have Q x = 0: all scores tie, uniform weights
    np.testing.assert_allclose(A[1], [1 / 3] * 3, atol=1e-15)


@pytest.mark.parametrize("normalization", ["softmax", "unnormalized", "hardmax"])
def test_chunked_equals_dense(normalization, getkey):
    Q, K, V = _params(getkey())
    x = sj.Sphere().random(getkey(), (N, D))
    dense = sj.SelfAttention(Q, K, V, 1.5, normalization=normalization, causal=True)
    chunk = sj.SelfAttention(
        Q, K, V, 1.5, normalization=normalization, causal=True, chunk_size=3
    )
    np.testing.assert_allclose(chunk(0.0, x), dense(0.0, x), atol=1e-13)
    g = lambda f: jax.grad(lambda b: jnp.sum(jnp.sin(f(0.0, x))) * b)(1.0)  # noqa: E731
    np.testing.assert_allclose(g(chunk), g(dense), rtol=1e-12)


def test_feedforward_sum_and_layerwise(getkey):
    x = sj.Sphere().random(getkey(), (N, D))
    ff = sj.FeedForward.random(getkey(), D, 11)
    W1, b1, W2, b2 = (np.asarray(a) for a in (ff.W1, ff.b1, ff.W2, ff.b2))
    raw = np.maximum(np.asarray(x) @ W1.T + b1, 0) @ W2.T + b2
    ref = raw - np.sum(raw * np.asarray(x), -1, keepdims=True) * np.asarray(x)
    np.testing.assert_allclose(ff(0.0, x), ref, atol=1e-13)
    sa = sj.SelfAttention.identity(D, 3.0)
    np.testing.assert_allclose(
        sj.Sum(sa, ff)(0.0, x), sa(0.0, x) + ff(0.0, x), atol=1e-15
    )
    layers = [sj.SelfAttention.identity(D, b) for b in (1.0, 2.0, 4.0)]
    lw = sj.Layerwise(layers, jnp.array([0.0, 1.0, 2.5, 3.0]))
    for t, k in [
        (0.0, 0),
        (0.99, 0),
        (1.0, 1),
        (2.4, 1),
        (2.5, 2),
        (3.0, 2),
        (7.0, 2),
        (-1.0, 0),
    ]:
        np.testing.assert_allclose(lw(t, x), layers[k](t, x), atol=1e-15)
    np.testing.assert_allclose(lw.jump_times(), [1.0, 2.5])


def test_interaction_energy_formula(getkey):
    x = sj.Sphere().random(getkey(), (N, D))
    D_ = np.diag([1.0, 2.0, -1.0, 0.5])
    w = np.arange(1, N + 1) / np.sum(np.arange(1, N + 1))
    xn = np.asarray(x)
    ref = (
        sum(
            w[i] * w[j] * np.exp(2.0 * xn[i] @ D_ @ xn[j])
            for i in range(N)
            for j in range(N)
        )
        / 4.0
    )
    np.testing.assert_allclose(sj.interaction_energy(x, 2.0, D_, w), ref, rtol=1e-13)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(Q=np.eye(3), K=np.eye(4), V=np.eye(3)), "`Q` and `K`"),
        (dict(Q=np.eye(3), K=np.eye(3), V=np.eye(4)), "`V`"),
        (dict(Q=np.ones((2, 3, 3, 3)), K=np.eye(3), V=np.eye(3)), "`Q`"),
        (dict(normalization="softmin"), "normalization"),
        (dict(beta=float("nan")), "beta"),
        (dict(beta=float("inf")), "beta"),
        (dict(beta=np.ones(2)), "beta"),
        (dict(weights=np.array([0.5, 0.6])), "weights"),
        (dict(weights=np.array([1.5, -0.5])), "weights"),
        (dict(normalization="sinkhorn", causal=True), "causal"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    base = dict(Q=np.eye(3), K=np.eye(3), V=np.eye(3), beta=1.0)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sj.SelfAttention(
            base.pop("Q"), base.pop("K"), base.pop("V"), base.pop("beta"), **base
        )


def test_bad_token_shapes():
    f = sj.SelfAttention.identity(3, 1.0, weights=np.full(4, 0.25))
    with pytest.raises(ValueError, match="dimension"):
        f(0.0, jnp.ones((4, 5)))
    with pytest.raises(ValueError, match="weights"):
        f(0.0, jnp.ones((6, 3)))
    with pytest.raises(ValueError, match="same manifold"):
        sj.Sum(
            sj.SelfAttention.identity(3, 1.0),
            sj.FeedForward.random(jr.PRNGKey(0), 3, 4, manifold=sj.Euclidean()),
        )
    with pytest.raises(ValueError, match="increasing"):
        sj.Layerwise([sj.SelfAttention.identity(3, 1.0)] * 2, [0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="boundaries"):
        sj.Layerwise([sj.SelfAttention.identity(3, 1.0)] * 2, [0.0, 1.0])


def test_layerwise_built_inside_jit(getkey):
    # Constant boundaries and beta are checked on the host even while tracing (a
    # parameterisation that builds its Layerwise inside the loss is jitted by `fit`).
    x = sj.Sphere().random(getkey(), (N, D))
    times = jnp.array([0.0, 1.0, 2.0])

    @jax.jit
    def velocity(betas, x):
        layers = [sj.SelfAttention.identity(D, b) for b in betas]
        return sj.Layerwise(layers, times)(1.5, x)

    np.testing.assert_allclose(
        velocity(jnp.array([1.0, 2.0]), x),
        sj.SelfAttention.identity(D, 2.0)(0.0, x),
        atol=1e-14,
    )
    bad = jnp.array([0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="increasing"):
        jax.jit(
            lambda x: sj.Layerwise([sj.SelfAttention.identity(D, 1.0)] * 2, bad)(0.0, x)
        )(x)


@pytest.mark.parametrize("normalization", ["softmax", "unnormalized"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_identity_attention_matches_numpy(normalization, causal, weighted, getkey):
    x = sj.Sphere().random(getkey(), (N, D))
    w = None
    if weighted:
        w = np.asarray(jr.uniform(getkey(), (N,), minval=0.5, maxval=1.5))
        w = w / w.sum()
    f = sj.IdentityAttention(1.7, normalization=normalization, causal=causal, weights=w)
    eye = np.eye(D)[None]
    ref = np_attention_velocity(x, eye, eye, eye, 1.7, normalization, causal, w)
    np.testing.assert_allclose(f(0.0, x), ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(normalization="sinkhorn"),
        dict(normalization="hardmax"),
        dict(chunk_size=3),
    ],
)
def test_identity_attention_equals_self_attention_identity(kwargs, getkey):
    # the fast path (dense softmax) and the fallbacks: values and beta-gradients
    x = sj.Sphere().random(getkey(), (N, D))

    def value_and_grad(make):
        def loss(beta):
            v = make(beta)(0.0, x)
            return jnp.sum(v**3), v

        (_, v), g = jax.value_and_grad(loss, has_aux=True)(2.5)
        return v, g

    v1, g1 = value_and_grad(lambda b: sj.SelfAttention.identity(D, b, **kwargs))
    v2, g2 = value_and_grad(lambda b: sj.IdentityAttention(b, **kwargs))
    np.testing.assert_allclose(v2, v1, atol=1e-14)
    np.testing.assert_allclose(float(g2), float(g1), rtol=1e-12)
    with pytest.raises(ValueError, match="unknown `normalization`"):
        sj.IdentityAttention(1.0, normalization="relu")
    with pytest.raises(ValueError, match="`weights` has"):
        sj.IdentityAttention(1.0, weights=np.full(3, 1 / 3))(0.0, x)


@pytest.mark.parametrize("normalization", ["softmax", "unnormalized"])
def test_one_head_biases_and_key_mask_against_numpy(normalization, getkey):
    # one head with every bias and a key mask: the dense kernel without a head
    # axis against the formula written out in numpy
    Q, K = (np.asarray(jr.normal(getkey(), (KD, D))) for _ in range(2))
    V = np.asarray(jr.normal(getkey(), (D, D)))
    a, b = (np.asarray(jr.normal(getkey(), (KD,))) for _ in range(2))
    c, bo = (np.asarray(jr.normal(getkey(), (D,))) for _ in range(2))
    keep = np.array([True, False, True, True, False, True, True])
    w = np.asarray(jr.uniform(getkey(), (N,), minval=0.5, maxval=1.5))
    w = w / w.sum()
    beta = 1.7
    f = sj.SelfAttention(
        Q,
        K,
        V,
        beta,
        normalization=normalization,
        weights=w,
        query_bias=a,
        key_bias=b,
        value_bias=c,
        output_bias=bo,
        key_mask=keep,
    )
    x = np.asarray(sj.Sphere().random(getkey(), (N, D)))
    logits = beta * (x @ Q.T + a) @ (x @ K.T + b).T
    kern = np.where(keep[None, :], w[None, :] * np.exp(logits), 0.0)
    if normalization == "softmax":
        kern = kern / kern.sum(axis=1, keepdims=True)
    v = kern @ (x @ V.T + c) + bo
    expected = v - np.sum(v * x, axis=1, keepdims=True) * x
    np.testing.assert_allclose(np.asarray(f(0.0, jnp.asarray(x))), expected, atol=1e-13)
