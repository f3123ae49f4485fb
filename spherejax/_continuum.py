r"""Continuum limits of attention flows: quadrature in the token index and in the
feature index, and the Gaussian closure of the mean-field equation without
normalisation.

**Token continuum.** Tokens indexed by $s \in [0, 1]$ with a profile $x_0(s)$: the
flow of the measure $\int \delta_{x(s)}\,ds$ is, at quadrature nodes $s_j$ with
weights $w_j$, the particle system `SelfAttention(..., weights=w)` started at
$x_0(s_j)$; integrals $\int \varphi(x(s, t))\,ds \approx \sum_j w_j \varphi(x_j(t))$
converge at the rate of the quadrature rule.

**Feature continuum** (Tai–Liu–Li–Chan). A token is a function $u(y)$,
$y \in \Omega_y = [0, 1]$, living on the unit sphere of $L^2(\Omega_y)$; queries, keys
and values are integral operators,
$(\mathcal Q u)(\eta) = \int q(\xi, \eta) u(\xi)\,d\xi$, and scores are $L^2$ inner
products $\langle \mathcal Q u_i, \mathcal K u_j\rangle$.
With feature nodes $\xi_a$ and weights $\omega_a$, in the weighted coordinates
$\tilde u_a = \sqrt{\omega_a}\, u(\xi_a)$ (where $|\tilde u| = \|u\|_{L^2}$) the
operators become the matrices
$\tilde Q_{ba} = \sqrt{\omega_b}\, q(\xi_a, \xi_b) \sqrt{\omega_a}$
(and likewise $\tilde K, \tilde V$), and the discrete model is an ordinary
`SelfAttention` on `Sphere()`; refining the grid converges (discretisation invariance).

**Gaussian closure** (Castin–Ablin–Carrillo–Peyré). Without normalisation (tokens in
$\mathbb R^d$), softmax attention maps a Gaussian $N(\mu, \Sigma)$ to the affine
velocity $v(x) = V(\mu + \Sigma A x)$, $A = \beta K^\top Q$, so Gaussians stay Gaussian
with $\mu' = V(\mu + \Sigma A \mu)$ and
$\Sigma' = V\Sigma A \Sigma + (V\Sigma A\Sigma)^\top$.

??? cite
    X.-C. Tai, H. Liu, L. Li, R. H. Chan, *A mathematical explanation of Transformers
    for large language models and GPTs*, arXiv:2510.03989 (2025).
    V. Castin, P. Ablin, J. A. Carrillo, G. Peyré, *A unified perspective on the
    dynamics of deep Transformers*, arXiv:2501.18322 (2025).
"""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._manifold import AbstractManifold, Sphere


RULES = ("midpoint", "gauss")


def quadrature(
    num: int, rule: str = "midpoint", interval: tuple[float, float] = (0.0, 1.0)
) -> tuple[Float[Array, " num"], Float[Array, " num"]]:
    r"""Nodes and weights of a `num`-point rule on `interval` (weights sum to its
    length).

    - `"midpoint"`: $s_j = a + (j + \tfrac12) h$, $w_j = h$; error $O(\text{num}^{-2})$
      for smooth non-periodic integrands.
    - `"gauss"`: Gauss–Legendre; exact for polynomials of degree `2 num - 1`, error
      decaying faster than any power for analytic integrands.
    """
    if int(num) != num or num < 1:
        raise ValueError(f"`num` must be a positive integer; got {num}.")
    a, b = (float(c) for c in interval)
    if not b > a:
        raise ValueError(f"`interval` must have a < b; got {interval}.")
    if rule == "midpoint":
        h = (b - a) / num
        nodes = a + h * (np.arange(num) + 0.5)
        weights = np.full(num, h)
    elif rule == "gauss":
        x, w = np.polynomial.legendre.leggauss(int(num))
        nodes = a + (b - a) * (x + 1) / 2
        weights = w * (b - a) / 2
    else:
        raise ValueError(f"unknown `rule` {rule!r}; expected one of {RULES}.")
    dtype = jnp.result_type(float)
    return jnp.asarray(nodes, dtype), jnp.asarray(weights, dtype)


def token_continuum(
    profile: Callable[[Array], Array],
    num: int,
    rule: str = "midpoint",
    *,
    manifold: AbstractManifold = Sphere(),
) -> tuple[Float[Array, " n"], Float[Array, " n"], Float[Array, "n d"]]:
    r"""Discretise tokens indexed by $s \in [0, 1]$.

    **Arguments:**

    - `profile`: $s \mapsto x_0(s) \in \mathbb R^d$ (JAX-traceable, scalar `s`).
    - `num`, `rule`: the quadrature (see `quadrature`).
    - `manifold`: the initial tokens are `manifold.project(x0(s_j))`.

    **Returns:** `(s, w, y0)`: nodes, weights summing to one (pass them as
    `SelfAttention(..., weights=w)`) and initial tokens `(num, d)`.
    """
    s, w = quadrature(num, rule)
    return s, w, _initial_tokens(profile, s, manifold)


@eqx.filter_jit
def _initial_tokens(profile, s, manifold):
    return manifold.project(jax.vmap(profile)(s))


