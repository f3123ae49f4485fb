r"""Lagrangians, the action functional, the constrained Euler–Lagrange residual and
minimum-action paths on a discretised path of token configurations.

A path is an array `(T, n, d)` sampled at increasing times `ts` (shape `(T,)`); every
configuration `path[k]` lies on `manifold` (row-wise). A Lagrangian is an
`eqx.Module` called as `L(t, x, xdot) -> scalar` with `x`, `xdot` of shape `(n, d)`
(it sums over tokens).

Discretisation (used by `action`): on `[t_k, t_{k+1}]` the path is replaced by the
constant-speed geodesic from `x_k` to `x_{k+1}`, whose velocity is
$v_k = \log_{x_k}(x_{k+1}) / h_k$. The action of that geodesic polygon is taken with
the midpoint rule,

$$S[x] \approx \sum_k h_k\, L\big(t_{k+1/2},\ x_{k+1/2},\ v_{k+1/2}\big),\qquad
x_{k+1/2} = \exp_{x_k}(h_k v_k / 2),$$

with $v_{k+1/2}$ the geodesic's own velocity there (parallel transport of $v_k$).
For `Kinetic` this is exact on a geodesic polygon ($\theta^2/(2T)$ for a great-circle
arc of angle $\theta$ traversed in time $T$); for smooth paths it is second order.

??? cite
    A. Gracyk, *Calculus of variations for Transformers on the sphere's tangent
    bundle* (abstracts); R. Kan, W. Li, S. Osher, *OT-Transformer*.
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float

from ._checks import Checks
from ._field import AbstractField
from ._manifold import AbstractManifold
from ._riemannian import riemannian


class AbstractLagrangian(eqx.Module):
    r"""A Lagrangian $L(t, x, \dot x)$ on `manifold^n`, summed over tokens.

    Subclasses implement `__call__(t, x, xdot) -> scalar`, with `x`, `xdot` of shape
    `(n, d)`. `L` is evaluated in ambient coordinates: it must be a smooth function of
    `x, xdot` in a neighbourhood of the tangent bundle (its derivatives are taken
    with JAX autodiff, and the constrained Euler–Lagrange equation projects out the
    normal components).
    """

    @abc.abstractmethod
    def __call__(
        self, t, x: Float[Array, "n d"], xdot: Float[Array, "n d"]
    ) -> Float[Array, ""]:
        """The value $L(t, x, \\dot x)$."""


class Kinetic(AbstractLagrangian):
    r"""Kinetic energy $L = \tfrac12 \sum_i |\dot x_i|^2$.

    Its minimisers with fixed end points are constant-speed geodesics
    (great circles on the sphere: $\ddot x + |\dot x|^2 x = 0$).
    """

    def __call__(self, t, x, xdot):
        del t, x
        return 0.5 * jnp.sum(xdot**2)


Kinetic.__init__.__doc__ = """**Arguments:** None"""


class Tracking(AbstractLagrangian):
    r"""Tracking Lagrangian $L = \tfrac12 \sum_i |\dot x_i - X_i(t, x)|^2$.

    A flow of the field $X$ has zero action, so it is a global minimiser and solves
    the Euler–Lagrange equation
    $P_{x_i}\big(\dot r_i + \sum_j (\partial X_j/\partial x_i)^\top r_j\big) = 0$,
    $r = \dot x - X$. Fitting $X$ by minimising this action over observed paths needs
    no ODE solve (see `spherejax.variational.TrackingLoss`).
    """

    field: AbstractField

    def __call__(self, t, x, xdot):
        return 0.5 * jnp.sum((xdot - self.field(t, x, None)) ** 2)


Tracking.__init__.__doc__ = """**Arguments:**

