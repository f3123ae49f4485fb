r"""Manifolds on which tokens live.

Every method acts row-wise on arrays of shape `(..., d)`: a single point, a token
configuration `(n, d)`, or a batch `(b, n, d)`. Tangent vectors are represented in
the ambient space `R^d`.
"""

import abc
import math
import numbers

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from ._group import (
    AbstractLieAlgebra,
    GramAlgebra,
    ProductAlgebra,
    TranslationAlgebra,
    sphere_rotate,
)
from ._misc import cos_sqrt, safe_norm, sinc_sqrt


def _dot(u: Array, v: Array) -> Array:
    return jnp.sum(u * v, axis=-1, keepdims=True)


def _sphere_along_normal(x, y, centre, radius2):
    """The point `y + lam (x - c)` of the sphere `|z - c|^2 = R^2` with the root
    `lam` nearest 0 (`x` on the sphere); NaN when the normal line misses it."""
    xc, yc = jnp.asarray(x) - centre, jnp.asarray(y) - centre
    a, b = _dot(xc, xc), _dot(xc, yc)
    q = _dot(yc, yc) - radius2
    lam = -q / (b + jnp.sqrt(b * b - a * q))  # rationalised root of a l^2 + 2bl + q
    return y + lam * xc


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"`{name}` must be a positive real number; got {type(value).__name__} "
            f"{value!r}."
        )
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a positive real number; got {value!r}.")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be positive and finite; got {value}.")
    return value


class AbstractManifold(eqx.Module):
    """An embedded submanifold `M` of `R^d`, acting row-wise on `(..., d)` arrays.

    Subclasses implement the geometry every solver may need:

    - `project`, `to_tangent`, `violation` (used by `Retract` and all solvers),
      `exp`, `log`, `transport` (error estimates, actions, fitting);
    - `group_exp` (the group action, used by `LieEuler` and the Crouch–Grossman
      methods) and `lie_algebra` (used by `RKMK4`);
    - `project_along_normal` (the constrained position step of `Rattle`).

    `retract` defaults to `project(x + v)` (the metric-projection retraction, which
    agrees with `exp` to second order). See the "Extending" guide for a worked
    example.
    """

    @abc.abstractmethod
    def project(self, x: ArrayLike) -> Array:
        """Nearest point of `M` (the metric projection) to each row of `x`."""

    @abc.abstractmethod
    def to_tangent(self, x: ArrayLike, v: ArrayLike) -> Array:
        """Orthogonal projection of `v` onto the tangent space `T_x M`."""

    @abc.abstractmethod
    def exp(self, x: ArrayLike, v: ArrayLike) -> Array:
        """Riemannian exponential: follow the geodesic from `x` with velocity `v`
        (assumed tangent) for unit time."""

    @abc.abstractmethod
    def log(self, x: ArrayLike, y: ArrayLike) -> Array:
        """Inverse of `exp`: the tangent vector at `x` pointing to `y` with length
        `dist(x, y)` (undefined at cut points, e.g. antipodes on a sphere)."""

    @abc.abstractmethod
    def transport(self, x: ArrayLike, y: ArrayLike, v: ArrayLike) -> Array:
        """Parallel transport of the tangent vector `v` at `x` to `y` along the
        minimising geodesic."""

    @abc.abstractmethod
    def violation(self, x: ArrayLike) -> Array:
        """Largest constraint error over all rows of `x` (a scalar)."""

    @abc.abstractmethod
    def group_exp(self, x: ArrayLike, v: ArrayLike, y: ArrayLike) -> Array:
        r"""Act on the points `y` with $\exp(\xi)$, where $\xi$ is the generator of
        the manifold's group action that moves `x` with velocity `v` (tangent at
        `x`): $\xi \cdot x = v$. Row-wise: row `i` of `y` is moved by the generator
        of row `i` of `(x, v)`. On a sphere this is a rotation in the plane of
        $x - c$ and $v$ (Rodrigues' formula); in flat space the translation
        `y + v`. One Lie–Euler step is `group_exp(y0, h f(y0), y0)`."""

    @abc.abstractmethod
    def lie_algebra(self, y0: Array, m: int) -> AbstractLieAlgebra:
        """The Lie algebra computations of one Runge–Kutta–Munthe-Kaas step from
        `y0` (shape `(n, d)`) with up to `m - 1` stage velocities (see
        `spherejax.solvers.AbstractLieAlgebra`)."""

    @abc.abstractmethod
    def project_along_normal(self, x: ArrayLike, y: ArrayLike) -> Array:
        """The point of `M` on the affine normal space `y + N_x M` nearest to `y`,
        for `y` near `x` (SHAKE/RATTLE's position constraint: the Lagrange
        multiplier moves along the constraint normals at `x`). NaN where that
        space misses `M`."""

    def retract(self, x: ArrayLike, v: ArrayLike) -> Array:
        """Retraction `R_x(v) = project(x + v)`: `R_x(0) = x`, `dR_x(0) = id` on
        `T_x M`."""
        return self.project(jnp.asarray(x) + jnp.asarray(v))

    def dist(self, x: ArrayLike, y: ArrayLike) -> Array:
        """Geodesic distance, row-wise (shape `(...)`)."""
        return safe_norm(self.log(x, y))

    def inner(self, x: ArrayLike, u: ArrayLike, v: ArrayLike) -> Array:
        """Riemannian metric (the induced Euclidean one), row-wise."""
        del x
        return jnp.sum(jnp.asarray(u) * jnp.asarray(v), axis=-1)

    def random(self, key: PRNGKeyArray, shape: tuple[int, ...], dtype=None) -> Array:
        """Random points of `M` with shape `shape = (..., d)` (Gaussian then
        projected: uniform on spheres)."""
        if len(shape) == 0:
            raise ValueError("`shape` must end with the ambient dimension `d`.")
        dtype = jnp.result_type(float) if dtype is None else dtype
        return self.project(jr.normal(key, shape, dtype))

    def check_dimension(self, d: int) -> None:
        """Raise a `ValueError` if `M` makes no sense in `R^d`."""
        if d < 1:
            raise ValueError(f"ambient dimension must be >= 1; got {d}.")


