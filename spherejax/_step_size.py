r"""Step-size controllers of `solve`: the default choice, stops at the field's jump
times, and the guard that ends a solve producing NaN or inf.

The controller `solve` runs is chosen from its arguments:

| given | controller |
|---|---|
| `stepsize_controller` | that controller |
| `dt0` | `diffrax.ConstantStepSize()` (steps of exactly `dt0`) |
| an adaptive solver | `diffrax.PIDController(rtol, atol)` |
| a solver without an error estimate | refused: pass `dt0` |

A default adaptive controller also stops at the field's jump times
(`field.jump_times()`, the layer boundaries of a `Layerwise` field) through
`diffrax.ClipStepSizeController`. Whatever the choice, the controller is wrapped
by `guard_nonfinite`.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike


def choose(
    solver: diffrax.AbstractSolver,
    *,
    dt0: ArrayLike | None,
    rtol,
    atol,
    norm=None,
    controller: diffrax.AbstractStepSizeController | None = None,
) -> diffrax.AbstractStepSizeController:
    """The controller of the table above (before `at_jumps` and `guard_nonfinite`).
    `norm` replaces `diffrax.PIDController`'s default error norm (the root mean
    square over the whole state)."""
    if controller is not None:
        return controller
    if dt0 is not None:
        return diffrax.ConstantStepSize()
    if isinstance(solver, diffrax.AbstractAdaptiveSolver):
        if norm is None:
            return diffrax.PIDController(rtol=rtol, atol=atol)
        return diffrax.PIDController(rtol=rtol, atol=atol, norm=norm)
    raise ValueError(
        f"`{type(solver).__name__}` has no error estimate: pass a step size `dt0`."
    )


def at_jumps(
    controller: diffrax.AbstractStepSizeController, jump_ts: Array | None
) -> diffrax.AbstractStepSizeController:
    """`controller`, stepping exactly onto each of `jump_ts` (if any) and restarting
    there (`diffrax.ClipStepSizeController`). Constant steps are left as they
    are: where they fall is the caller's choice."""
    if jump_ts is None or not isinstance(
        controller, diffrax.AbstractAdaptiveStepSizeController
    ):
        return controller
    return diffrax.ClipStepSizeController(controller, jump_ts=jump_ts)


#: consecutive rejected steps with a non-finite candidate state (or error estimate)
#: after which an adaptive solve stops with `diffrax.RESULTS.nonfinite`. Each
#: rejection shrinks the step by the controller's `factormin` (0.2 by default for
#: `diffrax.PIDController`), so this is a step 0.2**20 ~ 1e-14 times the first.
NONFINITE_REJECTIONS = 20


def _all_finite(tree) -> Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree_util.tree_leaves(tree)
        if eqx.is_inexact_array(x)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _nonfinite_result(pred, result):
    nonfinite: diffrax.RESULTS = diffrax.RESULTS.nonfinite  # pyright: ignore
    return diffrax.RESULTS.where(
        pred & (result == diffrax.RESULTS.successful), nonfinite, result
    )


class FiniteSteps(diffrax.AbstractStepSizeController):
    """Wraps a step size controller without an error estimate (constant steps,
    `StepTo`): a step whose state is not finite ends the solve with
    `diffrax.RESULTS.nonfinite` ("Nonfinite (inf or nan) values detected during
    solve.") instead of carrying NaN to the end with a successful result. The check
    is one reduction over the state per step."""

    controller: diffrax.AbstractStepSizeController

    def __init__(self, controller: diffrax.AbstractStepSizeController):
        self.controller = controller

    def wrap(self, direction):
        return FiniteSteps(self.controller.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        return self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        out = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
        )
        keep, tprev, tnext, made_jump, state, result = out
        bad = jnp.asarray(keep) & ~_all_finite(y1_candidate)
        return keep, tprev, tnext, made_jump, state, _nonfinite_result(bad, result)


class FiniteAdaptiveSteps(diffrax.AbstractAdaptiveStepSizeController):
    """Wraps an adaptive step size controller. A step whose candidate state or error
    estimate is not finite is rejected (as diffrax does) and retried smaller, which
    recovers from a trial step that left the region where the field is finite;
    after `NONFINITE_REJECTIONS` such rejections in a row (or an accepted
    non-finite state) the solve ends with `diffrax.RESULTS.nonfinite` instead of
    spending the whole `max_steps` budget on rejected steps. The check is one
    reduction over the state per step."""

    controller: diffrax.AbstractAdaptiveStepSizeController

    def __init__(self, controller: diffrax.AbstractAdaptiveStepSizeController):
        self.controller = controller

    @property
    def rtol(self):
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    @property
    def norm(self):  # pyright: ignore[reportIncompatibleMethodOverride]
        return self.controller.norm

    def wrap(self, direction):
        inner = self.controller.wrap(direction)
        return FiniteAdaptiveSteps(inner)  # pyright: ignore[reportArgumentType]

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        tnext, state = self.controller.init(
            terms, t0, t1, y0, dt0, args, func, error_order
        )
        return tnext, (state, jnp.asarray(0, jnp.int32))

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        state, count = controller_state
        out = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, state
        )
        keep, tprev, tnext, made_jump, state, result = out
        keep = jnp.asarray(keep)
        finite = _all_finite(y1_candidate) & _all_finite(y_error)
        count = jnp.where(finite, 0, count + 1)
        bad = (keep & ~_all_finite(y1_candidate)) | (count >= NONFINITE_REJECTIONS)
        result = _nonfinite_result(bad, result)
        return keep, tprev, tnext, made_jump, (state, count), result


def guard_nonfinite(
    controller: diffrax.AbstractStepSizeController,
) -> diffrax.AbstractStepSizeController:
    """`controller` wrapped so that NaN/inf states end the solve with
    `diffrax.RESULTS.nonfinite` (see `FiniteSteps`, `FiniteAdaptiveSteps`)."""
    if isinstance(controller, FiniteSteps | FiniteAdaptiveSteps):
        return controller
    if isinstance(controller, diffrax.AbstractAdaptiveStepSizeController):
        return FiniteAdaptiveSteps(controller)
    return FiniteSteps(controller)
