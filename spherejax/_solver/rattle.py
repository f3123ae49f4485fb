r"""`Rattle`: a constrained velocity-Verlet (RATTLE) solver on the tangent bundle of a
manifold."""

from collections.abc import Callable
from typing import ClassVar

import diffrax
import jax
import jax.numpy as jnp

from .._manifold import AbstractManifold
from .base import AbstractManifoldSolver


class TangentBundleInterpolation(diffrax.AbstractLocalInterpolation):
    """Linear interpolation of `(x, v)` between two steps, then `x` projected onto
    the manifold and `v` onto the tangent space at the projected `x` (second-order
    accurate dense output on the tangent bundle)."""

    t0: jax.Array
    t1: jax.Array
    y0: tuple[jax.Array, jax.Array]
    y1: tuple[jax.Array, jax.Array]
    manifold: AbstractManifold

    def evaluate(self, t0, t1=None, left: bool = True):
        del left
        if t1 is not None:
            a, b = self.evaluate(t1), self.evaluate(t0)
            return a[0] - b[0], a[1] - b[1]
        s = (t0 - self.t0) / (self.t1 - self.t0)
        x = self.manifold.project(self.y0[0] + s * (self.y1[0] - self.y0[0]))
        v = self.manifold.to_tangent(x, self.y0[1] + s * (self.y1[1] - self.y0[1]))
        return x, v


class Rattle(AbstractManifoldSolver):
    r"""RATTLE (Andersen 1983): velocity Verlet with holonomic constraints, for the
    second-order Euler–Lagrange equation $\ddot x = P_x F(t, x) + \text{constraint
    force}$ on a manifold $M$. The state is the pair `y = (x, v)` with `v` tangent
    at `x`.

    One step of size `h`, with $F_0 = P_{x_0} F(t_0, x_0)$:

    $$w = v_0 + \tfrac h2 F_0,\qquad
    x_1 = x_0 + h w + \lambda,\ \lambda \in N_{x_0}M,\ x_1 \in M,$$
    $$v_1 = P_{x_1}\Big(\frac{x_1 - x_0}{h} + \tfrac h2 F(t_1, x_1)\Big).$$

    The position update is RATTLE's with its Lagrange multiplier $\lambda$ along
    the constraint normals at $x_0$ (`AbstractManifold.project_along_normal`; on a
    sphere $|x - c| = r$ it is closed form,
    $x_1 = c + \sqrt{1 - h^2 |w|^2 / r^2}\,(x_0 - c) + h w$), and the velocity
    update is RATTLE's with the second multiplier (the orthogonal projection). On
    `LayerNormSphere` the hyperplane constraint is linear and is kept by projecting
    the force; on `Euclidean()` the method is velocity Verlet. Properties:

    - order 2 (`order = 2`), symmetric (time-reversible) and symplectic on the
      constrained phase space $T^*M$;
    - the constraints and $v \in T_xM$ hold to round-off at every step
      (`x` is re-projected to stop round-off from accumulating);
    - hence the energy $H = \frac12|v|^2 - U(x)$ of a conservative force
      $F = \nabla U$ is not conserved exactly but its error stays $O(h^2)$, with no
      drift, over exponentially long times (backward error analysis);
    - one force evaluation a step (the force at $x_1$ is reused, first same as
      last); no error estimate, so use a constant step `dt0`;
    - on a sphere the step needs $h|w| < r$ (else the position is NaN).

    **The term.** Pass `diffrax.ODETerm(f)` with `f(t, (x, v), args) -> (v, a)` the
    first-order form of the equation, e.g. `KineticPotential(U).vector_field(M)`.
    The solver evaluates the force as the acceleration at zero velocity,
    $F(t, x) = a(t, (x, 0))$: it requires `a` to be a force plus the
    velocity-quadratic constraint (geodesic) acceleration, which vanishes at
    `v = 0`. `func` returns the full `f`, so other diffrax solvers integrate the
    same term (without keeping the constraints).

    ??? cite
        H. C. Andersen, *Rattle: a "velocity" version of the Shake algorithm for
        molecular dynamics calculations*, J. Comput. Phys. 52 (1983);
        E. Hairer, C. Lubich, G. Wanner, *Geometric Numerical Integration*, VII.1.
    """

    manifold: AbstractManifold | None = None

    term_structure: ClassVar = diffrax.AbstractTerm

    @property
    def interpolation_cls(  # pyright: ignore[reportIncompatibleMethodOverride]
        self,
    ) -> Callable[..., TangentBundleInterpolation]:
        manifold = self._require_manifold()

        def make(*, t0, t1, y0, y1):
            return TangentBundleInterpolation(t0, t1, y0, y1, manifold)

        return make

    def order(self, terms):
        del terms
        return 2

    def _force(self, terms, t, x, args):
        _, a = terms.vf(t, (x, jnp.zeros_like(x)), args)
        return self._require_manifold().to_tangent(x, a)

    def init(self, terms, t0, t1, y0, args):
        del t1
        return self._force(terms, t0, y0[0], args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        manifold = self._require_manifold()
        x0, v0 = y0
        f0 = jax.lax.cond(
            made_jump,
            lambda: self._force(terms, t0, x0, args),
            lambda: solver_state,
        )
        h = terms.contr(t0, t1)
        w = v0 + 0.5 * h * f0
        x1 = manifold.project(manifold.project_along_normal(x0, x0 + h * w))
        f1 = self._force(terms, t1, x1, args)
        v1 = manifold.to_tangent(x1, (x1 - x0) / h + 0.5 * h * f1)
        y1 = (x1, v1)
        dense_info = dict(y0=y0, y1=y1)
        return y1, None, dense_info, f1, diffrax.RESULTS.successful

    def single_step(self, terms, t0, t1, y0, args):
        state = self.init(terms, t0, t1, y0, args)
        y1, _, _, _, _ = self.step(terms, t0, t1, y0, args, state, True)
        return y1

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


Rattle.__init__.__doc__ = """**Arguments:**

- `manifold`: where `x` lives: any manifold (it supplies the constrained position
  step `project_along_normal`); `None` lets `spherejax.solve` take it from the
  field.
"""