class Sphere(AbstractManifold):
    r"""The sphere $\{x \in \mathbb R^d : |x| = r\}$.

    Tangent projection $P_x v = v - \langle x, v\rangle x / r^2$; closed-form
    exponential $\exp_x(v) = \cos(|v|/r)\, x + r \sin(|v|/r)\, v/|v|$, logarithm,
    distance $r \arccos(\langle x, y\rangle / r^2)$ (computed with `atan2` for
    accuracy near 0) and parallel transport
    $v - \frac{\langle y, v\rangle}{r^2 + \langle x, y\rangle}(x + y)$.
    All are NaN-safe (and differentiable) at zero tangent vectors.

    **Transport near the antipode.** The denominator is evaluated as
    $\tfrac12|x + y|^2$, equal to $r^2 + \langle x, y\rangle$ on the sphere but
    without its cancellation: at distance $\delta$ from $-x$ the relative error is
    about $\varepsilon r / \delta$ instead of $\varepsilon r^2 / \delta^2$. At the
    exact antipode ($x + y = 0$ in floating point) every great circle through $x$
    is minimising and the transport is not unique; `transport` then returns $-v$,
    the transport along the great circle in the direction of $v$ (the limit of the
    formula as $y \to -x$ along that circle).
    """

    radius: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        _check_positive("radius", self.radius)

    def project(self, x):
        x = jnp.asarray(x)
        return self.radius * x / safe_norm(x, keepdims=True)

    def to_tangent(self, x, v):
        x, v = jnp.asarray(x), jnp.asarray(v)
        return v - _dot(x, v) * x / self.radius**2

    def exp(self, x, v):
        x, v = jnp.asarray(x), jnp.asarray(v)
        theta2 = _dot(v, v) / self.radius**2
        return cos_sqrt(theta2) * x + sinc_sqrt(theta2) * v

    def log(self, x, y):
        r = self.radius
        xn, yn = jnp.asarray(x) / r, jnp.asarray(y) / r
        c = _dot(xn, yn)
        u = yn - c * xn
        s = safe_norm(u, keepdims=True)
        theta = jnp.arctan2(s, c)
        positive = s > 0
        ratio = jnp.where(positive, theta / jnp.where(positive, s, 1.0), 1.0)
        return r * ratio * u

    def dist(self, x, y):
        r = self.radius
        xn, yn = jnp.asarray(x) / r, jnp.asarray(y) / r
        c = jnp.sum(xn * yn, axis=-1)
        s = safe_norm(yn - c[..., None] * xn)
        return r * jnp.arctan2(s, c)

    def transport(self, x, y, v):
        x, y, v = jnp.asarray(x), jnp.asarray(y), jnp.asarray(v)
        s = x + y
        half_ss = 0.5 * _dot(s, s)  # = r^2 + <x, y> on the sphere, without cancellation
        antipode = half_ss == 0
        safe = jnp.where(antipode, 1.0, half_ss)
        return jnp.where(antipode, -v, v - _dot(y, v) / safe * s)

    def violation(self, x):
        return jnp.max(jnp.abs(safe_norm(jnp.asarray(x)) - self.radius))

    def group_exp(self, x, v, y):
        return sphere_rotate(x, v, y, 0.0, float(self.radius) ** 2)

    def lie_algebra(self, y0, m):
        return GramAlgebra.create(y0, m, 0.0, float(self.radius) ** 2)

    def project_along_normal(self, x, y):
        return _sphere_along_normal(x, jnp.asarray(y), 0.0, self.radius**2)


