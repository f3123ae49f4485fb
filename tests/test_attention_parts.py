"""Attention composed of parts: normalisations written outside the library,
grouped heads, rotary positions, sliding windows, factorised values, against
numpy formulas written out here."""

import warnings

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate
from helpers import unchecked

import spherejax as sj
from spherejax import AbstractNormalization
from spherejax.attention import AbstractElementwiseNormalization


# -- normalisations defined by a user, in this file only ------------------------


class Sigmoid(AbstractElementwiseNormalization):
    """Sigmoid attention (Ramapuram et al. 2024): A_ij = w_j sigmoid(beta s_ij + b)."""

    bias: float = -1.0

    def activation(self, logits):
        return jax.nn.sigmoid(logits + self.bias)


class SigmoidRows(AbstractNormalization):
    """A row-local normalisation with only `matrix` written: sigmoid weights
    normalised to sum to one in each row (blocked by the default query-block pass)."""

    def matrix(self, s, beta, log_weights, mask):
        a = jax.nn.sigmoid(beta * s) * jnp.exp(log_weights)
        if mask is not None:
            a = jnp.where(mask, a, 0.0)
        return a / jnp.sum(a, axis=-1, keepdims=True)


def _np_tangent(v, x):
    return v - np.sum(v * x, axis=1, keepdims=True) * x / np.sum(x * x, 1)[:, None]


def _np_sigmoid_field(x, beta, bias, w):
    s = beta * x @ x.T
    a = w[None, :] / (1 + np.exp(-(s + bias)))
    return _np_tangent(a @ x, x)


N, D = 9, 3


def test_user_sigmoid_dense_chunked_and_solve(getkey):
    x0 = sj.Sphere().random(getkey(), (N, D))
    w = np.asarray(jr.uniform(getkey(), (N,), minval=0.5, maxval=1.5))
    w = w / w.sum()
    beta = 1.3
    dense = sj.IdentityAttention(beta, normalization=Sigmoid(), weights=w)
    chunked = sj.IdentityAttention(
        beta, normalization=Sigmoid(), weights=w, evaluation=sj.Chunked(4)
    )
    general = sj.SelfAttention.identity(
        D, beta, normalization=Sigmoid(), weights=w, evaluation=sj.Chunked(2)
    )
    ref = _np_sigmoid_field(np.asarray(x0), beta, -1.0, w)
    np.testing.assert_allclose(dense(0.0, x0), ref, atol=1e-13)
    np.testing.assert_allclose(chunked(0.0, x0), dense(0.0, x0), atol=1e-12)
    np.testing.assert_allclose(general(0.0, x0), dense(0.0, x0), atol=1e-12)

    # gradients in beta agree dense and chunked
    def loss(b, ev):
        f = sj.IdentityAttention(b, normalization=Sigmoid(), weights=w, evaluation=ev)
        return jnp.sum(f(0.0, x0) ** 3)

    g_dense = jax.grad(loss)(beta, sj.Dense())
    g_chunk = jax.grad(loss)(beta, sj.Chunked(4))
    np.testing.assert_allclose(g_chunk, g_dense, rtol=1e-12)
    assert abs(float(g_dense)) > 1e-4

    # under solve, against scipy on the numpy formula
    t1 = 2.0
    sol = sj.solve(dense, x0, t1, rtol=1e-10, atol=1e-12)
    sol_chunk = sj.solve(chunked, x0, t1, rtol=1e-10, atol=1e-12)

    def rhs(t, y):
        return _np_sigmoid_field(y.reshape(N, D), beta, -1.0, w).ravel()

    ref = scipy.integrate.solve_ivp(
        rhs, (0, t1), np.asarray(x0).ravel(), method="DOP853", rtol=1e-12, atol=1e-13
    ).y[:, -1]
    np.testing.assert_allclose(sol.ys[-1].ravel(), ref, atol=1e-8)
    np.testing.assert_allclose(sol_chunk.ys[-1], sol.ys[-1], atol=1e-11)


