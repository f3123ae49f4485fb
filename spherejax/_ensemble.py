r"""Ensembles: many token sets (and optionally many fields) solved in one call.

`solve_ensemble(field, y0s, t1, step_size=...)` integrates `b` independent
attention flows $\dot y^{(m)} = F^{(m)}(t, y^{(m)})$, `m = 1 ... b`, from the
initial conditions `y0s` of shape `(b, n, d)`. Two ways to step them:

- `step_size="independent"`: `jax.vmap` of `solve`. Every member has its own step
  sizes and its own error control, exactly as `b` separate calls of `solve` would
  (same accepted steps, same results up to rounding). Inside the vmapped
  `while_loop` every member advances one (possibly rejected) step per
  iteration and the loop runs until the slowest member is done, so the cost is
  (steps of the slowest member) x (evaluations for the whole batch).
- `step_size="shared"`: the whole ensemble is one diffrax state of shape
  `(b, n, d)` with one step size. Steps are accepted when the **worst member**
  passes the test: with the scaled error
  $e^{(m)} = \text{err}^{(m)} / (\text{atol} + \text{rtol}\,
  \max(|y^{(m)}_0|, |y^{(m)}_1|))$ (elementwise, as in `diffrax.PIDController`)
  the controller uses the norm

  $$\|e\| = \max_m \Big(\frac{1}{n d}\sum_{i, k} (e^{(m)}_{ik})^2\Big)^{1/2},$$

  the maximum over members of the root-mean-square norm that the independent
  solve applies to each member. Every member is therefore integrated at least as
  accurately as its own controller would ask, with the step sequence of the
  hardest member; there is no per-member select in the loop and no member waits
  for the others, which is cheaper when the members need similar steps (seeds
  of one model). A whole-state RMS (diffrax's default norm) would instead divide
  an outlier member's error by about `sqrt(b)`.

**Batches of fields.** With `batched_field=True`, every array in `field` carries a
leading ensemble axis of size `b` and member `m` uses the field
`jax.tree.map(lambda a: a[m], field)`: e.g. a sweep over inverse temperatures,
`eqx.filter_vmap(lambda beta: sj.SelfAttention.identity(3, beta))(betas)`.
"""

import dataclasses
from typing import cast

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float

from . import _prepare
from ._custom_types import RealScalarLike
from ._field import AbstractField
from ._integrate import integrate
from ._manifold import AbstractManifold
from ._solver.retract import Retract
from ._solver.unrolled import UnrolledERK, supports


STEP_SIZES = ("independent", "shared")


def worst_member_rms_norm(x: Float[Array, "b ..."]) -> Array:
    r"""The error norm of the shared mode: $\max_m \text{RMS}(x^{(m)})$ over the
    leading (ensemble) axis, each member's RMS taken over all its entries."""
    x = jnp.asarray(x)
    if x.ndim == 0:
        return jnp.abs(x)
    return jnp.max(jax.vmap(optx.rms_norm)(x))


def _leading(field: AbstractField) -> list[int]:
    return [
        a.shape[0] if a.ndim else -1
        for a in jax.tree.leaves(eqx.filter(field, eqx.is_array))
    ]


class EnsembleField(AbstractField):
    r"""A field acting on a whole ensemble `(b, n, d)`: member `m` moves by
    `field(t, y[m])`, or by the `m`-th field of a batch (`batched_field=True`).

    The state `solve_ensemble(..., step_size="shared")` integrates. It is an
    ordinary spherejax field (on the same manifold, which acts row-wise), so it can
    also be handed to `solve` or `diffrax.ODETerm` directly.
    """

    field: AbstractField
    batched_field: bool = eqx.field(static=True)
    manifold: AbstractManifold

    def __init__(self, field: AbstractField, *, batched_field: bool = False):
        if not isinstance(field, AbstractField):
            raise ValueError(
                f"`field` must be a spherejax field; got {type(field).__name__}."
            )
        self.field = field
        self.batched_field = bool(batched_field)
        self.manifold = field.manifold

    def _axes(self):
        return eqx.if_array(0) if self.batched_field else None

    def check_tokens(self, y: Array) -> None:
        if y.ndim != 3:
            raise ValueError(
                f"`y0s` must have shape `(b, n, d)`; got shape {tuple(y.shape)}."
            )
        if self.batched_field:
            sizes = set(_leading(self.field))
            if sizes != {y.shape[0]}:
                raise ValueError(
                    "with `batched_field=True` every array of `field` needs a leading "
                    f"axis of size b={y.shape[0]} (the ensemble size); got leading "
                    f"sizes {sorted(sizes)}."
                )
            one = jax.tree.map(lambda a: a[0], self.field)
            one.check_tokens(y[0])
        else:
            self.field.check_tokens(y[0])

    def jump_times(self) -> Array | None:
        """The field's jump times (with a batch of fields: every member's, sorted;
        stopping at another member's jump costs a step, never accuracy)."""
        if not self.batched_field:
            return self.field.jump_times()
        one = jax.tree.map(lambda a: a[0], self.field)
        if one.jump_times() is None:
            return None
        jumps = eqx.filter_vmap(lambda f: f.jump_times())(self.field)
        return jnp.sort(jnp.ravel(jumps))

    def __call__(self, t, y, args=None):
        fn = eqx.filter_vmap(lambda f, x: f(t, x, args), in_axes=(self._axes(), 0))
        return fn(self.field, y)


