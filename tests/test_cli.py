import json
import os
import subprocess
import sys

import numpy as np
import pytest

from spherejax.__main__ import main


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_simulate_command_end_to_end(tmp_path):
    # the README's main job, as a user runs it (small sizes)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "spherejax", "simulate", "--n", "12", "--t1", "8",
         "--saves", "41", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == 0, proc.stderr
    assert "energy" in proc.stdout and "clusters" in proc.stdout
    summary = json.loads((out / "simulate.json").read_text())
    energies = [r["energy"] for r in summary["rows"]]
    assert np.all(np.diff(energies) >= -1e-5)  # SA energy rises (float32 run)
    assert summary["rows"][-1]["clusters"] == 1  # beta = 1: a single cluster by t = 8
    png = (out / "simulate.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    data = np.load(out / "simulate.npz")
    assert data["ys"].shape == (41, 12, 3)
    assert np.max(np.abs(np.linalg.norm(data["ys"], axis=-1) - 1)) < 1e-6


@pytest.mark.parametrize(
    "argv, message",
    [
        (["simulate", "--n", "0"], "--n must be >= 1"),
        (["simulate", "--beta", "nan"], "--beta must be finite"),
        (["simulate", "--beta", "-1"], "--beta must be > 0"),
        (["simulate", "--t1", "abc"], "--t1 must be a number"),
        (["simulate", "--normalization", "softmin"], "invalid choice"),
        (["simulate", "--solver", "euler"], "give --dt0"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    try:
        code = main(argv + ["--out", str(out)] if argv[0] == "simulate" else argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
