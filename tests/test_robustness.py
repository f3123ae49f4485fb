"""Bad inputs and numerical edge cases of the library API: each case either gives a
correct result (checked against an independent reference: closed forms, mpmath,
scipy) or an error that names the argument, also under `jit`."""

from typing import cast

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import optax
import pytest
import scipy.linalg
from helpers import standard_promotion, unchecked

import spherejax as sj


N, D = 6, 3


@pytest.fixture(scope="module")
def tokens():
    return sj.Sphere().random(jax.random.PRNGKey(0), (N, D))


@pytest.fixture(scope="module")
def field():
    return sj.SelfAttention.identity(D, 1.0)


# --------------------------------------------------------------------------
# `solve`: values known at call time raise `ValueError` naming the argument.
# --------------------------------------------------------------------------

CONCRETE_CASES = [
    (dict(t1=np.nan), "`t1` contains NaN"),
    (dict(t1=np.inf), "`t1` contains NaN or inf"),
    (dict(t0=np.nan), "`t0` contains NaN"),
    (dict(ts=[0.0, np.nan, 1.0]), "`ts` contains NaN"),
    (dict(ts=[0.0, 0.5, 0.2]), "`ts` must be non-decreasing"),
    (dict(ts=[0.0, 0.5, 2.0]), "`ts` must lie between"),
    (dict(ts=[]), "`ts` must hold at least one"),
    (dict(rtol=-1e-3), "`rtol` must be non-negative"),
    (dict(rtol=np.nan), "`rtol` contains NaN"),
    (dict(atol=np.inf), "`atol` contains NaN or inf"),
    (dict(rtol="1e-3"), "`rtol` must be a real number"),
    (dict(rtol=1e-20, atol=1e-20), "`rtol`=1e-20 and `atol`=1e-20 are both below"),
    (dict(max_steps=0), "`max_steps` must be a positive integer"),
    (dict(max_steps=2.5), "`max_steps` must be a positive integer"),
    (dict(max_steps=True), "`max_steps` must be a positive integer"),
    (dict(dt0=np.nan), "`dt0` contains NaN"),
    (dict(dt0=-0.1), "`dt0` must be non-zero with the sign"),
    (dict(dt0=0.0), "`dt0` must be non-zero with the sign"),
    (dict(dt0=1e-9, solver=diffrax.Euler()), "`dt0`=1e-09 needs 1000000000 steps"),
]


@pytest.mark.parametrize("kwargs, match", CONCRETE_CASES)
@unchecked()  # the library's own ValueErrors on wrongly typed input
def test_solve_rejects_concrete(field, tokens, kwargs, match):
    kwargs = dict(kwargs)
    t1 = kwargs.pop("t1", 1.0)
    with pytest.raises(ValueError, match=match):
        sj.solve(field, tokens, t1, **kwargs)


def test_solve_rejects_bad_tokens(field, tokens):
    with pytest.raises(ValueError, match="`y0` must be real"):
        sj.solve(field, tokens.astype(jnp.complex128), 1.0)
    with pytest.raises(ValueError, match="`y0` must hold at least one token"):
        sj.solve(field, jnp.zeros((0, D)), 1.0)
    with pytest.raises(ValueError, match=r"`y0` contains NaN or inf \(first at"):
        sj.solve(field, tokens.at[2, 1].set(np.nan), 1.0)


@pytest.mark.parametrize("name", ["Q", "K", "V"])
def test_solve_rejects_concrete_nan_parameters(tokens, name):
    eye = np.eye(D)
    mats = {k: eye.copy() for k in "QKV"}
    mats[name][1, 2] = np.nan
    f = sj.SelfAttention(mats["Q"], mats["K"], mats["V"], 1.0)
    with pytest.raises(ValueError, match=f"`field.{name}` contains NaN"):
        sj.solve(f, tokens, 1.0)


# --------------------------------------------------------------------------
# The same checks on traced values (inside `jit`): `equinox`'s runtime error,
# naming the argument (not diffrax's max_steps message).
# --------------------------------------------------------------------------