def feature_operator(
    kernel: Callable[[Array, Array], Array],
    nodes: Float[ArrayLike, " N"],
    weights: Float[ArrayLike, " N"],
) -> Float[Array, "N N"]:
    r"""The matrix of the integral operator $(\mathcal W u)(\eta) = \int w(\xi, \eta)
    u(\xi)\,d\xi$ in weighted coordinates:
    $\tilde W_{ba} = \sqrt{\omega_b}\, w(\xi_a, \xi_b)\sqrt{\omega_a}$.

    `kernel(xi, eta)` must broadcast over arrays (any function written with
    `jnp` element-wise operations does).
    """
    nodes, weights = jnp.asarray(nodes), jnp.asarray(weights)
    # values[b, a] = kernel(xi_a, eta_b)
    values = jnp.broadcast_to(kernel(nodes[None, :], nodes[:, None]), (nodes.size,) * 2)
    r = jnp.sqrt(weights)
    return r[:, None] * values * r[None, :]


def feature_continuum(
    q: Callable,
    k: Callable,
    v: Callable,
    num: int,
    rule: str = "midpoint",
) -> tuple[Float[Array, " N"], Float[Array, " N"], Array, Array, Array]:
    r"""Discretise query, key and value kernels on $[0, 1]^2$ with `num` feature nodes.

    **Returns:** `(nodes, weights, Q, K, V)`, the matrices in weighted coordinates
    (see `feature_operator`), ready for `SelfAttention(Q, K, V, beta)` on `Sphere()`.
    Scores are then $\beta\,\langle \mathcal Q u_i, \mathcal K u_j\rangle_{L^2}$ up to
    quadrature error. Use `to_features` / `from_features` to convert tokens.
    """
    nodes, weights = quadrature(num, rule)
    Q, K, V = _operators((q, k, v), nodes, weights)
    return nodes, weights, Q, K, V


@eqx.filter_jit
def _operators(kernels, nodes, weights):
    return tuple(feature_operator(f, nodes, weights) for f in kernels)


def to_features(
    values: Float[ArrayLike, "*b N"], weights: Float[ArrayLike, " N"]
) -> Float[Array, "*b N"]:
    r"""Function values $u(\xi_a)$ -> weighted coordinates
    $\sqrt{\omega_a} u(\xi_a)$."""
    return jnp.asarray(values) * jnp.sqrt(jnp.asarray(weights))


def from_features(
    coords: Float[ArrayLike, "*b N"], weights: Float[ArrayLike, " N"]
) -> Float[Array, "*b N"]:
    """Inverse of `to_features`: weighted coordinates -> values at the nodes."""
    return jnp.asarray(coords) / jnp.sqrt(jnp.asarray(weights))


def gaussian_closure(
    mean0: Float[ArrayLike, " d"],
    cov0: Float[ArrayLike, "d d"],
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    beta: ArrayLike,
    ts: Float[ArrayLike, " T"],
    *,
    rtol: float = 1e-12,
    atol: float = 1e-12,
) -> tuple[Float[Array, "T d"], Float[Array, "T d d"]]:
    r"""Mean and covariance of the mean-field softmax attention flow without
    normalisation from a Gaussian $N(\mu_0, \Sigma_0)$ (Castin–Ablin–Carrillo–Peyré):

    $$\mu' = \sum_h V_h(\mu + \Sigma A_h \mu),\qquad
    \Sigma' = \sum_h \big(V_h \Sigma A_h \Sigma + (V_h\Sigma A_h\Sigma)^\top\big),\qquad
    A_h = \beta K_h^\top Q_h.$$

    The tilted Gaussian $\propto e^{\beta\langle Q x, K y\rangle} N(y; \mu, \Sigma)$ has
    mean $\mu + \Sigma A x$, so the velocity is affine in $x$ and Gaussians stay
    Gaussian (until a possible finite-time blow-up).

    **Arguments:** `mean0 (d,)`, `cov0 (d, d)`; `Q, K` of shape `(k, d)` or
    `(h, k, d)`, `V` `(d, d)` or `(h, d, d)` (as for `SelfAttention` on
    `Euclidean()`); `beta`; save times `ts` (from `ts[0]`); tolerances of
    `diffrax.Tsit5`.

    **Returns:** `(means, covs)` of shapes `(T, d)` and `(T, d, d)`.
    """
    ts = jnp.asarray(ts, jnp.result_type(float))
    dt = ts.dtype
    Q, K, V = (jnp.asarray(a, dt) for a in (Q, K, V))
    if Q.ndim == 2:
        Q, K, V = Q[None], K[None], V[None]
    A = jnp.asarray(beta, dt) * jnp.einsum("hkd,hke->hde", K, Q)  # K_h^T Q_h
    y0 = (jnp.asarray(mean0, dt), jnp.asarray(cov0, dt))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_closure_rhs),
        diffrax.Tsit5(),
        ts[0],
        ts[-1],
        None,
        y0,
        args=(V, A),
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=100_000,
    )
    means, covs = sol.ys  # pyright: ignore[reportGeneralTypeIssues]
    return means, covs


def _closure_rhs(t, state, args):
    V, A = args
    mu, S = state
    dmu = jnp.einsum("hde,he->d", V, mu + jnp.einsum("ab,hbc,c->ha", S, A, mu))
    M = jnp.einsum("hab,bc,hcd,de->ae", V, S, A, S)
    return dmu, M + M.T
