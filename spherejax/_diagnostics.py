"""Diagnostics of token configurations: cosines, clusters, and GLPR's equiangular
reference ODE."""

from typing import cast

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._misc import is_concrete, safe_norm


def pairwise_cosines(x: Float[ArrayLike, "n d"]) -> Float[Array, "n n"]:
    """Matrix of cosines `<x_i, x_j> / (|x_i| |x_j|)` (works for any radius)."""
    x = jnp.asarray(x)
    u = x / safe_norm(x, keepdims=True)
    return u @ jnp.swapaxes(u, -1, -2)


def clusters(x: Float[ArrayLike, "n d"], tol: float = 1e-3) -> np.ndarray:
    """Cluster labels `0..c-1` (in order of first appearance).

    Tokens `i, j` are linked when `1 - cos(x_i, x_j) <= tol`; clusters are the
    connected components of that graph. Non-finite or zero tokens raise
    `ValueError` (their cluster is undefined).
    """
    if not tol >= 0:
        raise ValueError(f"`tol` must be non-negative; got {tol}.")
    x_np = np.asarray(x)
    if x_np.ndim != 2:
        raise ValueError(f"`x` must have shape `(n, d)`; got {x_np.shape}.")
    if not np.all(np.isfinite(x_np)):
        bad = np.unique(np.argwhere(~np.isfinite(x_np))[:, 0])
        raise ValueError(f"`x` contains NaN or inf (tokens {bad.tolist()[:10]}).")
    zero = np.flatnonzero(~np.any(x_np != 0, axis=-1))
    if zero.size:
        raise ValueError(
            f"`x` has zero tokens (rows {zero.tolist()[:10]}): their direction, "
            "hence their cluster, is undefined."
        )
    close = np.asarray(1 - pairwise_cosines(x)) <= tol
    n = close.shape[0]
    labels = -np.ones(n, dtype=int)
    current = 0
    for i in range(n):
        if labels[i] >= 0:
            continue
        stack = [i]
        labels[i] = current
        while stack:
            j = stack.pop()
            for k in np.nonzero(close[j] & (labels < 0))[0]:
                labels[k] = current
                stack.append(int(k))
        current += 1
    return labels


def cluster_count(x: Float[ArrayLike, "n d"], tol: float = 1e-3) -> int:
    """Number of clusters of `clusters(x, tol)`."""
    return int(clusters(x, tol).max()) + 1


def equiangular(
    ts: Float[ArrayLike, " T"],
    beta: float,
    n: int,
    rho0: float,
    normalization: str = "softmax",
    *,
    rtol: float = 1e-12,
    atol: float = 1e-14,
) -> Float[Array, " T"]:
    r"""Common inner product `rho(t)` of an equiangular configuration (GLPR Thm 6.8).

    With `Q = K = V = I`, `n` tokens with `<x_i, x_j> = rho` for all `i != j` stay
    equiangular, and

    - SA: $\rho' = \dfrac{2 e^{\beta\rho}(1-\rho)((n-1)\rho+1)}
      {e^\beta + (n-1)e^{\beta\rho}}$,
    - USA: $\rho' = \tfrac{2}{n} e^{\beta\rho}(1-\rho)((n-1)\rho+1)$.

    Solved with `diffrax.Dopri8` at tight tolerances from `ts[0]`. `ts` must be
    concrete, finite and non-decreasing, `n >= 2`, `beta` finite and
    `-1/(n-1) <= rho0 <= 1` (the Gram matrix of equiangular unit vectors is positive
    semi-definite exactly then); otherwise `ValueError`.
    """
    ts = jnp.asarray(ts, dtype=jnp.result_type(float))
    ts_np = np.asarray(ts)
    if ts_np.ndim != 1 or ts_np.size == 0:
        raise ValueError(f"`ts` must be a non-empty 1-d array; got shape {ts.shape}.")
    if not (np.all(np.isfinite(ts_np)) and np.all(np.diff(ts_np) >= 0)):
        raise ValueError("`ts` must be finite and non-decreasing.")
    if isinstance(n, bool) or int(n) != n or n < 2:
        raise ValueError(f"`n` must be an integer >= 2; got {n!r}.")
    rho0_message = (
        f"`rho0` must lie in [-1/(n - 1), 1] = [{-1 / (n - 1):.4g}, 1] (the "
        f"inner products of {n} equiangular unit vectors); got {{}}."
    )
    if is_concrete(beta):
        if not np.isfinite(float(beta)):
            raise ValueError(f"`beta` must be finite; got {beta}.")
    else:  # traced (jit, vmap over beta): checked at run time
        beta = eqx.error_if(beta, ~jnp.isfinite(beta), "`beta` must be finite.")
    if is_concrete(rho0):
        if not -1 / (n - 1) <= float(rho0) <= 1:
            raise ValueError(rho0_message.format(rho0))
    else:
        rho0 = eqx.error_if(
            rho0,
            ~((-1 / (n - 1) <= rho0) & (rho0 <= 1)),
            rho0_message.format("a traced value outside"),
        )
    beta_t = jnp.asarray(beta, ts.dtype)
    if normalization == "softmax":

        def rhs(t, rho, args):
            e = jnp.exp(beta_t * rho)
            return (
                2
                * e
                * (1 - rho)
                * ((n - 1) * rho + 1)
                / (jnp.exp(beta_t) + (n - 1) * e)
            )

    elif normalization == "unnormalized":

        def rhs(t, rho, args):
            return 2 / n * jnp.exp(beta_t * rho) * (1 - rho) * ((n - 1) * rho + 1)

    else:
        raise ValueError(
            "`normalization` must be 'softmax' or 'unnormalized'; got "
            f"{normalization!r}."
        )
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(rhs),
        diffrax.Dopri8(),
        ts[0],
        ts[-1],
        None,
        jnp.asarray(rho0, ts.dtype),
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=100_000,
    )
    return cast(Array, sol.ys)