def test_user_row_normalisation_default_blocked_pass(getkey):
    x = sj.Sphere().random(getkey(), (N, D))
    beta = 0.7
    mask = (sj.Causal(), sj.SlidingWindow(4))
    dense = sj.IdentityAttention(beta, normalization=SigmoidRows(), mask=mask)
    chunked = sj.IdentityAttention(
        beta, normalization=SigmoidRows(), mask=mask, evaluation=sj.Chunked(2)
    )
    xn = np.asarray(x)
    i, j = np.indices((N, N))
    allowed = (j <= i) & (j > i - 4)
    a = np.where(allowed, 1 / (1 + np.exp(-beta * xn @ xn.T)), 0.0)
    a = a / a.sum(1, keepdims=True)
    np.testing.assert_allclose(dense(0.0, x), _np_tangent(a @ xn, xn), atol=1e-13)
    np.testing.assert_allclose(chunked(0.0, x), dense(0.0, x), atol=1e-12)


# -- grouped heads, rotary positions, windows, biases: the numpy formula -----------

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 6,
}


def _np_frequencies(r, theta, scaling):
    inv = 1.0 / theta ** (np.arange(0, r, 2) / r)
    if scaling is None:
        return inv
    factor = scaling["factor"]
    old = scaling["original_max_position_embeddings"]
    low_wl = old / scaling["low_freq_factor"]
    high_wl = old / scaling["high_freq_factor"]
    out = []
    for f in inv:
        wl = 2 * np.pi / f
        if wl < high_wl:
            out.append(f)
        elif wl > low_wl:
            out.append(f / factor)
        else:
            smooth = (old / wl - scaling["low_freq_factor"]) / (
                scaling["high_freq_factor"] - scaling["low_freq_factor"]
            )
            out.append((1 - smooth) * f / factor + smooth * f)
    return np.array(out)


