r"""Evaluation strategies: how $\sum_j A_{ij} v_j$ is computed.

- `Dense()`: the `(h, n, n)` scores at once (fastest for moderate `n`);
- `Chunked(size)`: blocks of `size` queries against blocks of `size` keys with
  online statistics (every built-in normalisation; memory `O(n d)` forward and
  backward, equal to the dense result up to rounding).

**`jax.nn.dot_product_attention`.** One rule, in `Dense`: on a GPU/TPU backend,
softmax attention in float32 or lower precision, with no mask other than `Causal`,
goes through `jax.nn.dot_product_attention` (the entry point for fused attention
kernels). Not on CPU, where its XLA implementation measured 2x slower than the
code of `Softmax.dense` (`benchmarks/field_throughput.py`), nor in float64 (it
computes its softmax in float32), nor for the other normalisations or masks.
`uses_dot_product_attention` says which.
"""

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._mask import AbstractMask, Causal, mask_fn
from ._normalization import AbstractNormalization, Softmax


class AbstractEvaluation(eqx.Module):
    r"""How to evaluate $\sum_j A_{ij} v_j$ for a normalisation.

    `__call__(normalization, q, k, v, beta, log_weights, masks, qidx, kidx)` with
    `q` `(..., nq, c)`, `k` `(..., nk, c)`, `v` `(..., nk, e)` (an optional leading
    head axis), `log_weights` `(nk,)` or `None` (uniform), `masks` a tuple of
    masks and `qidx`, `kidx` the token indices of the queries and keys. Returns
    `(..., nq, e)`.

    A strategy that needs the tokens themselves rather than projected queries and
    keys (`Spectral`) sets the class variable `from_tokens` and implements
    `attend(field, y_rows, rows, y, v)`; `bind(field)` is called when a field is
    built and returns the strategy to store (checked against the field's parts,
    with anything chosen from them).
    """

    from_tokens: ClassVar[bool] = False

    @abc.abstractmethod
    def __call__(
        self,
        normalization: AbstractNormalization,
        q: Float[Array, "*h nq c"],
        k: Float[Array, "*h nk c"],
        v: Float[Array, "*h nk e"],
        beta: Float[Array, ""],
        log_weights: Float[Array, " nk"] | None,
        masks: tuple[AbstractMask, ...],
        qidx: Array,
        kidx: Array,
    ) -> Float[Array, "*h nq e"]:
        """The attention outputs."""

    def check(self, normalization: AbstractNormalization, d: int) -> None:
        """Raise a `ValueError` if this strategy cannot evaluate `normalization`
        on tokens of dimension `d`."""
        del normalization, d

    def bind(self, field) -> "AbstractEvaluation":
        """The strategy to store in `field` (called when the field is built)."""
        del field
        return self

    def attend(self, field, y_rows: Array, rows: Array, y: Array, v: Array) -> Array:
        """Attention outputs per query head `(h, m, e)` from the tokens (strategies
        with `from_tokens`)."""
        raise NotImplementedError(f"{type(self).__name__} evaluates from q, k, v.")


def _dpa_backend() -> bool:
    return _FORCE_DPA or jax.default_backend() in ("gpu", "cuda", "rocm", "tpu")


_FORCE_DPA = False  # tests and benchmarks flip this to exercise the route on CPU


def uses_dot_product_attention(
    dtype, normalization: AbstractNormalization, masks: tuple[AbstractMask, ...] = ()
) -> bool:
    """Whether dense evaluation routes through `jax.nn.dot_product_attention`:
    softmax attention in float32 or lower precision, no mask but `Causal`, on a
    GPU/TPU backend."""
    return (
        type(normalization) is Softmax
        and all(type(m) is Causal for m in masks)
        and jnp.finfo(dtype).bits <= 32
        and _dpa_backend()
    )


def _dot_product_attention(q, k, v, beta, log_weights, causal: bool):
    if q.ndim == 2:  # one head without its head axis
        return _dot_product_attention(
            q[None], k[None], v[None], beta, log_weights, causal
        )[0]
    c, e = q.shape[-1], v.shape[-1]
    size = max(c, e)  # one head size for q, k, v: zero-padding changes nothing

    def pad(a):  # (h, n, .) -> (1, n, h, size)
        width = size - a.shape[-1]
        a = a if width == 0 else jnp.pad(a, ((0, 0), (0, 0), (0, width)))
        return jnp.swapaxes(a, 0, 1)[None]

    bias = None if log_weights is None else log_weights[None, None, None, :]
    out = jax.nn.dot_product_attention(
        pad(q), pad(k), pad(v), bias=bias, scale=beta, is_causal=causal
    )
    return jnp.swapaxes(out[0, :, :, :e], 0, 1)


class Dense(AbstractEvaluation):
    """All scores at once: `(h, nq, nk)` memory. The default."""

    def __call__(self, normalization, q, k, v, beta, log_weights, masks, qidx, kidx):
        square = q.shape[-2] == k.shape[-2]  # all queries (not a token shard)
        if square and uses_dot_product_attention(q.dtype, normalization, masks):
            return _dot_product_attention(q, k, v, beta, log_weights, bool(masks))
        fn = mask_fn(masks)
        mask = None if fn is None else fn(qidx, kidx)
        if mask is not None and q.ndim == 2 and mask.ndim == 3:
            mask = mask[0]  # one head passed without its head axis
        return normalization.dense(q, k, v, beta, log_weights, mask)


Dense.__init__.__doc__ = """**Arguments:** None."""


class Chunked(AbstractEvaluation):
    """Blocks of `size` queries against blocks of `size` keys, with online
    statistics over the key blocks (see the normalisations' `blocked`): never more
    than `h x size x size` scores at once, in the forward and (by recomputation)
    the backward pass. With `size >= n` this is `Dense()`."""

    size: int = eqx.field(static=True)

    def __init__(self, size: int):
        if isinstance(size, bool) or int(size) != size or size < 1:
            raise ValueError(f"`size` must be a positive integer; got {size!r}.")
        self.size = int(size)

    def __call__(self, normalization, q, k, v, beta, log_weights, masks, qidx, kidx):
        nq, nk = q.shape[-2], k.shape[-2]
        if self.size >= nk and self.size >= nq:
            return Dense()(normalization, q, k, v, beta, log_weights, masks, qidx, kidx)
        heads = q.ndim == 3
        if not heads:
            q, k, v = q[None], k[None], v[None]
        out = normalization.blocked(
            q, qidx, k, kidx, v, beta, log_weights, mask_fn(masks), self.size
        )
        return out if heads else out[0]


Chunked.__init__.__doc__ = """**Arguments:**

- `size`: the block size (a positive integer).
"""
