r"""Input validation that holds under `jax.jit`.

Every check names the argument it rejects. A value known now (a Python number, a
NumPy array, a JAX array outside a trace, or a constant captured by a traced
function) is checked on the host and raises `ValueError`. A traced value (an
argument of a `jax.jit`-compiled function, a `vmap`/`grad` tracer) is checked by
`equinox.error_if` when the compiled function runs: the error is an
`equinox.EquinoxRuntimeError` whose message names the argument. All traced checks
of one call are gathered into a single `equinox.branched_error_if`, so they cost
one reduction over each input (O(input size)) and one branch, once per call, never
per step.
"""

import math
import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from ._misc import is_concrete


def _host(x) -> np.ndarray | None:
    """`x` as a NumPy array if its value is known now, else `None`."""
    if not is_concrete(x):
        return None
    try:
        return np.asarray(x)
    except Exception:  # pragma: no cover - a value that cannot reach the host
        return None


class Checks:
    """The conditions on the inputs of one call.

    `fail_or_defer(ok, message)` and `finite(name, x)` state a condition. When its
    value is known now it is tested at once (raising `ValueError`); otherwise it is
    recorded, and `attach(x)` returns `x` guarded by one `eqx.branched_error_if`
    that raises the first failed condition's message when the compiled code runs.
    """

    def __init__(self) -> None:
        self._preds: list[Array] = []
        self._msgs: list[str] = []

    def fail_or_defer(self, ok, message: str) -> None:
        """Raise `ValueError(message)` now if `ok` is a known `False`; record it
        for `attach` if `ok` is traced."""
        known = _host(ok)
        if known is not None:
            if not bool(np.all(known)):
                raise ValueError(message)
            return
        self._preds.append(jnp.all(jnp.asarray(ok)))
        self._msgs.append(message)

    def finite(self, name: str, x) -> None:
        """`x` (any real or complex array) holds no NaN and no inf."""
        if isinstance(x, jax.Array) and is_concrete(x):
            # reduce where the array lives (now, even inside a trace); fetch it only
            # to report a failure
            if not jnp.issubdtype(x.dtype, jnp.inexact):
                return
            with jax.ensure_compile_time_eval():
                ok = bool(jnp.all(jnp.isfinite(x)))
            if not ok:
                host = np.asarray(x)
                raise ValueError(f"`{name}` contains NaN or inf{_where_bad(host)}.")
            return
        host = _host(x)
        if host is not None:
            if host.dtype.kind in "fc" and not bool(np.all(np.isfinite(host))):
                raise ValueError(f"`{name}` contains NaN or inf{_where_bad(host)}.")
            return
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            self._preds.append(jnp.all(jnp.isfinite(x)))
            self._msgs.append(f"`{name}` contains NaN or inf.")

    def attach(self, x):
        """`x`, guarded by the deferred (traced) conditions recorded so far."""
        if not self._preds:
            return x
        oks = jnp.stack(self._preds)
        index = jnp.argmin(oks)  # the first failed condition
        return eqx.branched_error_if(x, ~jnp.all(oks), index, self._msgs)


def _where_bad(a: np.ndarray) -> str:
    if a.ndim == 0:
        return f" (got {a.item()})"
    bad = np.argwhere(~np.isfinite(a))
    return f" (first at index {tuple(int(i) for i in bad[0])}, {bad.shape[0]} in all)"


