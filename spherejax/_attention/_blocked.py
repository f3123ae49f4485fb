r"""The blocked (chunked) evaluation engine shared by the normalisations.

Queries are split into blocks of `size` rows; for every query block a `lax.scan`
runs over the key blocks and updates a carry (for softmax: the running maximum,
normaliser and accumulator of an online log-sum-exp), so one step holds
`h x size x size` scores. Query blocks run one after another (`lax.map`). Both the
per-query-block function and the per-key-block step are under `jax.checkpoint`:
reverse mode saves only the scan carries and recomputes the scores, so the
backward pass needs `O(n d)` memory too, never an `n x n` array.

A normalisation supplies three functions: `init(h, c, e, dtype) -> carry`,
`body(carry, s, valid, col, values, row) -> carry` (raw scores `s` `(h, c, c')`,
the allowed pairs `valid`, the per-key logit offsets `col` `(h, 1, c')`, the key
block's values `(h, c', e)` and the per-query data `row` `(h, c)`), and
`finish(carry, row) -> array` of shape `(h, c, ...)`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._mask import MaskFn


def _split(a: Array, c: int, axis: int) -> Array:
    """Zero-pad `axis` to a multiple of `c` and move the block index to the front:
    shape `(nb, ..., c, ...)`."""
    n = a.shape[axis]
    nb = -(-n // c)
    pad = nb * c - n
    if pad:
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, pad)
        a = jnp.pad(a, widths)
    shape = a.shape[:axis] + (nb, c) + a.shape[axis + 1 :]
    return jnp.moveaxis(a.reshape(shape), axis, 0)


def key_scan(
    q: Array,
    qidx: Array,
    k: Array,
    kidx: Array,
    values: Array,
    col: Array,
    row: Array,
    size: int,
    *,
    mask: MaskFn | None,
    init: Callable,
    body: Callable,
    finish: Callable,
) -> Array:
    """Run a normalisation's blocked pass.

    `q` `(h, nq, c)` with token indices `qidx` `(nq,)`; `k` `(h, nk, c)` with
    `kidx` `(nk,)`; `values` `(h, nk, e)`; `col` `(h, nk)` per-key logit offsets;
    `row` `(h, nq)` per-query data; `size` the block size. Returns
    `finish(...)` for every query, `(h, nq, ...)`.
    """
    h, nq = q.shape[0], q.shape[1]
    nk, e = k.shape[1], values.shape[-1]
    ck, cq = min(size, nk), min(size, nq)
    keys = (
        _split(k, ck, 1),
        _split(kidx, ck, 0),
        _split(jnp.ones((nk,), bool), ck, 0),  # False on padding
        _split(values, ck, 1),
        _split(col, ck, 1),
    )

    def one_query_block(qb):
        qx, qi, rw = qb

        def step(carry, kb):
            kx, ki, kvalid, vb, cb = kb
            s = jnp.einsum("hqc,hkc->hqk", qx, kx)
            valid = kvalid[None, None, :]
            if mask is not None:
                m = mask(qi, ki)
                valid = valid & (m if m.ndim == 3 else m[None])
            return body(carry, s, valid, cb[:, None, :], vb, rw), None

        carry, _ = jax.lax.scan(jax.checkpoint(step), init(h, cq, e, q.dtype), keys)
        return finish(carry, rw)

    queries = (_split(q, cq, 1), _split(qidx, cq, 0), _split(row, cq, 1))
    out = jax.lax.map(jax.checkpoint(one_query_block), queries)  # (nb, h, cq, ...)
    out = jnp.moveaxis(out, 0, 1)
    return out.reshape(h, -1, *out.shape[3:])[:, :nq]


def online_lse_step(beta: Array, with_values: bool):
    """The online log-sum-exp step of softmax-like normalisations: the carry is
    `(m, l, acc)`, the running maximum of the logits (a pure shift, held under
    `stop_gradient`, so gradients are those of the dense formula), the running sum
    of `exp(logit - m)` and the running `exp(logit - m)`-weighted sum of values."""

    def init(h, c, e, dtype):
        neg_inf = jnp.full((h, c), -jnp.inf, dtype)
        acc = jnp.zeros((h, c, e if with_values else 0), dtype)
        return neg_inf, jnp.zeros((h, c), dtype), acc

    def body(carry, s, valid, col, vb, row):
        m, l, acc = carry
        dtype = s.dtype
        logits = beta * s + col + row[:, :, None]
        logits = jnp.where(valid, logits, jnp.asarray(-jnp.inf, dtype))
        m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(logits, -1)))
        shift = jnp.where(jnp.isfinite(m_new), m_new, jnp.zeros((), dtype))
        p = jnp.exp(logits - shift[:, :, None])
        rescale = jnp.exp(m - shift)  # 0 while m = -inf
        l = rescale * l + jnp.sum(p, -1)
        if with_values:
            acc = rescale[:, :, None] * acc + jnp.einsum("hqk,hke->hqe", p, vb)
        return m_new, l, acc

    return init, body


def finite_shift(m: Array) -> Array:
    """The running maximum `m` with `-inf` (rows with no key) replaced by 0."""
    return jnp.where(jnp.isfinite(m), m, jnp.zeros((), m.dtype))
