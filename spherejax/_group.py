r"""Group actions and Lie algebras behind the Lie-group solvers.

A Lie-group solver advances tokens by the action of a Lie group $G$ on the manifold:
a tangent field $f$ is written $f(x) = \xi(x)\cdot x$ with a generator
$\xi(x) \in \mathfrak g$, and a step applies exponentials of (combinations of)
generators. A manifold supplies this geometry through two members,
`AbstractManifold.group_exp` (used by `LieEuler` and the Crouch–Grossman methods)
and `AbstractManifold.lie_algebra` (used by `RKMK4`); this module holds the pieces
the built-in manifolds use, which a new manifold can reuse.

**Spheres.** A tangent field on a sphere of radius $R$ centred at $c$ is
$f(x) = \xi(x)(x - c)$ with
$\xi(x) = (f\,\bar x^\top - \bar x f^\top)/R^2 \in \mathfrak{so}(d)$,
$\bar x = x - c$ (indeed $\xi(x)\bar x = f$ because $\langle f, \bar x\rangle = 0$,
$|\bar x| = R$). `SO(d)` acts by $g \cdot y = c + g\,(y - c)$, one copy per token.
Nothing forms a `d x d` matrix:

- a *rank-two* generator $G = (v\,\bar x^\top - \bar x v^\top)/R^2$ acts on any point
  in closed form (Rodrigues' formula),
  $e^{G} y = y + \operatorname{sinc}\theta\, G y + \frac{1-\cos\theta}{\theta^2} G^2 y$,
  $\theta = |v|/R$, `O(d)` per token (`sphere_rotate`);
- sums and commutators of several stage generators all lie in $\{V S V^\top\}$ with
  $V = [\bar x_0, f_1, \dots, f_s]$ the `d x m` matrix of the step's start point
  and stage velocities ($m = s + 1$) and $S$ an `m x m` coefficient matrix. With the
  Gram matrix $\Gamma = V^\top V$ the algebra closes on coefficients:
  $[VAV^\top, VBV^\top] = V(A\Gamma B - B\Gamma A)V^\top$ and
  $e^{VSV^\top} V c = V e^{S\Gamma} c$, so exponentials are `m x m`
  (`GramAlgebra`), `O(d m^2)` per token. $V$ is never orthonormalised, so linearly
  dependent stage vectors (e.g. a field that vanishes) cause no division by zero
  and gradients stay finite.

**Flat space.** On $\mathbb R^d$ the group is $\mathbb R^d$ acting by translation,
the generator of $f$ is $f$ itself and brackets vanish (`TranslationAlgebra`).

**Products.** A manifold whose rows split into column blocks, each with its own
group, uses the product group (`ProductAlgebra`).
"""

import abc
import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, PyTree

from ._misc import sinc_sqrt


def _dot(u: Array, v: Array) -> Array:
    return jnp.sum(u * v, axis=-1, keepdims=True)


def _one_minus_cos_over_sq(s: Array) -> Array:
    """`(1 - cos(sqrt(s))) / s`, smooth at `s = 0` (equals `sinc(sqrt(s)/2)^2 / 2`)."""
    return 0.5 * sinc_sqrt(s / 4) ** 2


def sphere_rotate(
    x: ArrayLike, v: ArrayLike, y: ArrayLike, centre: float, radius2: float
) -> Array:
    r"""Act on the points `y` with $\exp(\xi)$,
    $\xi = (v\bar x^\top - \bar x v^\top)/R^2$, the generator of `SO(d)` (acting
    about `centre`) that moves `x` with velocity `v` (tangent at `x`).

    Rodrigues' formula, `O(d)` per row, smooth at `v = 0`. Row-wise on `(..., d)`.

    **Arguments:**

    - `x`: points of the sphere $|x - c|^2 = R^2$.
    - `v`: tangent vectors at `x`.
    - `y`: the points to move (any points of the sphere).
    - `centre`: the centre $c$ (a scalar: $c\,\mathbf 1$).
    - `radius2`: the squared radius $R^2$.
    """
    x, v, y = jnp.asarray(x), jnp.asarray(v), jnp.asarray(y)
    xc, yc = x - centre, y - centre
    xy, vy, vv = _dot(xc, yc), _dot(v, yc), _dot(v, v)
    s = vv / radius2
    g_y = (v * xy - xc * vy) / radius2
    g2_y = -(v * vy + xc * (vv * xy / radius2)) / radius2
    return y + sinc_sqrt(s) * g_y + _one_minus_cos_over_sq(s) * g2_y


