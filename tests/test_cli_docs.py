"""Every command-line example of README.md and docs/cli.md runs as written, in its
own process (default JAX configuration: float32 unless `--x64`), with its default
options, plots included; the figures that docs/cli.md quotes are those of the run.

A command reading a folder that an earlier command of the same page writes
(`--out X`, then `X/...`) runs after it, in the same working folder."""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest


ROOT = pathlib.Path(__file__).resolve().parent.parent


def _commands(page: str) -> list[list[str]]:
    """The argument lists of the `python -m spherejax ...` commands in the `bash`
    code blocks of `page` (one per line; `&&` chains split)."""
    text = (ROOT / page).read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part)
                if "-m" in words and "spherejax" in words:
                    at = words.index("spherejax")
                    if at > 0 and words[at - 1] == "-m":
                        commands.append(words[at + 1 :])
    return commands


def _out(argv: list[str]) -> str:
    if "--out" in argv:
        return argv[argv.index("--out") + 1]
    from spherejax.cli.config import SPECS

    return SPECS[argv[0]]["out"][1] or ""


PAGES = {page: _commands(page) for page in ("README.md", "docs/cli.md")}
CASES = [(page, k) for page, commands in PAGES.items() for k in range(len(commands))]
_done: dict = {}  # (page, k) -> (seconds, stdout), in this process's workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return {page: tmp_path_factory.mktemp(page.replace("/", "_")) for page in PAGES}


def _needs(page: str, k: int) -> list[int]:
    """Earlier commands of `page` whose output folder command `k` reads."""
    commands = PAGES[page]
    wanted = [
        j
        for j in range(k)
        if any(
            a.startswith(_out(commands[j]) + "/") for a in commands[k] if a != "--out"
        )
    ]
    return sorted({i for j in wanted for i in _needs(page, j)} | set(wanted))


def _run(page: str, k: int, folder: pathlib.Path) -> tuple[float, str]:
    if (page, k) in _done:
        return _done[(page, k)]
    for j in _needs(page, k):
        _run(page, j, folder)
    argv = PAGES[page][k]
    tic = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "spherejax", *argv],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - tic
    assert proc.returncode == 0, (argv, proc.stderr[-3000:])
    _done[(page, k)] = (seconds, proc.stdout)
    return _done[(page, k)]


def test_the_pages_have_commands():
    subcommands = {argv[0] for commands in PAGES.values() for argv in commands}
    assert subcommands == {"simulate", "fit", "sweep", "bench"}
    assert PAGES["README.md"][0] == ["simulate"]  # the main job, all defaults


@pytest.mark.parametrize(
    "page, k", CASES, ids=[f"{p}: {shlex.join(PAGES[p][k])}" for p, k in CASES]
)
def test_documented_command_runs(page, k, workspace, capsys):
    folder = workspace[page]
    seconds, stdout = _run(page, k, folder)
    argv = PAGES[page][k]
    out = folder / _out(argv)
    outputs = {
        "simulate": ["simulate.png", "simulate.npz", "simulate.json", "field.sjx"],
        "fit": ["fit.png", "fit.json", "field.sjx"],
        "sweep": ["sweep.png", "sweep.npz", "summary.json"],
        "bench": [],
    }[argv[0]]
    for name in outputs:
        assert (out / name).stat().st_size > 0, name
    for name in outputs:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if argv[0] == "bench":
        assert len(re.findall(r"^\s+\d+\s+\d", stdout, flags=re.M)) == 3  # 3 sizes
    with capsys.disabled():
        print(f"\n{page}: {shlex.join(argv)}: {seconds:.1f} s")


def _quoted_fit_figures() -> list[float]:
    text = " ".join((ROOT / "docs" / "cli.md").read_text().split())
    number = r"([0-9.]+(?:e[-+]?[0-9]+)?)"
    match = re.search(
        rf"residual from {number} to {number} on the training intervals and from "
        rf"{number} to {number} on the held-out ones",
        text,
    )
    assert match, "docs/cli.md no longer quotes the fit's figures"
    return [float(x) for x in match.groups()]


def test_fit_figures_in_the_docs_are_those_of_the_run(workspace):
    # the documented fit (float32, its defaults) on the documented simulation
    page = "docs/cli.md"
    (k,) = [k for k, argv in enumerate(PAGES[page]) if argv[0] == "fit"]
    _run(page, k, workspace[page])
    summary = json.loads(
        (workspace[page] / _out(PAGES[page][k]) / "fit.json").read_text()
    )
    train0, train1, held0, held1 = _quoted_fit_figures()
    # before the fit: a function of the data and the seeded initial field (3
    # significant digits quoted); after 100 float32 L-BFGS steps: 2 digits
    assert summary["residual_initial"]["train"] == pytest.approx(train0, rel=1e-2)
    assert summary["residual_initial"]["heldout"] == pytest.approx(held0, rel=1e-2)
    assert summary["residual_fitted"]["train"] == pytest.approx(train1, rel=0.25)
    assert summary["residual_fitted"]["heldout"] == pytest.approx(held1, rel=0.25)
    # the held-out window lies before the tokens come to rest
    assert summary["heldout_window"][1] < 10.0 and summary["rest_intervals"] > 0


@pytest.mark.parametrize("subcommand", ["simulate", "sweep", "fit", "bench"])
def test_help_lists_every_option(subcommand, capsys):
    # README: `python -m spherejax simulate --help` lists the options
    from spherejax.cli import main
    from spherejax.cli.config import SPECS

    with pytest.raises(SystemExit) as exit:
        main([subcommand, "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    for name in [*SPECS[subcommand], "config"]:
        assert f"--{name}" in text, name
