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
    _probe_files(bad)  # no_tokens.npy, tokens.npz, no_tokens.npz, pickled.sjx, ...


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
    hot = sj.SelfAttention.identity(3, 200.0, normalization=sj.Unnormalized())
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


def _probe_files(folder):
    """Inputs that once reached numpy or equinox unchecked."""
    import hashlib
    import io

    import equinox as eqx

    import spherejax as sj

    np.save(folder / "no_tokens.npy", np.zeros((0, 3)))
    np.save(folder / "no_dims.npy", np.zeros((4, 0)))
    np.savez(folder / "tokens.npz", x0=np.eye(3))
    ts = np.linspace(0.0, 1.0, 9)
    np.savez(folder / "no_tokens.npz", ts=ts, ys=np.zeros((9, 0, 3)))
    x0 = np.eye(3)[:2]
    np.savez(folder / "at_rest.npz", ts=ts, ys=np.broadcast_to(x0, (9, 2, 3)))
    # a field file whose first parameter is a pickled object array, with a
    # header that matches its payload (size and checksum)
    field = sj.SelfAttention.identity(3, 1.0)
    sj.io.save(folder / "field.sjx", field, sj.io.field_hyperparams(field))
    text = (folder / "field.sjx").read_bytes().partition(b"\n")[0]
    header = json.loads(text)
    first = [True]

    def pickled(f, leaf):
        if eqx.is_array(leaf) and first[0]:
            first[0] = False
            objects = np.empty(leaf.shape, dtype=object)
            np.save(f, objects, allow_pickle=True)
        else:
            eqx.default_serialise_filter_spec(f, leaf)

    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, field, filter_spec=pickled)
    payload = buffer.getvalue()
    header["payload_bytes"] = len(payload)
    header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    (folder / "pickled.sjx").write_bytes(json.dumps(header).encode() + b"\n" + payload)


PROBES = [
    ("simulate --x0 no_tokens.npy", "--x0 holds no tokens: got shape (0, 3)"),
    ("simulate --x0 no_dims.npy", "--x0 holds no tokens: got shape (4, 0)"),
    ("simulate --x0 tokens.npz", "--x0 tokens.npz is an .npz archive (arrays x0)"),
    ("fit --data no_tokens.npz", "--data `ys` holds no tokens: got shape (9, 0, 3)"),
    ("fit --data at_rest.npz", "--data: the tokens never move"),
    ("simulate --beta 1e300", "--beta 1e+300 overflows float32 (largest 3.4e+38)"),
    ("simulate --t1 1e39", "or --x64 for float64"),
    ("sweep --beta 1,1e300", "--beta 1e+300 overflows float32"),
    ("fit --data at_rest.npz --beta 1e300", "--beta 1e+300 overflows float32"),
    (
        "simulate --field pickled.sjx",
        "pickled.sjx' is not a valid model file: a parameter cannot be read",
    ),
]


@pytest.mark.parametrize("command, message", PROBES, ids=[c for c, _ in PROBES])
def test_probed_inputs_are_bad_input(command, message, tmp_path, monkeypatch, capsys):
    # each once ended in a numpy or equinox message, or in "internal error"
    _probe_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    code = main([*command.split(), "--out", "out"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_huge_beta_runs_in_float64(tmp_path, capsys):
    # the value refused in float32 is representable in float64: the run goes on
    code = main(
        ["simulate", "--beta", "1e300", "--n", "2", "--t1", "0.1", "--saves", "2"]
        + ["--x64", "--out", str(tmp_path / "out")]
    )
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "simulate.json").read_text())["beta"] == 1e300


