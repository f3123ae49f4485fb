"""`benchmarks/run_all.py --quick`: the CPU path end to end in a child process, its
JSON checked against the documented schema and for sane figures."""

import json
import os
import subprocess
import sys

import jax


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import run_all  # noqa: E402  # pyright: ignore[reportMissingImports]


def test_validate_rejects_bad_documents():
    assert run_all.validate({}) != []
    doc = {"schema_version": 1, "meta": {"date_utc": 3}}
    problems = run_all.validate(doc)
    assert any("meta.date_utc" in p for p in problems)
    assert any("missing `attention`" in p for p in problems)


def test_run_all_quick(tmp_path):
    out = tmp_path / "run_all.json"
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run_all.py"), "--quick"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert run_all.validate(doc) == []
    assert doc["errors"] == {}
    assert doc["meta"]["backend"] == "cpu" and doc["meta"]["quick"] is True
    assert doc["meta"]["versions"]["jax"] == jax.__version__
    rows = doc["ensemble"]["rows"]
    # accuracy against the DOP853 reference: spherejax at rtol 1e-6, and RK4 was
    # matched to the independent solve's error
    target = rows["spherejax_independent"]["max_abs_error"]
    assert 0 < target < 1e-5
    assert rows["spherejax_shared"]["max_abs_error"] < 1e-5
    assert rows["numpy_rk4"]["max_abs_error"] <= target
    assert rows["spherejax_independent"]["batched_evaluations"] > 6
    for row in doc["attention"]:
        assert all(v > 0 for v in row["ms"].values())
    assert [r["config"] for r in doc["memory"]] == ["baseline", "field"]
    assert doc["memory"][1]["max_tangent_error"] < 1e-5
    spectral = doc["spectral"]
    for part in ("circle", "sphere"):
        assert spectral[part]["relative_difference"] < 1e-10
        assert spectral[part]["speedup"] > 0
    assert 0.3 < spectral["scaling_n"]["exponent"] < 2
