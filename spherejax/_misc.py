"""Small numerical helpers shared by the manifolds, fields and solvers."""

import jax.numpy as jnp
from jaxtyping import Array


def safe_norm(v: Array, axis: int = -1, keepdims: bool = False) -> Array:
    """Euclidean norm whose gradient is finite (zero) at `v = 0`.

    The double `where` keeps the `sqrt` away from 0 in both the primal and the
    cotangent computations (NaN-safe at rest points: see the numerical contracts
    in the docs).
    """
    sq = jnp.sum(v * v, axis=axis, keepdims=keepdims)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _series_or(s: Array, small: Array, large_fn, series_fn) -> Array:
    safe_s = jnp.where(small, 1.0, s)
    return jnp.where(small, series_fn(s), large_fn(safe_s))


def cos_sqrt(s: Array) -> Array:
    """`cos(sqrt(s))` for `s >= 0`, smooth (all derivatives finite) at `s = 0`."""
    small = s < 1e-4
    return _series_or(
        s,
        small,
        lambda x: jnp.cos(jnp.sqrt(x)),
        lambda x: 1 - x / 2 + x**2 / 24 - x**3 / 720,
    )


def sinc_sqrt(s: Array) -> Array:
    """`sin(sqrt(s)) / sqrt(s)` for `s >= 0`, smooth at `s = 0`."""
    small = s < 1e-4
    return _series_or(
        s,
        small,
        lambda x: jnp.sin(jnp.sqrt(x)) / jnp.sqrt(x),
        lambda x: 1 - x / 6 + x**2 / 120 - x**3 / 5040,
    )


def is_concrete(x) -> bool:
    """True when `x` holds a value now (not a tracer inside jit/vmap/grad)."""
    try:
        import jax.core

        return not isinstance(x, jax.core.Tracer)
    except Exception:  # pragma: no cover
        return True
