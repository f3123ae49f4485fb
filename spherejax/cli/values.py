"""Parsers of option values: each takes a label (how the option is named in
errors: `--flag` or a config key) and a value (a string from a flag or a typed
TOML value) and returns the validated value or raises a one-line `ValueError`."""

import math


SEED_MAX = 2**32 - 1


def positive_int(label, value) -> int:
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError(f"{label} must be an integer; got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ValueError(f"{label} must be an integer; got {value!r}") from None
    if not isinstance(value, int):
        raise ValueError(f"{label} must be an integer; got {value!r}")
    if value < 1:
        raise ValueError(f"{label} must be >= 1; got {value}")
    return value


def integer(label, value) -> int:
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError(f"{label} must be an integer; got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be an integer; got {value!r}") from None


def seed(label, value) -> int:
    """A random seed: an integer in `[0, 2**32 - 1]` (what `jax.random.PRNGKey`
    holds without truncation)."""
    value = integer(label, value)
    if not 0 <= value <= SEED_MAX:
        raise ValueError(f"{label} must be in [0, {SEED_MAX}]; got {value}")
    return value


def finite_float(label, value, positive=False, below=None) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{label} must be a number; got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be a number; got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{label} must be finite; got {value}")
    if positive and value <= 0:
        raise ValueError(f"{label} must be > 0; got {value}")
    if below is not None and value >= below:
        raise ValueError(f"{label} must be < {below}; got {value}")
    return value


def boolean(label, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"{label} must be true or false; got {value!r}")


def choice(choices):
    def parse(label, value):
        if value not in choices:
            raise ValueError(
                f"{label} must be one of {', '.join(choices)}; got {value!r}"
            )
        return value

    return parse


def text(label, value) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{label} must be a non-empty string; got {value!r}")
    return value


def optional(parse):
    def parse_optional(label, value):
        return None if value is None else parse(label, value)

    return parse_optional


def listed(parse):
    """A value or a non-empty list of values (a sweep axis); flags use commas."""

    def parse_list(label, value):
        if isinstance(value, str) and "," in value:
            value = [v.strip() for v in value.split(",")]
        if isinstance(value, list):
            if not value:
                raise ValueError(f"{label} must not be an empty list")
            out = [parse(f"{label}[{k}]", v) for k, v in enumerate(value)]
            if len(set(out)) != len(out):
                raise ValueError(f"{label} has repeated values: {out}")
            return out
        return [parse(label, value)]

    return parse_list
