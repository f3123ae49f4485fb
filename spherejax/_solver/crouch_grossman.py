r"""Crouch–Grossman methods: compositions of exponentials of frozen stage fields.

An `s`-stage Crouch–Grossman (CG) method with coefficients $(a_{ij}, b_j, c_i)$
takes, with $F_j = \xi(Y_j)$ the generator of the field frozen at stage $j$
(supplied by the manifold's `group_exp`),

$$Y_i = \exp(h a_{i,i-1}F_{i-1}) \cdots \exp(h a_{i1}F_1)\cdot y_0,\qquad
y_1 = \exp(h b_s F_s) \cdots \exp(h b_1 F_1)\cdot y_0,$$

with $F_1$ applied first. Each factor is a rotation in the 2-plane spanned by
$Y_j - c$ and $f(Y_j)$, applied in closed form (`O(d)` per token and factor).
On `Euclidean()` every factor is a translation and the method *is* the explicit
Runge–Kutta method with the same tableau. Order conditions agree with the classical
ones up to order 2; from order 3 on there are extra (non-commutative) conditions,
e.g. $\sum_i b_i^2 c_i + 2\sum_{i<j} b_i c_i b_j = 1/3$ for order 3.

??? cite
    P. E. Crouch, R. Grossman, *Numerical integration of ordinary differential
    equations on manifolds*, J. Nonlinear Sci. 3 (1993) 1–33.

    B. Owren, A. Marthinsen, *Runge–Kutta methods adapted to manifolds and based on
    rigid frames*, BIT 39 (1999) 116–142.
"""

from typing import ClassVar

import diffrax
import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import numpy as np

from .._manifold import AbstractManifold
from ._lie import AbstractLieSolver, stage_field


class CGTableau(eqx.Module):
    """Coefficients of a Crouch–Grossman method (strictly lower-triangular `a`)."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    b_hat: tuple[float, ...] | None = None

    def __check_init__(self):
        s = len(self.b)
        if len(self.c) != s or len(self.a) != s - 1:
            raise ValueError("inconsistent Crouch–Grossman tableau sizes.")
        for i, row in enumerate(self.a):
            if len(row) != i + 1:
                raise ValueError("`a` must be strictly lower triangular, row by row.")
        if self.b_hat is not None and len(self.b_hat) != s:
            raise ValueError("`b_hat` must have one weight per stage.")


class AbstractCrouchGrossman(AbstractLieSolver):
    """A Crouch–Grossman method given by a `CGTableau` class attribute.

    The stages run in a `lax.scan` over a uniform body: stage `i` applies the
    rotations of *all* earlier-stored stages with the coefficients of row `i`
    (zero coefficients are exact identities), so the field is traced once. With
    first-same-as-last the end point is one more stage (row `b`, node `1`), whose
    field value is the next step's first stage.
    """

    tableau: ClassVar[CGTableau]

    def _advance(self, vf, t0, h, y0, f0, skip_first, fsal):
        manifold = self._require_manifold()
        tab = self.tableau
        s = len(tab.b)
        rows = np.zeros((s + 1, s))
        for i, row in enumerate(tab.a, start=1):
            rows[i, : len(row)] = row
        rows[s] = tab.b
        rows = jnp.asarray(rows, y0.dtype)
        nodes = jnp.asarray(tuple(tab.c) + (1.0,), y0.dtype)
        num = s + 1 if fsal else s
        zeros = jnp.zeros((num,) + y0.shape, y0.dtype)

        def body(carry, i):
            ys, fs = carry
            y = y0
            for j in range(s):
                y = manifold.group_exp(ys[j], (h * rows[i, j]) * fs[j], y)
            y = manifold.project(y)
            f = stage_field(vf, f0, skip_first, i, t0 + nodes[i] * h, y)
            return (ys.at[i].set(y), fs.at[i].set(f)), None

        (ys, fs), _ = lax.scan(body, (zeros, zeros), jnp.arange(num))

        def compose(weights):
            y = y0
            for j, w in enumerate(weights):
                if w != 0.0:
                    y = manifold.group_exp(ys[j], (h * w) * fs[j], y)
            return y

        estimate = isinstance(self, diffrax.AbstractAdaptiveSolver)
        y1_hat = compose(tab.b_hat) if (estimate and tab.b_hat is not None) else None
        if fsal:
            return ys[s], y1_hat, fs[0], fs[s]
        return compose(tab.b), y1_hat, fs[0], None


_doc_args = """**Arguments:**

- `manifold`: any manifold (it supplies the group action `group_exp`); `None`
  lets `spherejax.solve` take it from the field.
