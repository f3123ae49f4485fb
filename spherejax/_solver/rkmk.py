r"""Runge–Kutta–Munthe-Kaas methods through the action of `SO(d)` on the sphere."""

import diffrax

from .._manifold import AbstractManifold
from ._lie import AbstractLieSolver, GramAlgebra


# Classical RK4 (Kutta 1901); the fifth, first-same-as-last stage gives the embedded
# third-order weights b_hat = (1/6, 1/3, 1/3, 0, 1/6).
_A = ((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0))
_B = (1 / 6, 1 / 3, 1 / 3, 1 / 6)
_C = (0.0, 0.5, 0.5, 1.0)
_B_HAT = (1 / 6, 1 / 3, 1 / 3, 0.0, 1 / 6)


class RKMK4(AbstractLieSolver, diffrax.AbstractAdaptiveSolver):
    r"""The fourth-order Runge–Kutta–Munthe-Kaas method with the classical RK4
    tableau and an embedded third-order error estimate.

    With $\xi(y)$ the generator of the field at $y$ (`spherejax._solver._lie`),

    $$u_i = \sum_j a_{ij} k_j,\quad
    k_i = \operatorname{dexp}^{-1}_{u_i}\big(h\,\xi(e^{u_i}\cdot y_0)\big),\quad
    y_1 = e^{\sum_j b_j k_j}\cdot y_0,$$

    with $\operatorname{dexp}^{-1}_u(F) \approx F - \tfrac12[u, F] + \tfrac1{12}[u,[u,F]]$
    (the series truncated after $\operatorname{ad}_u^{p-2}$, which keeps order
    $p = 4$; Munthe-Kaas 1999). All $u_i$, $k_i$ lie in $\{V S V^\top\}$ with
    $V = [y_0 - c, f_1, \dots, f_5]$, so brackets and exponentials are `6 x 6`
    coefficient computations per token (`GramAlgebra`): never a `d x d`
    exponential.

    Error estimate: the end-point evaluation $f(y_1)$ (first-same-as-last, so free)
    gives a fifth stage $k_5$ and the third-order solution
    $\hat y_1 = e^{\sum_j \hat b_j k_j}\cdot y_0$, $\hat b = (\tfrac16, \tfrac13,
    \tfrac13, 0, \tfrac16)$; the step's error is $\log_{y_1}(\hat y_1)$ (Riemannian
    distance), so `diffrax.PIDController` drives it (`error_order = 4`). With a
    constant step size it is simply RKMK4 (four evaluations a step). On
    `Euclidean()` it is the classical RK4 method.

    ??? cite
        H. Munthe-Kaas, *High order Runge–Kutta methods on manifolds*,
        Appl. Numer. Math. 29 (1999) 115–127.

        A. Iserles, H. Z. Munthe-Kaas, S. P. Nørsett, A. Zanna, *Lie-group methods*,
        Acta Numerica 9 (2000) 215–365.
    """

    manifold: AbstractManifold | None = None

    def order(self, terms):
        del terms
        return 4

    def error_order(self, terms):
        del terms
        return 4

    def _advance(self, vf, t0, h, y0, f0, estimate):
        p = 4
        alg = GramAlgebra(self._action(y0), y0, m=6)
        start = alg.start()
        alg.add_velocity(1, f0)
        ks = [alg.generator(1, start, f0, h)]
        for i, row in enumerate(_A, start=1):
            u = sum(a * k for a, k in zip(row, ks) if a != 0.0)
            coeffs = alg.act(u, start)
            f = vf(t0 + _C[i] * h, alg.point(coeffs))
            alg.add_velocity(i + 1, f)
            ks.append(alg.dexpinv(u, alg.generator(i + 1, coeffs, f, h), p))
        w = sum(b * k for b, k in zip(_B, ks))
        coeffs1 = alg.act(w, start)
        y1 = alg.point(coeffs1)
        if not estimate:
            return y1, None, None
        y1 = self._require_manifold().project(y1)
        f1 = vf(t0 + h, y1)
        alg.add_velocity(5, f1)
        ks.append(alg.dexpinv(w, alg.generator(5, coeffs1, f1, h), p))
        w_hat = sum(b * k for b, k in zip(_B_HAT, ks) if b != 0.0)
        y1_hat = alg.point(alg.act(w_hat, start))
        return y1, y1_hat, f1


RKMK4.__init__.__doc__ = """**Arguments:**

- `manifold`: `Sphere`, `LayerNormSphere` or `Euclidean`; `None` lets
  `spherejax.solve` take it from the field.
"""