- `field`: a spherejax field `X(t, y, args)`.
"""


class KineticPotential(AbstractLagrangian):
    r"""Kinetic plus potential: $L = \tfrac12 \sum_i |\dot x_i|^2 + U(x)$.

    (With $U = -E$ this is the usual "kinetic minus potential energy"; the maths
    page of the docs takes $U$ = minus the interaction energy.) The constrained
    Euler–Lagrange equation is $\nabla_{\dot x}\dot x = \operatorname{grad} U$, i.e. on
    the sphere
    $\ddot x = P_x \nabla U(x) - |\dot x|^2 x / r^2$, and the energy

    $$H(x, v) = \tfrac12 |v|^2 - U(x)$$

    is conserved. `vector_field(manifold)` gives this second-order system as a
    first-order field on the tangent bundle, for `diffrax` (see
    `spherejax.variational.Rattle`).
    """

    potential: Callable

    def __call__(self, t, x, xdot):
        del t
        return 0.5 * jnp.sum(xdot**2) + self.potential(x)

    def energy(
        self, x: Float[Array, "n d"], v: Float[Array, "n d"]
    ) -> Float[Array, ""]:
        """The conserved energy $H = \\tfrac12|v|^2 - U(x)$."""
        return 0.5 * jnp.sum(v**2) - self.potential(x)

    def vector_field(self, manifold: AbstractManifold) -> "TangentBundleField":
        """The Euler–Lagrange equation as a field `(t, (x, v), args) -> (v, a)`."""
        return TangentBundleField(jax.grad(self.potential), manifold)


KineticPotential.__init__.__doc__ = """**Arguments:**

- `potential`: a scalar function `U(x)` of the tokens `x` of shape `(n, d)`
  (for example `lambda x: -spherejax.interaction_energy(x, beta)`), differentiable
  with JAX.
