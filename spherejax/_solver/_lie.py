r"""Shared machinery of the Lie-group solvers.

A Lie-group solver moves tokens by the action of a Lie group on the manifold
(`spherejax._group`): the manifold supplies the action (`group_exp`, for
`LieEuler` and the Crouch–Grossman methods) and the algebra computations of a step
(`lie_algebra`, for `RKMK4`), so these solvers work on any manifold that implements
those members. On the built-in spheres the group is `SO(d)` (rotations about the
sphere's centre, never forming a `d x d` matrix); on `Euclidean()` it is
$\mathbb R^d$ acting by translation.
"""

import abc

import diffrax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array

from .base import AbstractManifoldSolver, projected_interpolation_cls


# ---------------------------------------------------------------------------------
# Common solver skeleton
# ---------------------------------------------------------------------------------


def stage_field(vf, f0, skip_first, i, t, y):
    """Stage `i`'s field value: the stored first-same-as-last `f0` at stage 0 when
    `skip_first`, else a fresh evaluation (one traced copy of the field either way)."""
    if f0 is None:
        return vf(t, y)
    return lax.cond((i == 0) & skip_first, lambda: f0, lambda: vf(t, y))


class AbstractLieSolver(AbstractManifoldSolver):
    r"""Skeleton of the one-step Lie-group solvers.

    Subclasses implement `_advance(vf, t0, h, y0, f0, skip_first, fsal)` returning
    `(y1, y1_hat_or_None, f(t0, y0), f(t1, y1) or None)`: with `fsal`, the end
    point is computed as one more stage (so `f(t1, y1)` is returned and `y1` is
    projected), and the stored `f0` replaces the first evaluation when
    `skip_first`; without, `f0` may be `None` and the end point is unprojected. The
    stages run in a `lax.scan` over a uniform stage body, so the field is traced
    once per solver (compile time, and the size of the reverse-mode graph, do not
    grow with the number of stages). The base class

    - keeps `f(t0, y0)` as first-same-as-last state: each step evaluates the field
      at the (projected) end point, which is the next step's first stage, so an
      `s`-stage method costs `s` evaluations a step (plus one on the first step and
      after a jump);
    - projects the end point onto the manifold (a round-off clean-up: the group
      action keeps the manifold exactly in exact arithmetic);
    - gives dense output by cubic Hermite interpolation of `y0, y1, h f(y0),
      h f(y1)`, projected onto the manifold;
    - turns an embedded solution `y1_hat` into the error estimate
      `log_{y1}(y1_hat)`, whose norm is the Riemannian distance.
    """

    term_structure = diffrax.ODETerm

    @property
    def interpolation_cls(self):  # pyright: ignore[reportIncompatibleMethodOverride]
        return projected_interpolation_cls(
            diffrax.ThirdOrderHermitePolynomialInterpolation, self._require_manifold()
        )

    @abc.abstractmethod
    def _advance(
        self, vf, t0, h, y0, f0, skip_first, fsal: bool
    ) -> tuple[Array, Array | None, Array, Array | None]:
        """One step (see the class docs)."""

    def init(self, terms, t0, t1, y0, args):
        del terms, t0, t1, args
        return jnp.asarray(True), jnp.zeros_like(y0)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        manifold = self._require_manifold()
        self._require_tokens(y0)
        first_step, f0 = solver_state
        skip_first = jnp.logical_not(first_step | jnp.asarray(made_jump))
        h = terms.contr(t0, t1)
        vf = lambda t, y: terms.vf(t, y, args)  # noqa: E731
        y1, y1_hat, f0, f1 = self._advance(vf, t0, h, y0, f0, skip_first, True)
        if y1_hat is None:
            y_error = None
        else:
            y_error = manifold.log(y1, manifold.project(y1_hat))
        dense_info = dict(y0=y0, y1=y1, k0=h * f0, k1=h * f1)
        return (
            y1,
            y_error,
            dense_info,
            (jnp.asarray(False), f1),
            diffrax.RESULTS.successful,
        )

    def single_step(self, terms, t0, t1, y0, args):
        vf = lambda t, y: terms.vf(t, y, args)  # noqa: E731
        h = terms.contr(t0, t1)
        y1, _, _, _ = self._advance(vf, t0, h, y0, None, False, False)
        return self._require_manifold().project(y1)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)
