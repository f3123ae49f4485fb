"""`solve`: a thin `diffrax.diffeqsolve` wrapper for attention flows."""

from typing import cast

import diffrax
from jaxtyping import ArrayLike

from . import _prepare, _step_size
from ._custom_types import RealScalarLike
from ._field import AbstractField


def _progress_meter():
    try:
        import tqdm  # noqa: F401

        return diffrax.TqdmProgressMeter()
    except ImportError:
        return diffrax.TextProgressMeter()


def solve(
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
) -> diffrax.Solution:
    r"""Integrate the attention flow $\dot y = \text{field}(t, y)$ from `t0` to `t1`.

    **Arguments:**

    - `field`: a spherejax field (its `manifold` is where the solution lives).
    - `y0`: initial tokens, shape `(n, d)`, on the manifold (to within
      `sqrt(eps)` relative), unless `project=True`, which projects them first
      (refusing, by index, a token with no projection: a zero token on a sphere,
      a constant one on the LayerNorm sphere).
    - `t1`, `t0`: end and start times. `t1 < t0` integrates backward in time
      (diffrax runs the flow of $-\text{field}$ in the reversed time); `ts` are
      then non-increasing and `dt0` negative. Attention flows contract clusters
      forward in time, so backward they separate them: errors grow like the
      inverse of the forward contraction.
    - `solver`: a spherejax manifold solver, or any explicit diffrax solver (wrapped
      in `Retract`). Default `Retract(Tsit5())`. A solver whose `manifold` is
      `None` gets the field's. Anything else is refused with the list of
      solvers that exist.
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
      stages in reverse mode (no re-run; same gradients; forward in time only;
      see its docs).
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
    p = _prepare.problem(
        field,
        y0,
        t1,
        t0=t0,
        solver=solver,
        saveat=saveat,
        ts=ts,
        rtol=rtol,
        atol=atol,
        dt0=dt0,
        max_steps=max_steps,
        adjoint=adjoint,
        progress=progress,
        args=args,
        project=project,
        stepsize_controller=stepsize_controller,
        throw=throw,
    )
    return integrate(p)


def integrate(p: _prepare.Problem) -> diffrax.Solution:
    """`diffrax.diffeqsolve` on a prepared problem (see `_prepare.problem`)."""
    controller = p.controller
    if p.stop_at_jumps:
        controller = _step_size.at_jumps(controller, p.field.jump_times())
    return diffrax.diffeqsolve(
        diffrax.ODETerm(p.field),
        cast(diffrax.AbstractSolver, p.solver),
        p.t0,
        p.t1,
        p.dt0,
        p.y0,
        args=p.args,
        saveat=p.saveat,
        stepsize_controller=_step_size.guard_nonfinite(controller),
        adjoint=p.adjoint,
        max_steps=p.max_steps,
        throw=p.throw,
        progress_meter=_progress_meter() if p.progress else diffrax.NoProgressMeter(),
    )
