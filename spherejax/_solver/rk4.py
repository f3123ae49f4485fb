"""The classical fourth-order Runge–Kutta method as a diffrax `AbstractERK`."""

from collections.abc import Callable
from typing import ClassVar

import diffrax
import numpy as np


# Classical RK4 (Kutta 1901) plus a fifth, first-same-as-last stage f(y1), which
# gives an embedded third-order solution b_hat = (1/6, 1/3, 1/3, 0, 1/6) for free:
# the error estimate is h/6 (k4 - f(y1)). b_hat satisfies the four third-order
# conditions (sum b = 1, sum b c = 1/2, sum b c^2 = 1/3, sum b A c = 1/6).
_rk4_tableau = diffrax.ButcherTableau(
    a_lower=(
        np.array([0.5]),
        np.array([0.0, 0.5]),
        np.array([0.0, 0.0, 1.0]),
        np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    ),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6, 0.0]),
    b_error=np.array([0.0, 0.0, 0.0, 1 / 6, -1 / 6]),
    c=np.array([0.5, 0.5, 1.0, 1.0]),
)


class RK4(diffrax.AbstractERK):
    """The classical 4th-order Runge–Kutta method.

    Four function evaluations per step (the fifth stage is first-same-as-last),
    with an embedded 3rd-order solution for adaptive step sizing and 3rd-order
    Hermite interpolation for dense output.
    """

    tableau: ClassVar[diffrax.ButcherTableau] = _rk4_tableau
    interpolation_cls: ClassVar[Callable[..., diffrax.AbstractLocalInterpolation]] = (
        diffrax.ThirdOrderHermitePolynomialInterpolation.from_k
    )

    def order(self, terms):
        del terms
        return 4


RK4.__init__.__doc__ = """**Arguments:** None"""
