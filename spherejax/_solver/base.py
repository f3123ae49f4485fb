"""Common pieces of the manifold solvers."""

import abc
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax

from .._manifold import AbstractManifold


class AbstractManifoldSolver(diffrax.AbstractSolver):
    """A diffrax solver that keeps the state on `manifold`.

    `manifold` may be `None` at construction; `spherejax.solve` then fills in the
    field's manifold (`with_manifold`). Calling `diffrax.diffeqsolve` directly needs
    it set.

    Besides diffrax's solver members (`term_structure`, `interpolation_cls`,
    `order`, `init`, `step`, `func`), a manifold solver implements `single_step`,
    which the splitting solvers use for their sub-flows.
    """

    manifold: eqx.AbstractVar[AbstractManifold | None]

    @abc.abstractmethod
    def single_step(self, terms, t0, t1, y0, args) -> Any:
        """One step from `t0` to `t1` starting at `y0`, with no solver state carried
        in or out (no first-same-as-last reuse); returns the end point on the
        manifold."""

    def with_manifold(self, manifold: AbstractManifold):
        """A copy of this solver acting on `manifold`."""
        return eqx.tree_at(
            lambda s: s.manifold, self, manifold, is_leaf=lambda x: x is None
        )

    def _require_tokens(self, y0) -> None:
        """Refuse a state that is not one token array, naming the usual cause."""
        if not isinstance(y0, jax.Array):
            raise ValueError(
                f"`{type(self).__name__}` steps a single `(n, d)` array of tokens; got "
                f"{type(y0).__name__}. With `diffrax.BacksolveAdjoint` the adjoint "
                "state is not on the manifold: pass "
                "`BacksolveAdjoint(solver=<an unconstrained diffrax solver>)`."
            )

    def _require_manifold(self) -> AbstractManifold:
        if self.manifold is None:
            raise ValueError(
                f"`{type(self).__name__}` needs a `manifold` (pass one, or use "
                "`spherejax.solve`, which takes it from the field)."
            )
        return self.manifold


class ProjectedInterpolation(diffrax.AbstractLocalInterpolation):
    """Dense output of an inner interpolation, projected onto the manifold: every
    evaluated point lies on `manifold` (diffrax's own interpolants are polynomials
    in the ambient space, which leave it)."""

    inner: diffrax.AbstractLocalInterpolation
    manifold: AbstractManifold

    @property
    def t0(self):
        return self.inner.t0

    @property
    def t1(self):
        return self.inner.t1

    def evaluate(self, t0, t1=None, left: bool = True):
        if t1 is not None:
            return self.evaluate(t1, left=left) - self.evaluate(t0, left=left)
        return self.manifold.project(self.inner.evaluate(t0, left=left))


def projected_interpolation_cls(
    inner_cls: Callable, manifold: AbstractManifold
) -> Callable[..., ProjectedInterpolation]:
    """Wrap `inner_cls(*, t0, t1, **dense_info)` so its output is projected."""

    def make(**kwargs) -> ProjectedInterpolation:
        return ProjectedInterpolation(inner_cls(**kwargs), manifold)

    return make
