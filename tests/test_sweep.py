import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest


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


TINY = [
    "sweep",
    "--n",
    "3",
    "--d",
    "2",
    "--beta",
    "1,2",
    "--value",
    "minus-identity",
    "--t1",
    "1",
    "--seeds",
    "2",
    "--saves",
    "3",
]


def _tiny(out):
    # without the test run's compilation cache: these runs are killed at random
    # instants, possibly while writing a cache entry
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    return subprocess.Popen(
        [sys.executable, "-m", "spherejax", *TINY, "--out", str(out)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": ROOT},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sweep_killed_at_8_random_instants_resumes_byte_equal(tmp_path):
    # the reference run gives the length of a whole run (start-up included); the
    # other folder is then SIGKILLed at 8 instants drawn uniformly over that length
    # (each rerun resumes the previous one), and a last run completes it
    ref = tmp_path / "ref"
    tic = time.perf_counter()
    proc = _tiny(ref)
    _, err = proc.communicate(timeout=600)
    length = time.perf_counter() - tic
    assert proc.returncode == 0, err

    killed = tmp_path / "killed"
    (killed / "cells").mkdir(parents=True)  # killed before its manifest existed
    (killed / ".sweep.json.x1y2z3.tmp").write_bytes(b"{")
    instants = np.random.default_rng(0).uniform(0.0, length, 8)
    for instant in instants:
        proc = _tiny(killed)
        try:
            proc.wait(timeout=instant)
            assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    proc = _tiny(killed)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert (killed / "sweep.npz").read_bytes() == (ref / "sweep.npz").read_bytes()
    assert json.loads((killed / "summary.json").read_text())["cells"] == 2
    leftovers = [p for p in killed.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_second_sweep_on_a_locked_folder_is_refused(tmp_path, capsys):
    import fcntl

    from spherejax.cli import main

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".sweep.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a sweep is running
        code = main([*TINY, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "is in use by another running sweep" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == [".sweep.lock"]