Sphere.__init__.__doc__ = """**Arguments:**

- `radius`: the radius `r > 0` (default 1).
"""


class LayerNormSphere(AbstractManifold):
    r"""The set LayerNorm (without affine map) projects onto, generalised to a
    prescribed mean and standard deviation (the set $S_1(\sigma_1, \sigma_2)$ of
    Tai et al.):

    $$\{x \in \mathbb R^d : \operatorname{mean}(x) = \sigma_1,\
    \operatorname{var}(x) = \sigma_2^2\},$$

    a sphere of radius $\sqrt d\,\sigma_2$ centred at $\sigma_1 \mathbf 1$ inside the
    hyperplane $\operatorname{mean}(x) = \sigma_1$. The metric projection is the
    LayerNorm map
    $\sigma_2 (v - \operatorname{mean} v) / \operatorname{std} v + \sigma_1$
    (population standard deviation). Tangent projection
    $v \mapsto v_0 - \langle y, v_0\rangle y / (d \sigma_2^2)$ with
    $v_0 = v - \operatorname{mean}(v)$ and $y = x - \sigma_1 \mathbf 1$.
    The default (`mean=0`, `std=1`) is `{mean(x) = 0, |x|^2 = d}`. Transport is
    the sphere's (computed with the stable denominator, and $-v$ at the exact
    antipode; see `Sphere`) on the centred points.
    """

    mean: float = eqx.field(static=True, default=0.0)
    std: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        _check_positive("std", self.std)
        if isinstance(self.mean, bool) or not isinstance(self.mean, numbers.Real):
            raise ValueError(
                f"`mean` must be a real number; got {type(self.mean).__name__} "
                f"{self.mean!r}."
            )
        if not math.isfinite(float(self.mean)):
            raise ValueError(f"`mean` must be finite; got {self.mean}.")

    def _sphere(self, d: int) -> Sphere:
        return Sphere(self.std * math.sqrt(d))

    def check_dimension(self, d: int) -> None:
        if d < 2:
            raise ValueError(
                f"`LayerNormSphere` needs dimension d >= 2; got {d} (for d = 1 the "
                "set {mean x = mean, |x - mean|^2 = d std^2} is empty)."
            )

    def random(self, key: PRNGKeyArray, shape: tuple[int, ...], dtype=None) -> Array:
        """Random points with shape `shape = (..., d)`, `d >= 2`: Gaussian, centred
        and scaled (uniform on the set)."""
        if len(shape) == 0:
            raise ValueError("`shape` must end with the ambient dimension `d`.")
        self.check_dimension(shape[-1])
        return super().random(key, shape, dtype)

    def project(self, x):
        x = jnp.asarray(x)
        centred = x - jnp.mean(x, axis=-1, keepdims=True)
        std = safe_norm(centred, keepdims=True) / math.sqrt(x.shape[-1])
        return self.std * centred / std + self.mean

    def to_tangent(self, x, v):
        x, v = jnp.asarray(x), jnp.asarray(v)
        v0 = v - jnp.mean(v, axis=-1, keepdims=True)
        return self._sphere(x.shape[-1]).to_tangent(x - self.mean, v0)

    def exp(self, x, v):
        x = jnp.asarray(x)
        return self._sphere(x.shape[-1]).exp(x - self.mean, v) + self.mean

    def log(self, x, y):
        x = jnp.asarray(x)
        return self._sphere(x.shape[-1]).log(x - self.mean, jnp.asarray(y) - self.mean)

    def dist(self, x, y):
        x = jnp.asarray(x)
        return self._sphere(x.shape[-1]).dist(x - self.mean, jnp.asarray(y) - self.mean)

    def transport(self, x, y, v):
        x = jnp.asarray(x)
        return self._sphere(x.shape[-1]).transport(
            x - self.mean, jnp.asarray(y) - self.mean, v
        )

    def violation(self, x):
        x = jnp.asarray(x)
        mean = jnp.mean(x, axis=-1)
        radius = self.std * math.sqrt(x.shape[-1])
        norm_err = jnp.abs(safe_norm(x - self.mean) - radius)
        return jnp.maximum(jnp.max(jnp.abs(mean - self.mean)), jnp.max(norm_err))

    def _radius2(self, d: int) -> float:
        return float(self.std) ** 2 * d

    def group_exp(self, x, v, y):
        x = jnp.asarray(x)
        return sphere_rotate(x, v, y, float(self.mean), self._radius2(x.shape[-1]))

    def lie_algebra(self, y0, m):
        return GramAlgebra.create(y0, m, float(self.mean), self._radius2(y0.shape[-1]))

    def project_along_normal(self, x, y):
        x, y = jnp.asarray(x), jnp.asarray(y)
        y = y - (jnp.mean(y, axis=-1, keepdims=True) - self.mean)  # along (1..1)
        return _sphere_along_normal(x, y, self.mean, self._radius2(x.shape[-1]))


