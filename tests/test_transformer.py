"""Transformer stacks as time discretisations; Pre-LN; LayerNorm as a projection onto a
moving constraint; the Tai–Liu–Li–Chan splitting against a numpy encoder block."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
from helpers import slope, unchecked

import spherejax as sj


# ---------------------------------------------------------------- numpy references
def np_layernorm(x):
    """LayerNorm without affine map: population variance, eps = 0."""
    m = x.mean(axis=-1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(axis=-1, keepdims=True))


def np_multihead(u, Wq, Wk, Wv, Wo, heads):
    """Standard multi-head softmax attention, 1/sqrt(d_head) scaling, row vectors."""
    dh = u.shape[1] // heads
    outs = []
    for a in range(heads):
        sl = slice(a * dh, (a + 1) * dh)
        s = (u @ Wq[:, sl]) @ (u @ Wk[:, sl]).T / np.sqrt(dh)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        outs.append(p @ (u @ Wv[:, sl]))
    return np.concatenate(outs, axis=1) @ Wo


def np_encoder_block(u, p, heads):
    """Post-LN encoder block LN(u'' + FFN(u'')), u'' = LN(u + Attn u)."""
    u2 = np_layernorm(u + np_multihead(u, p["Wq"], p["Wk"], p["Wv"], p["Wo"], heads))
    ffn = np.maximum(u2 @ p["M1"] + p["c1"], 0.0) @ p["M2"] + p["c2"]
    return np_layernorm(u2 + ffn)


def random_block(rng, N):
    p = {k: rng.normal(size=(N, N)) / np.sqrt(N) for k in ("Wq", "Wk", "Wv", "Wo")}
    p["M1"] = rng.normal(size=(N, N)) / np.sqrt(N)
    p["M2"] = rng.normal(size=(N, N)) / np.sqrt(N)
    p["c1"] = 0.3 * rng.normal(size=N)
    p["c2"] = 0.3 * rng.normal(size=N)
    return p


def block_to_fields(p, heads, manifold=sj.Euclidean(), residual_ffn=True):
    """Encoder weights -> (SelfAttention, FeedForward). Per head, `Q_h = Wq_h^T`,
    `K_h = Wk_h^T`, `V_h = (Wv_h Wo_h)^T`, beta = 1/sqrt(d_head). With `residual_ffn`
    the feed-forward weights are written `M_j = I + W_j^T` (Tai's convention)."""
    N = p["Wq"].shape[0]
    dh = N // heads
    sl = [slice(a * dh, (a + 1) * dh) for a in range(heads)]
    Q = np.stack([p["Wq"][:, s].T for s in sl])
    K = np.stack([p["Wk"][:, s].T for s in sl])
    V = np.stack([(p["Wv"][:, s] @ p["Wo"][s, :]).T for s in sl])
    att = sj.SelfAttention(Q, K, V, 1 / np.sqrt(dh), manifold=manifold)
    shift = np.eye(N) if residual_ffn else 0.0
    ffn = sj.FeedForward(
        (p["M1"] - shift).T, p["c1"], (p["M2"] - shift).T, p["c2"], manifold=manifold
    )
    return att, ffn


def np_raw_attention(x, Q, K, V, beta):
    """sum_h softmax(beta <Q_h x_i, K_h x_j>) V_h x_j, not projected."""
    out = np.zeros_like(x)
    for a in range(Q.shape[0]):
        s = beta * (x @ Q[a].T) @ (x @ K[a].T).T
        p = np.exp(s - s.max(axis=1, keepdims=True))
        out += (p / p.sum(axis=1, keepdims=True)) @ (x @ V[a].T)
    return out


def dop853(rhs, y0, t0, t1):
    sol = scipy.integrate.solve_ivp(
        lambda t, y: np.asarray(rhs(t, y.reshape(y0.shape))).ravel(),
        (t0, t1),
        np.ravel(y0),
        method="DOP853",
        rtol=1e-12,
        atol=1e-12,
    )
    assert sol.success
    return sol.y[:, -1].reshape(y0.shape)


_eval = eqx.filter_jit(lambda f, t, y: f(t, y))


def layerwise_reference(field, y0, times):
    """Float64 DOP853 reference, integrated layer by layer (no jump inside a run)."""
    y = np.asarray(y0)
    for k in range(field.num_layers):
        f = field.layer(k)
        y = dop853(
            lambda t, x: _eval(f, jnp.asarray(t), jnp.asarray(x)),
            y,
            float(times[k]),
            float(times[k + 1]),
        )
    return y


# ---------------------------------------------------------------- stacks -> ODE
@pytest.fixture(scope="module")
def sphere_problem():
    rng = np.random.default_rng(0)
    n, d, heads, L = 5, 4, 2, 2
    times = np.linspace(0.0, 1.0, L + 1)
    layers = []
    for _ in range(L):
        Q, K, V = (rng.normal(size=(heads, d, d)) / 2 for _ in range(3))
        att = sj.SelfAttention(Q, K, V, 1.0)
        ffn = sj.FeedForward(
            rng.normal(size=(d, d)) / 2,
            rng.normal(size=d) / 2,
            rng.normal(size=(d, d)) / 2,
            rng.normal(size=d) / 2,
        )
        layers.append(sj.Sum(att, ffn))
    field = sj.Layerwise(layers, times)
    x0 = np.asarray(sj.Sphere().project(rng.normal(size=(n, d))))
    ref = layerwise_reference(field, x0, times)
    return field, x0, ref


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("tangent", [True, False])
def test_post_ln_stack_converges_order_one(sphere_problem, split, tangent):
    field, x0, ref = sphere_problem
    Ls = [16, 32, 64]
    errs = [
        float(
            jnp.max(
                jnp.abs(
                    sj.transformers.transformer(
                        field, x0, L, 1.0 / L, split=split, tangent=tangent, final=True
                    )
                    - ref
                )
            )
        )
        for L in Ls
    ]
    assert abs(slope(1.0 / np.array(Ls), errs) - 1.0) < 0.3, errs
    assert errs[-1] < 0.05
    if not split and tangent:
        xs = sj.transformers.transformer(field, x0, 16, 1.0 / 16)
        assert xs.shape == (17,) + x0.shape
        assert float(sj.Sphere().violation(xs)) <= 1e-12
        # the full stack and the final-only loop are the same computation
        final = sj.transformers.transformer(field, x0, 16, 1.0 / 16, final=True)
        np.testing.assert_allclose(xs[-1], final, atol=1e-14)


def test_pre_and_none_stacks(sphere_problem):
    rng = np.random.default_rng(3)
    n, d, heads = 5, 4, 2
    Q, K, V = (rng.normal(size=(heads, d, d)) / 2 for _ in range(3))
    beta = 0.7
    field = sj.SelfAttention(Q, K, V, beta)
    x0 = np.asarray(sj.Sphere().project(rng.normal(size=(n, d))))
    T = 1.0

    # Pre-LN in Cartesian coordinates: xdot = A(x / |x|) (numpy field)
    def pre_rhs(t, x):
        return np_raw_attention(
            x / np.linalg.norm(x, axis=1, keepdims=True), Q, K, V, beta
        )

    ref_pre = dop853(pre_rhs, x0, 0.0, T)
    # the polar ODE on RadiusSphere reproduces it
    flow = sj.transformers.PreLNFlow(field)
    sol = sj.solve(
        flow,
        sj.transformers.to_polar(x0),
        T,
        rtol=1e-11,
        atol=1e-11,
        ts=jnp.linspace(0.0, T, 5),
    )
    assert float(sj.transformers.RadiusSphere().violation(sol.ys)) <= 1e-12
    np.testing.assert_allclose(
        sj.transformers.from_polar(sol.ys[-1]), ref_pre, atol=1e-8
    )
    # the radius changes: the stream is not normalised
    assert float(jnp.max(jnp.abs(sol.ys[-1, :, 0] - 1.0))) > 0.05

    Ls = [16, 32, 64]
    errs = [
        float(
            jnp.max(
                jnp.abs(
                    sj.transformers.transformer(
                        field, x0, L, T / L, norm="pre", final=True
                    )
                    - ref_pre
                )
            )
        )
        for L in Ls
    ]
    assert abs(slope(T / np.array(Ls), errs) - 1.0) < 0.3, errs

    # no normalisation: explicit Euler on R^d
    eu = sj.SelfAttention(Q, K, V, beta, manifold=sj.Euclidean())
    ref_none = dop853(lambda t, x: np_raw_attention(x, Q, K, V, beta), x0, 0.0, T)
    xs = sj.transformers.transformer(eu, x0, 2, 0.5, norm="none")
    np.testing.assert_allclose(
        xs[1], x0 + 0.5 * np_raw_attention(x0, Q, K, V, beta), atol=1e-13
    )
    errs = [
        float(
            jnp.max(
                jnp.abs(
                    sj.transformers.transformer(
                        eu, x0, L, T / L, norm="none", final=True
                    )
                    - ref_none
                )
            )
        )
        for L in Ls
    ]
    assert abs(slope(T / np.array(Ls), errs) - 1.0) < 0.3, errs


def test_transformer_rejects_bad_input(getkey):
    field = sj.SelfAttention.identity(3, 1.0)
    x0 = sj.Sphere().random(getkey(), (4, 3))
    with pytest.raises(ValueError, match="norm"):
        sj.transformers.transformer(field, x0, 2, 0.1, norm="layer")
    with unchecked(), pytest.raises(ValueError, match="num_layers"):
        sj.transformers.transformer(field, x0, 2.5, 0.1)
    with pytest.raises(ValueError, match="Sphere"):
        sj.transformers.PreLNFlow(
            sj.SelfAttention.identity(3, 1.0, manifold=sj.LayerNormSphere())
        )
    with pytest.raises(ValueError, match="std"):
        sj.transformers.MovingLayerNorm(mean=0.0, std=-1.0)


# ---------------------------------------------------------------- collapse rates
def _equiangular(n, d, rho0):
    e = np.zeros((n, d))
    e[:, 0] = np.sqrt(rho0)
    e[np.arange(n), 1 + np.arange(n)] = np.sqrt(1 - rho0)
    return e


def _one_minus_rho(theta):
    theta = theta / jnp.linalg.norm(theta, axis=-1, keepdims=True)
    c = jnp.einsum("tid,tjd->tij", theta, theta)
    n = theta.shape[1]
    off = (jnp.sum(c, axis=(1, 2)) - n) / (n * (n - 1))
    return np.asarray(1 - off)


def test_post_ln_exponential_vs_pre_ln_polynomial_collapse():
    n, d = 3, 4
    x0 = _equiangular(n, d, 0.3)
    field = sj.SelfAttention.identity(d, 1.0)
    # Post-LN: 1 - rho ~ exp(-2 t)
    ts = jnp.linspace(3.0, 8.0, 6)
    sol = sj.solve(field, x0, 8.0, ts=ts, rtol=1e-11, atol=1e-14)
    gap = _one_minus_rho(sol.ys)
    post_rate = -np.polyfit(np.asarray(ts), np.log(gap), 1)[0]
    assert abs(post_rate - 2.0) < 0.1, post_rate
    # Pre-LN: 1 - rho ~ t^{-2}
    ts = jnp.geomspace(30.0, 300.0, 6)
    sol = sj.solve(
        sj.transformers.PreLNFlow(field),
        sj.transformers.to_polar(x0),
        300.0,
        ts=ts,
        rtol=1e-10,
        atol=1e-14,
    )
    gap = _one_minus_rho(sol.ys[..., 1:])
    pre_power = -np.polyfit(np.log(np.asarray(ts)), np.log(gap), 1)[0]
    assert abs(pre_power - 2.0) < 0.15, pre_power
    # and it is not exponential: the local exponential rate keeps falling like 2/t
    local = -np.diff(np.log(gap)) / np.diff(np.asarray(ts))
    assert local[-1] < 0.2 * local[0]


# ------------------------------------------------ LayerNorm and ReLU projections
def test_layernorm_projection_is_nearest_point_of_moving_set():
    con = sj.transformers.MovingLayerNorm(
        mean=lambda t: 0.5 + t**2, std=lambda t: 1.0 + 0.5 * jnp.sin(t)
    )
    rng = np.random.default_rng(1)
    N = 6

    @jax.jit
    def evaluate(t, v, z):
        p = con.project(t, v)
        return (
            p,
            con.controls(t),
            con.violation(t, p),
            con.sq_distance(t, v),
            con.embed(t, z),
            con.to_tangent(t, p, v - p),
        )

    for t in (0.0, 0.7, 1.9):
        v = 3 * rng.normal(size=(4, N)) + 1.0
        # 2000 random points of S1(t)
        z = np_layernorm(rng.normal(size=(2000, N)))
        p, (s1, s2), viol, sq_dist, w, normal_part = evaluate(jnp.asarray(t), v, z)
        s1, s2 = float(s1), float(s2)
        assert float(viol) <= 1e-12
        np.testing.assert_allclose(np.mean(p, axis=1), s1, atol=1e-12)
        np.testing.assert_allclose(np.std(p, axis=1), s2, atol=1e-12)
        d2 = np.sum((v - np.asarray(p)) ** 2, axis=1)
        closed = N * (s2 - v.std(axis=1)) ** 2 + N * (s1 - v.mean(axis=1)) ** 2
        np.testing.assert_allclose(d2, closed, rtol=1e-12)
        np.testing.assert_allclose(sq_dist, closed, rtol=1e-12)
        # no point of S1(t) is closer
        d2_all = np.sum((v[:, None, :] - np.asarray(w)[None]) ** 2, axis=-1)
        assert np.all(d2_all.min(axis=1) >= d2 - 1e-12)
        # first-order optimality: v - p is normal to S1(t) at p
        assert float(jnp.max(jnp.abs(normal_part))) < 1e-12
        # at a fixed time it is the static LayerNormSphere(mean, std)
        np.testing.assert_allclose(con.at(t).project(v), p, atol=1e-13)
    # the normal velocity is d/dt of a point fixed in the reference coordinate
    z = np_layernorm(rng.normal(size=(3, N)))
    t, eps = 0.4, 1e-6
    fd = (con.embed(t + eps, z) - con.embed(t - eps, z)) / (2 * eps)
    np.testing.assert_allclose(con.normal_velocity(t, con.embed(t, z)), fd, atol=1e-8)


def test_relu_is_projection_onto_positive_cone():
    rng = np.random.default_rng(2)
    v = rng.normal(size=(5, 7))
    p = np.asarray(sj.transformers.relu_projection(v))
    assert np.all(p >= 0)
    # KKT for the cone {u >= 0}: v - p <= 0 and complementary slackness
    assert np.all(v - p <= 0) and np.allclose(p * (v - p), 0.0)
    w = np.abs(rng.normal(size=(3000, 7))) * rng.integers(0, 2, size=(3000, 7))
    for i in range(5):
        assert np.sum((v[i] - p[i]) ** 2) <= np.min(np.sum((v[i] - w) ** 2, axis=1))


# ------------------------------------------------ Tai splitting == encoder
def test_tai_splitting_at_h1_equals_numpy_post_ln_encoder():
    rng = np.random.default_rng(4)
    n, N, heads, L = 5, 6, 2, 3
    blocks = [random_block(rng, N) for _ in range(L)]
    u0 = rng.normal(size=(n, N))
    expected = [u0]
    for p in blocks:
        expected.append(np_encoder_block(expected[-1], p, heads))
    fields = [block_to_fields(p, heads) for p in blocks]
    times = np.arange(L + 1.0)
    model = sj.transformers.TaiTransformer(
        sj.Layerwise([f[0] for f in fields], times),
        sj.Layerwise([f[1] for f in fields], times),
    )
    us = sj.transformers.tai_transformer(model, u0, L, 1.0)
    # ReLU actually clips something, so the test exercises the S2 projection
    u2 = np_layernorm(
        u0 + np_multihead(u0, *(blocks[0][k] for k in ("Wq", "Wk", "Wv", "Wo")), heads)
    )
    assert np.any(u2 @ blocks[0]["M1"] + blocks[0]["c1"] < 0)
    err = max(np.max(np.abs(np.asarray(us[k]) - expected[k])) for k in range(L + 1))
    assert err < 1e-12, err
    # N steps = N blocks, and the library's post-LN stack (LN after attention and
    # after the MLP, literal residuals) is the same network
    stack = sj.Layerwise(
        [
            sj.Sum(*block_to_fields(p, heads, sj.LayerNormSphere(), residual_ffn=False))
            for p in blocks
        ],
        times,
    )
    xs = sj.transformers.transformer(stack, u0, L, 1.0, split=True, tangent=False)
    err2 = max(np.max(np.abs(np.asarray(xs[k]) - expected[k])) for k in range(1, L + 1))
    assert err2 < 1e-12, err2


@pytest.fixture(scope="module")
def tai_problem():
    rng = np.random.default_rng(5)
    n, N, heads, L, T = 4, 4, 2, 2, 1.0
    times = np.linspace(0.0, T, L + 1)
    atts, ffns = [], []
    for _ in range(L):
        Q, K = rng.normal(size=(2, heads, N // heads, N)) / 2
        atts.append(
            sj.SelfAttention(
                Q,
                K,
                rng.normal(size=(heads, N, N)) / 2,
                1 / np.sqrt(N // heads),
                manifold=sj.Euclidean(),
            )
        )
        ffns.append(
            sj.FeedForward(
                rng.normal(size=(N, N)) / 2,
                rng.normal(size=N) / 2,
                rng.normal(size=(N, N)) / 2,
                rng.normal(size=N) / 2,
                manifold=sj.Euclidean(),
            )
        )
    # sigma1 > sqrt(N - 1) sigma2: S1(t) inside {u > 0}, ReLU inactive (smooth limit)
    con = sj.transformers.MovingLayerNorm(
        mean=lambda t: 3.0 + 0.5 * t, std=lambda t: 1.0 + 0.2 * jnp.sin(2 * t)
    )
    model = sj.transformers.TaiTransformer(
        sj.Layerwise(atts, times), sj.Layerwise(ffns, times), con
    )
    u0 = np.asarray(con.project(0.0, rng.normal(size=(n, N))))
    # reference: DOP853 on the u-coordinate velocity (normal motion + tangent part),
    # layer by layer
    u = u0
    for k in range(L):
        mk = sj.transformers.TaiTransformer(atts[k], ffns[k], con).flow()
        vel = eqx.filter_jit(lambda m, t, x: m.velocity(t, x))
        u = dop853(
            lambda t, x: vel(mk, jnp.asarray(t), jnp.asarray(x)),
            u,
            times[k],
            times[k + 1],
        )
    return model, u0, u, T


def test_tai_flow_stays_on_moving_constraint(tai_problem):
    model, u0, ref, T = tai_problem
    con = model.constraint
    ts = jnp.linspace(0.0, T, 9)
    sol = sj.solve(
        model.flow(), con.reference(0.0, u0), T, ts=ts, rtol=1e-11, atol=1e-12
    )
    us = jax.vmap(con.embed)(ts, sol.ys)
    viol = float(jnp.max(jax.vmap(con.violation)(ts, us)))
    assert viol <= 1e-12, viol
    # the controls really move: the set at T differs from the set at 0
    assert float(con.violation(0.0, us[-1])) > 0.1
    # the z-coordinate flow is the u-coordinate projected equation
    np.testing.assert_allclose(us[-1], ref, atol=1e-8)


@pytest.mark.parametrize("scheme, order", [("lie", 1.0), ("strang", 2.0)])
def test_tai_splitting_orders(tai_problem, scheme, order):
    model, u0, ref, T = tai_problem
    steps = [8, 16, 32]
    errs, viols = [], []
    for S in steps:
        u = sj.transformers.tai_transformer(
            model, u0, S, T / S, scheme=scheme, final=True
        )
        errs.append(float(jnp.max(jnp.abs(u - ref))))
        viols.append(float(model.constraint.violation(T, u)))
    s = slope(T / np.array(steps), errs)
    assert abs(s - order) < 0.3, (s, errs)
    assert max(viols) <= 1e-12


def test_gradient_through_stack_matches_finite_differences():
    rng = np.random.default_rng(8)
    n, d = 4, 3
    Q, K, V = (rng.normal(size=(d, d)) for _ in range(3))
    x0 = np_layernorm(rng.normal(size=(n, d)))
    c = rng.normal(size=(n, d))

    @jax.jit
    def loss(beta):
        field = sj.SelfAttention(Q, K, V, beta, manifold=sj.LayerNormSphere())
        return jnp.sum(c * sj.transformers.transformer(field, x0, 8, 0.25)[-1])

    beta = jnp.asarray(0.8)
    g = float(jax.grad(loss)(beta))
    eps = 1e-6
    fd = (float(loss(beta + eps)) - float(loss(beta - eps))) / (2 * eps)
    assert abs(g) > 1e-3
    assert abs(g - fd) <= 1e-6 * abs(fd), (g, fd)


def test_transformer_shares_the_input_checks_of_solve():
    # the stack's tokens go through the same preparation as `solve`'s (without the
    # manifold check: a post-LN stack normalises its input itself)
    field = sj.SelfAttention.identity(3, 1.0)
    x = np.eye(3)
    with pytest.raises(ValueError, match="`y0` contains NaN"):
        sj.transformers.transformer(field, np.where(x > 0, np.nan, x), 2, 0.5)
    with pytest.raises(ValueError, match="at least one token"):
        sj.transformers.transformer(field, np.zeros((0, 3)), 2, 0.5)
    with unchecked(), pytest.raises(ValueError, match="must be real"):
        sj.transformers.transformer(field, x + 1j, 2, 0.5)
    off = 2.0 * x  # off the unit sphere: accepted, the first post-LN step projects
    out = sj.transformers.transformer(field, off, 1, 0.5)
    np.testing.assert_allclose(np.linalg.norm(out[1], axis=-1), 1.0, atol=1e-12)
