"""`solve`: a thin `diffrax.diffeqsolve` wrapper for attention flows."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike

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
    rtol: float = 1e-6,
    atol: float = 1e-8,
    dt0: ArrayLike | None = None,
    max_steps: int | None = 16**4,
    adjoint: diffrax.AbstractAdjoint | None = None,
    progress: bool = False,
    args=None,
    project: bool = False,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
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
    - `max_steps`: step budget; exhausting it raises diffrax's error.
    - `adjoint`: a diffrax adjoint (default `RecursiveCheckpointAdjoint`). A
      `BacksolveAdjoint` without its own `solver` integrates the adjoint with the
      unprojected inner solver (the adjoint state is not on the manifold).
      `spherejax.ReplayAdjoint` replays the accepted steps from their stored
      stages in reverse mode (no re-run; same gradients; see its docs).
    - `progress`: show diffrax's progress meter.
    - `args`: passed to the field.
    - `stepsize_controller`: overrides the controller chosen above.

    **Returns:** a `diffrax.Solution` (`sol.ts`, `sol.ys` of shape `(T, n, d)`, `sol.stats`).

    Times are cast to `y0`'s dtype, so a float32 `y0` gives a float32 solve.
    """
    if not isinstance(field, AbstractField):
        raise ValueError(
            f"`field` must be a spherejax field; got {type(field).__name__}."
        )
    y0 = jnp.asarray(y0)
    if not jnp.issubdtype(y0.dtype, jnp.floating):
        y0 = y0.astype(jnp.result_type(float))
    field.check_tokens(y0)
    manifold = field.manifold
    dtype = y0.dtype

    if project:
        y0 = manifold.project(y0)
    elif is_concrete(y0):
        y0_np = np.asarray(y0)
        if not np.all(np.isfinite(y0_np)):
            raise ValueError("`y0` contains NaN or inf.")
        scale = max(1.0, float(np.max(np.abs(y0_np)))) if y0_np.size else 1.0
        tol = float(np.sqrt(np.finfo(y0_np.dtype).eps)) * scale
        with jax.ensure_compile_time_eval():  # y0 is concrete even inside a jit trace
            err = float(manifold.violation(y0))
        if err > tol:
            raise ValueError(
                f"`y0` is off the manifold {manifold} by {err:.3g} (tolerance {tol:.1g}); "
                "project it first or pass `project=True`."
            )
    else:
        tol = jnp.sqrt(jnp.finfo(dtype).eps) * jnp.maximum(1.0, jnp.max(jnp.abs(y0)))
        y0 = eqx.error_if(
            y0,
            manifold.violation(y0) > tol,
            "`y0` is off the manifold; pass `project=True`.",
        )

    if solver is None:
        solver = Retract(diffrax.Tsit5())
    if not isinstance(solver, diffrax.AbstractSolver):
        raise ValueError(
            f"`solver` must be a diffrax solver; got {type(solver).__name__}."
        )
    if not isinstance(solver, AbstractManifoldSolver):
        solver = Retract(solver)
    if solver.manifold is None:
        solver = solver.with_manifold(manifold)
    elif solver.manifold != manifold:
        raise ValueError(
            f"`solver` acts on {solver.manifold} but the field lives on {manifold}."
        )

    t0 = jnp.asarray(t0, dtype)
    t1 = jnp.asarray(t1, dtype)
    if saveat is not None and ts is not None:
        raise ValueError("pass either `saveat` or `ts`, not both.")
    if ts is not None:
        ts = jnp.asarray(ts, dtype)
        if ts.ndim != 1:
            raise ValueError(f"`ts` must be one-dimensional; got shape {ts.shape}.")
        saveat = diffrax.SaveAt(ts=ts)
    elif saveat is None:
        saveat = diffrax.SaveAt(t1=True)

    if stepsize_controller is None:
        if dt0 is not None:
            stepsize_controller = diffrax.ConstantStepSize()
        elif _is_adaptive(solver):
            stepsize_controller = diffrax.PIDController(
                rtol=rtol, atol=atol, jump_ts=field.jump_times()
            )
        else:
            raise ValueError(
                f"`{type(solver).__name__}` has no error estimate: pass a step size `dt0`."
            )
    if dt0 is not None:
        dt0 = jnp.asarray(dt0, dtype)
        if is_concrete(dt0) and not float(dt0) > 0 and float(t1) > float(t0):
            raise ValueError(f"`dt0` must be positive; got {float(dt0)}.")

    if adjoint is None:
        adjoint = diffrax.RecursiveCheckpointAdjoint()
    elif (
        isinstance(adjoint, diffrax.BacksolveAdjoint) and "solver" not in adjoint.kwargs
    ):
        inner = solver.solver if isinstance(solver, Retract) else None
        if inner is None:
            raise ValueError(
                "`BacksolveAdjoint` with a native manifold solver needs an explicit "
                "backward `solver=` (the adjoint state is not on the manifold)."
            )
        adjoint = diffrax.BacksolveAdjoint(solver=inner, **adjoint.kwargs)

    return diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        t0,
        t1,
        dt0,
        y0,
        args=args,
        saveat=saveat,
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        max_steps=max_steps,
        progress_meter=_progress_meter() if progress else diffrax.NoProgressMeter(),
    )