def as_float(x: ArrayLike) -> Array:
    """`x` as a JAX array, integer and boolean input cast to the default float type
    (float64 under `jax_enable_x64`, else float32); floating and complex input keep
    their dtype."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


def real_floating(name: str, x: ArrayLike) -> Array:
    """`x` as a JAX array of a real floating dtype: integers and booleans are cast to
    the default float; complex values raise `ValueError`."""
    if isinstance(x, str | bytes):
        raise ValueError(f"`{name}` must be a real array; got {x!r}.")
    try:
        x = jnp.asarray(x)
    except TypeError as e:
        raise ValueError(
            f"`{name}` must be a real array; got {type(x).__name__}."
        ) from e
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise ValueError(f"`{name}` must be real; got dtype {x.dtype}.")
    return as_float(x)


def tokens(name: str, y: Array) -> None:
    """`y` has shape `(n, d)` with `n >= 1` and `d >= 1`."""
    if y.ndim == 2 and (y.shape[0] == 0 or y.shape[1] == 0):
        raise ValueError(
            f"`{name}` must hold at least one token of dimension >= 1; "
            f"got shape {tuple(y.shape)}."
        )


def field_leaves(checks: Checks, field) -> None:
    """Every floating-point array of `field` (its parameters: `Q`, `K`, `V`, `beta`,
    `weights`, ...) is finite, and any leaf called `weights` is positive.

    Leaves are named by their path in the field, e.g. `field.Q` or
    `field.fields[0].beta`."""
    params = eqx.filter(field, eqx.is_inexact_array)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = "field" + jax.tree_util.keystr(path)
        checks.finite(name, leaf)
        if name.endswith(".weights"):
            checks.fail_or_defer(leaf > 0, f"`{name}` must be positive.")


def time_scalar(checks: Checks, name: str, t: Array) -> None:
    """`t` is a finite scalar."""
    if t.ndim != 0:
        raise ValueError(f"`{name}` must be a scalar; got shape {tuple(t.shape)}.")
    checks.finite(name, t)


def save_times(checks: Checks, ts: Array, t0: Array, t1: Array) -> None:
    """`ts` is finite, monotone in the direction of integration, and inside
    `[t0, t1]`."""
    if ts.shape[0] == 0:
        raise ValueError("`ts` must hold at least one time.")
    checks.finite("ts", ts)
    host = [_host(a) for a in (ts, t0, t1)]
    if all(h is not None for h in host):
        ts_np, t0_np, t1_np = host
        a, b = float(t0_np), float(t1_np)  # type: ignore[arg-type]
        if not (math.isfinite(a) and math.isfinite(b)):
            return  # reported by the scalar checks
        steps = np.diff(ts_np)  # type: ignore[arg-type]
        if not bool(np.all(steps >= 0) if b >= a else np.all(steps <= 0)):
            order = "non-decreasing" if b >= a else "non-increasing"
            raise ValueError(f"`ts` must be {order} (from `t0` to `t1`).")
        lo, hi = float(np.min(ts_np)), float(np.max(ts_np))  # type: ignore[arg-type]
        if lo < min(a, b) or hi > max(a, b):
            raise ValueError(
                f"`ts` must lie between `t0`={a} and `t1`={b}; "
                f"got values in [{lo}, {hi}]."
            )
        return
    steps = jnp.diff(ts)
    checks.fail_or_defer(
        jnp.where(t1 >= t0, jnp.all(steps >= 0), jnp.all(steps <= 0)),
        "`ts` must be monotone from `t0` to `t1`.",
    )
    checks.fail_or_defer(
        (jnp.minimum(t0, t1) <= jnp.min(ts)) & (jnp.max(ts) <= jnp.maximum(t0, t1)),
        "`ts` must lie between `t0` and `t1`.",
    )


def tolerances(checks: Checks, rtol, atol, dtype, scale: float) -> None:
    """`rtol`, `atol` finite and non-negative, and not both below the resolution of
    `dtype` (then no step meets them: `rtol >= eps` or `atol >= eps * scale`,
    with `scale` the size of the tokens)."""
    eps = float(jnp.finfo(dtype).eps)
    values = {}
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool | str | bytes):
            raise ValueError(f"`{name}` must be a real number; got {value!r}.")
        v = jnp.asarray(value)
        if v.ndim != 0 or not jnp.issubdtype(v.dtype, jnp.number):
            raise ValueError(f"`{name}` must be a real scalar; got {value!r}.")
        if jnp.issubdtype(v.dtype, jnp.complexfloating):
            raise ValueError(f"`{name}` must be real; got {value!r}.")
        checks.finite(name, v)
        host = _host(v)
        if host is not None:
            if not float(host) >= 0:
                raise ValueError(f"`{name}` must be non-negative; got {float(host)}.")
        else:
            checks.fail_or_defer(v >= 0, f"`{name}` must be non-negative.")
        values[name] = host
    r, a = values["rtol"], values["atol"]
    if r is not None and a is not None:
        if float(r) < eps and float(a) < eps * scale:
            raise ValueError(
                f"`rtol`={float(r):.3g} and `atol`={float(a):.3g} are both below the "
                f"resolution of {jnp.dtype(dtype).name} (eps = {eps:.3g}): no step "
                f"can meet them; use `rtol` >= {eps:.1g} (or a float64 `y0`)."
            )


def step_size(checks: Checks, dt0, t0: Array, t1: Array, max_steps) -> None:
    """`dt0` finite, non-zero, pointing from `t0` to `t1`, and (when known) not
    needing more than `max_steps` steps."""
    checks.finite("dt0", dt0)
    host = [_host(a) for a in (dt0, t0, t1)]
    if all(h is not None for h in host):
        dt, a, b = (float(h) for h in host)  # type: ignore[arg-type]
        if not (math.isfinite(dt) and math.isfinite(a) and math.isfinite(b)):
            return
        if b != a and not dt * (b - a) > 0:
            raise ValueError(
                f"`dt0` must be non-zero with the sign of `t1 - t0` = {b - a}; "
                f"got {dt}."
            )
        if max_steps is not None and b != a:
            needed = math.ceil(abs(b - a) / abs(dt) * (1 - 1e-12))
            if needed > max_steps:
                raise ValueError(
                    f"`dt0`={dt:.3g} needs {needed} steps from `t0`={a} to "
                    f"`t1`={b}, more than `max_steps`={max_steps}; raise `dt0` or "
                    "`max_steps`."
                )
        return
    checks.fail_or_defer(
        (t1 == t0) | (dt0 * (t1 - t0) > 0),
        "`dt0` must be non-zero with the sign of `t1 - t0`.",
    )


def max_steps_value(max_steps) -> int | None:
    """`max_steps` is `None` or a positive integer (not a bool)."""
    if max_steps is None:
        return None
    if (
        isinstance(max_steps, bool)
        or not isinstance(max_steps, numbers.Integral)
        or max_steps < 1
    ):
        raise ValueError(f"`max_steps` must be a positive integer; got {max_steps!r}.")
    return int(max_steps)


def finite_scalars(dtype, **values: ArrayLike) -> tuple[Array, ...]:
    """Each keyword value as a finite scalar array of `dtype`, in order; raises
    `ValueError` (or, if traced, `equinox.error_if`) naming the first non-finite
    one. For example `h, t0 = finite_scalars(dtype, h=h, t0=t0)`."""
    checks = Checks()
    out = []
    for name, value in values.items():
        if isinstance(value, bool | str | bytes):
            raise ValueError(f"`{name}` must be a real number; got {value!r}.")
        a = jnp.asarray(value)
        if jnp.issubdtype(a.dtype, jnp.complexfloating):
            raise ValueError(f"`{name}` must be real; got {value!r}.")
        if a.ndim != 0:
            raise ValueError(f"`{name}` must be a scalar; got shape {tuple(a.shape)}.")
        checks.finite(name, a)
        out.append(a.astype(dtype))
    return checks.attach(tuple(out))