@eqx.filter_jit
def _final(field, y0, t1):
    return cast(jax.Array, sj.solve(field, y0, t1).ys)[-1]


def test_solve_traced_checks(field, tokens):
    # one compilation serves every case (same shapes and structure)
    good = _final(field, tokens, jnp.asarray(1.0))
    assert np.all(np.isfinite(good))
    cases = [
        (field, tokens.at[0, 0].set(jnp.nan), 1.0, "`y0` contains NaN"),
        (eqx.tree_at(lambda f: f.Q, field, field.Q.at[0, 0, 1].set(jnp.nan)),
         tokens, 1.0, "`field.Q` contains NaN"),
        (eqx.tree_at(lambda f: f.K, field, field.K.at[0, 1, 1].set(jnp.inf)),
         tokens, 1.0, "`field.K` contains NaN"),
        (eqx.tree_at(lambda f: f.V, field, field.V.at[0, 2, 0].set(jnp.nan)),
         tokens, 1.0, "`field.V` contains NaN"),
        (eqx.tree_at(lambda f: f.beta, field, jnp.asarray(jnp.nan)),
         tokens, 1.0, "`field.beta` contains NaN"),
        (field, tokens, jnp.nan, "`t1` contains NaN"),
        (field, tokens, jnp.inf, "`t1` contains NaN"),
    ]  # fmt: skip
    for f, y0, t1, match in cases:
        with pytest.raises(Exception, match=match):
            jax.block_until_ready(_final(f, y0, jnp.asarray(t1)))


def test_solve_traced_checks_jax_jit(field, tokens):
    # the reproduction as reported: plain `jax.jit`, NaN in the tokens
    with pytest.raises(Exception, match="`y0` contains NaN or inf"):
        jax.block_until_ready(
            jax.jit(lambda x: sj.solve(field, x, 1.0).ys)(tokens.at[1, 1].set(jnp.nan))
        )


def test_solve_checks_constants_captured_by_jit(tokens):
    # a field closed over by a jitted function is known at trace time: ValueError
    bad = sj.SelfAttention(np.eye(D), np.eye(D), np.full((D, D), np.nan), 1.0)
    with pytest.raises(ValueError, match="`field.V` contains NaN"):
        jax.jit(lambda y: sj.solve(bad, y, 1.0).ys)(tokens)


def test_solve_traced_weights_and_ts(tokens):
    w = jnp.full((N,), 1.0 / N)
    f = sj.SelfAttention.identity(D, 1.0, weights=w)

    @eqx.filter_jit
    def run(field, ts):
        return cast(jax.Array, sj.solve(field, tokens, 1.0, ts=ts).ys)

    ts = jnp.asarray([0.0, 0.5, 1.0])
    assert np.all(np.isfinite(run(f, ts)))
    bad_w = eqx.tree_at(lambda f: f.weights, f, w.at[2].set(jnp.nan))
    with pytest.raises(Exception, match="`field.weights` contains NaN"):
        jax.block_until_ready(run(bad_w, ts))
    neg_w = eqx.tree_at(lambda f: f.weights, f, w.at[2].set(-w[2]))
    with pytest.raises(Exception, match="`field.weights` must be positive"):
        jax.block_until_ready(run(neg_w, ts))
    with pytest.raises(Exception, match="`ts` contains NaN"):
        jax.block_until_ready(run(f, ts.at[1].set(jnp.nan)))
    with pytest.raises(Exception, match="`ts` must be monotone"):
        jax.block_until_ready(run(f, jnp.asarray([0.0, 0.7, 0.5])))


# --------------------------------------------------------------------------
# NaN produced during the solve.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overflowing(tokens):
    # unnormalised attention at beta = 100 in float32: e^100 overflows (> 3.4e38)
    return sj.IdentityAttention(100.0, normalization="unnormalized"), tokens.astype(
        jnp.float32
    )


