"""Ensembles: `solve_ensemble` in both step-size modes against per-member float64
scipy references, the shared mode's worst-member error control, batches of
fields and bad input."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import scipy_reference, unchecked

import spherejax as sj


N, D, T1 = 6, 3, 4.0
BETAS = (0.5, 1.0, 2.0, 4.0)
TS = (1.5, T1)
EYE = np.eye(D)[None]


def _y0s(seed=0, b=len(BETAS)):
    return sj.Sphere().random(jax.random.PRNGKey(seed), (b, N, D))


@pytest.mark.parametrize("step_size", ["independent", "shared"])
def test_batch_of_fields_against_scipy(step_size):
    """Member m (beta_m) against its own DOP853 solve at rtol = atol = 1e-13."""
    y0s = _y0s()
    fields = eqx.filter_vmap(lambda b: sj.SelfAttention.identity(D, b))(
        jnp.asarray(BETAS)
    )
    sol = sj.solve_ensemble(
        fields,
        y0s,
        T1,
        step_size=step_size,
        batched_field=True,
        ts=jnp.asarray(TS),
        rtol=1e-10,
        atol=1e-12,
    )
    assert sol.ys is not None and sol.ts is not None
    assert sol.ys.shape == (len(BETAS), len(TS), N, D)
    np.testing.assert_allclose(sol.ts, np.broadcast_to(TS, (len(BETAS), len(TS))))
    for m, beta in enumerate(BETAS):
        ref = scipy_reference(y0s[m], T1, EYE, EYE, EYE, beta, ts=TS)
        np.testing.assert_allclose(sol.ys[m], ref, atol=1e-8, rtol=0)
        # the members differ: beta matters at this accuracy
        if m:
            other = scipy_reference(y0s[m], T1, EYE, EYE, EYE, BETAS[0], ts=TS)
            assert np.max(np.abs(other - ref)) > 1e-4


def test_shared_field_independent_steps_match_separate_solves():
    """One field for every member, `"independent"`: each member against scipy, and
    the per-member step counts are those of separate `solve` calls (vmap
    semantics), which differ between members."""
    y0s = _y0s(seed=1)
    field = sj.SelfAttention.identity(D, 2.0)
    sol = sj.solve_ensemble(field, y0s, T1, rtol=1e-10, atol=1e-12)
    assert sol.ys is not None
    steps = np.asarray(sol.stats["num_steps"])
    assert steps.shape == (len(BETAS),)
    for m in range(len(BETAS)):
        ref = scipy_reference(y0s[m], T1, EYE, EYE, EYE, 2.0)[-1]
        np.testing.assert_allclose(sol.ys[m, -1], ref, atol=1e-8, rtol=0)
        one = sj.solve(field, y0s[m], T1, rtol=1e-10, atol=1e-12)
        assert int(one.stats["num_steps"]) == steps[m]


def test_stages_written_out_take_diffrax_steps_across_a_jump():
    """The ensemble path steps explicit Runge-Kutta methods with their stages
    written out. Across a layer boundary (a jump: the first-same-as-last derivative
    is stale there) each member takes exactly the steps of diffrax's own `Dopri5`
    in a separate `solve`, and matches a piecewise scipy reference."""
    y0s = _y0s(seed=3, b=2)
    layers = [sj.SelfAttention.identity(D, 1.0), sj.SelfAttention.identity(D, 3.0)]
    field = sj.Layerwise(layers, jnp.array([0.0, 1.5, T1]))
    sol = sj.solve_ensemble(
        field, y0s, T1, solver=diffrax.Dopri5(), rtol=1e-10, atol=1e-12
    )
    assert sol.ys is not None
    for m in range(2):
        one = sj.solve(
            field, y0s[m], T1, solver=diffrax.Dopri5(), rtol=1e-10, atol=1e-12
        )
        assert one.ys is not None
        assert int(one.stats["num_steps"]) == int(sol.stats["num_steps"][m])
        np.testing.assert_allclose(sol.ys[m, -1], one.ys[-1], atol=1e-13, rtol=0)
        mid = scipy_reference(y0s[m], 1.5, EYE, EYE, EYE, 1.0)[-1]
        ref = scipy_reference(mid, T1 - 1.5, EYE, EYE, EYE, 3.0)[-1]
        np.testing.assert_allclose(sol.ys[m, -1], ref, atol=1e-8, rtol=0)


def test_worst_member_rms_norm_formula():
    e = np.random.default_rng(0).normal(size=(5, 7, 3))
    e[2] *= 10.0
    expected = max(np.sqrt(np.mean(e[m] ** 2)) for m in range(5))
    np.testing.assert_allclose(sj.worst_member_rms_norm(jnp.asarray(e)), expected)
    # RMS of the whole state (diffrax's default norm) is smaller here
    assert np.sqrt(np.mean(e**2)) < 0.6 * expected


def test_shared_mode_controls_the_worst_member():
    """Ensemble = one moving member + three members at rest (all tokens at one
    point: zero velocity, zero error estimate). The worst-member norm then sees the
    moving member's error alone, so the shared solve takes exactly the steps of that
    member solved by itself; diffrax's whole-state RMS would divide its error by 2
    and take fewer, larger steps, with a larger error against scipy."""
    hard = _y0s(seed=2, b=1)[0]
    rest = jnp.broadcast_to(sj.Sphere().project(jnp.ones(D)), (N, D))
    y0s = jnp.stack([hard, rest, rest, rest])
    field = sj.SelfAttention.identity(D, 4.0)
    rtol, atol = 1e-5, 1e-7
    alone = sj.solve(field, hard, T1, rtol=rtol, atol=atol)
    shared = sj.solve_ensemble(field, y0s, T1, step_size="shared", rtol=rtol, atol=atol)
    assert shared.ys is not None and alone.ys is not None
    assert int(shared.stats["num_steps"]) == int(alone.stats["num_steps"])
    np.testing.assert_allclose(shared.ys[0, -1], alone.ys[-1], atol=1e-12, rtol=0)
    np.testing.assert_allclose(shared.ys[1:, -1], np.asarray(y0s[1:]), atol=1e-14)

    loose = sj.solve_ensemble(
        field,
        y0s,
        T1,
        step_size="shared",
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
    )
    assert loose.ys is not None
    assert int(loose.stats["num_steps"]) < int(shared.stats["num_steps"])
    ref = scipy_reference(hard, T1, EYE, EYE, EYE, 4.0)[-1]
    err_shared = np.max(np.abs(shared.ys[0, -1] - ref))
    err_loose = np.max(np.abs(loose.ys[0, -1] - ref))
    assert err_shared < err_loose


def test_bad_input():
    field = sj.SelfAttention.identity(D, 1.0)
    y0s = _y0s(b=2)
    with pytest.raises(ValueError, match="step_size"):
        sj.solve_ensemble(field, y0s, 1.0, step_size="both")
    with pytest.raises(ValueError, match=r"\(b, n, d\)"):
        sj.solve_ensemble(field, y0s[0], 1.0)
    with pytest.raises(ValueError, match="off the manifold"):
        sj.solve_ensemble(field, 2 * y0s, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        sj.solve_ensemble(field, y0s.at[0, 0, 0].set(jnp.nan), 1.0)
    with pytest.raises(ValueError, match="leading axis of size b=2"):
        fields = eqx.filter_vmap(lambda b: sj.SelfAttention.identity(D, b))(
            jnp.asarray(BETAS)
        )
        sj.solve_ensemble(fields, y0s, 1.0, batched_field=True)
    with unchecked(), pytest.raises(ValueError, match="field"):
        sj.solve_ensemble(lambda t, y, a: y, y0s, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="d=4"):
        sj.solve_ensemble(sj.SelfAttention.identity(4, 1.0), y0s, 1.0)
