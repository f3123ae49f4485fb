r"""The one input-preparation path of every entry point that integrates a field.

`problem(field, y0, t1, ...)` turns the arguments of `spherejax.solve` into a
`Problem`: every input checked (see `spherejax.solve` for the list), cast to the
dtype of `y0`, and the defaults filled in (solver, saved times, step-size
controller, adjoint). `solve`, `solve_ensemble` (on an `EnsembleField`, so the
whole ensemble is checked once) and `sharded_solve` call it; `solve_density` uses
its parts for times and tolerances. It runs in Python, once per call (at trace
time under `jax.jit`): values known then raise `ValueError`, traced ones are
gathered into one `equinox.branched_error_if` on `(y0, t0, t1)`, so nothing of it
runs inside the integration loop.
"""

import dataclasses
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from . import _checks, _solver, _step_size
from ._custom_types import RealScalarLike
from ._field import AbstractField
from ._manifold import AbstractManifold
from ._misc import is_concrete
from ._solver.base import AbstractManifoldSolver
from ._solver.retract import Retract


@dataclasses.dataclass(frozen=True)
class Problem:
    """Everything `diffrax.diffeqsolve` needs, checked. `controller` is not yet
    guarded against NaN/inf nor clipped at jump times: with `stop_at_jumps` the
    solve stops at `field.jump_times()` (read when it runs, so a member of a batch
    of fields stops at its own jumps)."""

    field: AbstractField
    y0: Array
    t0: Array
    t1: Array
    dt0: Array | None
    solver: AbstractManifoldSolver
    saveat: diffrax.SaveAt
    controller: diffrax.AbstractStepSizeController
    stop_at_jumps: bool
    max_steps: int | None
    adjoint: diffrax.AbstractAdjoint
    args: Any
    throw: bool
    progress: bool

    def member(self, field: AbstractField, y0: Array) -> "Problem":
        """The same problem for another field and initial state (one member of an
        ensemble: already checked as part of the whole)."""
        return dataclasses.replace(self, field=field, y0=y0)


def check_field(field) -> AbstractField:
    """`field` is a spherejax field."""
    if not isinstance(field, AbstractField):
        raise ValueError(
            f"`field` must be a spherejax field; got {type(field).__name__}."
        )
    return field


def _names(module, base: type) -> list[str]:
    return sorted(
        name
        for name, obj in vars(module).items()
        if isinstance(obj, type)
        and issubclass(obj, base)
        and not name.startswith("Abstract")
        and name not in ("HalfSolver", "Retract")
    )


def _explicit_diffrax() -> str:
    return ", ".join(sorted([*_names(diffrax, diffrax.AbstractERK), "Euler"]))


def _available() -> str:
    manifold = _names(_solver, AbstractManifoldSolver)
    plain = [n for n in _names(_solver, diffrax.AbstractSolver) if n not in manifold]
    return (
        f"a spherejax manifold solver ({', '.join(manifold)}, or `Retract(...)` "
        f"around a diffrax solver) or an explicit diffrax solver "
        f"({_explicit_diffrax()}, or spherejax's {', '.join(plain)}; wrapped in "
        "`Retract`)"
    )


def check_plain_solver(solver) -> diffrax.AbstractSolver:
    """`solver` (default `diffrax.Tsit5()`) as a diffrax solver, for states that are
    not tokens (densities)."""
    if solver is None:
        return diffrax.Tsit5()
    if not isinstance(solver, diffrax.AbstractSolver):
        raise ValueError(
            f"`solver` must be a diffrax solver (explicit: {_explicit_diffrax()}; "
            f"or any other `diffrax.AbstractSolver`); got {type(solver).__name__}."
        )
    return solver


def check_solver(solver, manifold: AbstractManifold) -> AbstractManifoldSolver:
    """`solver` (default `Retract(Tsit5())`) as a manifold solver acting on
    `manifold`: a diffrax solver is wrapped in `Retract`, a solver without a
    manifold gets `manifold`."""
    if solver is None:
        solver = Retract(solver=diffrax.Tsit5())
    if not isinstance(solver, diffrax.AbstractSolver):
        if isinstance(solver, type) and issubclass(solver, diffrax.AbstractSolver):
            got = (
                f"the class {solver.__name__}; pass an instance, `{solver.__name__}()`"
            )
        else:
            got = f"{type(solver).__name__} {solver!r}"
        raise ValueError(f"`solver` must be {_available()}; got {got}.")
    if not isinstance(solver, AbstractManifoldSolver):
        solver = Retract(solver=solver)
    if solver.manifold is None:
        return solver.with_manifold(manifold)
    if solver.manifold != manifold:
        raise ValueError(
            f"`solver` acts on {solver.manifold} but the field lives on {manifold}."
        )
    return solver


