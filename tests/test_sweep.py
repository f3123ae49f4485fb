import json
import os
import signal
import subprocess
import sys
import time

import numpy as np


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# distinct n per cell: each cell compiles its own solve (a few seconds), which
# leaves a window to kill the sweep between cells
ARGS = [
    "sweep",
    "--n",
    "4,5,6,7",
    "--d",
    "2",
    "--beta",
    "1",
    "--t1",
    "3",
    "--seeds",
    "2",
    "--saves",
    "7",
]


def _run(out, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "spherejax", *ARGS, "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _cells(out):
    d = out / "cells"
    return sorted(p for p in d.glob("cell-*.npz")) if d.exists() else []


def test_sweep_killed_and_resumed_equals_uninterrupted(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = _run(killed)
    deadline = time.time() + 240
    while len(_cells(killed)) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "sweep finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(_cells(killed))
    assert 1 <= n_done < 4
    assert not (killed / "sweep.npz").exists()

    resumed = _run(killed)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"{4 - n_done} computed, {n_done} reused" in out + err

    ref = _run(full)
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    assert (killed / "sweep.npz").read_bytes() == (full / "sweep.npz").read_bytes()
    with np.load(full / "sweep.npz") as data:
        assert all(
            np.all(np.isfinite(data[k]))
            for k in data.files
            if data[k].dtype.kind == "f"
        )

    # rerunning a finished sweep recomputes nothing
    again = _run(full)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0 and "0 computed, 4 reused" in out + err

    # a corrupted cell is an error, not silent reuse
    cell = _cells(full)[0]
    cell.write_bytes(cell.read_bytes()[:50])
    bad = _run(full)
    _, err = bad.communicate(timeout=300)
    assert bad.returncode == 2 and "error" in err.lower()

    # a folder holding another sweep is refused
    manifest = json.loads((killed / "sweep.json").read_text())
    assert manifest  # the manifest exists and is JSON
    other = subprocess.run(
        [sys.executable, "-m", "spherejax", *ARGS[:-2], "3", "--out", str(killed)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert other.returncode == 2 and "error" in other.stderr.lower()