def test_fixed_step_nonfinite_is_an_error(overflowing):
    f, x = overflowing
    assert not np.all(np.isfinite(f(0.0, x)))  # the field itself overflows
    with pytest.raises(Exception, match="Nonfinite"):
        sj.solve(f, x, 1.0, solver=diffrax.Euler(), dt0=0.1)
    sol = sj.solve(f, x, 1.0, solver=diffrax.Euler(), dt0=0.1, throw=False)
    assert sol.result == diffrax.RESULTS.nonfinite
    assert int(sol.stats["num_steps"]) == 1  # stopped at the first bad step


def test_adaptive_nonfinite_stops_early(overflowing):
    f, x = overflowing
    sol = sj.solve(f, x, 1.0, throw=False)
    assert sol.result == diffrax.RESULTS.nonfinite
    assert int(sol.stats["num_steps"]) <= 25  # not 65,536 rejected steps
    with pytest.raises(Exception, match="Nonfinite"):
        sj.solve(f, x, 1.0)


class _RotationWithWall(sj.AbstractField):
    """`y' = A y` (A skew: exact solution expm(tA) y0), NaN where `|y|^2 > 1.2`
    (reached only by trial steps that are far too large)."""

    A: jax.Array
    manifold: sj.Sphere = sj.Sphere()

    def __call__(self, t, y, args=None):
        v = y @ self.A.T
        wall = jnp.sum(y * y, axis=-1, keepdims=True) > 1.2
        return jnp.where(wall, jnp.nan, v)


def test_adaptive_recovers_from_a_nonfinite_trial_step(tokens):
    A = jnp.asarray([[0.0, 1.0, -0.5], [-1.0, 0.0, 2.0], [0.5, -2.0, 0.0]])
    f = _RotationWithWall(A=A)
    controller = diffrax.PIDController(rtol=1e-10, atol=1e-12)
    sol = sj.solve(f, tokens, 1.0, dt0=5.0, stepsize_controller=controller)
    assert int(sol.stats["num_rejected_steps"]) >= 1  # the first trial hit the wall
    ref = np.asarray(tokens) @ scipy.linalg.expm(np.asarray(A)).T
    np.testing.assert_allclose(cast(jax.Array, sol.ys)[-1], ref, atol=1e-8)


# --------------------------------------------------------------------------
# Energies: overflow-safe and exact at beta = 0.
# --------------------------------------------------------------------------

mpmath.mp.dps = 50


def _energy_mp(x, beta, shifted=False):
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    g = x @ x.T
    beta = mpmath.mpf(float(beta))
    total = mpmath.mpf(0)
    for i in range(n):
        for j in range(n):
            z = beta * mpmath.mpf(float(g[i, j]))
            total += (mpmath.expm1(z) if shifted else mpmath.exp(z)) / n**2
    return total / (2 * beta)


@pytest.mark.parametrize("beta", [1.0, 100.0, 800.0, -3.0])
def test_energy_log_domain_float64(tokens, beta):
    ref = _energy_mp(tokens, beta)
    log_e = sj.interaction_energy(tokens, beta, log=True)
    assert abs(float(log_e) - float(mpmath.log(abs(ref)))) < 1e-12 * max(1, beta)
    e = float(sj.interaction_energy(tokens, beta))
    if abs(ref) > np.finfo(np.float64).max:
        assert e == np.inf  # the true value is not representable
    else:
        assert abs(e - float(ref)) <= 1e-12 * abs(float(ref))


def test_energy_float32_above_88(tokens):
    x = tokens.astype(jnp.float32)
    e = sj.interaction_energy(x, 95.0)  # e^95 alone overflows in float32
    ref = _energy_mp(np.asarray(x), 95.0)
    assert np.isfinite(e)
    assert abs(float(e) - float(ref)) <= 1e-4 * float(ref)


