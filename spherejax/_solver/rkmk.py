r"""Runge–Kutta–Munthe-Kaas methods through the action of `SO(d)` on the sphere."""

import diffrax
import jax
import jax.lax as lax
import jax.numpy as jnp

from .._manifold import AbstractManifold
from ._lie import AbstractLieSolver, stage_field


# Classical RK4 (Kutta 1901); the fifth, first-same-as-last stage gives the embedded
# third-order weights b_hat = (1/6, 1/3, 1/3, 0, 1/6).
# Rows 0-3 are the stages, row 4 (the weights b) the end point, computed as a fifth
# stage at node 1 whose field value is the next step's first stage.
_ROWS = (
    (0.0, 0.0, 0.0, 0.0, 0.0),
    (0.5, 0.0, 0.0, 0.0, 0.0),
    (0.0, 0.5, 0.0, 0.0, 0.0),
    (0.0, 0.0, 1.0, 0.0, 0.0),
    (1 / 6, 1 / 3, 1 / 3, 1 / 6, 0.0),
)
_NODES = (0.0, 0.5, 0.5, 1.0, 1.0)
_B_HAT = (1 / 6, 1 / 3, 1 / 3, 0.0, 1 / 6)
_P = 4


class RKMK4(AbstractLieSolver, diffrax.AbstractAdaptiveSolver):
    r"""The fourth-order Runge–Kutta–Munthe-Kaas method with the classical RK4
    tableau and an embedded third-order error estimate.

    With $\xi(y)$ the generator of the field at $y$ (the manifold's group action,
    `AbstractManifold.lie_algebra`),

    $$u_i = \sum_j a_{ij} k_j,\quad
    k_i = \operatorname{dexp}^{-1}_{u_i}\big(h\,\xi(e^{u_i}\cdot y_0)\big),\quad
    y_1 = e^{\sum_j b_j k_j}\cdot y_0,$$

    with
    $\operatorname{dexp}^{-1}_u(F) \approx F - \tfrac12[u, F] + \tfrac1{12}[u,[u,F]]$
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

    def _advance(self, vf, t0, h, y0, f0, skip_first, fsal):
        manifold = self._require_manifold()
        alg = manifold.lie_algebra(y0, len(_NODES) + 1)
        start = alg.start()
        rows = jnp.asarray(_ROWS, y0.dtype)
        nodes = jnp.asarray(_NODES, y0.dtype)
        num = len(_NODES) if fsal else len(_NODES) - 1
        ks = jax.tree.map(
            lambda z: jnp.zeros((len(_NODES),) + z.shape, z.dtype), alg.zero()
        )

        def combine(weights, ks):
            return jax.tree.map(lambda k: jnp.tensordot(weights, k, axes=1), ks)

        def body(carry, i):
            alg, ks = carry
            u = combine(rows[i], ks)
            point = alg.act(u, start)
            y = manifold.project(alg.to_ambient(point))
            f = stage_field(vf, f0, skip_first, i, t0 + nodes[i] * h, y)
            alg = alg.add_velocity(i + 1, f)
            k = alg.dexpinv(u, alg.generator(i + 1, point, f, h), _P)
            ks = jax.tree.map(lambda ks_, k_: ks_.at[i].set(k_), ks, k)
            return (alg, ks), (y, f)

        (alg, ks), (ys, fs) = lax.scan(body, (alg, ks), jnp.arange(num))
        if not fsal:
            w = combine(rows[-1], ks)
            return alg.to_ambient(alg.act(w, start)), None, fs[0], None
        w_hat = combine(jnp.asarray(_B_HAT, y0.dtype), ks)
        y1_hat = alg.to_ambient(alg.act(w_hat, start))
        return ys[-1], y1_hat, fs[0], fs[-1]


RKMK4.__init__.__doc__ = """**Arguments:**

- `manifold`: any manifold (it supplies the step's algebra `lie_algebra`);
  `None` lets `spherejax.solve` take it from the field.
"""
