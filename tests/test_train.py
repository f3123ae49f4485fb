"""Training attention flows on data (`spherejax.training`): the regularisers against
independent quadratures, gradients against finite differences, the kinetic
regulariser's effect, kill-and-resume, bad input and a loss turning NaN."""

import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from helpers import standard_promotion

import spherejax as sj
from spherejax import training as T


ROOT = pathlib.Path(__file__).resolve().parent.parent
D, M, P = 4, 3, 2  # token dimension, feature vectors per example, their length


def _model(key, t1=2.0):
    k1, k2, k3 = jr.split(key, 3)
    Q = 0.5 * jr.normal(k2, (1, D, D))
    field = sj.SelfAttention(Q, Q, jnp.eye(D)[None], 1.0)
    return T.FlowModel(
        T.PatchEmbedding(k1, M, P, D), field, T.ClassReadout(k3, D, 2), t1=t1
    )


def _data(key, n):
    x = np.asarray(jr.normal(key, (n, M, P)))
    return x, (x[:, 0, 0] * x[:, 1, 1] > 0).astype(np.int64)


# one optimiser object for every training run below: the compiled step is shared
ADAM = standard_promotion(optax.adam(3e-2))
TRAIN = dict(optimizer=ADAM, steps=30, batch_size=16, key=jr.PRNGKey(0))


def _rademacher_like_forward(key, shape):
    return np.asarray(jr.rademacher(key, shape, dtype=jnp.float64))


def test_regularisers_equal_quadratures_and_nfe_counts_evaluations():
    model = _model(jr.PRNGKey(1))
    x = _data(jr.PRNGKey(2), 1)[0][0]
    key = jr.PRNGKey(3)
    out = T.forward(
        model, jnp.asarray(x), key=key, jacobian=True, rtol=1e-11, atol=1e-13
    )
    assert bool(out.ok)

    # reference: the path from `solve` at Gauss-Legendre nodes, the integrands from
    # the field and its full Jacobian (numpy), summed with the Gauss weights
    y0 = model.embedding(jnp.asarray(x))
    nodes, weights = np.polynomial.legendre.leggauss(24)
    T1 = model.t1
    ts, ws = 0.5 * T1 * (nodes + 1), 0.5 * T1 * weights
    path = sj.solve(model.field, y0, T1, ts=ts, rtol=1e-12, atol=1e-14).ys
    eps = _rademacher_like_forward(key, y0.shape).ravel()

    @jax.jit
    @jax.vmap
    def integrands(t, y):
        v = model.field(t, y, None)
        J = jax.jacfwd(lambda z: model.field(t, z, None).ravel())(y)
        return 0.5 * jnp.sum(v**2), J.reshape(v.size, v.size)

    kin_t, J_t = (np.asarray(a) for a in integrands(jnp.asarray(ts), path))
    kin = np.sum(ws * kin_t)
    jac = np.sum(ws * np.sum(np.einsum("i,tij->tj", eps, J_t) ** 2, axis=1))
    np.testing.assert_allclose(float(out.kinetic), kin, rtol=1e-6)
    np.testing.assert_allclose(float(out.jacobian), jac, rtol=1e-6)
    # the kinetic term is the library's kinetic action of the same path
    fine = np.linspace(0, T1, 801)
    ref_action = sj.variational.action(
        sj.solve(model.field, y0, T1, ts=fine, rtol=1e-12, atol=1e-14).ys,
        fine,
        sj.variational.Kinetic(),
        model.field.manifold,
    )
    np.testing.assert_allclose(float(out.kinetic), float(ref_action), rtol=1e-5)

    # the evaluation count: the field's calls counted by a host callback
    calls = []

    class Counted(sj.SelfAttention):
        def __call__(self, t, y, args=None):
            jax.debug.callback(lambda: calls.append(1))
            return super().__call__(t, y, args)

    f = model.field
    counted = Counted(f.Q, f.K, f.V, f.beta)
    cmodel = T.FlowModel(model.embedding, counted, model.readout, t1=T1)
    for kw in (dict(rtol=1e-6), dict(dt0=0.25, solver=diffrax.Heun())):
        calls.clear()
        nfe = int(jax.block_until_ready(T.forward(cmodel, jnp.asarray(x), **kw).nfe))
        assert nfe == len(calls), (kw, nfe, len(calls))
    assert nfe == 2 * 8  # Heun: two evaluations a step, 8 steps


