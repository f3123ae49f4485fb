r"""Operator splitting: Lie–Trotter and Strang compositions of sub-flows."""

import abc
from collections.abc import Sequence

import diffrax
import equinox as eqx
import jax

from .._field import AbstractField, Layerwise, Sum
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


def field_parts(field: AbstractField) -> tuple[AbstractField, ...]:
    """The parts a splitting applies one after the other: the terms of a `Sum`;
    for a `Layerwise` field whose layers are `Sum`s, one `Layerwise` field per term
    (same layer boundaries); any other field is one part."""
    if isinstance(field, Sum):
        return field.fields
    if isinstance(field, Layerwise) and isinstance(field.stacked, Sum):
        return tuple(
            eqx.tree_at(lambda f: f.stacked, field, term)
            for term in field.stacked.fields
        )
    return (field,)


def _manifold_solver(solver) -> AbstractManifoldSolver:
    if not isinstance(solver, diffrax.AbstractSolver):
        raise ValueError(f"`solver` must be a diffrax solver; got {solver!r}.")
    if not isinstance(solver, AbstractManifoldSolver):
        solver = Retract(solver=solver)
    return solver


class _AbstractSplitting(AbstractManifoldSolver):
    fields: tuple[AbstractField, ...]
    solver: AbstractManifoldSolver | tuple[AbstractManifoldSolver, ...]
    manifold: AbstractManifold | None

    term_structure = diffrax.ODETerm

    def __init__(
        self,
        *fields: AbstractField,
        solver: diffrax.AbstractSolver | Sequence[diffrax.AbstractSolver] | None = None,
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
        if isinstance(solver, Sequence):
            solver = tuple(_manifold_solver(s) for s in solver)
            if fields and len(solver) != len(fields):
                raise ValueError(
                    f"`solver` holds {len(solver)} solvers for {len(fields)} parts; "
                    "pass one solver, or one per part."
                )
        else:
            solver = _manifold_solver(solver)
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
        parts = field_parts(field)
        if len(parts) == 1 and parts[0] is field:
            raise ValueError(
                f"`{type(self).__name__}()` without fields splits a `spherejax.Sum` "
                f"field (or a `Layerwise` of `Sum`s); got {type(field).__name__}. "
                "Pass the parts explicitly."
            )
        return parts

    def _inner(self, manifold, count: int) -> tuple[AbstractManifoldSolver, ...]:
        """One inner solver per part, each given `manifold` if it has none."""
        solvers = self.solver
        if not isinstance(solvers, tuple):
            solvers = (solvers,) * count
        elif len(solvers) != count:
            raise ValueError(
                f"`solver` holds {len(solvers)} solvers for {count} parts; pass one "
                "solver, or one per part."
            )
        return tuple(
            s.with_manifold(manifold) if s.manifold is None else s for s in solvers
        )

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
        parts = self._parts(terms)
        inner = self._inner(manifold, len(parts))
        y1 = self._compose(inner, terms, parts, t0, t1, y0, args)
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

    def single_step(self, terms, t0, t1, y0, args):
        y1, _, _, _, _ = self.step(terms, t0, t1, y0, args, None, False)
        return y1

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


_split_doc = """**Arguments:**

- `*fields`: the parts `f_1, ..., f_k` (spherejax fields). Their sum must be the
  field being solved (it is not checked); with no parts the solved field must be
  a `spherejax.Sum` (or a `Layerwise` of `Sum`s), whose summands are split.
- `solver`: the inner solver taking one step of each sub-flow: a spherejax
  manifold solver, or any diffrax solver (wrapped in `Retract`); or a sequence
  of them, one per part (e.g. a layer update rule per sub-layer, each with its
  own LayerNorm). Default `RKMK4()`. `Retract(diffrax.Euler())` gives the
  post-LN Transformer block.
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
        for solver, part in zip(inner, parts):
            y = self._substep(solver, terms, part, t0, t1, y, args)
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
        pairs = tuple(zip(inner, parts))
        for solver, part in pairs[:-1]:
            y = self._substep(solver, terms, part, t0, tm, y, args)
        y = self._substep(inner[-1], terms, parts[-1], t0, t1, y, args)
        for solver, part in reversed(pairs[:-1]):
            y = self._substep(solver, terms, part, tm, t1, y, args)
        return y


LieTrotter.__init__.__doc__ = _split_doc
Strang.__init__.__doc__ = _split_doc