"""


class CG2(AbstractCrouchGrossman):
    r"""Second-order Crouch–Grossman method with the explicit-midpoint tableau

    $$c = (0, \tfrac12),\quad a_{21} = \tfrac12,\quad b = (0, 1):\qquad
    y_1 = \exp\big(h\,\xi(Y_2)\big)\cdot y_0,\
    Y_2 = \exp\big(\tfrac h2 \xi(y_0)\big)\cdot y_0.$$

    Up to order 2 the Crouch–Grossman order conditions are the classical ones, so any
    second-order two-stage Runge–Kutta tableau works (Owren–Marthinsen 1999).
    Two field evaluations a step.
    """

    tableau: ClassVar[CGTableau] = CGTableau(a=((0.5,),), b=(0.0, 1.0), c=(0.0, 0.5))
    manifold: AbstractManifold | None = None

    def order(self, terms):
        del terms
        return 2


# Owren & Marthinsen (1999), Table 6.1 (due to Crouch & Grossman 1993).
_cg3_a = ((3 / 4,), (119 / 216, 17 / 108))
_cg3_b = (13 / 51, -2 / 3, 24 / 17)
_cg3_c = (0.0, 3 / 4, 17 / 24)


class CG3(AbstractCrouchGrossman):
    r"""Third-order, three-stage Crouch–Grossman method (Owren–Marthinsen 1999,
    Table 6.1):

    $$c = (0, \tfrac34, \tfrac{17}{24}),\quad a_{21} = \tfrac34,\
    a_{31} = \tfrac{119}{216},\ a_{32} = \tfrac{17}{108},\quad
    b = (\tfrac{13}{51}, -\tfrac23, \tfrac{24}{17}).$$

    Three field evaluations a step.
    """

    tableau: ClassVar[CGTableau] = CGTableau(a=_cg3_a, b=_cg3_b, c=_cg3_c)
    manifold: AbstractManifold | None = None

    def order(self, terms):
        del terms
        return 3


class CG2_3(AbstractCrouchGrossman, diffrax.AbstractAdaptiveSolver):
    r"""Embedded Crouch–Grossman pair of orders 3 and 2 for adaptive stepping
    (Engø–Marthinsen 1998, tableau (5)).

    The stages are those of `CG3`; the second-order weights
    $\hat b = (\tfrac34, \tfrac{31}4, -\tfrac{15}2)$ give a second solution
    $\hat y_1$ from the same stages (three more rotations, no more field
    evaluations). The step advances with the *third-order* weights (local
    extrapolation, like `Dopri5`), and the error estimate is
    $\log_{y_1}(\hat y_1)$: its length is the Riemannian distance between the two
    solutions, $O(h^3)$. `diffrax.PIDController` uses `error_order = 3`.

    ??? cite
        K. Engø, A. Marthinsen, *Modeling and solution of some mechanical problems
        on Lie groups*, Multibody System Dynamics 2 (1998) 71–88.
    """

    tableau: ClassVar[CGTableau] = CGTableau(
        a=_cg3_a, b=_cg3_b, c=_cg3_c, b_hat=(3 / 4, 31 / 4, -15 / 2)
    )
    manifold: AbstractManifold | None = None

    def order(self, terms):
        del terms
        return 3

    def error_order(self, terms):
        del terms
        return 3


class CG4a(AbstractCrouchGrossman):
    r"""Fourth-order, five-stage Crouch–Grossman method "CG4a" of
    Jackiewicz–Marthinsen–Owren (2000), Example 1 (coefficients given there to 16
    digits; they satisfy the classical and Crouch–Grossman order conditions to
    about `1e-15`, which `tests/test_geometric.py` checks for the classical ones).
    Five field evaluations a step.

    ??? cite
        Z. Jackiewicz, A. Marthinsen, B. Owren, *Construction of Runge–Kutta methods
        of Crouch–Grossman type of high order*, Adv. Comput. Math. 13 (2000) 405–415.
    """

    tableau: ClassVar[CGTableau] = CGTableau(
        a=(
            (0.8177227988124852,),
            (0.3199876375476427, 0.0659864263556022),
            (0.9214417194464946, 0.4997857776773573, -1.0969984448371582),
            (
                0.3552358559023322,
                0.2390958372307326,
                1.3918565724203246,
                -1.1092979392113465,
            ),
        ),
        b=(
            0.1370831520630755,
            -0.0183698531564020,
            0.7397813985370780,
            -0.1907142565505889,
            0.3322195591068374,
        ),
        c=(
            0.0,
            0.8177227988124852,
            0.3859740639032449,
            0.3242290522866937,
            0.8768903263420429,
        ),
    )
    manifold: AbstractManifold | None = None

    def order(self, terms):
        del terms
        return 4


CG2.__init__.__doc__ = _doc_args
CG3.__init__.__doc__ = _doc_args
CG2_3.__init__.__doc__ = _doc_args
CG4a.__init__.__doc__ = _doc_args