def _stages_written_out(solver, adjoint):
    """The solver an ensemble runs: `solver` (default `Retract(Tsit5())`), with an
    explicit Runge–Kutta method stepped by `UnrolledERK` (same tableau, so the same
    steps up to rounding) unless an adjoint other than diffrax's default is asked
    for (`spherejax.ReplayAdjoint` replays diffrax's own stages)."""
    if adjoint is not None and type(adjoint) is not diffrax.RecursiveCheckpointAdjoint:
        return solver
    if solver is None:
        return Retract(solver=UnrolledERK(diffrax.Tsit5()))
    if supports(solver):
        return Retract(solver=UnrolledERK(solver))
    if type(solver) is Retract and solver.scan_kind is None and supports(solver.solver):
        inner = cast(diffrax.AbstractERK, solver.solver)
        return Retract(solver=UnrolledERK(inner), manifold=solver.manifold)
    return solver


def solve_ensemble(
    field: AbstractField,
    y0s: ArrayLike,
    t1: RealScalarLike,
    *,
    step_size: str = "independent",
    batched_field: bool = False,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    project: bool = False,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    **solve_kwargs,
) -> diffrax.Solution:
    r"""Solve `b` attention flows from the initial conditions `y0s` (shape
    `(b, n, d)`), one member per leading index.

    **Arguments:**

    - `field`: a spherejax field shared by every member, or (`batched_field=True`)
      a batch of fields whose arrays all have a leading axis of size `b`.
    - `y0s`: initial tokens, shape `(b, n, d)`, on the field's manifold (or pass
      `project=True`).
    - `t1`: end time (shared by all members).
    - `step_size`: `"independent"` (each member its own steps and error control:
      `jax.vmap` of `solve`) or `"shared"` (one step size for the ensemble, error
      control on the worst member: see the module docs for the exact norm).
    - `rtol`, `atol`: tolerances of the adaptive controller (per member in both
      modes).
    - `project`: project `y0s` onto the manifold first.
    - `stepsize_controller`: overrides the default controller (in the shared mode
      its norm is then the user's own; `worst_member_rms_norm` gives the worst
      member's).
    - `solve_kwargs`: any other keyword of `solve` (`solver`, `saveat`, `ts`,
      `dt0`, `t0`, `max_steps`, `adjoint`, `args`).

    The inputs are checked as `solve` checks its own, once for the whole
    ensemble (messages name `y0s`), never again per member.

    The default solver is `Retract(Tsit5())`, as for `solve`. An explicit diffrax
    Runge–Kutta method (`Tsit5`, `Dopri5`, `Bosh3`, ..., bare or in `Retract`) runs
    with its stages written out instead of diffrax's loop over a stage buffer: the
    same tableau, error estimate and dense output, so the same steps up to
    rounding, without the buffer, which under `jax.vmap` (`"independent"`) costs a
    copy of all the stages at every stage. (Not with an adjoint other than
    `diffrax.RecursiveCheckpointAdjoint`: `ReplayAdjoint` replays diffrax's own
    stages.)

    **Returns:** a `diffrax.Solution` with the ensemble axis first in both modes:
    `sol.ys` of shape `(b, T, n, d)` and `sol.ts` of shape `(b, T)`. `sol.stats`
    and `sol.result` are per member (`"independent"`) or one for the ensemble
    (`"shared"`).

    Choose `"shared"` for ensembles whose members need similar step sizes (seeds
    of one model: one step sequence, no per-member bookkeeping in the loop), and
    `"independent"` when a few members are much harder than the rest (a wide sweep
    over `beta`), where one shared step would hold every member to the hardest
    one's step size.
    """
    if step_size not in STEP_SIZES:
        raise ValueError(
            f"unknown `step_size` {step_size!r}; expected one of {STEP_SIZES}."
        )
    for name in ("y0", "field", "project", "norm", "name"):
        if name in solve_kwargs:
            raise ValueError(f"`{name}` is not an option of `solve_ensemble`.")
    ens = EnsembleField(field, batched_field=batched_field)
    solver = _stages_written_out(
        solve_kwargs.pop("solver", None), solve_kwargs.get("adjoint")
    )
    shared = step_size == "shared"
    p = _prepare.problem(
        ens,
        y0s,
        t1,
        solver=solver,
        rtol=rtol,
        atol=atol,
        project=project,
        stepsize_controller=stepsize_controller,
        norm=worst_member_rms_norm if shared else None,
        name="y0s",
        **solve_kwargs,
    )
    if not shared:
        one = lambda f, y0: integrate(p.member(f, y0))
        return eqx.filter_vmap(one, in_axes=(ens._axes(), 0))(field, p.y0)
    sol = integrate(p)
    b = p.y0.shape[0]
    ys = None if sol.ys is None else jnp.moveaxis(sol.ys, 0, 1)
    ts = None if sol.ts is None else jnp.broadcast_to(sol.ts, (b, *sol.ts.shape))
    return dataclasses.replace(sol, ys=ys, ts=ts)