# ---------------------------------------------------------------------------------
# Small matrix exponential
# ---------------------------------------------------------------------------------

_TAYLOR_DEGREE = 12
_MAX_SQUARINGS = 12
_SCALED_NORM = 0.25


def _mm_last(a: Array, b: Array) -> Array:
    """Products of small matrices stored batch-last, `(m, k, *batch) @ (k, p, *batch)`,
    as a broadcast multiply-sum over the middle axis: with the batch axis last and
    contiguous, XLA on CPU vectorises across tokens (2.5-3x faster than the
    batch-first layout for `m = 6`; a batched `dot_general` is slower still)."""
    return jnp.sum(a[:, :, None] * b[None], axis=1)


def _to_last(a: Array) -> Array:
    return jnp.moveaxis(a, (-2, -1), (0, 1))


def _to_first(a: Array) -> Array:
    return jnp.moveaxis(a, (0, 1), (-2, -1))


def _mm(a: Array, b: Array) -> Array:
    """Batched product `(..., m, k) @ (..., k, p)` of small matrices
    (see `_mm_last`)."""
    return _to_first(_mm_last(_to_last(a), _to_last(b)))


def expm_small(a: Array) -> Array:
    """Matrix exponential of a batch `(..., m, m)` of small matrices.

    Scaling and squaring: `a / 2^j` with infinity norm at most 1/4, the degree-12
    Taylor polynomial (truncation error below `3e-18`) evaluated by
    Paterson–Stockmeyer (`A^2, A^3, A^4`, then Horner in `A^4`: five matrix
    products instead of twelve), then `j` squarings (at most 12, i.e. norms up to
    1024 — a rotation angle far beyond any sensible step). Each squaring round is a
    `lax.cond` that is skipped when no matrix of the batch needs it (the usual case
    for a step's generators), so reverse-mode differentiation still works.
    Computed batch-last (`_mm_last`).

    ??? cite
        M. S. Paterson, L. J. Stockmeyer, *On the number of nonscalar
        multiplications necessary to evaluate polynomials*, SIAM J. Comput. 2
        (1973) 60–66.
    """
    a = _to_last(a)
    norm = jnp.max(jnp.sum(jnp.abs(a), axis=1), axis=0)
    safe = jnp.where(norm > _SCALED_NORM, norm, _SCALED_NORM)
    j = jnp.clip(jnp.ceil(jnp.log2(safe / _SCALED_NORM)), 0, _MAX_SQUARINGS)
    a = a * 2.0**-j
    eye = jnp.eye(a.shape[0], dtype=a.dtype).reshape(a.shape[:2] + (1,) * (a.ndim - 2))
    powers = [eye, a, _mm_last(a, a)]
    powers.append(_mm_last(powers[2], a))
    a4 = _mm_last(powers[2], powers[2])
    inv_fact = [1.0 / math.factorial(k) for k in range(_TAYLOR_DEGREE + 1)]

    def block(b):  # sum_{i<4} A^i / (4b + i)!
        return sum(inv_fact[4 * b + i] * powers[i] for i in range(4))

    r = block(2) + inv_fact[12] * a4
    r = block(1) + _mm_last(a4, r)
    r = block(0) + _mm_last(a4, r)

    for k in range(_MAX_SQUARINGS):
        r = lax.cond(
            jnp.any(k < j),
            lambda r: jnp.where(k < j, _mm_last(r, r), r),
            lambda r: r,
            r,
        )
    return _to_first(r)


# ---------------------------------------------------------------------------------
# Lie algebras of one step
# ---------------------------------------------------------------------------------

_DEXPINV_COEFFS = (1.0, -0.5, 1.0 / 12, 0.0, -1.0 / 720)