def test_sweep_config_setting_every_key_draws_the_phase_diagram(tmp_path):
    # several betas with V = I and softmax: the plot overlays the equiangular
    # curve (this once crashed after all cells were computed); run as a user
    # runs it, in its own process
    from spherejax.cli.config import SWEEP

    values = {
        "n": [3],
        "d": [2],
        "beta": [1.0, 2.0],
        "t1": 1.0,
        "normalization": "softmax",
        "value": "identity",
        "solver": "tsit5",
        "rtol": 1e-6,
        "dt0": 0.05,
        "saves": 3,
        "seed": 1,
        "causal": False,
        "x64": False,  # float32, as the crash was
        "out": str(tmp_path / "phase"),
        "seeds": 2,
        "eps": 1e-3,
    }
    assert set(values) == set(SWEEP)  # every key

    def toml(v):
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    config = tmp_path / "sweep.toml"
    config.write_text(
        "[sweep]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in values.items())
    )
    proc = subprocess.run(
        [sys.executable, "-m", "spherejax", "sweep", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    png = (tmp_path / "phase" / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "phase" / "summary.json").read_text())
    assert [c["beta"] for c in summary["grid"]] == [1.0, 2.0]


def test_equiangular_boundary_matches_scipy():
    # the crossing time of gamma_beta(t) = 1 - eps, against an independent
    # DOP853 solve of the softmax equiangular ODE (GLPR Thm 6.8) with an event
    from scipy.integrate import solve_ivp

    from spherejax.cli.plots import equiangular_boundary

    n, eps, t1 = 8, 1e-3, 10.0
    betas = [0.5, 2.0, 4.0]
    got = equiangular_boundary(betas, n, eps, t1)
    for beta, t in zip(betas, got):

        def rhs(_, rho, beta=beta):
            e = np.exp(beta * rho)
            return (
                2 * e * (1 - rho) * ((n - 1) * rho + 1) / (np.exp(beta) + (n - 1) * e)
            )

        def hit(_, rho):
            return rho[0] - (1 - eps)

        hit.terminal = True
        ref = solve_ivp(
            rhs, (0, t1), [0.0], "DOP853", events=hit, rtol=1e-10, atol=1e-12
        )
        (crossing,) = ref.t_events[0]
        # the grid has 2001 times: the first grid time at or after the crossing
        assert crossing <= t < crossing + t1 / 2000 + 1e-9, (beta, t, crossing)


def test_import_spherejax_and_the_cli_do_not_import_matplotlib():
    code = (
        "import sys, spherejax, spherejax.cli, spherejax.cli.simulate, "
        "spherejax.cli.sweep, spherejax.cli.fit; "
        "print('matplotlib' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_command_line_uses_only_the_public_api():
    # `spherejax.cli` imports `spherejax` and its public subpackages, never a
    # private module of the core
    import ast
    import pathlib

    for path in sorted((pathlib.Path(ROOT) / "spherejax" / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                raise AssertionError((path.name, node.module))
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                parts = (node.module or "").split(".")
                assert parts[0] != "spherejax" or not any(
                    p.startswith("_") for p in parts
                ), (path.name, node.module)


def test_moving_intervals_ends_where_the_tokens_come_to_rest():
    # two tokens on a great circle at angular speed exp(-t): the kinetic energy
    # 2 exp(-2t) falls below 1e-4 of its peak (at t = 0) at t = log(100) / 1 = 4.6
    from spherejax.cli.fit import REST, moving_intervals

    ts = np.linspace(0.0, 10.0, 101)
    angle = 1 - np.exp(-ts)  # integral of the speed
    token = np.stack([np.cos(angle), np.sin(angle), 0 * ts], axis=-1)
    ys = np.stack([token, token * [1, -1, 1]], axis=1)  # (T, 2, 3)
    m = moving_intervals(ts, ys[None])
    # interval k has mean speed^2 close to exp(-2 t_k - dt): the last one above
    # REST times the first one's
    mid = ts[:-1] + 0.05
    expected = np.nonzero(np.exp(-2 * mid) >= REST * np.exp(-2 * mid[0]))[0][-1] + 1
    assert abs(m - expected) <= 1
    assert 44 <= m <= 48  # log(1e4) / 2 = 4.6: about 46 intervals of 0.1


def test_atomic_writes_leave_whole_files_or_nothing(tmp_path, monkeypatch):
    import errno

    from spherejax.cli import files

    target = tmp_path / "a.json"
    files.write_atomic(target, b"first")
    files.write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # as open() would give

    # a planted symlink at a predictable temporary name is never followed
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in (".b.json.tmp", "b.json.tmp", ".b.json"):
        (tmp_path / name).symlink_to(victim)
    files.write_atomic(tmp_path / "b.json", b"data")
    assert victim.read_text() == "keep me"

    # the target is a folder: the rename fails, the temporary file is removed
    (tmp_path / "taken").mkdir()
    with pytest.raises(IsADirectoryError):
        files.write_atomic(tmp_path / "taken", b"data")

    # a full disk: the temporary file is removed
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        files.write_atomic(tmp_path / "c.json", b"data")
    monkeypatch.undo()

    # a writer that fails (e.g. a model refused by spherejax.io.save): removed too
    def refuse(path):
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        files.write_temporary_with(tmp_path / "d.sjx", refuse)
    left = sorted(p.name for p in tmp_path.iterdir() if files.is_temporary(p.name))
    assert left == [".b.json.tmp"]  # the planted link, nothing written by us
    assert not files.is_temporary("a.json") and files.is_temporary(".a.json.x1.tmp")


def test_phase_diagram_cells_are_drawn_where_the_betas_lie():
    # unevenly spaced betas: each cell spans the midpoints to its neighbours
    from spherejax.cli.plots import _edges

    np.testing.assert_allclose(_edges([0.5, 1, 2, 4]), [0.25, 0.75, 1.5, 3, 5])
    np.testing.assert_allclose(_edges([0.0, 0.5, 1.0]), [-0.25, 0.25, 0.75, 1.25])