LayerNormSphere.__init__.__doc__ = """**Arguments:**

- `mean`: the prescribed per-token mean `sigma_1` (default 0).
- `std`: the prescribed per-token standard deviation `sigma_2 > 0` (default 1).
"""


class Euclidean(AbstractManifold):
    """Flat `R^d`: no constraint (models without normalisation)."""

    def project(self, x):
        return jnp.asarray(x)

    def to_tangent(self, x, v):
        del x
        return jnp.asarray(v)

    def retract(self, x, v):
        return jnp.asarray(x) + jnp.asarray(v)

    def exp(self, x, v):
        return jnp.asarray(x) + jnp.asarray(v)

    def log(self, x, y):
        return jnp.asarray(y) - jnp.asarray(x)

    def transport(self, x, y, v):
        del x, y
        return jnp.asarray(v)

    def violation(self, x):
        return jnp.zeros((), jnp.asarray(x).dtype)

    def random(self, key, shape, dtype=None):
        dtype = jnp.result_type(float) if dtype is None else dtype
        return jr.normal(key, shape, dtype)

    def group_exp(self, x, v, y):
        del x
        return jnp.asarray(y) + jnp.asarray(v)

    def lie_algebra(self, y0, m):
        del m
        return TranslationAlgebra(y0)

    def project_along_normal(self, x, y):
        del x
        return jnp.asarray(y)


Euclidean.__init__.__doc__ = """**Arguments:** None"""


class RadiusSphere(AbstractManifold):
    r"""The product $\mathbb R \times S^{d-1}$ of a radius and the unit sphere.

    A point is a row $(r, \theta) \in \mathbb R^{1+d}$ with $|\theta| = 1$ (the radius
    first); it stands for $x = r\theta \in \mathbb R^d$ (see `to_polar`,
    `from_polar`). Tangent vectors are $(\dot r, \dot\theta)$ with
    $\langle\theta, \dot\theta\rangle = 0$; the metric is the product (flat in `r`).
    """

    @property
    def _sphere(self) -> Sphere:
        return Sphere()

    def check_dimension(self, d: int) -> None:
        if d < 2:
            raise ValueError(
                f"`RadiusSphere` rows are `(r, theta)`, at least 2 entries; got {d}."
            )

    def _split(self, x):
        x = jnp.asarray(x)
        return x[..., :1], x[..., 1:]

    def project(self, x):
        r, th = self._split(x)
        return jnp.concatenate([r, self._sphere.project(th)], axis=-1)

    def to_tangent(self, x, v):
        _, th = self._split(x)
        vr, vth = self._split(v)
        return jnp.concatenate([vr, self._sphere.to_tangent(th, vth)], axis=-1)

    def exp(self, x, v):
        r, th = self._split(x)
        vr, vth = self._split(v)
        return jnp.concatenate([r + vr, self._sphere.exp(th, vth)], axis=-1)

    def retract(self, x, v):
        return self.project(jnp.asarray(x) + jnp.asarray(v))

    def log(self, x, y):
        r, th = self._split(x)
        s, ph = self._split(y)
        return jnp.concatenate([s - r, self._sphere.log(th, ph)], axis=-1)

    def transport(self, x, y, v):
        _, th = self._split(x)
        _, ph = self._split(y)
        vr, vth = self._split(v)
        return jnp.concatenate([vr, self._sphere.transport(th, ph, vth)], axis=-1)

    def violation(self, x):
        _, th = self._split(x)
        return self._sphere.violation(th)

    def group_exp(self, x, v, y):
        _, th = self._split(x)
        vr, vth = self._split(v)
        r, ph = self._split(y)
        return jnp.concatenate([r + vr, self._sphere.group_exp(th, vth, ph)], axis=-1)

    def lie_algebra(self, y0, m):
        r, th = self._split(y0)
        parts = (Euclidean().lie_algebra(r, m), self._sphere.lie_algebra(th, m))
        return ProductAlgebra(parts, (1, th.shape[-1]))

    def project_along_normal(self, x, y):
        _, th = self._split(x)
        r, ph = self._split(y)
        return jnp.concatenate([r, self._sphere.project_along_normal(th, ph)], axis=-1)

    def random(self, key, shape, dtype=None):
        x = super().random(key, shape, dtype)
        return x.at[..., 0].set(1.0)


RadiusSphere.__init__.__doc__ = """**Arguments:** None"""