class AbstractLieAlgebra(eqx.Module):
    r"""The Lie-algebra computations of one Runge–Kutta–Munthe-Kaas step.

    An instance is created for the start point `y0` of a step by
    `AbstractManifold.lie_algebra(y0, m)`, with room for `m - 1` stage velocities.
    *Elements* of the algebra (generators, and linear combinations and brackets of
    them) and *points* (points reachable from `y0` by the group action) are pytrees
    of arrays in whatever representation the algebra chooses (e.g. coefficients in
    a small subspace); the solver only combines elements linearly (`jax.tree.map`),
    so every representation must be linear.

    Immutable: `add_velocity` returns an updated copy, so an algebra can be carried
    through `lax.scan`; stage indices `j` may be traced.
    """

    @abc.abstractmethod
    def zero(self) -> PyTree[Array]:
        """The zero element."""

    @abc.abstractmethod
    def start(self) -> PyTree[Array]:
        """The representation of the start point `y0`."""

    @abc.abstractmethod
    def add_velocity(self, j, f: Array) -> "AbstractLieAlgebra":
        """A copy that knows the stage velocity `f` (shape `(n, d)`) as stage `j`
        (`1 <= j < m`)."""

    @abc.abstractmethod
    def generator(self, j, point: PyTree[Array], f: Array, h) -> PyTree[Array]:
        r"""$h\,\xi$: `h` times the generator that moves `point` with velocity `f`
        (the velocity already stored as stage `j`)."""

    @abc.abstractmethod
    def bracket(self, a: PyTree[Array], b: PyTree[Array]) -> PyTree[Array]:
        """The Lie bracket `[a, b]`."""

    @abc.abstractmethod
    def act(self, s: PyTree[Array], point: PyTree[Array]) -> PyTree[Array]:
        """The point `exp(s) . point`."""

    @abc.abstractmethod
    def to_ambient(self, point: PyTree[Array]) -> Array:
        """The point as an array `(n, d)` of `R^d`."""

    def dexpinv(self, u: PyTree[Array], f: PyTree[Array], order: int) -> PyTree[Array]:
        r"""The inverse derivative of the exponential,
        $\operatorname{dexp}^{-1}_u(f) = \sum_k \frac{B_k}{k!}\operatorname{ad}_u^k f$,
        truncated after $\operatorname{ad}_u^{q}$, `q = order - 2` (Bernoulli
        coefficients 1, -1/2, 1/12, 0, -1/720), which keeps the order of an
        `order`-th order RKMK method (Munthe-Kaas 1999)."""
        out, term = f, f
        for k in range(1, max(order - 1, 1)):
            term = self.bracket(u, term)
            c = _DEXPINV_COEFFS[k]
            if c != 0.0:
                out = jax.tree.map(lambda o, t, c=c: o + c * t, out, term)
        return out


class GramAlgebra(AbstractLieAlgebra):
    r"""$\mathfrak{so}(d)$ acting on a sphere $|x - c| = R$, one copy per token,
    restricted to elements $V S V^\top$ stored as the `m x m` matrices `S`.

    `V` has shape `(n, d, m)`: column 0 is the centred start point, column `j >= 1`
    the velocity of stage `j` (zero until that stage is known); `gram` of shape
    `(n, m, m)` holds the Gram matrices $V^\top V$ per token. Points are
    coefficient vectors `c` (`y = centre + V c`). See the module docstring (also on
    the API page "Manifolds").
    """

    centre: float = eqx.field(static=True)
    radius2: float = eqx.field(static=True)
    V: Array
    gram: Array

    @classmethod
    def create(cls, y0: Array, m: int, centre: float, radius2: float) -> "GramAlgebra":
        """The algebra of a step from `y0` (shape `(n, d)`) with `m - 1` stages on
        the sphere of squared radius `radius2` about `centre`."""
        n, d = y0.shape
        V = jnp.zeros((n, d, m), y0.dtype).at[:, :, 0].set(y0 - centre)
        return cls(centre, radius2, V, jnp.einsum("ndi,ndj->nij", V, V))

    def zero(self):
        n, _, m = self.V.shape
        return jnp.zeros((n, m, m), self.V.dtype)

    def start(self):
        n, _, m = self.V.shape
        return jnp.zeros((n, m), self.V.dtype).at[:, 0].set(1.0)

    def add_velocity(self, j, f):
        V = self.V.at[:, :, j].set(f)
        col = jnp.einsum("ndi,nd->ni", V, f)
        gram = self.gram.at[:, :, j].set(col).at[:, j, :].set(col)
        return GramAlgebra(self.centre, self.radius2, V, gram)

    def generator(self, j, point, f, h):
        del f
        e = jax.nn.one_hot(j, point.shape[-1], dtype=point.dtype)
        outer = e[None, :, None] * point[:, None, :]
        return (h / self.radius2) * (outer - jnp.swapaxes(outer, -1, -2))

    def bracket(self, a, b):
        return _mm(_mm(a, self.gram), b) - _mm(_mm(b, self.gram), a)

    def act(self, s, point):
        expo = expm_small(_mm(s, self.gram))
        return jnp.einsum("nij,nj->ni", expo, point)

    def to_ambient(self, point):
        return jnp.einsum("ndm,nm->nd", self.V, point) + self.centre


