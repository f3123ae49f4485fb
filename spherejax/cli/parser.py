"""The argument parser: one flag per option of `config.SPECS`, one-line errors."""

import argparse

from .config import (
    LOSSES,
    NORMALIZATIONS,
    OPTIMIZERS,
    SOLVERS,
    SPECS,
    VALUES,
    flag_type,
    read_config,
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _add_options(sub, section, help_texts):
    """One flag per option of `section`; absent flags stay absent (so a config
    file's value is not overridden by a default)."""
    spec = SPECS[section]
    choices = {
        "normalization": NORMALIZATIONS,
        "solver": SOLVERS,
        "value": VALUES,
        "loss": LOSSES,
        "optimizer": OPTIMIZERS,
    }
    for name in spec:
        kwargs = dict(default=argparse.SUPPRESS, help=help_texts.get(name))
        if name in ("causal", "x64", "progress"):
            sub.add_argument(f"--{name}", action="store_true", **kwargs)
        elif name in choices:
            sub.add_argument(f"--{name}", choices=choices[name], **kwargs)
        else:
            sub.add_argument(f"--{name}", type=flag_type(section, name), **kwargs)
    sub.add_argument(
        "--config", default=None, help=f"TOML file with a [{section}] table of options"
    )


HELP = {
    "n": "number of tokens",
    "d": "dimension (3: tokens on S^2)",
    "beta": "inverse temperature",
    "t1": "end time",
    "normalization": "attention normalisation",
    "value": "V = +I (clustering) or -I (repulsion)",
    "solver": "inner diffrax solver (wrapped in Retract)",
    "rtol": "relative tolerance (atol = rtol / 100)",
    "dt0": "constant step size (needed by euler)",
    "saves": "number of saved times in [0, t1]",
    "seed": "random seed of the initial tokens",
    "causal": "causal mask (token i attends to j <= i)",
    "x64": "float64 (default float32)",
    "out": "output folder",
    "x0": ".npy file of initial tokens, shape (n, d), on the unit sphere",
    "field": "field file written by spherejax.io.save (e.g. out/field.sjx)",
    "progress": "show diffrax's progress meter (tqdm if installed) during the solve",
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m spherejax", description="spherejax: attention flows on spheres."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate",
        help="tokens under self-attention on the sphere: summary + PNG",
        description="Simulate n tokens under self-attention (Q = K = I, V = +-I, or a "
        "saved field) on the sphere S^{d-1}; print time, energy and cluster count; "
        "write simulate.png, simulate.npz, simulate.json and field.sjx to --out.",
    )
    _add_options(sim, "simulate", HELP)
    swp = sub.add_parser(
        "sweep",
        help="resumable grid of (n, d, beta) x seeds, e.g. the phase diagram",
        description="Run a grid of (n, d, beta) (comma-separated lists) x random "
        "seeds; each cell is written atomically to --out/cells as it finishes, so "
        "rerunning "
        "the same command resumes. Writes sweep.npz, summary.json and sweep.png.",
    )
    _add_options(
        swp,
        "sweep",
        {
            **HELP,
            "n": "number(s) of tokens, e.g. 16,32",
            "d": "dimension(s), e.g. 2,3",
            "beta": "inverse temperature(s), e.g. 0.5,1,2,4",
            "seeds": "random initial configurations per cell",
            "eps": "closeness threshold: P(<x1, x2> >= 1 - eps)",
        },
    )
    fitp = sub.add_parser(
        "fit",
        help="fit a self-attention field to observed trajectories (Optax)",
        description="Fit SelfAttention(Q, K, V) on the unit sphere to trajectories in "
        "an .npz file (arrays ts (T,) and ys (T, n, d) or (B, T, n, d), e.g. the "
        "simulate.npz that `simulate` writes) by minimising the tracking action "
        "(no solve) or the shooting loss (through solve). The last --holdout fraction "
        "of the time intervals is held out. Writes fit.json, fit.png and field.sjx "
        "(usable as `simulate --field`).",
    )
    _add_options(
        fitp,
        "fit",
        {
            **HELP,
            "data": ".npz with ts (T,) and ys (T, n, d) or (B, T, n, d) on the unit "
            "sphere",
            "loss": "tracking (action, no solve) or shooting (through solve)",
            "optimizer": "lbfgs (optax.lbfgs, line search) or adam",
            "steps": "optimiser steps",
            "lr": "learning rate of adam (lbfgs uses its line search)",
            "beta": "inverse temperature of the fitted field (kept fixed)",
            "holdout": "fraction of the time intervals held out for evaluation",
            "rtol": "solver tolerance of the shooting loss (atol = rtol / 100)",
            "seed": "random seed of the initial parameters",
            "out": "output folder",
        },
    )
    bench = sub.add_parser(
        "bench",
        help="time the attention field (vs the XLA floor) and a solve",
        description="Time one evaluation of the self-attention field, the XLA floor "
        "exp(X X^T) X measured in the same process (the ratio is the figure to "
        "compare across machines), and a 20-step RK4 solve (compilation timed "
        "separately); print one line per size. benchmarks/ has the full scripts.",
    )
    _add_options(
        bench,
        "bench",
        {
            "n": "token count(s), e.g. 256,1024",
            "d": "dimension",
            "repeats": "timed repeats (the minimum is reported)",
            "x64": "float64 (default float32)",
            "out": "folder for bench.json (optional)",
        },
    )
    return parser


def explicit_options(args, config_path, section) -> set:
    """Names set by a flag or by the config file (not defaults)."""
    names = set(vars(args)) & set(SPECS[section])
    if config_path is not None:
        names |= set(read_config(config_path, section))
    return names
