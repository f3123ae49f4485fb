r"""Heads: the projections of the tokens into queries, keys and values.

Query head $a$ has $q^a_i = Q_a x_i + b^Q_a$; key/value heads may be fewer
(grouped-query attention: `g` key heads for `h` query heads, `h` a multiple of
`g`, query head $a$ reading key head $\lfloor a g / h\rfloor$, Hugging Face's
`repeat_kv` order). Positions (e.g. rotary embeddings) act on the projected
queries and keys.
"""

import jax.numpy as jnp
from jaxtyping import Array

from ._position import AbstractPosition


def project(
    A: Array | None, x: Array, bias: Array | None, pattern: str = "hkd,nd->hnk"
) -> Array:
    """`A_h x_j + b_h` for every head and token: `x` itself when `A` is `None`
    (identity heads); `(h, n, k)` for `(h, k, d)` matrices."""
    out = x if A is None else jnp.einsum(pattern, A, x)
    return out if bias is None else out + bias[..., None, :]


def expand_groups(a: Array, heads: int) -> Array:
    """Key or value heads `(g, n, .)` repeated for `heads` query heads (each key
    head serves `heads / g` consecutive query heads)."""
    g = a.shape[0]
    return a if g == heads else jnp.repeat(a, heads // g, axis=0)


def queries_keys(
    Q: Array | None,
    K: Array | None,
    query_bias: Array | None,
    key_bias: Array | None,
    position: AbstractPosition | None,
    xq: Array,
    qidx: Array,
    xk: Array,
    kidx: Array,
) -> tuple[Array, Array]:
    """Projected (and position-encoded) queries `(h, nq, k)` and keys expanded
    to the query heads `(h, nk, k)`; `(nq, d)`, `(nk, d)` for identity heads."""
    q = project(Q, xq, query_bias)
    k = project(K, xk, key_bias)
    if position is not None:
        q = position(q, qidx)
        k = position(k, kidx)
    if Q is not None:
        k = expand_groups(k, q.shape[0])
    return q, k