def _where(bad: np.ndarray) -> str:
    """`bad` (a boolean array over tokens) as 'index ... (k in all)'."""
    idx = np.argwhere(bad)
    first = tuple(int(i) for i in idx[0])
    where = first[0] if len(first) == 1 else first
    return f"index {where} ({idx.shape[0]} in all)"


def _projected(name: str, y: Array, manifold: AbstractManifold, checks) -> Array:
    """`manifold.project(y)`, refusing tokens without a projection (a zero token on
    the sphere, a constant one on the LayerNorm sphere)."""
    out = manifold.project(y)
    message = (
        f"`{name}` holds tokens that cannot be projected onto {manifold} (a zero "
        "token has no nearest point on a sphere, a constant token none on the "
        "LayerNorm sphere)"
    )
    if not is_concrete(y):
        checks.fail_or_defer(jnp.all(jnp.isfinite(out)), message + ".")
        return out
    with jax.ensure_compile_time_eval():
        rows = out.reshape(-1, out.shape[-1])
        err = jax.vmap(lambda r: manifold.violation(r[None]))(rows)
        finite = jnp.all(jnp.isfinite(rows), axis=-1)
        ok = np.asarray(
            finite & (err <= _tolerance(jnp.where(finite[:, None], rows, 0)))
        )
    ok = ok.reshape(out.shape[:-1])
    if not ok.all():
        raise ValueError(f"{message}: the first at {_where(~ok)}; move or drop them.")
    return out


def _tolerance(y: Array) -> Array:
    """How far tokens `y` may be off the manifold: `sqrt(eps) max(1, max |y|)`."""
    scale = jnp.maximum(1.0, jnp.max(jnp.abs(y), initial=0.0))
    return jnp.sqrt(jnp.finfo(y.dtype).eps) * scale


def _on_manifold(name: str, y: Array, manifold: AbstractManifold, checks) -> None:
    """`y` lies on `manifold` to within `sqrt(eps)` relative."""
    if is_concrete(y):
        with jax.ensure_compile_time_eval():  # y is concrete even inside a jit trace
            err = float(manifold.violation(y))
            tol = float(_tolerance(y))
        if err > tol:
            raise ValueError(
                f"`{name}` is off the manifold {manifold} by {err:.3g} "
                f"(tolerance {tol:.1g}); project it first or pass `project=True`."
            )
        return
    checks.fail_or_defer(
        manifold.violation(y) <= _tolerance(y),
        f"`{name}` is off the manifold; pass `project=True`.",
    )


def check_tokens(
    name: str,
    y0: ArrayLike,
    field: AbstractField,
    project: bool,
    checks,
    on_manifold: bool = True,
) -> Array:
    """`y0` as a real floating array of a shape `field` accepts, non-empty, finite,
    and on `field.manifold` (projected there first with `project=True`; not checked
    with `on_manifold=False`)."""
    y0 = _checks.real_floating(name, y0)
    field.check_tokens(y0)
    if y0.ndim >= 2 and (y0.shape[-2] == 0 or y0.shape[-1] == 0):
        raise ValueError(
            f"`{name}` must hold at least one token of dimension >= 1; "
            f"got shape {tuple(y0.shape)}."
        )
    checks.finite(name, y0)
    if project:
        return _projected(name, y0, field.manifold, checks)
    if on_manifold:
        _on_manifold(name, y0, field.manifold, checks)
    return y0


def stack_tokens(field: AbstractField, y0: ArrayLike, name: str = "y0") -> Array:
    """The input tokens of a discrete stack (`transformer`), by the checks of
    `solve` (a field, real floating tokens of a shape the field accepts, non-empty,
    finite, finite parameters; deferred to run time under `jit`) except the
    manifold one: a post-LN stack normalises its input itself."""
    field = check_field(field)
    checks = _checks.Checks()
    y0 = check_tokens(name, y0, field, False, checks, on_manifold=False)
    _checks.field_leaves(checks, field)
    return checks.attach(y0)