def test_gradients_match_finite_differences():
    model = _model(jr.PRNGKey(4))
    x, y = _data(jr.PRNGKey(5), 1)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    key = jr.PRNGKey(6)

    def objective(p):
        m = eqx.combine(p, static)
        out = T.forward(m, jnp.asarray(x[0]), key=key, jacobian=True, dt0=0.125)
        task = T.cross_entropy(out.outputs, jnp.asarray(y[0]))
        return task + 0.3 * out.kinetic + 0.2 * out.jacobian

    grads = eqx.filter_grad(objective)(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(0)
    direction = jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(rng.standard_normal(a.shape)) for a in leaves]
    )
    analytic = sum(
        float(jnp.vdot(g, v))
        for g, v in zip(
            jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(direction)
        )
    )
    f = eqx.filter_jit(objective)
    h = 1e-5

    def moved(s):
        return jax.tree_util.tree_map(lambda a, v: a + s * v, params, direction)

    numeric = (float(f(moved(h))) - float(f(moved(-h)))) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


@pytest.fixture(scope="module")
def trained_pair():
    """The same tiny problem trained with `lambda_k = 0` and `lambda_k = 1` (same
    seeds, data and budget): one compiled step serves both."""
    model = _model(jr.PRNGKey(7))
    data, test = _data(jr.PRNGKey(8), 64), _data(jr.PRNGKey(9), 64)
    runs = {
        lk: T.train(
            model, data, lambda_kinetic=lk, eval_data=test, eval_every=15, **TRAIN
        )
        for lk in (0.0, 1.0)
    }
    return runs, test


def test_kinetic_regulariser_lowers_action_and_test_nfe(trained_pair):
    runs, test = trained_pair
    plain, regular = (T.evaluate(runs[lk].model, test) for lk in (0.0, 1.0))
    assert regular["kinetic"] < 0.5 * plain["kinetic"], (plain, regular)
    assert regular["nfe"] < 0.8 * plain["nfe"], (plain, regular)
    # the periodic evaluation (steps 15 and 30) ends with the final model's scores
    assert runs[1.0].history["eval_step"] == [15, 30]
    assert runs[1.0].history["eval_nfe"][-1] == regular["nfe"]
    assert runs[1.0].history["eval_accuracy"][-1] == regular["accuracy"]
    # the recorded training curves are per step and finite
    for run in runs.values():
        assert len(run.history["nfe"]) == TRAIN["steps"]
        assert np.all(np.isfinite(run.history["loss"]))


RESUMABLE = textwrap.dedent(
    """
    import os, sys
    import jax, jax.numpy as jnp, jax.random as jr, numpy as np, optax
    jax.config.update("jax_enable_x64", True)
    import diffrax
    import spherejax as sj
    from spherejax import training as T


    def run(ckpt, out, steps):
        k = jr.split(jr.PRNGKey(11), 4)
        Q = 0.5 * jr.normal(k[0], (1, 4, 4))
        field = sj.SelfAttention(Q, Q, jnp.eye(4)[None], 1.0)
        model = T.FlowModel(T.PatchEmbedding(k[1], 3, 2, 4), field,
                            T.ClassReadout(k[2], 4, 2), t1=1.0)
        x = np.asarray(jr.normal(k[3], (40, 3, 2)))
        y = (x[:, 0, 0] > 0).astype(np.int64)
        print("started", flush=True)
        result = T.train(model, (x, y), optimizer=optax.sgd(0.05, momentum=0.9),
                         steps=steps, batch_size=8, key=jr.PRNGKey(12), dt0=0.25,
                         solver=diffrax.Heun(), checkpoint=ckpt)
        leaves = jax.tree_util.tree_leaves(result.model)
        np.savez(out + ".tmp.npz", *[np.asarray(a) for a in leaves
                                     if hasattr(a, "dtype")])
        os.replace(out + ".tmp.npz", out)
        print("done", flush=True)


    if __name__ == "__main__":
        run(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    """
)


def test_kill_and_resume_gives_the_uninterrupted_parameters(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RESUMABLE)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    steps = "200"

    def start(ckpt, out):
        return subprocess.Popen(
            [sys.executable, str(script), str(ckpt), str(out), steps],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # the uninterrupted run, in this process (under the promotion rules of the
    # subprocesses, so that the same program is compiled, and cached for them)
    namespace = {"__name__": "reference"}
    exec(compile(RESUMABLE, "run.py", "exec"), namespace)
    with jax.numpy_dtype_promotion("standard"):
        namespace["run"](str(tmp_path / "a.ckpt"), str(tmp_path / "a.npz"), int(steps))

    rng = random.Random(13)
    kills = 0
    ckpt, out = tmp_path / "b.ckpt", tmp_path / "b.npz"
    while kills < 2:
        proc = start(ckpt, out)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:  # finished before the kill
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    if not out.exists():
        proc = start(ckpt, out)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    assert kills >= 1
    a, b = np.load(tmp_path / "a.npz"), np.load(out)
    assert a.files == b.files
    for name in a.files:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-12)


