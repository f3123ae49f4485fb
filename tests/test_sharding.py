"""Sharding over the ensemble and token axes on 8 forced CPU devices.

jax fixes its device count when it initialises, and the other test files share
this pytest process, so the 8-device comparisons run in a fresh Python process
(`tests/_sharding_check.py`, which sets `XLA_FLAGS` before importing jax).
"""

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import unchecked

import spherejax as sj


HERE = pathlib.Path(__file__).parent


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ)
    root = str(HERE.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(HERE / "_sharding_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_eight_devices(results):
    assert results["device_count"] == 8
    assert results["ensemble_devices"] == 8
    assert results["token_field_devices_softmax"] == 8
    assert results["token_field_devices_hardmax"] == 8


def test_ensemble_sharded_solve_equals_one_device(results):
    assert results["ensemble_solve"] < 1e-12
    assert results["ensemble_grad"] < 1e-12 * max(1.0, results["ensemble_grad_norm"])
    assert results["ensemble_grad_norm"] > 1e-3  # the gradient compared is not trivial


def test_token_sharded_field_and_solve_equal_one_device(results):
    assert results["token_field"] < 1e-12
    assert results["token_solve"] < 1e-12
    assert results["token_grad"] < 1e-12 * max(1.0, results["token_grad_norm"])
    assert results["token_grad_norm"] > 1e-3


def test_bad_sharding_arguments():
    mesh = sj.sharding.make_mesh(1)
    with pytest.raises(ValueError, match="num_devices"):
        sj.sharding.make_mesh(10_000)
    with pytest.raises(ValueError, match="sinkhorn"):
        sj.sharding.TokenSharded(
            sj.SelfAttention.identity(3, 1.0, normalization="sinkhorn"), mesh
        )
    with pytest.raises(ValueError, match="not an axis"):
        sj.sharding.shard_tokens(jnp.ones((4, 3)), mesh, axis="tokens")
    with unchecked(), pytest.raises(ValueError, match="batch, n, d"):
        sj.sharding.sharded_solve(
            sj.SelfAttention.identity(3, 1.0), jnp.ones((4, 3)), 1.0, mesh=mesh
        )
    # one device: the wrapper is the plain field
    x = sj.Sphere().random(__import__("jax").random.PRNGKey(0), (6, 3))
    f = sj.SelfAttention.identity(3, 2.0, causal=True)
    np.testing.assert_allclose(
        sj.sharding.TokenSharded(f, mesh)(0.0, x), f(0.0, x), atol=1e-14
    )
