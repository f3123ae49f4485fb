"""Validated options of the command line and of TOML configs.

Every option is checked by one parser whether it comes from a flag (a string) or
from a TOML file (a typed value), so both give the same one-line errors. Order of
precedence: built-in defaults < the config file's table < flags on the command line.
"""

import importlib
import os
import tomllib

from spherejax.attention import NORMALIZATIONS

from .values import (
    boolean,
    choice,
    finite_float,
    listed,
    optional,
    positive_int,
    seed,
    text,
)


# inner solver of `Retract`: name -> (module, class)
SOLVER_CLASSES = {
    "tsit5": ("diffrax", "Tsit5"),
    "dopri5": ("diffrax", "Dopri5"),
    "dopri8": ("diffrax", "Dopri8"),
    "rk4": ("spherejax", "RK4"),
    "heun": ("diffrax", "Heun"),
    "euler": ("diffrax", "Euler"),
}
SOLVERS = tuple(SOLVER_CLASSES)
MAX_CONFIG_BYTES = 1 << 20
VALUES = ("identity", "minus-identity")


# name: (parser, default)
COMMON = {
    "n": (positive_int, 32),
    "d": (positive_int, 3),
    "beta": (lambda l, v: finite_float(l, v, positive=True), 1.0),
    "t1": (lambda l, v: finite_float(l, v, positive=True), 20.0),
    "normalization": (choice(NORMALIZATIONS), "softmax"),
    "value": (choice(VALUES), "identity"),
    "solver": (choice(SOLVERS), "tsit5"),
    "rtol": (lambda l, v: finite_float(l, v, positive=True), 1e-6),
    "dt0": (optional(lambda l, v: finite_float(l, v, positive=True)), None),
    "saves": (positive_int, 201),
    "seed": (seed, 0),
    "causal": (boolean, False),
    "x64": (boolean, False),
    "out": (text, "out"),
}
SIMULATE = {
    **COMMON,
    "x0": (optional(text), None),
    "field": (optional(text), None),
    "progress": (boolean, False),
}
SWEEP = {
    **COMMON,
    "n": (listed(positive_int), [32]),
    "d": (listed(positive_int), [3]),
    "beta": (listed(lambda l, v: finite_float(l, v, positive=True)), [1.0]),
    "saves": (positive_int, 21),
    "t1": (lambda l, v: finite_float(l, v, positive=True), 10.0),
    "seeds": (positive_int, 8),
    "eps": (lambda l, v: finite_float(l, v, positive=True, below=1.0), 1e-3),
    "out": (text, "sweep_out"),
}
LOSSES = ("tracking", "shooting")
OPTIMIZERS = ("lbfgs", "adam")
FIT = {
    "data": (text, None),
    "loss": (choice(LOSSES), "tracking"),
    "optimizer": (choice(OPTIMIZERS), "lbfgs"),
    "steps": (positive_int, 100),
    "lr": (lambda l, v: finite_float(l, v, positive=True), 0.03),
    "beta": (lambda l, v: finite_float(l, v, positive=True), 1.0),
    "normalization": (choice(NORMALIZATIONS), "softmax"),
    "holdout": (lambda l, v: finite_float(l, v, positive=True, below=1.0), 0.25),
    "rtol": (lambda l, v: finite_float(l, v, positive=True), 1e-6),
    "seed": (seed, 0),
    "x64": (boolean, False),
    "out": (text, "fit_out"),
}
BENCH = {
    "n": (listed(positive_int), [64, 256, 1024]),
    "d": (positive_int, 64),
    "repeats": (positive_int, 5),
    "x64": (boolean, False),
    "out": (optional(text), None),
}
SPECS = {"simulate": SIMULATE, "sweep": SWEEP, "fit": FIT, "bench": BENCH}


def read_config(path: str, section: str) -> dict:
    """The `[section]` table of a TOML file, validated (a missing table is empty)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ValueError(
                f"config {path} is larger than {MAX_CONFIG_BYTES} bytes; is it a "
                "config file?"
            )
        data = tomllib.loads(raw.decode())
    except FileNotFoundError:
        raise ValueError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"config path is a directory: {path}") from None
    except PermissionError:
        raise ValueError(f"config {path} is not readable (permission denied)") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"config {path} is not valid TOML: not UTF-8 text") from None
    unknown_tables = sorted(set(data) - set(SPECS))
    if unknown_tables:
        raise ValueError(
            f"config {path}: unknown table or key {unknown_tables[0]!r} at top level "
            f"(expected tables: {', '.join(f'[{s}]' for s in SPECS)})"
        )
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise ValueError(f"config {path}: {section!r} must be a table [{section}]")
    spec = SPECS[section]
    out = {}
    for key, value in table.items():
        if key not in spec:
            raise ValueError(
                f"config {path}: unknown key {key!r} in [{section}] "
                f"(known: {', '.join(spec)})"
            )
        parse, _ = spec[key]
        out[key] = parse(f"`{key}` in [{section}] of {path}", value)
    return out


def merge(section: str, config_path: str | None, flags: dict) -> dict:
    """Defaults < config table < flags (already parsed), validated and complete."""
    spec = SPECS[section]
    options = {key: default for key, (_, default) in spec.items()}
    if config_path is not None:
        options.update(read_config(config_path, section))
    options.update(flags)
    check_out(options["out"])
    return options


def check_out(out: str | None) -> None:
    """`--out` is a folder or can be created: no part of it is a file."""
    if out is None:
        return
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.isdir(parent):
        if os.path.lexists(parent):
            raise ValueError(
                f"--out {out}: {parent} is not a directory; choose another --out"
            )
        parent = os.path.dirname(parent)


def flag_type(section: str, name: str):
    """An argparse `type=` for flag `--name` of `section` (errors name the flag)."""
    parse, _ = SPECS[section][name]

    def argparse_type(value):
        import argparse

        try:
            return parse(f"--{name}", value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return argparse_type


def build_solver(name: str):
    """`Retract` around the diffrax solver called `name` (see `SOLVERS`)."""
    import spherejax as sj

    module, cls = SOLVER_CLASSES[name]
    return sj.Retract(solver=getattr(importlib.import_module(module), cls)())


def attention_parts(o: dict) -> dict:
    """The attention parts of the options `normalization` (a name) and `causal`,
    as keyword arguments of `SelfAttention`."""
    import spherejax as sj

    return dict(
        normalization=sj.attention.normalization_from_name(o["normalization"]),
        mask=sj.Causal() if o["causal"] else None,
    )
