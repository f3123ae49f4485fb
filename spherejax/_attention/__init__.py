"""Attention from parts: normalisations, masks, positions, heads and evaluation
strategies (see the maths page of the docs). `SelfAttention` and
`IdentityAttention` are compositions of these parts."""

import warnings

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Real

from ._evaluation import (
    AbstractEvaluation as AbstractEvaluation,
    Chunked as Chunked,
    Dense as Dense,
    uses_dot_product_attention as uses_dot_product_attention,
)
from ._heads import queries_keys
from ._mask import (
    AbstractMask as AbstractMask,
    Causal as Causal,
    KeyMask as KeyMask,
    SlidingWindow as SlidingWindow,
    as_masks as as_masks,
    mask_fn as mask_fn,
)
from ._normalization import (
    NAMES as NAMES,
    AbstractElementwiseNormalization as AbstractElementwiseNormalization,
    AbstractNormalization as AbstractNormalization,
    Hardmax as Hardmax,
    Sinkhorn as Sinkhorn,
    Softmax as Softmax,
    Unnormalized as Unnormalized,
    normalization_name as normalization_name,
    uniform_log_weights as uniform_log_weights,
)
from ._position import AbstractPosition as AbstractPosition, RoPE as RoPE
from ._spectral import Spectral as Spectral


NORMALIZATIONS = tuple(NAMES)
"""The names of the built-in normalisations (`"softmax"`, ...)."""


def normalization_from_name(
    name: str, *, iterations: int = 100
) -> AbstractNormalization:
    """The built-in normalisation called `name` (`"softmax"`, `"unnormalized"`,
    `"sinkhorn"` with `iterations`, `"hardmax"`)."""
    if name not in NAMES:
        raise ValueError(
            f"unknown `normalization` {name!r}; expected one of {NORMALIZATIONS} "
            "or a normalisation such as `Softmax()`."
        )
    return Sinkhorn(iterations) if name == "sinkhorn" else NAMES[name]()


def legacy_parts(
    where: str,
    normalization,
    *,
    causal: bool | None = None,
    sinkhorn_iters: int | None = None,
    chunk_size: int | None = None,
    key_mask=None,
    mask=None,
    evaluation=None,
) -> tuple[AbstractNormalization, tuple[AbstractMask, ...], AbstractEvaluation | None]:
    """The parts for the keyword options of earlier releases (`normalization` by
    name, `causal`, `sinkhorn_iters`, `chunk_size`, `key_mask`), each with a
    `DeprecationWarning` naming its replacement."""
    old = []
    if isinstance(normalization, str):
        normalization_name_ = normalization
        normalization = normalization_from_name(
            normalization, iterations=100 if sinkhorn_iters is None else sinkhorn_iters
        )
        new = type(normalization).__name__
        old.append(f"normalization={normalization_name_!r} -> normalization=sj.{new}()")
    elif sinkhorn_iters is not None:
        old.append("sinkhorn_iters -> normalization=sj.Sinkhorn(iterations)")
        if isinstance(normalization, Sinkhorn):
            normalization = Sinkhorn(sinkhorn_iters)
    if not isinstance(normalization, AbstractNormalization):
        raise ValueError(
            "`normalization` must be a normalisation (`Softmax()`, `Unnormalized()`, "
            f"`Sinkhorn(iterations)`, `Hardmax()`, ...); got {normalization!r}."
        )
    masks = as_masks(mask)
    if causal:
        old.append("causal=True -> mask=sj.Causal()")
        masks = (Causal(), *masks)
    elif causal is not None and causal is not False:
        raise ValueError(f"`causal` must be True or False; got {causal!r}.")
    if key_mask is not None:
        old.append("key_mask=m -> mask=sj.KeyMask(m)")
        masks = (*masks, KeyMask(key_mask))
    if chunk_size is not None:
        old.append("chunk_size=c -> evaluation=sj.Chunked(c)")
        if evaluation is not None:
            raise ValueError("give `evaluation` or `chunk_size`, not both.")
        if (
            isinstance(chunk_size, bool)
            or int(chunk_size) != chunk_size
            or chunk_size < 1
        ):
            raise ValueError(
                f"`chunk_size` must be a positive integer; got {chunk_size!r}."
            )
        evaluation = Chunked(chunk_size)
    if old:
        warnings.warn(
            f"`{where}`: keyword options of earlier releases: " + "; ".join(old) + ".",
            DeprecationWarning,
            stacklevel=3,
        )
    return normalization, masks, evaluation


def attention_matrix(
    x: Float[ArrayLike, "n d"],
    Q: Float[ArrayLike, "*h k d"],
    K: Float[ArrayLike, "*g k d"],
    beta: Real[ArrayLike, ""],
    *,
    normalization: AbstractNormalization | str = Softmax(),
    mask: AbstractMask | tuple[AbstractMask, ...] | None = None,
    position: AbstractPosition | None = None,
    log_weights: Float[ArrayLike, " n"] | None = None,
    query_bias: Float[ArrayLike, "*h k"] | None = None,
    key_bias: Float[ArrayLike, "*g k"] | None = None,
    causal: bool | None = None,
    sinkhorn_iters: int | None = None,
    key_mask: Bool[ArrayLike, "*h n"] | None = None,
) -> Float[Array, "h n n"]:
    """The full attention matrix `A^h_ij`, shape `(h, n, n)` (dense; for analysis
    and tests).

    **Arguments:**

    - `x`: tokens, `(n, d)`.
    - `Q`, `K`: `(h, k, d)` and `(g, k, d)` (`g` dividing `h`: grouped key heads),
      or single-head `(k, d)` arrays.
    - `beta`: inverse temperature.
    - `normalization`, `mask`, `position`: attention parts (`Softmax()` and no
      mask or position by default).
    - `log_weights`: `log w_j`, `(n,)` (default uniform).
    - `query_bias`, `key_bias`: `(h, k)` and `(g, k)` (or `(k,)` for one head).
    - `causal`, `sinkhorn_iters`, `key_mask`: options of earlier releases
      (deprecated: use `mask=Causal()`, `Sinkhorn(iterations)`, `KeyMask(m)`).
    """
    normalization, masks, _ = legacy_parts(
        "attention_matrix",
        normalization,
        causal=causal,
        sinkhorn_iters=sinkhorn_iters,
        key_mask=key_mask,
        mask=mask,
    )
    if masks and not normalization.row_local:
        raise ValueError(f"{type(normalization).__name__} attention takes no mask.")
    x = jnp.asarray(x)
    Q, K = (jnp.asarray(a, x.dtype) for a in (Q, K))
    Q, K = (a[None] if a.ndim == 2 else a for a in (Q, K))
    qb, kb = (
        None if b is None else jnp.atleast_2d(jnp.asarray(b, x.dtype))
        for b in (query_bias, key_bias)
    )
    n = x.shape[0]
    idx = jnp.arange(n)
    q, k = queries_keys(Q, K, qb, kb, position, x, idx, x, idx)
    s = jnp.einsum("hic,hjc->hij", q, k)
    lw = (
        uniform_log_weights(n, x.dtype)
        if log_weights is None
        else jnp.asarray(log_weights, x.dtype)
    )
    fn = mask_fn(masks)
    m = None if fn is None else fn(idx, idx)
    return normalization.matrix(s, jnp.asarray(beta, x.dtype), lw, m)
