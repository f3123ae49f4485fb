"""`solve`: a thin `diffrax.diffeqsolve` wrapper for attention flows."""

from typing import cast

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike

from . import _checks
from ._field import AbstractField
from ._misc import is_concrete
from ._solver.base import AbstractManifoldSolver
from ._solver.retract import Retract


def _progress_meter():
    try:
        import tqdm  # noqa: F401

        return diffrax.TqdmProgressMeter()
    except ImportError:
        return diffrax.TextProgressMeter()


def _token_scale(y0: jax.Array) -> float:
    """Largest token entry of a concrete `y0` (1 if traced or empty)."""
    if not is_concrete(y0) or y0.size == 0:
        return 1.0
    value = float(np.max(np.abs(np.asarray(y0))))
    return value if np.isfinite(value) else 1.0


def _is_adaptive(solver) -> bool:
    return isinstance(solver, diffrax.AbstractAdaptiveSolver)


def solve(
    field: AbstractField,
    y0: ArrayLike,
    t1: ArrayLike,
    *,
    t0: ArrayLike = 0.0,
    solver: diffrax.AbstractSolver | None = None,
    saveat: diffrax.SaveAt | None = None,
    ts: ArrayLike | None = None,
    rtol: float | ArrayLike = 1e-6,
    atol: float | ArrayLike = 1e-8,
    dt0: ArrayLike | None = None,
    max_steps: int | None = 16**4,
    adjoint: diffrax.AbstractAdjoint | None = None,
    progress: bool = False,
    args=None,
    project: bool = False,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    throw: bool = True,
) -> diffrax.Solution:
    r"""Integrate the attention flow $\dot y = \text{field}(t, y)$ from `t0` to `t1`.

    **Arguments:**

    - `field`: a spherejax field (its `manifold` is where the solution lives).
    - `y0`: initial tokens, shape `(n, d)`, on the manifold (to within
      `sqrt(eps)` relative), unless `project=True`, which projects them first.
    - `t1`, `t0`: end and start times.
    - `solver`: a spherejax manifold solver, or any explicit diffrax solver (wrapped
      in `Retract`). Default `Retract(Tsit5())`. A solver whose `manifold` is
      `None` gets the field's.
    - `saveat` or `ts`: what to save (default the final state only). Saved states
      lie on the manifold.
    - `rtol`, `atol`: tolerances of the default `diffrax.PIDController` (adaptive
      solvers, when `dt0` is not given or `stepsize_controller` is).
    - `dt0`: a fixed step size (`diffrax.ConstantStepSize`); required for solvers
      without an error estimate. With an adaptive solver and `dt0`, the step is
      constant too.
    - `max_steps`: step budget (a positive integer, or `None` where diffrax allows
      it); exhausting it raises diffrax's error.
    - `adjoint`: any diffrax adjoint (default `RecursiveCheckpointAdjoint`), passed
      to `diffrax.diffeqsolve` as it is. With `Retract` solvers a
      `BacksolveAdjoint` integrates the adjoint with the unprojected inner solver
      (see `Retract`); the native manifold solvers need
      `BacksolveAdjoint(solver=...)` with an unconstrained solver.
      `spherejax.ReplayAdjoint` replays the accepted steps from their stored
      stages in reverse mode (no re-run; same gradients; see its docs).
    - `progress`: show diffrax's progress meter.
    - `args`: passed to the field.
    - `stepsize_controller`: overrides the controller chosen above.
    - `throw`: raise when the solve fails (diffrax's `throw`); with `throw=False`
      inspect `sol.result` instead (`diffrax.RESULTS.nonfinite` for the NaN policy
      below, `max_steps_reached`, ...).

    **Returns:** a `diffrax.Solution` (`sol.ts`, `sol.ys` of shape `(T, n, d)`,
    `sol.stats`, `sol.result`).

    Times are cast to `y0`'s dtype, so a float32 `y0` gives a float32 solve.

    **Checked inputs.** `y0` (real, at least one token, finite), every
    floating-point array of `field` (`Q`, `K`, `V`, `beta`, `weights`, ...: finite;
    weights positive), `t0`, `t1` (finite scalars), `ts` (finite, monotone, inside
    `[t0, t1]`), `rtol`, `atol` (finite, non-negative, not both below the dtype's
    resolution), `dt0` (finite, pointing from `t0` to `t1`, at most `max_steps`
    steps) and `max_steps` (a positive integer). Values known at call time raise
    `ValueError`; traced values (inside `jax.jit`) raise `equinox`'s runtime error
    when the compiled code runs. Either way the message names the argument
    (`field.Q`, `ts`, ...). These checks read each input once, outside the
    integration loop.

    **NaN policy.** A NaN or inf *produced* during the solve ends it with
    `diffrax.RESULTS.nonfinite` ("Nonfinite (inf or nan) values detected during
    solve."), raised when `throw=True`: with a constant step at the first step
    whose state is not finite; with an adaptive step after 20 consecutive steps
    rejected for a non-finite state or error estimate (a single such step is
    rejected and retried smaller, as diffrax does, since a too-large trial step
    may leave the region where the field is finite). A solve never reports
    success with non-finite saved states. With `ReplayAdjoint` the saved states
    are checked after the solve.
    """
    if not isinstance(field, AbstractField):
        raise ValueError(
            f"`field` must be a spherejax field; got {type(field).__name__}."
        )
    y0 = _checks.real_floating("y0", y0)
    field.check_tokens(y0)
    _checks.tokens("y0", y0)
    manifold = field.manifold
    dtype = y0.dtype
    max_steps = _checks.max_steps_value(max_steps)
    checks = _checks.Checks()
    checks.finite("y0", y0)
    _checks.field_leaves(checks, field)

    if project:
        y0 = manifold.project(y0)
    elif is_concrete(y0):
        y0_np = np.asarray(y0)
        scale = max(1.0, float(np.max(np.abs(y0_np)))) if y0_np.size else 1.0
        tol = float(np.sqrt(np.finfo(y0_np.dtype).eps)) * scale
        with jax.ensure_compile_time_eval():  # y0 is concrete even inside a jit trace
            err = float(manifold.violation(y0))
        if err > tol:
            raise ValueError(
                f"`y0` is off the manifold {manifold} by {err:.3g} "
                f"(tolerance {tol:.1g}); project it first or pass `project=True`."
            )
    else:
        tol = jnp.sqrt(jnp.finfo(dtype).eps) * jnp.maximum(1.0, jnp.max(jnp.abs(y0)))
        y0 = eqx.error_if(
            y0,
            manifold.violation(y0) > tol,
            "`y0` is off the manifold; pass `project=True`.",
        )

    if solver is None:
        solver = Retract(solver=diffrax.Tsit5())
    if not isinstance(solver, diffrax.AbstractSolver):
        raise ValueError(
            f"`solver` must be a diffrax solver; got {type(solver).__name__}."
        )
    if not isinstance(solver, AbstractManifoldSolver):
        solver = Retract(solver=solver)
    if solver.manifold is None:
        solver = solver.with_manifold(manifold)
    elif solver.manifold != manifold:
        raise ValueError(
            f"`solver` acts on {solver.manifold} but the field lives on {manifold}."
        )

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

    if stepsize_controller is None:
        if dt0 is not None:
            stepsize_controller = diffrax.ConstantStepSize()
        elif _is_adaptive(solver):
            scale = max(1.0, _token_scale(jnp.asarray(y0)))
            _checks.tolerances(checks, rtol, atol, dtype, scale)
            stepsize_controller = diffrax.PIDController(
                rtol=rtol,
                atol=atol,
                jump_ts=field.jump_times(),  # pyright: ignore[reportCallIssue]
            )
        else:
            raise ValueError(
                f"`{type(solver).__name__}` has no error estimate: pass a step size "
                "`dt0`."
            )
    if dt0 is not None:
        dt0 = _checks.real_floating("dt0", dt0).astype(dtype)
        if dt0.ndim != 0:
            raise ValueError(f"`dt0` must be a scalar; got shape {dt0.shape}.")
        _checks.step_size(checks, dt0, t0, t1, max_steps)
    y0, t0, t1 = checks.attach((y0, t0, t1))

    if adjoint is None:
        adjoint = diffrax.RecursiveCheckpointAdjoint()

    return diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        cast(diffrax.AbstractSolver, solver),
        t0,
        t1,
        dt0,
        y0,
        args=args,
        saveat=saveat,
        stepsize_controller=_checks.guard_nonfinite(stepsize_controller),
        adjoint=adjoint,
        max_steps=max_steps,
        throw=throw,
        progress_meter=_progress_meter() if progress else diffrax.NoProgressMeter(),
    )