"""


def geodesic_acceleration(manifold: AbstractManifold, x: Array, v: Array) -> Array:
    r"""$\frac{d^2}{ds^2}\exp_x(s v)\big|_{s=0}$: the (normal) acceleration of the
    geodesic through `x` with velocity `v`, e.g. $-|v|^2 x / r^2$ on a sphere of
    radius `r`. Computed with two forward-mode derivatives of `manifold.exp`.

    **Arguments:** `manifold`; `x` points of shape `(..., d)` on it; `v` tangent
    vectors at `x`, same shape. **Returns:** the accelerations, shape `(..., d)`.
    """

    def curve(s):
        return manifold.exp(x, s * v)

    def velocity(s):
        return jax.jvp(curve, (s,), (jnp.ones_like(s),))[1]

    s0 = jnp.zeros((), x.dtype)
    return jax.jvp(velocity, (s0,), (jnp.ones_like(s0),))[1]


class TangentBundleField(eqx.Module):
    r"""The second-order system $\dot x = v$,
    $\dot v = P_x F(t, x) + \mathrm{II}_x(v, v)$ as a first-order diffrax vector
    field on the tangent bundle, state `(x, v)`.

    `force(x)` (or `force(t, x)` with `time_dependent=True`) is an ambient force,
    $\mathrm{II}_x(v, v)$ is the geodesic (normal) acceleration that keeps `x` on
    the manifold. Any diffrax solver can integrate it (it then drifts off the
    manifold); `spherejax.variational.Rattle` keeps both constraints to round-off.
    """

    force: Callable
    manifold: AbstractManifold
    time_dependent: bool = eqx.field(static=True, default=False)

    def __call__(self, t, y, args=None):
        x, v = y
        f = self.force(t, x) if self.time_dependent else self.force(x)
        a = self.manifold.to_tangent(x, f) + geodesic_acceleration(self.manifold, x, v)
        return v, a


def _check_path(path, ts) -> tuple[Array, Array]:
    path = jnp.asarray(path)
    if not jnp.issubdtype(path.dtype, jnp.floating):
        path = path.astype(jnp.result_type(float))
    ts = jnp.asarray(ts, path.dtype)
    if path.ndim != 3:
        raise ValueError(f"`path` must have shape `(T, n, d)`; got {path.shape}.")
    if ts.shape != path.shape[:1]:
        raise ValueError(
            f"`ts` must have shape {path.shape[:1]} to match `path`; got {ts.shape}."
        )
    if path.shape[0] < 2:
        raise ValueError("`path` needs at least two time points.")
    checks = Checks()
    checks.finite("ts", ts)
    checks.fail_or_defer(
        jnp.diff(ts) > 0,
        "`ts` must be strictly increasing.",
    )
    return checks.attach((path, ts))


def _check_lagrangian(lagrangian, manifold):
    if not isinstance(lagrangian, AbstractLagrangian):
        raise ValueError(
            "`lagrangian` must be a spherejax Lagrangian; got "
            f"{type(lagrangian).__name__}."
        )
    if not isinstance(manifold, AbstractManifold):
        raise ValueError(f"`manifold` must be a spherejax manifold; got {manifold!r}.")


@eqx.filter_jit
def action(
    path: Float[ArrayLike, "T n d"],
    ts: Float[ArrayLike, " T"],
    lagrangian: AbstractLagrangian,
    manifold: AbstractManifold,
) -> Float[Array, ""]:
    r"""The action $S = \int_{t_0}^{t_{T-1}} L(t, x, \dot x)\, dt$ of a discrete path.

    Each interval is the constant-speed geodesic between consecutive points
    (velocity $\log_{x_k}(x_{k+1})/h_k$) and is integrated with the midpoint rule
    (module docstring, also on the API page "Action and fitting"). Exact for
    `Kinetic` on geodesic polygons; second order in the time step for smooth paths
    and smooth Lagrangians.

    **Arguments:**

    - `path`: configurations, shape `(T, n, d)`, on `manifold`.
    - `ts`: increasing times, shape `(T,)`.
    - `lagrangian`: `Kinetic()`, `Tracking(field)`, `KineticPotential(U)`, ...
    - `manifold`: where the tokens live.

    **Returns:** a scalar.
    """
    path, ts = _check_path(path, ts)
    _check_lagrangian(lagrangian, manifold)
    h = jnp.diff(ts)
    x0, x1 = path[:-1], path[1:]
    step = manifold.log(x0, x1)  # (T-1, n, d) = h_k v_k
    x_mid = manifold.exp(x0, 0.5 * step)
    v_mid = manifold.transport(x0, x_mid, step) / h[:, None, None]
    t_mid = 0.5 * (ts[:-1] + ts[1:])
    values = jax.vmap(lagrangian)(t_mid, x_mid, v_mid)
    return jnp.sum(h * values)


def _derivative_weights(offsets: list) -> list:
    """Weights `w_j` with `f'(0) ~ sum_j w_j f(s_j)`: derivatives at 0 of the Lagrange
    basis polynomials on the nodes `s_j` (which include 0)."""
    weights = []
    for j, sj in enumerate(offsets):
        total = 0.0
        for l, sl in enumerate(offsets):
            if l == j:
                continue
            term = 1.0 / (sj - sl)
            for m, sm in enumerate(offsets):
                if m != j and m != l:
                    term = term * (0.0 - sm) / (sj - sm)
            total = total + term
        weights.append(total)
    return weights


@eqx.filter_jit
def node_velocities(
    path: Float[ArrayLike, "T n d"],
    ts: Float[ArrayLike, " T"],
    manifold: AbstractManifold,
) -> Float[Array, "T n d"]:
    r"""Velocities at the nodes of a discretised path, by finite differences in
    normal coordinates.

    In normal coordinates at $x_k$ the path is the curve
    $c(t) = \log_{x_k}(x(t))$ in $T_{x_k}M$ with $c(t_k) = 0$ and
    $c'(t_k) = \dot x(t_k)$, so any finite-difference formula applies. Interior
    nodes use the three-point formula on $(t_{k-1}, t_k, t_{k+1})$ (central on a
    uniform grid, error $O(h^2)$); the end points use the one-sided four-point
    formula (error $O(h^3)$, so that a further central difference of functions of
    the velocities stays $O(h^2)$ up to the ends). Exact on constant-speed
    geodesics. Needs `T >= 3` (three-point one-sided ends when `T = 3`).
    """
    path, ts = _check_path(path, ts)
    T = path.shape[0]
    if T < 3:
        raise ValueError("`path` needs at least three time points.")
    h = jnp.diff(ts)[:, None, None]
    xk = path[1:-1]
    a = manifold.log(xk, path[:-2])
    b = manifold.log(xk, path[2:])
    hm, hp = h[:-1], h[1:]
    interior = (hm**2 * b - hp**2 * a) / (hm * hp * (hm + hp))

    m = min(T, 4)

    def one_sided(idx):
        x = path[idx[0]]
        offsets = [ts[i] - ts[idx[0]] for i in idx]
        weights = _derivative_weights(offsets)
        terms = [w * manifold.log(x, path[i]) for w, i in zip(weights[1:], idx[1:])]
        return jnp.sum(jnp.stack(terms), axis=0)

    first = one_sided(list(range(m)))
    last = one_sided([T - 1 - i for i in range(m)])
    return jnp.concatenate([first[None], interior, last[None]])


@eqx.filter_jit
def euler_lagrange_residual(
    path: Float[ArrayLike, "T n d"],
    ts: Float[ArrayLike, " T"],
    lagrangian: AbstractLagrangian,
    manifold: AbstractManifold,
) -> Float[Array, "T-2 n d"]:
    r"""The constrained Euler–Lagrange residual at the interior nodes of a path,

    $$R_k = P_{x_k}\Big(\frac{d}{dt}\frac{\partial L}{\partial \dot x}
    - \frac{\partial L}{\partial x}\Big)\Big|_{t_k},\qquad k = 1, \dots, T-2.$$

    Node velocities come from `node_velocities` (three-point, second order), the
    partial derivatives of `L` from `jax.grad`, and the time derivative of the
    momentum $p_k = \partial L/\partial \dot x(t_k, x_k, \dot x_k)$ from the
    three-point difference of $p_{k-1}, p_k, p_{k+1}$ (central on a uniform grid;
    one-sided on $p_1, p_2, p_3$ at the first interior node and symmetrically at
    the last, so no end-point velocity enters). Before differencing, the tangent
    part of each $p_j$ is parallel-transported to $x_k$ (its normal part is kept in
    ambient coordinates), so $P_{x_k}\dot p$ is the covariant derivative
    $\nabla_t p$ plus the shape-operator term of the normal part; the projection
    $P_{x_k}$ removes the constraint force. The residual
    vanishes to round-off on constant-speed geodesics for `Kinetic` (the transported
    velocities coincide), is $O(h^2)$ on smooth solutions and
    $O(\varepsilon / h^2)$ on a path perturbed by $\varepsilon$.

    **Arguments:** as `action`; `path` needs `T >= 5` points.

    **Returns:** an array `(T - 2, n, d)` of tangent vectors.
    """
    path, ts = _check_path(path, ts)
    _check_lagrangian(lagrangian, manifold)
    T = path.shape[0]
    if T < 5:
        raise ValueError("`euler_lagrange_residual` needs a path of at least 5 points.")
    # Interior velocities only (central three-point formula): their O(h^2) error is
    # a smooth function of t, so its difference quotient stays O(h^2).
    v = node_velocities(path, ts, manifold)[1:-1]
    xs, tk = path[1:-1], ts[1:-1]
    dL_dx, dL_dv = jax.vmap(jax.grad(lagrangian, argnums=(1, 2)))(tk, xs, v)
    tangent_p = manifold.to_tangent(xs, dL_dv)
    normal_p = dL_dv - tangent_p

    def moved(j, k):
        # p_j carried to x_k: tangent part by parallel transport, normal part as is.
        return manifold.transport(xs[j], xs[k], tangent_p[j]) + normal_p[j]

    m = tk.shape[0]
    k = jnp.arange(1, m - 1)
    h = jnp.diff(tk)[:, None, None]
    hm, hp = h[:-1], h[1:]
    H = hm + hp
    central = (
        -hp / (hm * H) * moved(k - 1, k)
        + (hp - hm) / (hm * hp) * dL_dv[1:-1]
        + hm / (hp * H) * moved(k + 1, k)
    )

    def one_sided(idx):
        weights = _derivative_weights([tk[i] - tk[idx[0]] for i in idx])
        terms = [w * moved(i, idx[0]) for w, i in zip(weights, idx)]
        return jnp.sum(jnp.stack(terms), axis=0)

    dp = jnp.concatenate(
        [one_sided([0, 1, 2])[None], central, one_sided([m - 1, m - 2, m - 3])[None]]
    )
    return manifold.to_tangent(xs, dp - dL_dx)


@eqx.filter_jit
def geodesic(
    x0: Float[ArrayLike, "n d"],
    x1: Float[ArrayLike, "n d"],
    ts: Float[ArrayLike, " T"],
    manifold: AbstractManifold,
) -> Float[Array, "T n d"]:
    r"""The constant-speed minimising geodesic from `x0` (at `ts[0]`) to `x1` (at
    `ts[-1]`), token by token, sampled at `ts`:
    $x(t) = \exp_{x_0}\big(s(t) \log_{x_0}(x_1)\big)$, $s = (t - t_0)/(t_{T-1} - t_0)$.

    **Returns:** an array `(T, n, d)` (`x0` and `x1` may also be single points `(d,)`,
    giving `(T, d)`).
    """
    x0, x1 = jnp.asarray(x0), jnp.asarray(x1)
    ts = jnp.asarray(ts, x0.dtype)
    s = (ts - ts[0]) / (ts[-1] - ts[0])
    u = manifold.log(x0, x1)
    s = s.reshape(s.shape + (1,) * x0.ndim)
    return manifold.exp(x0, s * u)


def _standard_promotion(
    optimizer: optax.GradientTransformation,
) -> optax.GradientTransformation:
    """`optimizer` with its `update` traced under standard dtype promotion: Optax's
    Adam raises its float decay rates to the int32 step count (`b1 ** count`), an
    implicit promotion that `jax_numpy_dtype_promotion="strict"` refuses, so the
    default optimiser of `minimum_action_path` would fail for a user with strict
    promotion. Only Optax's own arithmetic runs under it."""

    def update(updates, state, params=None):
        with jax.numpy_dtype_promotion("standard"):
            return optimizer.update(updates, state, params)

    return optax.GradientTransformation(optimizer.init, update)