class TranslationAlgebra(AbstractLieAlgebra):
    r"""$\mathbb R^d$ acting on $\mathbb R^d$ by translation (commutative):
    elements are vectors `(n, d)`, points are the points themselves, the generator
    of a velocity is the velocity, brackets vanish and the exponential is
    translation. RKMK on it is the classical Runge–Kutta method."""

    y0: Array

    def zero(self):
        return jnp.zeros_like(self.y0)

    def start(self):
        return self.y0

    def add_velocity(self, j, f):
        del j, f
        return self

    def generator(self, j, point, f, h):
        del j, point
        return h * f

    def bracket(self, a, b):
        del b
        return jnp.zeros_like(a)

    def act(self, s, point):
        return point + s

    def to_ambient(self, point):
        return point


class ProductAlgebra(AbstractLieAlgebra):
    r"""The product of algebras acting on consecutive column blocks of each row:
    block `k` holds `sizes[k]` columns and is acted on by `parts[k]`. Elements and
    points are tuples, one entry per block."""

    parts: tuple[AbstractLieAlgebra, ...]
    sizes: tuple[int, ...] = eqx.field(static=True)

    def __check_init__(self):
        if len(self.parts) != len(self.sizes) or not self.parts:
            raise ValueError("`parts` and `sizes` must be non-empty and match.")

    def _split(self, f: Array) -> list[Array]:
        return split_columns(f, self.sizes)

    def zero(self):
        return tuple(p.zero() for p in self.parts)

    def start(self):
        return tuple(p.start() for p in self.parts)

    def add_velocity(self, j, f):
        parts = tuple(
            p.add_velocity(j, fk) for p, fk in zip(self.parts, self._split(f))
        )
        return ProductAlgebra(parts, self.sizes)

    def generator(self, j, point, f, h):
        return tuple(
            p.generator(j, c, fk, h)
            for p, c, fk in zip(self.parts, point, self._split(f))
        )

    def bracket(self, a, b):
        return tuple(p.bracket(x, y) for p, x, y in zip(self.parts, a, b))

    def act(self, s, point):
        return tuple(p.act(x, c) for p, x, c in zip(self.parts, s, point))

    def to_ambient(self, point):
        return jnp.concatenate(
            [p.to_ambient(c) for p, c in zip(self.parts, point)], axis=-1
        )


GramAlgebra.__init__.__doc__ = """Build it with `GramAlgebra.create(y0, m, centre,
radius2)`."""
TranslationAlgebra.__init__.__doc__ = """**Arguments:**

- `y0`: the start point `(n, d)` of the step.
"""
ProductAlgebra.__init__.__doc__ = """**Arguments:**

- `parts`: one algebra per column block.
- `sizes`: the number of columns of each block (summing to `d`).
"""


def split_columns(x: ArrayLike, sizes: Sequence[int]) -> list[Array]:
    """Split the last axis of `x` into consecutive blocks of `sizes` columns."""
    x = jnp.asarray(x)
    bounds = [sum(sizes[:k]) for k in range(1, len(sizes))]
    return jnp.split(x, bounds, axis=-1)
