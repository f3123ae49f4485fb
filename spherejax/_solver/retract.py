"""`Retract`: any explicit diffrax Runge–Kutta solver followed by a retraction."""

import diffrax
import equinox as eqx
from diffrax._term import AdjointTerm, WrapTerm  # BacksolveAdjoint's backward term

from .._manifold import AbstractManifold
from .base import AbstractManifoldSolver, projected_interpolation_cls


def with_scan_kind(
    solver: diffrax.AbstractSolver, scan_kind: str | None
) -> diffrax.AbstractSolver:
    """`solver` with its stage loop's `scan_kind` set (when given and `solver` is a
    Runge–Kutta solver).

    diffrax's adjoints set `scan_kind` on Runge–Kutta solvers to support forward-
    and reverse-mode autodiff; they see a wrapper of one as a Runge–Kutta solver
    (`diffrax.AbstractWrappedSolver`'s isinstance rule) and set it on the wrapper,
    which forwards it with this function.
    """
    if scan_kind is None or not isinstance(solver, diffrax.AbstractRungeKutta):
        return solver
    return eqx.tree_at(
        lambda s: s.scan_kind, solver, scan_kind, is_leaf=lambda x: x is None
    )


class RetractFirst(diffrax.AbstractWrappedSolver):
    """An explicit Runge–Kutta solver on a tuple state `(x, *rest)` whose steps
    retract the tokens `x` onto `manifold` and leave the rest (accumulators, adjoint
    variables) as the inner solver computed them. Used by `ReplayAdjoint`'s forward
    pass and by training's augmented solves."""

    solver: diffrax.AbstractSolver
    manifold: AbstractManifold
    scan_kind: str | None = None

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore[reportIncompatibleMethodOverride]
        return self.solver.interpolation_cls

    def order(self, terms):
        return self.solver.order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return with_scan_kind(self.solver, self.scan_kind).init(terms, t0, t1, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner = with_scan_kind(self.solver, self.scan_kind)
        y1, y_error, dense_info, solver_state, result = inner.step(
            terms, t0, t1, y0, args, solver_state, made_jump
        )
        x1 = self.manifold.retract(y0[0], y1[0] - y0[0])
        return (x1, *y1[1:]), y_error, dense_info, solver_state, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


def _is_backsolve_term(terms) -> bool:
    """Whether `terms` is the adjoint term of `diffrax.BacksolveAdjoint`'s backward
    pass (`diffeqsolve` wraps every term in a `WrapTerm` for the time direction)."""
    while isinstance(terms, WrapTerm):
        terms = terms.term
    return isinstance(terms, AdjointTerm)


class Retract(AbstractManifoldSolver, diffrax.AbstractWrappedSolver):
    r"""Wrap an explicit diffrax solver so every step ends on the manifold.

    One step is the inner solver's step $\tilde y_1 = \Phi_h(y_0)$ followed by the
    retraction $y_1 = R_{y_0}(\tilde y_1 - y_0) = \operatorname{project}(\tilde y_1)$.
    The inner step leaves the manifold by $O(h^{p+1})$, which the projection
    removes without spoiling the local error, so the method keeps the inner
    order `p`. Its embedded error estimate (if any) is passed through unchanged, so
    `diffrax.PIDController` drives it exactly as it would the inner solver. Dense
    output (`SaveAt(ts=...)`) is the inner interpolation, projected.

    First-same-as-last solvers (Tsit5, Dopri5, RK4, ...) reuse the field evaluated
    at the unprojected end point $\tilde y_1$ as the next first stage: one
    evaluation a step is saved and the perturbation, $O(h^{p+1})$ times `h`, is
    below the local error.

    `isinstance(Retract(s), T)` is true whenever `isinstance(s, T)` (diffrax's
    wrapped-solver rule), so adaptive-step and adjoint checks see the inner solver.

    **With `diffrax.BacksolveAdjoint`.** Its backward pass integrates the
    augmented state $(y, a_y, a_\theta)$ (the tokens, their adjoint, the
    parameters' adjoint) with this same solver and diffrax's adjoint term. The
    adjoint components are not on the manifold, so on that term `Retract` takes the
    inner solver's step unprojected: `BacksolveAdjoint()` works as it is, both
    through `spherejax.solve` and in `diffrax.diffeqsolve`, and equals
    `BacksolveAdjoint(solver=<the inner solver>)`.
    """

    solver: diffrax.AbstractSolver
    manifold: AbstractManifold | None = None
    scan_kind: str | None = None

    def __check_init__(self):
        if not isinstance(self.solver, diffrax.AbstractSolver):
            raise ValueError(
                f"`solver` must be a diffrax solver; got {type(self.solver).__name__}."
            )
        if isinstance(self.solver, diffrax.AbstractImplicitSolver):
            raise ValueError(
                "`Retract` wraps explicit solvers; got the implicit "
                f"{type(self.solver).__name__}."
            )
        if self.manifold is not None and not isinstance(
            self.manifold, AbstractManifold
        ):
            raise ValueError(
                f"`manifold` must be a spherejax manifold; got {self.manifold!r}."
            )

    @property
    def _inner(self) -> diffrax.AbstractSolver:
        return with_scan_kind(self.solver, self.scan_kind)

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore[reportIncompatibleMethodOverride]
        return projected_interpolation_cls(
            self.solver.interpolation_cls, self._require_manifold()
        )

    def order(self, terms):
        return self.solver.order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self._inner.init(terms, t0, t1, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        manifold = self._require_manifold()
        if _is_backsolve_term(terms):  # BacksolveAdjoint's augmented state
            return self._inner.step(terms, t0, t1, y0, args, solver_state, made_jump)
        self._require_tokens(y0)
        y1, y_error, dense_info, solver_state, result = self._inner.step(
            terms, t0, t1, y0, args, solver_state, made_jump
        )
        y1 = manifold.retract(y0, y1 - y0)
        return y1, y_error, dense_info, solver_state, result

    def single_step(self, terms, t0, t1, y0, args):
        state = self.init(terms, t0, t1, y0, args)
        y1, _, _, _, _ = self.step(terms, t0, t1, y0, args, state, False)
        return y1

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


Retract.__init__.__doc__ = """**Arguments:**

- `solver`: an explicit diffrax solver (`Euler`, `Heun`, `Midpoint`, `Ralston`,
  `Bosh3`, `Tsit5`, `Dopri5`, `Dopri8`, `spherejax.RK4`, ...).
- `manifold`: where the state lives; `None` lets `spherejax.solve` take it from the
  field.
- `scan_kind`: forwarded to the inner Runge–Kutta solver's stage loop (diffrax's
  adjoints set it; leave it `None`).
"""