def minimum_action_path(
    x0: Float[ArrayLike, "n d"],
    x1: Float[ArrayLike, "n d"],
    ts: Float[ArrayLike, " T"],
    lagrangian: AbstractLagrangian,
    manifold: AbstractManifold,
    *,
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 500,
    init: Float[ArrayLike, "T n d"] | None = None,
) -> tuple[Float[Array, "T n d"], Float[Array, " steps"]]:
    r"""Minimise the discrete action over paths with fixed end points.

    The interior points $x_1, \dots, x_{T-2}$ are optimised with
    `riemannian(optimizer, manifold)` (Riemannian gradient, inner Optax update,
    retraction), so every iterate stays on the manifold. The whole loop is one
    `jax.lax.scan` (jit-compiled once).

    **Arguments:**

    - `x0`, `x1`: end configurations `(n, d)` on `manifold`.
    - `ts`: times `(T,)`, `T >= 3`.
    - `lagrangian`, `manifold`: as in `action`.
    - `optimizer`: an Optax optimiser (default Adam with a cosine-decayed step
      `0.5 * min(h)`, which converges the kinetic problem to round-off in a few
      hundred steps at `T ~ 20`).
    - `steps`: number of optimisation steps.
    - `init`: the initial path `(T, n, d)` (default the geodesic from `x0` to `x1`);
      its end points are replaced by `x0`, `x1`.

    **Returns:** `(path, losses)`: the optimised path `(T, n, d)` and the action
    before each step.
    """
    x0, x1 = jnp.asarray(x0), jnp.asarray(x1)
    ts = jnp.asarray(ts, x0.dtype)
    if ts.ndim != 1 or ts.shape[0] < 3:
        raise ValueError("`ts` must be one-dimensional with at least three times.")
    _check_lagrangian(lagrangian, manifold)
    if init is None:
        init = geodesic(x0, x1, ts, manifold)
    init = jnp.asarray(init, x0.dtype)
    if init.shape != (ts.shape[0],) + x0.shape:
        raise ValueError(
            f"`init` must have shape {(ts.shape[0],) + x0.shape}; got {init.shape}."
        )
    if optimizer is None:
        lr = 0.5 * float(jnp.min(jnp.diff(ts)))
        adam = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=1e-3))
        optimizer = _standard_promotion(adam)
    optimizer = riemannian(optimizer, manifold)

    def objective(interior):
        path = jnp.concatenate([x0[None], interior, x1[None]])
        return action(path, ts, lagrangian, manifold)

    @jax.jit
    def run(interior):
        def body(carry, _):
            interior, state = carry
            value, grad = jax.value_and_grad(objective)(interior)
            updates, state = optimizer.update(grad, state, interior)
            return (optax.apply_updates(interior, updates), state), value

        state = optimizer.init(interior)
        (interior, _), values = jax.lax.scan(
            body, (interior, state), None, length=steps
        )
        return interior, values

    interior, values = run(manifold.project(init[1:-1]))
    return jnp.concatenate([x0[None], interior, x1[None]]), values
