r"""Operator splitting: Lie–Trotter and Strang compositions of sub-flows."""

import abc

import diffrax
import jax

from .._field import AbstractField, Sum
from .._manifold import AbstractManifold
from .base import AbstractManifoldSolver, projected_interpolation_cls
from .retract import Retract
from .rkmk import RKMK4


def _is_ode_term(x) -> bool:
    return isinstance(x, diffrax.ODETerm)


def _find_field(term):
    """The vector field of the one `diffrax.ODETerm` inside `term` (which may be
    wrapped, e.g. by diffrax's direction wrapper)."""
    found = [x for x in jax.tree.leaves(term, is_leaf=_is_ode_term) if _is_ode_term(x)]
    if len(found) != 1:
        raise ValueError(
            f"splitting solvers need one `diffrax.ODETerm`; got {type(term).__name__}."
        )
    return found[0].vector_field


def _replace_field(term, field):
    """The same term structure (e.g. diffrax's direction wrapper) around `field`."""
    return jax.tree.map(
        lambda x: diffrax.ODETerm(field) if _is_ode_term(x) else x,
        term,
        is_leaf=_is_ode_term,
    )


class _AbstractSplitting(AbstractManifoldSolver):
    fields: tuple[AbstractField, ...]
    solver: AbstractManifoldSolver
    manifold: AbstractManifold | None

    term_structure = diffrax.ODETerm

    def __init__(
        self,
        *fields: AbstractField,
        solver: diffrax.AbstractSolver | None = None,
        manifold: AbstractManifold | None = None,
    ):
        for f in fields:
            if not isinstance(f, AbstractField):
                raise ValueError(
                    f"`fields` must be spherejax fields; got {type(f).__name__} "
                    "(pass the inner solver as `solver=`)."
                )
        if solver is None:
            solver = RKMK4()
        if not isinstance(solver, diffrax.AbstractSolver):
            raise ValueError(f"`solver` must be a diffrax solver; got {solver!r}.")
        if not isinstance(solver, AbstractManifoldSolver):
            solver = Retract(solver=solver)
        self.fields = tuple(fields)
        self.solver = solver
        self.manifold = manifold

    @property
    def interpolation_cls(self):  # pyright: ignore[reportIncompatibleMethodOverride]
        return projected_interpolation_cls(
            diffrax.LocalLinearInterpolation, self._require_manifold()
        )

    def _parts(self, terms) -> tuple[AbstractField, ...]:
        if self.fields:
            return self.fields
        field = _find_field(terms)
        if not isinstance(field, Sum):
            raise ValueError(
                f"`{type(self).__name__}()` without fields splits a `spherejax.Sum` "
                f"field; got {type(field).__name__}. Pass the parts explicitly."
            )
        return field.fields

    def _inner(self, manifold):
        solver = self.solver
        if solver.manifold is None:
            solver = solver.with_manifold(manifold)
        return solver

    def _substep(self, inner, terms, part, ta, tb, y, args):
        """One step of the inner solver for the flow of `part` from `ta` to `tb`."""
        sub = _replace_field(terms, part)
        y1 = inner.single_step(sub, ta, tb, y, args)
        return inner._require_manifold().project(y1)

    @abc.abstractmethod
    def _compose(self, inner, terms, parts, t0, t1, y0, args):
        """The composition of sub-flows making one step."""

    def init(self, terms, t0, t1, y0, args):
        del terms, t0, t1, y0, args
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        manifold = self._require_manifold()
        self._require_tokens(y0)
        inner = self._inner(manifold)
        y1 = self._compose(inner, terms, self._parts(terms), t0, t1, y0, args)
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

    def single_step(self, terms, t0, t1, y0, args):
        y1, _, _, _, _ = self.step(terms, t0, t1, y0, args, None, False)
        return y1

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


_split_doc = """**Arguments:**

- `*fields`: the parts `f_1, ..., f_k` (spherejax fields). Their sum must be the
  field being solved (it is not checked); with no parts the solved field must be
  a `spherejax.Sum`, whose summands are split.
- `solver`: the inner solver taking one step of each sub-flow: a spherejax
  manifold solver, or any diffrax solver (wrapped in `Retract`). Default
  `RKMK4()`. `Retract(diffrax.Euler())` gives the post-LN Transformer block.
- `manifold`: where tokens live; `None` lets `spherejax.solve` take it from the
  field.
"""


class LieTrotter(_AbstractSplitting):
    r"""Lie–Trotter splitting (order 1) of $f = f_1 + \dots + f_k$:

    $$y_1 = \Phi^{f_k}_h \circ \cdots \circ \Phi^{f_1}_h (y_0),$$

    each sub-flow $\Phi^{f_i}_h$ over $[t_0, t_1]$ approximated by *one* step of
    the inner `solver` and projected onto the manifold. With attention then
    feed-forward and `solver=Retract(diffrax.Euler())` one step is a post-LN
    Transformer block $\mathrm{LN}(u'' + h\,\mathrm{FFN}(u''))$,
    $u'' = \mathrm{LN}(u + h\,\mathrm{Attn}(u))$ (Tai–Liu–Li–Chan). The inner solver
    should have order at least 1 (order 2 or more to see the splitting error
    alone). Costs one inner step per part; the default `RKMK4` evaluates each part
    four times a step. Dense output: projected linear interpolation.

    ??? cite
        R. I. McLachlan, G. R. W. Quispel, *Splitting methods*, Acta Numerica 11
        (2002) 341–434.
    """

    def order(self, terms):
        del terms
        return 1

    def _compose(self, inner, terms, parts, t0, t1, y0, args):
        y = y0
        for part in parts:
            y = self._substep(inner, terms, part, t0, t1, y, args)
        return y


class Strang(_AbstractSplitting):
    r"""Strang (symmetric) splitting (order 2) of $f = f_1 + \dots + f_k$:

    $$y_1 = \Phi^{f_1}_{h/2} \circ \cdots \circ \Phi^{f_{k-1}}_{h/2} \circ
    \Phi^{f_k}_h \circ \Phi^{f_{k-1}}_{h/2} \circ \cdots \circ \Phi^{f_1}_{h/2}(y_0).$$

    The first half-steps cover $[t_0, t_0 + h/2]$, the middle step $[t_0, t_1]$,
    the last half-steps $[t_0 + h/2, t_1]$: the composition is symmetric, so it has
    order 2 for time-dependent fields too, provided the inner solver is
    symmetric or has order at least 2 (the default `RKMK4` has order 4). Each
    sub-flow is one inner step, projected. Costs `2k - 1` inner steps a step.
    Dense output: projected linear interpolation.

    ??? cite
        G. Strang, *On the construction and comparison of difference schemes*,
        SIAM J. Numer. Anal. 5 (1968) 506–517.
    """

    def order(self, terms):
        del terms
        return 2

    def _compose(self, inner, terms, parts, t0, t1, y0, args):
        tm = t0 + 0.5 * (t1 - t0)
        y = y0
        for part in parts[:-1]:
            y = self._substep(inner, terms, part, t0, tm, y, args)
        y = self._substep(inner, terms, parts[-1], t0, t1, y, args)
        for part in reversed(parts[:-1]):
            y = self._substep(inner, terms, part, tm, t1, y, args)
        return y


LieTrotter.__init__.__doc__ = _split_doc
Strang.__init__.__doc__ = _split_doc
