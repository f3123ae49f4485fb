import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from spherejax.cli import main


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_simulate_command_end_to_end(tmp_path):
    # the README's main job, as a user runs it (small sizes)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "spherejax",
            "simulate",
            "--n",
            "12",
            "--t1",
            "8",
            "--saves",
            "41",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
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


def _bad_files(folder):
    """The files named under the bad-input table of README.md."""
    import spherejax as sj

    bad = folder / "bad"
    bad.mkdir()
    (bad / "nan.toml").write_text("[simulate]\nbeta = nan\n")
    (bad / "unknown_key.toml").write_text("[simulate]\ngamma = 1\n")
    (bad / "unknown_table.toml").write_text("[simulat]\nn = 3\n")
    (bad / "string_n.toml").write_text('[simulate]\nn = "ten"\n')
    (bad / "not_toml.toml").write_text("beta = = 1\n")
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(4, 3))
    x0 /= np.linalg.norm(x0, axis=-1, keepdims=True)
    np.save(bad / "x0.npy", x0)
    np.save(bad / "off_sphere.npy", np.full((4, 3), 0.9))
    np.save(bad / "x0_3d.npy", np.zeros((2, 3, 3)))
    with_nan = x0.copy()
    with_nan[1, 2] = np.nan
    np.save(bad / "x0_nan.npy", with_nan)
    with open(bad / "huge.npy", "wb") as f:  # declares 80 GB, holds 16 bytes
        header = {"descr": "<f8", "fortran_order": False, "shape": (100000, 100000)}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 16)
    sj.io.save(
        bad / "field.sjx",
        sj.SelfAttention.identity(3, 1.0),
        sj.io.field_hyperparams(sj.SelfAttention.identity(3, 1.0)),
    )
    (bad / "truncated.sjx").write_bytes((bad / "field.sjx").read_bytes()[:-10])
    _edited_headers(bad)
    (bad / "not_a_field.txt").write_text("hello\n")
    (bad / "a_file").write_text("")
    (bad / "stray").mkdir()
    (bad / "stray" / "notes.txt").write_text("not a sweep\n")
    ts = np.linspace(0.0, 1.0, 9)
    ys = np.broadcast_to(x0, (9, 4, 3)).copy()
    np.savez(bad / "paths.npz", ts=ts, ys=ys)
    np.savez(bad / "no_ys.npz", ts=ts)
    np.savez(bad / "off_sphere.npz", ts=ts, ys=2 * ys)
    ys_nan = ys.copy()
    ys_nan[3, 1, 0] = np.nan
    np.savez(bad / "nan.npz", ts=ts, ys=ys_nan)
    np.savez(bad / "ts_decreasing.npz", ts=ts[::-1], ys=ys)
    np.savez(bad / "ts_short.npz", ts=ts[:-1], ys=ys)


def _edited_headers(bad):
    """Copies of bad/field.sjx whose JSON header is edited (payload unchanged)."""
    import spherejax as sj

    text, _, payload = (bad / "field.sjx").read_bytes().partition(b"\n")
    header = json.loads(text)

    def write(name, **changes):
        h = {**header, **changes}
        (bad / name).write_bytes(json.dumps(h).encode() + b"\n" + payload)

    hp = header["hyperparams"]
    write("no_key.sjx", hyperparams={k: v for k, v in hp.items() if k != "heads"})
    write("wrong_type.sjx", hyperparams={**hp, "causal": "yes"})
    write("huge_d.sjx", hyperparams={**hp, "d": 6000})
    leaves = [dict(leaf) for leaf in header["leaves"]]
    leaves[0] = {"shape": [6000, 6000], "dtype": "float64"}
    write("huge_leaves.sjx", leaves=leaves)
    hot = sj.SelfAttention.identity(3, 200.0, normalization="unnormalized")
    sj.io.save(bad / "hot.sjx", hot, sj.io.field_hyperparams(hot))
    (bad / "taken" / "simulate.json").mkdir(parents=True)


def _readme_table(header: str) -> list[list[str]]:
    """The cells of the README table whose header row starts with `header`."""
    rows, in_table = [], False
    with open(os.path.join(ROOT, "README.md")) as f:
        for line in f:
            if line.startswith(header):
                in_table = True
            elif in_table and not line.startswith("|"):
                break
            elif in_table and not line.startswith("| ---"):
                rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


def _table_rows():
    import shlex

    return [
        (what, shlex.split(command.strip("`")), message.strip("`").strip())
        for what, command, message in _readme_table("| what is wrong |")
    ]


BAD_INPUTS = _table_rows()


def test_bad_input_table_is_long_enough():
    # the table is the documentation: it must not be emptied silently
    assert len(BAD_INPUTS) >= 40
    assert {argv[0] for _, argv, _ in BAD_INPUTS} >= {
        "simulate",
        "sweep",
        "fit",
        "bench",
    }


@pytest.mark.parametrize(
    "what, argv, message", BAD_INPUTS, ids=[w for w, _, _ in BAD_INPUTS]
)
def test_bad_input_table(what, argv, message, tmp_path, monkeypatch, capsys):
    _bad_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written