def _np_rope(u, theta, fraction, scaling):
    """Rotate the pairs (a, a + r/2) of the leading r coordinates of each row of
    u (n, c) by the angle p * omega_a at position p."""
    n, c = u.shape
    r = int(c * fraction)
    r -= r % 2
    omega = _np_frequencies(r, theta, scaling)
    ang = np.arange(n)[:, None] * omega[None, :]
    x1, x2 = u[:, : r // 2], u[:, r // 2 : r]
    return np.concatenate(
        [
            x1 * np.cos(ang) - x2 * np.sin(ang),
            x2 * np.cos(ang) + x1 * np.sin(ang),
            u[:, r:],
        ],
        axis=1,
    )


def _np_field(x, p, beta, *, window, rope, factorised):
    h, g = p["Q"].shape[0], p["K"].shape[0]
    n = x.shape[0]
    i, j = np.indices((n, n))
    allowed = (j <= i) & (j > i - window)
    out = np.zeros_like(x)
    for a in range(h):
        kv = a // (h // g)
        q = _np_rope(x @ p["Q"][a].T + p["qb"][a], *rope)
        k = _np_rope(x @ p["K"][kv].T + p["kb"][kv], *rope)
        kern = np.where(allowed, np.exp(beta * q @ k.T) / n, 0.0)
        kern = kern / kern.sum(1, keepdims=True)
        if factorised:
            out += kern @ (x @ p["Wv"][kv].T + p["vb"][kv]) @ p["O"][a].T
        else:
            out += kern @ (x @ p["V"][a].T + p["vbm"][a])
    return _np_tangent(out + p["bo"], x)


@pytest.mark.parametrize(
    "factorised, rope",
    [
        (False, (10000.0, 1.0, None)),
        (True, (50.0, 0.5, None)),
        (True, (20.0, 1.0, LLAMA3)),
    ],
)
def test_grouped_rope_window_biases_against_numpy(factorised, rope, getkey):
    h, g, kd, e, d, n = 4, 2, 4, 2, 5, 8
    rnd = lambda *s: np.asarray(jr.normal(getkey(), s))  # noqa: E731
    p = dict(
        Q=rnd(h, kd, d),
        K=rnd(g, kd, d),
        V=rnd(h, d, d),
        Wv=rnd(g, e, d),
        O=rnd(h, d, e),
        qb=rnd(h, kd),
        kb=rnd(g, kd),
        vb=rnd(g, e),
        vbm=rnd(h, d),
        bo=rnd(d),
    )
    beta = 0.6
    theta, fraction, scaling = rope
    values = (
        dict(V=p["Wv"], O=p["O"], value_bias=p["vb"])
        if factorised
        else dict(V=p["V"], value_bias=p["vbm"])
    )
    field = sj.SelfAttention(
        p["Q"],
        p["K"],
        beta=beta,
        mask=(sj.Causal(), sj.SlidingWindow(3)),
        position=sj.RoPE(theta, fraction, scaling),
        query_bias=p["qb"],
        key_bias=p["kb"],
        output_bias=p["bo"],
        manifold=sj.Sphere(2.0),
        **values,
    )
    x = np.asarray(sj.Sphere(2.0).random(getkey(), (n, d)))
    ref = _np_field(x, p, beta, window=3, rope=rope, factorised=factorised)
    np.testing.assert_allclose(field(0.0, jnp.asarray(x)), ref, atol=1e-12)
    chunked = eqx_replace_evaluation(field, sj.Chunked(3))
    np.testing.assert_allclose(chunked(0.0, jnp.asarray(x)), ref, atol=1e-12)
    assert field.attention_matrix(jnp.asarray(x)).shape == (h, n, n)
    np.testing.assert_allclose(
        field.attention_via_matrix(jnp.asarray(x)), field.attention(jnp.asarray(x)),
        atol=1e-12,
    )  # fmt: skip


def eqx_replace_evaluation(field, evaluation):
    import equinox as eqx

    return eqx.tree_at(lambda f: f.evaluation, field, evaluation)


@pytest.mark.parametrize(
    "normalization", [sj.Softmax(), sj.Unnormalized(), sj.Hardmax()]
)
def test_new_masks_chunked_equal_dense_with_gradients(normalization, getkey):
    n, d = 11, 4
    x = sj.Sphere().random(getkey(), (n, d))
    keep = np.ones((2, n), bool)
    keep[0, [1, 4]] = False
    keep[1, [0, 7, 8]] = False
    Q = jr.normal(getkey(), (2, 3, d))
    K = jr.normal(getkey(), (1, 3, d))
    V = jr.normal(getkey(), (2, d, d))
    masks = (sj.SlidingWindow(5), sj.KeyMask(keep), sj.Causal())
    keep[1, 0] = True  # row 0 keeps its own key in every head
    masks = (sj.SlidingWindow(5), sj.KeyMask(keep), sj.Causal())

    def velocity(beta, evaluation):
        f = sj.SelfAttention(
            Q, K, V, beta, normalization=normalization, mask=masks,
            position=sj.RoPE(30.0), evaluation=evaluation,
        )  # fmt: skip
        return f(0.0, x)

    dense = velocity(1.1, sj.Dense())
    np.testing.assert_allclose(velocity(1.1, sj.Chunked(4)), dense, atol=1e-12)
    if not isinstance(normalization, sj.Hardmax):
        gd = jax.jacfwd(velocity)(1.1, sj.Dense())
        gc = jax.grad(lambda b: jnp.sum(velocity(b, sj.Chunked(4)) * gd))(1.1)
        np.testing.assert_allclose(gc, jnp.sum(gd * gd), rtol=1e-11)


def test_sliding_window_and_key_mask_against_attention_matrix(getkey):
    n = 7
    x = sj.Sphere().random(getkey(), (n, 3))
    a = sj.attention_matrix(
        x,
        jnp.eye(3),
        jnp.eye(3),
        2.0,
        mask=(sj.SlidingWindow(2), sj.KeyMask(np.arange(n) != 2)),
    )[0]
    # key j visible to query i iff i - 2 < j <= i and j != 2 (every row keeps one)
    i, j = np.indices((n, n))
    allowed = (j <= i) & (j > i - 2) & (j != 2)
    assert allowed.any(1).all()
    np.testing.assert_array_equal(np.asarray(a) > 0, allowed)
    np.testing.assert_allclose(np.asarray(a).sum(1), 1.0, atol=1e-14)


def test_deprecated_keywords_warn_and_mean_the_same(getkey):
    x = sj.Sphere().random(getkey(), (6, 3))
    new = sj.SelfAttention.identity(
        3, 2.0, normalization=sj.Unnormalized(), mask=sj.Causal(),
        evaluation=sj.Chunked(4),
    )  # fmt: skip
    with pytest.warns(DeprecationWarning, match="mask=sj.Causal"):
        old = sj.SelfAttention.identity(
            3, 2.0, normalization="unnormalized", causal=True, chunk_size=4
        )
    assert old.normalization == new.normalization
    assert old.mask == new.mask and old.evaluation == new.evaluation
    np.testing.assert_array_equal(old(0.0, x), new(0.0, x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sj.IdentityAttention(1.0, mask=sj.Causal())  # the new form warns nothing


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sj.SlidingWindow(0), "`size` must be a positive integer"),
        (lambda: sj.Chunked(2.5), "`size` must be a positive integer"),
        (lambda: sj.RoPE(fraction=0.0), "`fraction`"),
        (lambda: sj.RoPE(theta=0.5), "`theta`"),
        (lambda: sj.RoPE(scaling={"rope_type": "yarn"}), "supported: .*linear"),
        (lambda: sj.RoPE(scaling={"rope_type": "linear"}), "needs the keys"),
        (lambda: sj.Sinkhorn(0), "`iterations`"),
        (lambda: sj.KeyMask(np.ones(3)), "boolean"),
        (lambda: sj.KeyMask(np.zeros(3, bool)), "at least one key"),
        (
            lambda: sj.SelfAttention(
                np.ones((3, 2, 4)), np.ones((2, 2, 4)), np.ones((3, 4, 4)), 1.0
            ),
            "dividing",
        ),
        (
            lambda: sj.SelfAttention(
                np.ones((2, 2, 4)),
                np.ones((1, 2, 4)),
                np.ones((1, 3, 4)),
                1.0,
                O=np.ones((2, 4, 2)),
            ),
            "factorised",
        ),
        (
            lambda: sj.IdentityAttention(
                1.0, normalization=sj.Sinkhorn(), mask=sj.Causal()
            ),
            "not row-local",
        ),
        (lambda: sj.IdentityAttention(1.0, evaluation="dense"), "evaluation strategy"),
        (lambda: sj.IdentityAttention(1.0, mask="causal"), "tuple of masks"),
        (lambda: sj.IdentityAttention(1.0, position=3), "position part"),
        (lambda: sj.IdentityAttention(1.0, normalization=3), "normalisation"),
    ],
)
def test_bad_parts(make, match):
    with unchecked(), pytest.raises(ValueError, match=match):
        make()