def _never_steps():
    def update(updates, state, params=None):
        raise AssertionError("a training step ran")

    return optax.GradientTransformation(optax.sgd(0.1).init, update)


BAD = {
    "nan inputs": (
        lambda x, y: (np.where(np.arange(len(x))[:, None, None] == 5, np.nan, x), y),
        {},
        "NaN or inf.*\\[5\\]",
    ),
    "labels out of range": (
        lambda x, y: (x, y + 1),
        {},
        r"labels must lie in \[0, 2\)",
    ),
    "mismatched lengths": (lambda x, y: (x, y[:-1]), {}, "same length"),
    "empty": (lambda x, y: (x[:0], y[:0]), {}, "is empty"),
    "zero batch": (
        lambda x, y: (x, y),
        {"batch_size": 0},
        "`batch_size` must be a positive",
    ),
    "negative batch": (
        lambda x, y: (x, y),
        {"batch_size": -4},
        "`batch_size` must be a positive",
    ),
    "float labels": (lambda x, y: (x, y.astype(float)), {}, "labels must be integers"),
    "negative lambda": (
        lambda x, y: (x, y),
        {"lambda_kinetic": -1.0},
        "lambda_kinetic",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_before_any_step(case):
    spoil, kwargs, match = BAD[case]
    x, y = _data(jr.PRNGKey(10), 32)
    options = dict(optimizer=_never_steps(), steps=3, batch_size=8, key=jr.PRNGKey(0))
    options.update(kwargs)
    with pytest.raises(ValueError, match=match):
        T.train(_model(jr.PRNGKey(7)), spoil(x, y), **options)
    # the held-out data is checked the same way
    if not kwargs:
        with pytest.raises(ValueError, match=match.replace("`data`", "`eval_data`")):
            T.train(
                _model(jr.PRNGKey(7)),
                (x, y),
                eval_data=spoil(x, y),
                eval_every=1,
                **options,
            )


def test_a_loss_turning_nan_stops_with_the_last_good_checkpoint(tmp_path):
    # the learning rate becomes infinite at the optimiser's fourth update: the
    # parameters after step 3 are not finite, the run stops there
    lr = lambda count: jnp.where(count >= 3, jnp.inf, 0.05)
    optimizer = standard_promotion(optax.sgd(lr))
    model = _model(jr.PRNGKey(7))
    ckpt = tmp_path / "run.ckpt"
    options = dict(
        optimizer=optimizer,
        steps=10,
        batch_size=16,
        key=jr.PRNGKey(0),
        dt0=0.5,
        solver=diffrax.Heun(),
    )
    with pytest.raises(
        FloatingPointError, match=r"step 3.*last good checkpoint \(step 3\)"
    ):
        T.train(model, _data(jr.PRNGKey(8), 64), checkpoint=str(ckpt), **options)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    meta, (saved, _) = T.load_checkpoint(str(ckpt), (params, optimizer.init(params)))
    assert meta["step"] == 3 and len(meta["history"]["loss"]) == 3
    assert all(np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(saved))
    # and the checkpoint is the state of an uninterrupted 3-step run
    three = T.train(model, _data(jr.PRNGKey(8), 64), **dict(options, steps=3))
    for a, b in zip(
        jax.tree_util.tree_leaves(eqx.filter(three.model, eqx.is_inexact_array)),
        jax.tree_util.tree_leaves(saved),
    ):
        np.testing.assert_array_equal(a, b)

    # mini-batches from an iterable: three copies of one batch of 16 train as the
    # array data made of that batch alone (each epoch a permutation of it)
    batch = tuple(a[:16] for a in _data(jr.PRNGKey(8), 64))
    listed = T.train(model, [batch] * 3, **dict(options, steps=3, batch_size=None))
    arrays = T.train(model, batch, **dict(options, steps=3))
    for a, b in zip(
        jax.tree_util.tree_leaves(eqx.filter(listed.model, eqx.is_inexact_array)),
        jax.tree_util.tree_leaves(eqx.filter(arrays.model, eqx.is_inexact_array)),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="ran out after 3 batches"):
        T.train(model, [batch] * 3, **dict(options, steps=4, batch_size=None))


def test_the_docs_example_runs(capsys):
    text = (ROOT / "docs" / "training.md").read_text()
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    with jax.numpy_dtype_promotion("standard"):  # Optax's Adam mixes dtypes
        exec(compile(block, "docs/training.md", "exec"), {})
    out = capsys.readouterr().out
    accuracy = float(out.split("accuracy ")[1].split(",")[0])
    nfe = float(out.split("test NFE ")[1].split()[0])
    assert 0.0 <= accuracy <= 1.0 and nfe > 0