def test_fit_recovers_the_simulated_field(tmp_path, capsys):
    # simulate with the known field Q = K = V = I, beta = 1; fit a perturbed one to the
    # saved path; the fitted field's velocities match the true field's on the held-out
    # configurations, and the saved fit runs through `simulate --field`
    import jax.numpy as jnp

    import spherejax as sj

    sim, out = tmp_path / "sim", tmp_path / "fit"
    assert (
        main(
            [
                "simulate",
                "--n",
                "12",
                "--t1",
                "6",
                "--saves",
                "61",
                "--x64",
                "--out",
                str(sim),
            ]
        )
        == 0
    )
    # the command runs in its own process under JAX's default promotion; Optax's
    # L-BFGS adds int32 and int64 counters, which the tests' strict promotion refuses
    # (in the global configuration: the thread-local context manager did not
    # reach the fit loop)
    jax.config.update("jax_numpy_dtype_promotion", "standard")
    try:
        code = main(
            ["fit", "--data", str(sim / "simulate.npz"), "--x64", "--out", str(out)]
        )
    finally:
        jax.config.update("jax_numpy_dtype_promotion", "strict")
    assert code == 0
    summary = json.loads((out / "fit.json").read_text())
    assert summary["residual_initial"]["heldout"] > 0.5
    assert summary["residual_fitted"]["train"] < 1e-2
    assert summary["residual_fitted"]["heldout"] < 1e-2
    assert summary["heldout_times"] == 15 and summary["times"] == 61

    fitted = sj.io.load(out / "field.sjx", like=sj.io.field_from_hyperparams)
    true = sj.SelfAttention.identity(3, 1.0)
    ys = jnp.asarray(np.load(sim / "simulate.npz")["ys"][46:])  # held-out states
    v_fit = np.asarray(jax_vmap_field(fitted, ys))
    v_true = np.asarray(jax_vmap_field(true, ys))
    rel = np.linalg.norm(v_fit - v_true) / np.linalg.norm(v_true)
    assert rel < 1e-2

    capsys.readouterr()
    assert (
        main(
            [
                "simulate",
                "--field",
                str(out / "field.sjx"),
                "--n",
                "12",
                "--t1",
                "2",
                "--saves",
                "5",
                "--x64",
                "--out",
                str(tmp_path / "resim"),
            ]
        )
        == 0
    )
    assert "beta=1.0" in capsys.readouterr().out


def jax_vmap_field(field, ys):
    import jax

    return jax.vmap(lambda y: field(0.0, y, None))(ys)


def test_bench_command_reports_field_and_floor(tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "--n",
                "16,32",
                "--d",
                "8",
                "--repeats",
                "2",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [r["n"] for r in report["rows"]] == [16, 32]
    for row in report["rows"]:
        assert row["field_ms"] > 0 and row["floor_ms"] > 0
        assert row["field_over_floor"] == pytest.approx(
            row["field_ms"] / row["floor_ms"]
        )
        assert f"{row['n']:7d}" in text


def _failure_rows():
    """The table of failures after the checks in README.md (with exit codes)."""
    import shlex

    return [
        (what, shlex.split(command.strip("`")), int(code), message.strip("`"))
        for what, command, code, message in _readme_table("| what fails |")
    ]


FAILURES = _failure_rows()


def test_failure_table_covers_every_code():
    assert {code for _, _, code, _ in FAILURES} >= {3, 4, 5}


@pytest.mark.parametrize(
    "what, argv, code, message", FAILURES, ids=[w for w, _, _, _ in FAILURES]
)
def test_failure_table(what, argv, code, message, tmp_path, monkeypatch, capsys):
    # failures after validation: one line, the documented code, nothing written
    _bad_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    got = main(argv)
    err = capsys.readouterr().err
    assert got == code, err
    assert message in err, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_ctrl_c_during_the_solve_exits_130_and_writes_nothing(tmp_path):
    # a solve of 8 x 10^5 fixed RK4 steps; SIGINT once the run has started: the
    # process ends within seconds, exit 130, one line, no traceback, no output
    import signal
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "spherejax", "simulate", "--n", "16", "--t1", "4000"]
        + ["--solver", "rk4", "--dt0", "0.005", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # SIGINT at its default in the child whatever this process inherited (a
        # SIGINT ignored here would be ignored by the child too)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    header = proc.stdout.readline()  # printed just before the solve starts
    assert header.startswith("spherejax simulate:"), header
    time.sleep(2.0)
    assert proc.poll() is None, "the solve ended before it could be interrupted"
    tic = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    latency = time.perf_counter() - tic
    assert proc.returncode == 130, err
    assert err == "error: interrupted; partial outputs removed\n", err
    assert latency < 10, latency
    assert not out.exists()


def test_sigint_while_waiting_interrupts_the_command_and_restores_the_handler():
    # in-process: the command (a thread) sends SIGINT to this process and blocks;
    # the waiting main thread ends the command within a few wait periods, and
    # SIGINT's handler is Python's own again afterwards
    import signal
    import threading
    import time

    from spherejax.cli import app

    assert threading.current_thread() is threading.main_thread()
    # Python's own handler, whatever this process inherited (a test run started in
    # the background has SIGINT ignored)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    release = threading.Event()

    def command():
        os.kill(os.getpid(), signal.SIGINT)
        release.wait(30)

    tic = time.perf_counter()
    try:
        with pytest.raises(app._Interrupted):
            app._in_worker(command)
        assert time.perf_counter() - tic < 5
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        release.set()
        signal.signal(signal.SIGINT, inherited)


def test_simulate_memory_stays_proportional_to_one_attention_matrix(tmp_path):
    # the summaries are computed a few saved states at a time: the peak RSS of
    # simulate --n 1500 (201 saves) stays under 0.6 GiB + 2.4 GiB (n / 4000)^2 (the
    # bound that gives 3 GiB at n = 4000; all 201 energies at once would need
    # 201 x 1500^2 float32 = 1.7 GiB more)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        from cli_memory import peak_rss_gib
    finally:
        sys.path.pop(0)
    n = 1500
    gib, _, code = peak_rss_gib(n, t1=1.0)
    assert code == 0
    assert gib < 0.6 + 2.4 * (n / 4000) ** 2, gib