def test_key_mask_of_the_wrong_length_is_named(getkey):
    x = sj.Sphere().random(getkey(), (5, 3))
    f = sj.IdentityAttention(1.0, mask=sj.KeyMask(np.ones(4, bool)))
    with pytest.raises(ValueError, match="key mask has 4"):
        f(0.0, x)


def test_rope_relative_positions(getkey):
    # rotary scores depend on positions only through j - i: shifting every
    # position leaves the attention matrix unchanged
    n, c = 6, 6
    q, k = jr.normal(getkey(), (2, n, c))
    rope = sj.RoPE(theta=7.0)
    pos = jnp.arange(n)
    s0 = rope(q, pos) @ rope(k, pos).T
    s5 = rope(q, pos + 5) @ rope(k, pos + 5).T
    np.testing.assert_allclose(s5, s0, atol=1e-12)
    np.testing.assert_allclose(rope(q, jnp.zeros(n, int)), q, atol=0)


def test_solve_with_parts_runs_and_keeps_the_sphere(getkey):
    x0 = sj.Sphere().random(getkey(), (6, 3))
    field = sj.SelfAttention.identity(
        3, 3.0, heads=2, mask=(sj.Causal(), sj.SlidingWindow(2)), position=sj.RoPE(9.0)
    )
    sol = sj.solve(field, x0, 3.0, saveat=diffrax.SaveAt(t1=True))
    np.testing.assert_allclose(jnp.linalg.norm(sol.ys[-1], axis=-1), 1.0, atol=1e-12)
    # token 0 sees only itself: it stays at rest
    np.testing.assert_allclose(sol.ys[-1, 0], x0[0], atol=1e-12)


def _python_blocks(path, section=None):
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parent.parent / path).read_text()
    if section is not None:
        text = text.split(section, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize(
    "path, section",
    [
        ("docs/api/attention.md", None),
        ("docs/extending.md", "## An attention normalisation"),
    ],
)
def test_docs_examples_run(path, section):
    blocks = _python_blocks(path, section)
    assert blocks
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, path, "exec"), namespace)
    if "sol" in namespace:  # the extending example solved its field
        ys = namespace["sol"].ys
        assert bool(jnp.all(jnp.isfinite(ys)))