def test_energy_beta_zero(tokens):
    with pytest.raises(ValueError, match="`beta` = 0 is a pole"):
        sj.interaction_energy(tokens, 0.0)
    with pytest.raises(Exception, match="`beta` = 0 is a pole"):
        jax.block_until_ready(jax.jit(sj.interaction_energy)(tokens, 0.0))
    x = np.asarray(tokens)
    half_mean_gram = 0.5 * np.mean(x @ x.T)
    np.testing.assert_allclose(
        sj.interaction_energy(tokens, 0.0, shifted=True), half_mean_gram, rtol=1e-14
    )
    for beta in (1e-3, -2.0, 3.0):
        ref = float(_energy_mp(tokens, beta, shifted=True))
        np.testing.assert_allclose(
            sj.interaction_energy(tokens, beta, shifted=True), ref, rtol=1e-12
        )
    # continuous in beta: the gradient at 0 is (1/4) mean(g^2) (expm1 series)
    grad0 = jax.grad(lambda b: sj.interaction_energy(tokens, b, shifted=True))(0.0)
    np.testing.assert_allclose(grad0, 0.25 * np.mean((x @ x.T) ** 2), rtol=1e-10)


# --------------------------------------------------------------------------
# Manifolds: constructor types, transport near the antipode.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sj.Sphere("2"), "`radius` must be a positive real number"),  # type: ignore[arg-type]
        (lambda: sj.Sphere(True), "`radius` must be a positive real number"),
        (lambda: sj.Sphere(None), "`radius` must be a positive real number"),  # type: ignore[arg-type]
        (lambda: sj.LayerNormSphere(std="1"), "`std` must be a positive real"),  # type: ignore[arg-type]
        (lambda: sj.LayerNormSphere(mean="0"), "`mean` must be a real number"),  # type: ignore[arg-type]
    ],
)
@unchecked()  # the library's own ValueErrors on wrongly typed input
def test_manifold_constructor_types(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def _antipodal_case(delta, e_a, e_b, e_c, r, centre):
    """x = centre + r e_a; y at angle pi - delta from x in the (e_a, e_b) plane;
    v = a e_b + c e_c at x and its exact transport (rotation in that plane)."""
    x = centre + r * e_a
    y = centre + r * (-np.cos(delta) * e_a + np.sin(delta) * e_b)
    a, c = 0.7, -1.3
    v = a * e_b + c * e_c
    ref = a * (-np.sin(delta) * e_a - np.cos(delta) * e_b) + c * e_c
    return x, y, v, ref


@pytest.mark.parametrize("delta, tol", [(1e-6, 1e-8), (1e-8, 1e-6), (1e-3, 1e-12)])
def test_sphere_transport_near_antipode(delta, tol):
    rng = np.random.default_rng(0)
    R, _ = np.linalg.qr(rng.normal(size=(5, 5)))  # a random rotation of R^5
    e_a, e_b, e_c = R[:, 0], R[:, 1], R[:, 2]
    x, y, v, ref = _antipodal_case(delta, e_a, e_b, e_c, 2.0, 0.0)
    out = np.asarray(sj.Sphere(2.0).transport(x, y, v))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref, atol=tol * np.linalg.norm(v))


def test_sphere_transport_exact_antipode():
    x = np.array([0.0, 0.0, 1.0])
    v = np.array([0.3, -0.4, 0.0])
    out = sj.Sphere().transport(x, -x, v)
    np.testing.assert_array_equal(out, -v)  # along the great circle of v
    g = jax.grad(lambda v: jnp.sum(sj.Sphere().transport(x, -x, v)))(v)
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("delta, tol", [(1e-6, 1e-8), (1e-8, 1e-6)])
def test_layernorm_transport_near_antipode(delta, tol):
    d = 4
    e_a = np.array([1.0, -1.0, 0.0, 0.0]) / np.sqrt(2)  # mean-zero, orthonormal
    e_b = np.array([0.0, 0.0, 1.0, -1.0]) / np.sqrt(2)
    e_c = np.array([1.0, 1.0, -1.0, -1.0]) / 2
    m = sj.LayerNormSphere(mean=0.3, std=2.0)
    x, y, v, ref = _antipodal_case(delta, e_a, e_b, e_c, 2.0 * np.sqrt(d), 0.3)
    out = np.asarray(m.transport(x, y, v))
    np.testing.assert_allclose(out, ref, atol=tol * np.linalg.norm(v))


# --------------------------------------------------------------------------
# Diagnostics, fitting, transformer.
# --------------------------------------------------------------------------