def check_times(
    checks, dtype, t0: ArrayLike, t1: ArrayLike, ts, saveat
) -> tuple[Array, Array, diffrax.SaveAt]:
    """`t0`, `t1` as finite scalars of `dtype`; `saveat` from `ts` (finite,
    monotone from `t0` to `t1`, inside the interval), default the final state."""
    t0 = _checks.real_floating("t0", t0).astype(dtype)
    t1 = _checks.real_floating("t1", t1).astype(dtype)
    _checks.time_scalar(checks, "t0", t0)
    _checks.time_scalar(checks, "t1", t1)
    if saveat is not None and ts is not None:
        raise ValueError("pass either `saveat` or `ts`, not both.")
    if ts is not None:
        ts = _checks.real_floating("ts", ts).astype(dtype)
        if ts.ndim != 1:
            raise ValueError(f"`ts` must be one-dimensional; got shape {ts.shape}.")
        _checks.save_times(checks, ts, t0, t1)
        saveat = diffrax.SaveAt(ts=ts)
    elif saveat is None:
        saveat = diffrax.SaveAt(t1=True)
    return t0, t1, saveat


def check_step(checks, dtype, dt0, t0: Array, t1: Array, max_steps) -> Array | None:
    """`dt0` (if given) as a finite scalar of `dtype` pointing from `t0` to `t1`,
    within `max_steps` steps."""
    if dt0 is None:
        return None
    dt0 = _checks.real_floating("dt0", dt0).astype(dtype)
    if dt0.ndim != 0:
        raise ValueError(f"`dt0` must be a scalar; got shape {dt0.shape}.")
    _checks.step_size(checks, dt0, t0, t1, max_steps)
    return dt0


def token_scale(y: Array) -> float:
    """`max(1, max |y|)` for a concrete `y` (1 if traced or not finite)."""
    if not is_concrete(y) or y.size == 0:
        return 1.0
    value = float(np.max(np.abs(np.asarray(y))))
    return max(1.0, value) if np.isfinite(value) else 1.0


def problem(
    field: AbstractField,
    y0: ArrayLike,
    t1: RealScalarLike,
    *,
    t0: RealScalarLike = 0.0,
    solver: diffrax.AbstractSolver | None = None,
    saveat: diffrax.SaveAt | None = None,
    ts: ArrayLike | None = None,
    rtol: float | ArrayLike = 1e-6,
    atol: float | ArrayLike = 1e-8,
    dt0: RealScalarLike | None = None,
    max_steps: int | None = 16**4,
    adjoint: diffrax.AbstractAdjoint | None = None,
    progress: bool = False,
    args=None,
    project: bool = False,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    throw: bool = True,
    norm=None,
    name: str = "y0",
) -> Problem:
    """The arguments of `spherejax.solve`, checked, as a `Problem`. `norm` is the
    error norm of the default adaptive controller (diffrax's RMS if `None`);
    `name` is how errors call `y0`."""
    field = check_field(field)
    checks = _checks.Checks()
    y0 = check_tokens(name, y0, field, project, checks)
    _checks.field_leaves(checks, field)
    max_steps = _checks.max_steps_value(max_steps)
    solver = check_solver(solver, field.manifold)
    t0, t1, saveat = check_times(checks, y0.dtype, t0, t1, ts, saveat)
    controller = _step_size.choose(
        solver, dt0=dt0, rtol=rtol, atol=atol, norm=norm, controller=stepsize_controller
    )
    default_adaptive = stepsize_controller is None and dt0 is None
    if default_adaptive:
        _checks.tolerances(checks, rtol, atol, y0.dtype, token_scale(y0))
    dt0 = check_step(checks, y0.dtype, dt0, t0, t1, max_steps)
    y0, t0, t1 = checks.attach((y0, t0, t1))
    return Problem(
        field=field,
        y0=y0,
        t0=t0,
        t1=t1,
        dt0=dt0,
        solver=solver,
        saveat=saveat,
        controller=controller,
        stop_at_jumps=default_adaptive,
        max_steps=max_steps,
        adjoint=diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
        args=args,
        throw=bool(throw),
        progress=bool(progress),
    )