def test_cluster_count_rejects_nan_and_zero_tokens(tokens):
    with pytest.raises(ValueError, match=r"`x` contains NaN or inf \(tokens \[3\]\)"):
        sj.cluster_count(tokens.at[3, 0].set(jnp.nan))
    with pytest.raises(ValueError, match=r"`x` has zero tokens \(rows \[1\]\)"):
        sj.cluster_count(tokens.at[1].set(0.0))


def test_tracking_fit_rejects_decreasing_ts(tokens):
    ts = jnp.asarray([0.0, 0.2, 0.1, 0.3])
    paths = jnp.stack([tokens] * 4)
    with pytest.raises(Exception, match="`ts` must be strictly increasing"):
        sj.variational.action(paths, ts, sj.variational.Kinetic(), sj.Sphere())
    with pytest.raises(Exception, match="`ts` must be strictly increasing"):
        sj.variational.fit(
            sj.SelfAttention.identity(D, 1.0),
            sj.variational.TrackingLoss(),
            (ts, paths),
            optimizer=standard_promotion(optax.adam(1e-2)),
            steps=2,
            progress=False,
        )


def test_transformer_rejects_nonfinite_h(field, tokens):
    with pytest.raises(ValueError, match="`h` contains NaN"):
        sj.transformers.transformer(field, tokens, num_layers=2, h=np.nan)
    with pytest.raises(ValueError, match="`t0` contains NaN or inf"):
        sj.transformers.transformer(field, tokens, num_layers=2, h=0.1, t0=np.inf)
    with pytest.raises(Exception, match="`h` contains NaN"):
        jax.block_until_ready(
            jax.jit(
                lambda h: sj.transformers.transformer(field, tokens, num_layers=2, h=h)
            )(jnp.nan)
        )


def test_fit_stops_on_a_nonfinite_loss():
    # loss sqrt(a) from a = 1 with SGD at rate 10: step 0 has loss 1 and gradient
    # 1/2, so a = 1 - 10/2 = -4 and the loss at step 1 is NaN
    with pytest.raises(FloatingPointError, match="loss became nan at step 1"):
        sj.variational.fit(
            {"a": jnp.asarray(1.0)},
            lambda m, data: jnp.sqrt(m["a"]),
            None,
            optimizer=optax.sgd(10.0),
            steps=5,
            progress=False,
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ts=[0.0, np.nan]), "`ts` must be finite and non-decreasing"),
        (dict(ts=[1.0, 0.0]), "`ts` must be finite and non-decreasing"),
        (dict(n=1), "`n` must be an integer >= 2"),
        (dict(beta=np.nan), "`beta` must be finite"),
        (dict(rho0=-0.5), r"`rho0` must lie in \[-1/\(n - 1\), 1\] = \[-0.25, 1\]"),
        (dict(rho0=1.5), "`rho0` must lie in"),
    ],
)
@unchecked()  # the library's own ValueErrors on wrongly typed input
def test_equiangular_rejects(kwargs, match):
    args = dict(ts=[0.0, 1.0], beta=1.0, n=5, rho0=0.1) | kwargs
    with pytest.raises(ValueError, match=match):
        sj.equiangular(**args)


def test_project_names_the_token_without_a_projection(field, tokens):
    # a zero token has no nearest point on the sphere: refused by index, whether
    # the tokens are known now or traced
    bad = tokens.at[3].set(0.0)
    with pytest.raises(ValueError, match=r"cannot be projected .* at index 3 \(1 in"):
        sj.solve(field, bad, 1.0, project=True)
    with pytest.raises(Exception, match="`y0` holds tokens that cannot be projected"):
        jax.block_until_ready(
            jax.jit(lambda y: sj.solve(field, y, 1.0, project=True).ys)(bad)
        )
    ones = jnp.ones((2, 4))  # constant tokens: no projection on the LayerNorm sphere
    ln = sj.SelfAttention.identity(4, 1.0, manifold=sj.LayerNormSphere())
    with pytest.raises(ValueError, match=r"at index 0 \(2 in all\)"):
        sj.solve(ln, ones, 1.0, project=True)
