r"""Attention weights and attention-weighted sums.

For one head with parameters `Q, K` (shape `(k, d)`) the scores are
$s_{ij} = \beta \langle Q x_i, K x_j\rangle$ and the kernel is
$k_{ij} = w_j m_{ij} e^{s_{ij}}$ (quadrature weights `w`, mask `m`). The four
normalisations (see the maths page of the docs) turn the kernel into the attention
matrix `A`:

- `"softmax"`: $A_{ij} = k_{ij} / \sum_l k_{il}$ (SA);
- `"unnormalized"`: $A_{ij} = k_{ij}$ (USA; the weights already sum to one);
- `"sinkhorn"`: $A_{ij} = e^{s_{ij} + f_i + g_j} w_j$ with rows summing to one and
  $\sum_i w_i A_{ij} = w_j$ (doubly stochastic for uniform weights), potentials found
  by log-domain Sinkhorn iterations (Sander et al., *Sinkformers*, 2022);
- `"hardmax"` ($\beta \to \infty$): uniform weight (`w`-weighted) on the argmax set
  of $j \mapsto \langle Q x_i, K x_j\rangle$.

**Memory.** `attend(..., chunk_size=c)` never forms more than `c x c` scores per
head at once (every normalisation): an online log-sum-exp over key blocks for
softmax/unnormalized, two passes (row max, then weights) for hardmax, and blockwise
row/column log-sum-exps for each Sinkhorn iteration. Reverse mode recomputes the
score blocks (`jax.checkpoint` inside `lax.scan`), so gradients need `O(n d)` memory
as well (plus `O(iters n)` for the Sinkhorn potentials).

**`jax.nn.dot_product_attention`.** On GPU/TPU backends, dense (`chunk_size=None`)
softmax attention in float32 or lower precision goes through
`jax.nn.dot_product_attention` (the entry point for fused attention kernels; in
jax 0.10 it picks its XLA implementation unless told otherwise). It is not used
on CPU, where that XLA implementation measured 2x slower than the code below
(`benchmarks/field_throughput.py`), nor for float64 (it always computes its
softmax in float32, which would lose float64 accuracy), nor for the other
normalisations or chunked evaluation. `uses_dot_product_attention` says which.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from jaxtyping import Array, ArrayLike, Bool, Float, Real


NORMALIZATIONS = ("softmax", "unnormalized", "sinkhorn", "hardmax")


def _check_normalization(normalization: str, causal: bool) -> None:
    """Raise a `ValueError` unless `normalization` is one of `NORMALIZATIONS` and
    can be combined with `causal` (Sinkhorn cannot)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"unknown `normalization` {normalization!r}; "
            f"expected one of {NORMALIZATIONS}."
        )
    if causal and normalization == "sinkhorn":
        raise ValueError("`normalization='sinkhorn'` cannot be combined with `causal`.")


def scores(
    xq: Float[Array, "nq d"],
    xk: Float[Array, "nk d"],
    Q: Float[Array, "h k d"],
    K: Float[Array, "h k d"],
    query_bias: Float[Array, "h k"] | None = None,
    key_bias: Float[Array, "h k"] | None = None,
) -> Float[Array, "h nq nk"]:
    """Unscaled scores `<Q_h x_i + a_h, K_h x_j + b_h>` for every head (biases
    `a = query_bias`, `b = key_bias`, zero by default)."""
    qx = jnp.einsum("hkd,nd->hnk", Q, xq)
    kx = jnp.einsum("hkd,md->hmk", K, xk)
    if query_bias is not None:
        qx = qx + query_bias[:, None, :]
    if key_bias is not None:
        kx = kx + key_bias[:, None, :]
    return jnp.einsum("hnk,hmk->hnm", qx, kx)


def _mask(
    qidx: Array, nk: int, causal: bool, key_mask: Array | None = None
) -> Array | None:
    """The boolean mask of allowed `(query, key)` pairs: `j <= i` if `causal`, and
    `key_mask[j]` (shape `(nk,)`, or `(h, nk)` per head) if given; shape
    `(nq, nk)` or `(h, nq, nk)`, `None` when everything is allowed."""
    kidx = jnp.arange(nk, dtype=qidx.dtype)
    mask = qidx[:, None] >= kidx[None, :] if causal else None
    if key_mask is None:
        return mask
    keys = key_mask[..., None, :]  # (1, nk) or (h, 1, nk)
    return keys if mask is None else mask & keys


def _row_weights(
    s: Float[Array, "h nq nk"],
    beta: Array,
    log_w: Float[Array, " nk"],
    mask: Array | None,
    normalization: str,
) -> Float[Array, "h nq nk"]:
    """Attention matrix rows for the row-local normalisations."""
    neg_inf = jnp.asarray(-jnp.inf, s.dtype)
    if normalization == "hardmax":
        masked = s if mask is None else jnp.where(mask, s, neg_inf)
        top = jnp.max(masked, axis=-1, keepdims=True)
        tol = 64 * jnp.finfo(s.dtype).eps * (1 + jnp.abs(top))
        on = masked >= top - tol
        wts = jnp.where(on, jnp.exp(log_w), 0.0)
        return wts / jnp.sum(wts, axis=-1, keepdims=True)
    logits = beta * s + log_w
    if mask is not None:
        logits = jnp.where(mask, logits, neg_inf)
    if normalization == "softmax":
        return jax.nn.softmax(logits, axis=-1)
    if normalization == "unnormalized":
        return jnp.exp(logits)
    raise ValueError(f"row-local normalization expected; got {normalization!r}.")


def sinkhorn_potentials(
    logits: Float[Array, "h n n"], log_w: Float[Array, " n"], iters: int
) -> tuple[Array, Array]:
    """Log-domain Sinkhorn potentials `(f, g)` of the kernel `exp(logits)`.

    Fixed points of `f_i = -LSE_j(logits_ij + g_j + log w_j)` and
    `g_j = -LSE_i(logits_ij + f_i + log w_i)`; the last update is the row one, so
    rows of `A_ij = exp(logits_ij + f_i + g_j) w_j` sum to one exactly.
    """

    def row(g):
        return -logsumexp(logits + (g + log_w)[:, None, :], axis=-1)

    def col(f):
        return -logsumexp(logits + (f + log_w)[:, :, None], axis=-2)

    h, n, _ = logits.shape
    return _sinkhorn_loop(row, col, jnp.zeros((h, n), logits.dtype), iters)


def _check_key_mask(normalization: str, key_mask) -> None:
    """A key mask removes keys from every row: defined for the row-local
    normalisations only."""
    if key_mask is not None and normalization == "sinkhorn":
        raise ValueError(
            "`key_mask` cannot be combined with `normalization='sinkhorn'` "
            "(the column constraint would involve the removed keys); use "
            "quadrature `weights` instead."
        )


def _sinkhorn_loop(row, col, zeros: Array, iters: int) -> tuple[Array, Array]:
    """The Sinkhorn alternation shared by the dense and blocked evaluations:
    `f = row(0)`, then `iters` times `g = col(f)`, `f = row(g)`; returns `(f, g)`
    (so the last update is the row one). `zeros` is the initial `g`."""

    def body(_, fg):
        f, g = fg
        g = col(f)
        return row(g), g

    return jax.lax.fori_loop(0, iters, body, (row(zeros), zeros))


def attention_matrix(
    x: Float[ArrayLike, "n d"],
    Q: Float[ArrayLike, "*h k d"],
    K: Float[ArrayLike, "*h k d"],
    beta: Real[ArrayLike, ""],
    *,
    normalization: str = "softmax",
    causal: bool = False,
    log_weights: Float[ArrayLike, " n"] | None = None,
    sinkhorn_iters: int = 100,
    query_bias: Float[ArrayLike, "... k"] | None = None,
    key_bias: Float[ArrayLike, "... k"] | None = None,
    key_mask: Bool[ArrayLike, "... n"] | None = None,
) -> Float[Array, "heads n n"]:
    """The full attention matrix `A^h_ij`, shape `(h, n, n)` (dense; for analysis
    and tests). `Q`, `K` may also be single-head `(k, d)` arrays; `query_bias`,
    `key_bias` (`(h, k)` or `(k,)`) enter the scores, `key_mask` (boolean `(n,)` or
    `(h, n)`) removes keys."""
    _check_normalization(normalization, causal)
    x = jnp.asarray(x)
    Q, K = (jnp.asarray(a, x.dtype) for a in (Q, K))
    Q, K = (a[None] if a.ndim == 2 else a for a in (Q, K))
    qb, kb = (
        None if b is None else jnp.atleast_2d(jnp.asarray(b, x.dtype))
        for b in (query_bias, key_bias)
    )
    beta = jnp.asarray(beta, x.dtype)
    n = x.shape[0]
    log_w = _log_weights(n, x.dtype, log_weights)
    s = scores(x, x, Q, K, qb, kb)
    km = None if key_mask is None else jnp.asarray(key_mask, bool)
    _check_key_mask(normalization, km)
    mask = _mask(jnp.arange(n), n, causal, km)
    if normalization != "sinkhorn":
        return _row_weights(s, beta, log_w, mask, normalization)
    logits = beta * s
    f, g = sinkhorn_potentials(logits, log_w, sinkhorn_iters)
    return jnp.exp(logits + f[:, :, None] + (g + log_w)[:, None, :])


# ---------------------------------------------------------------------------
# Chunked (blocked) evaluation.
#
# Tokens are split into blocks of `chunk_size` rows. For every query block a
# `lax.scan` runs over the key blocks and keeps online statistics (running max `m`,
# running normaliser `l`, running accumulator `acc`), so one step holds
# `h x c x c` scores. Query blocks run one after another (`lax.map`). Both the
# per-query-block function and the per-key-block scan body are under
# `jax.checkpoint`: reverse mode saves only scan carries (`O(c h d)` per key
# block, `O(n h d)` for the query block being differentiated) and recomputes the
# scores, so the backward pass needs `O(n d)` memory too, never an `n x n` array.
#
# The running max is a pure shift (the result does not depend on it), so it is
# held under `stop_gradient`: gradients are exactly those of the dense formula.
# ---------------------------------------------------------------------------


def _split(a: Array, c: int) -> Array:
    """Zero-pad the leading (token) axis to a multiple of `c`; shape `(nb, c, ...)`."""
    n = a.shape[0]
    nb = -(-n // c)
    pad = nb * c - n
    if pad:
        a = jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])
    return a.reshape(nb, c, *a.shape[1:])


def _key_pass(qb, keys, *, beta, causal: bool, mode: str):
    """One query block against every key block (a scan over key blocks).

    `qb = (qx (c, h, k), qidx (c,), row (c, h))` and `keys = (kx (nb, c, h, k),
    kidx (nb, c), kvalid (nb, c), vals (nb, c, h, e), col (nb, c, h))`. `row` is a
    per-query logit offset (modes `"softmax"`, `"unnormalized"`, `"lse"`) or the
    hardmax threshold (mode `"hardmax"`); `col` a per-key logit offset
    (log-weights, Sinkhorn potentials). Returns `(c, e)` summed over heads, or
    `(c, h)` for modes `"lse"` and `"top"`.
    """
    qx, qidx, row = qb
    dtype = qx.dtype
    c, h = qx.shape[0], qx.shape[1]
    e = keys[3].shape[-1]
    zero = jnp.zeros((), dtype)
    neg_inf = jnp.asarray(-jnp.inf, dtype)
    row_t = row.T  # (h, c)

    def block_scores(kb):
        kx, kidx, kvalid, _, col = kb
        s = jnp.einsum("qhk,chk->hqc", qx, kx)
        valid = kvalid[None, :]
        if causal:
            valid = valid & (qidx[:, None] >= kidx[None, :])
        return s, valid, col.T[:, None, :]  # (h, c, c), (c, c), (h, 1, c)

    if mode == "top":  # running max of the raw scores (hardmax, first pass)

        def top_body(top, kb):
            s, valid, _ = block_scores(kb)
            return jnp.maximum(top, jnp.max(jnp.where(valid, s, neg_inf), -1)), None

        top, _ = jax.lax.scan(jax.checkpoint(top_body), jnp.full((h, c), neg_inf), keys)
        return top.T

    if mode == "hardmax":  # weights w_j on {j : s_ij >= threshold_i} (second pass)

        def hard_body(carry, kb):
            wsum, acc = carry
            s, valid, col = block_scores(kb)
            wts = jnp.where(valid & (s >= row_t[:, :, None]), jnp.exp(col), zero)
            acc = acc + jnp.einsum("hqc,che->hqe", wts, kb[3])
            return (wsum + jnp.sum(wts, -1), acc), None

        init = (jnp.zeros((h, c), dtype), jnp.zeros((h, c, e), dtype))
        (wsum, acc), _ = jax.lax.scan(jax.checkpoint(hard_body), init, keys)
        wsum = jnp.where(wsum > 0, wsum, jnp.ones((), dtype))
        return jnp.sum(acc / wsum[:, :, None], 0)

    def body(carry, kb):
        m, l, acc = carry
        s, valid, col = block_scores(kb)
        logits = jnp.where(valid, beta * s + col + row_t[:, :, None], neg_inf)
        m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(logits, -1)))
        shift = jnp.where(jnp.isfinite(m_new), m_new, zero)
        p = jnp.exp(logits - shift[:, :, None])
        rescale = jnp.exp(m - shift)  # 0 while m = -inf
        l = rescale * l + jnp.sum(p, -1)
        if mode != "lse":
            acc = rescale[:, :, None] * acc + jnp.einsum("hqc,che->hqe", p, kb[3])
        return (m_new, l, acc), None

    acc0 = jnp.zeros((h, c, e) if mode != "lse" else (h, c, 0), dtype)
    init = (jnp.full((h, c), neg_inf), jnp.zeros((h, c), dtype), acc0)
    (m, l, acc), _ = jax.lax.scan(jax.checkpoint(body), init, keys)
    shift = jnp.where(jnp.isfinite(m), m, zero)
    if mode == "lse":
        return (shift + jnp.log(l)).T
    if mode == "softmax":
        l = jnp.where(l > 0, l, jnp.ones((), dtype))
        return jnp.sum(acc / l[:, :, None], 0)
    if mode == "unnormalized":
        return jnp.sum(jnp.exp(shift)[:, :, None] * acc, 0)
    raise ValueError(f"unknown mode {mode!r}.")


def blocked(
    qx: Float[Array, "nq h k"],
    qidx: Array,
    row: Float[Array, "nq h"],
    kx: Float[Array, "nk h k"],
    vals: Float[Array, "nk h e"],
    col: Float[Array, "nk h"],
    beta: Array,
    *,
    causal: bool,
    mode: str,
    chunk_size: int,
    kidx: Array | None = None,
) -> Array:
    """Blocked evaluation of one `mode` (see `_key_pass`) for the queries `qx`
    (global token indices `qidx`, used by the causal mask) against the keys `kx`
    (indices `kidx`, default `arange(nk)`), `chunk_size` rows per block. Returns
    `(nq, e)` (attention outputs summed over heads) or `(nq, h)` (`"lse"`, `"top"`).
    """
    nq, nk = qx.shape[0], kx.shape[0]
    c = min(int(chunk_size), nk)  # key block
    cq = min(int(chunk_size), nq)  # query block
    if kidx is None:
        kidx = jnp.arange(nk, dtype=qidx.dtype)
    keys = (
        _split(kx, c),
        _split(kidx, c),
        _split(jnp.ones((nk,), bool), c),  # False on padding
        _split(vals, c),
        _split(col, c),
    )
    fn = functools.partial(_key_pass, beta=beta, causal=causal, mode=mode)
    queries = (_split(qx, cq), _split(qidx, cq), _split(row, cq))
    out = jax.lax.map(jax.checkpoint(lambda qb: fn(qb, keys)), queries)
    return out.reshape(-1, *out.shape[2:])[:nq]


def _project(x, Q, K, V, biases=(None, None, None)):
    """Token-major projections `Q_h x + a_h`, `K_h x + b_h` (n, h, k) and
    `V_h x + c_h` (n, h, d), with the biases `(a, b, c)` (each `None` or `(h, .)`)."""
    out = (
        jnp.einsum("hkd,nd->nhk", Q, x),
        jnp.einsum("hkd,nd->nhk", K, x),
        jnp.einsum("hed,nd->nhe", V, x),
    )
    return tuple(a if b is None else a + b[None] for a, b in zip(out, biases))


def attend_rows(
    xq: Float[Array, "nq d"],
    qidx: Array,
    x: Float[Array, "n d"],
    Q: Float[Array, "h k d"],
    K: Float[Array, "h k d"],
    V: Float[Array, "h d d"],
    beta: Real[ArrayLike, ""],
    *,
    normalization: str = "softmax",
    causal: bool = False,
    log_weights: Float[Array, " n"] | None = None,
    chunk_size: int | None = None,
    query_bias: Float[Array, "h k"] | None = None,
    key_bias: Float[Array, "h k"] | None = None,
    value_bias: Float[Array, "h d"] | None = None,
    key_mask: Array | None = None,
) -> Float[Array, "nq d"]:
    """`attend` for a subset of query rows `xq` (global indices `qidx`) against all
    tokens `x`, blocked with `chunk_size` (`None`: one block); row-local
    normalisations only (used by the token-sharded field, where each device owns
    some queries)."""
    if normalization not in ("softmax", "unnormalized", "hardmax"):
        raise ValueError(f"row-local normalization expected; got {normalization!r}.")
    if key_mask is not None and normalization == "hardmax":
        raise ValueError(
            "`key_mask` with `normalization='hardmax'` is evaluated densely only; "
            "use `chunk_size=None`."
        )
    n = x.shape[0]
    log_w = _log_weights(n, x.dtype, log_weights)
    beta = jnp.asarray(beta, x.dtype)
    h = Q.shape[0]
    qx = jnp.einsum("hkd,nd->nhk", Q, xq)
    if query_bias is not None:
        qx = qx + query_bias[None]
    _, kx, vals = _project(x, Q, K, V, (None, key_bias, value_bias))
    col = jnp.broadcast_to(log_w[:, None], (n, h))
    if key_mask is not None:  # a removed key gets the log-weight -inf
        km = jnp.broadcast_to(jnp.atleast_2d(key_mask).T, (n, h))
        col = jnp.where(km, col, jnp.asarray(-jnp.inf, x.dtype))
    kw: dict[str, Any] = dict(
        causal=causal, chunk_size=n if chunk_size is None else chunk_size
    )
    if normalization == "hardmax":
        zeros = jnp.zeros(qx.shape[:2], x.dtype)
        top = blocked(qx, qidx, zeros, kx, vals, col, beta, mode="top", **kw)
        top = jax.lax.stop_gradient(top)
        thr = top - 64 * jnp.finfo(x.dtype).eps * (1 + jnp.abs(top))
        return blocked(qx, qidx, thr, kx, vals, col, beta, mode="hardmax", **kw)
    zeros = jnp.zeros(qx.shape[:2], x.dtype)
    return blocked(qx, qidx, zeros, kx, vals, col, beta, mode=normalization, **kw)


def _sinkhorn_chunked(x, Q, K, V, beta, log_w, iters, chunk_size):
    n = x.shape[0]
    h = Q.shape[0]
    qx, kx, vals = _project(x, Q, K, V)
    lw = jnp.broadcast_to(log_w[:, None], (n, h))
    idx = jnp.arange(n)
    zeros = jnp.zeros((n, h), x.dtype)
    kw: dict[str, Any] = dict(causal=False, chunk_size=chunk_size)
    none = jnp.zeros((n, h, 0), x.dtype)

    def row(g):  # f_i = -LSE_j(beta s_ij + g_j + log w_j)
        return -blocked(qx, idx, zeros, kx, none, g + lw, beta, mode="lse", **kw)

    def col(f):  # g_j = -LSE_i(beta s_ij + f_i + log w_i): keys act as queries
        return -blocked(kx, idx, zeros, qx, none, f + lw, beta, mode="lse", **kw)

    _, g = _sinkhorn_loop(row, col, zeros, iters)
    # the last update is the row one, so A_ij = softmax_j(beta s_ij + g_j + log w_j)
    return blocked(qx, idx, zeros, kx, vals, g + lw, beta, mode="softmax", **kw)


def _log_weights(n: int, dtype, log_weights) -> Array:
    if log_weights is None:
        return jnp.full((n,), -jnp.log(n), dtype)
    return jnp.asarray(log_weights, dtype)


def _dpa_backend() -> bool:
    # On CPU the XLA implementation of `dot_product_attention` measured 2x slower
    # than the code below (benchmarks/field_throughput.py), so it is used on
    # accelerators only.
    return _FORCE_DPA or jax.default_backend() in ("gpu", "cuda", "rocm", "tpu")


_FORCE_DPA = False  # tests and benchmarks flip this to exercise the route on CPU


def uses_dot_product_attention(
    dtype, normalization: str, chunk_size: int | None, n: int
) -> bool:
    """Whether `attend` routes through `jax.nn.dot_product_attention`: dense
    softmax attention in float32 or lower precision on a GPU/TPU backend."""
    dense = chunk_size is None or chunk_size >= n
    low = jnp.finfo(dtype).bits <= 32
    return normalization == "softmax" and dense and low and _dpa_backend()


def _dot_product_attention(x, Q, K, V, beta, log_weights, causal):
    qx, kx, vals = _project(x, Q, K, V)
    k, e = qx.shape[-1], vals.shape[-1]
    size = max(k, e)  # one head size for q, k, v: zero-padding changes nothing

    def pad(a):
        width = size - a.shape[-1]
        return a if width == 0 else jnp.pad(a, ((0, 0), (0, 0), (0, width)))

    bias = None if log_weights is None else log_weights[None, None, None, :]
    out = jax.nn.dot_product_attention(
        pad(qx)[None],
        pad(kx)[None],
        pad(vals)[None],
        bias=bias,
        scale=beta,
        is_causal=causal,
    )
    return jnp.sum(out[0, :, :, :e], axis=1)


def attend(
    x: Float[Array, "n d"],
    Q: Float[Array, "h k d"],
    K: Float[Array, "h k d"],
    V: Float[Array, "h d d"],
    beta: Real[ArrayLike, ""],
    *,
    normalization: str = "softmax",
    causal: bool = False,
    log_weights: Float[Array, " n"] | None = None,
    sinkhorn_iters: int = 100,
    chunk_size: int | None = None,
    query_bias: Float[Array, "h k"] | None = None,
    key_bias: Float[Array, "h k"] | None = None,
    value_bias: Float[Array, "h d"] | None = None,
    key_mask: Array | None = None,
) -> Float[Array, "n d"]:
    r"""$\sum_h \sum_j A^h_{ij} (V_h x_j + c_h)$ for every token `i` (not yet
    projected), with scores $\langle Q_h x_i + a_h, K_h x_j + b_h\rangle$.

    The biases `a = query_bias`, `b = key_bias` (`(h, k)`) and `c = value_bias`
    (`(h, d)`) default to zero; `key_mask` (boolean, `(n,)` or `(h, n)` per head)
    removes the keys where it is `False` from every row (padding), like the causal
    mask and independently of the quadrature weights.

    Without `chunk_size` (or with `chunk_size >= n`) the `(h, n, n)` scores are
    formed at once; float32 softmax then runs through `jax.nn.dot_product_attention`
    (see the module docstring; not with biases or a key mask). With
    `chunk_size = c < n`, every normalisation is evaluated in `c x c` blocks with
    online log-sum-exps over key blocks, in the forward and (by recomputation) in
    the backward pass: memory `O(n d + c^2 h)`. Results equal the dense ones up to
    rounding.
    """
    _check_normalization(normalization, causal)
    _check_key_mask(normalization, key_mask)
    beta = jnp.asarray(beta, x.dtype)
    n = x.shape[0]
    chunked = chunk_size is not None and chunk_size < n
    biases = (query_bias, key_bias, value_bias)
    plain = key_mask is None and all(b is None for b in biases)
    if plain and uses_dot_product_attention(x.dtype, normalization, chunk_size, n):
        return _dot_product_attention(x, Q, K, V, beta, log_weights, causal)
    log_w = _log_weights(n, x.dtype, log_weights)
    if chunked and normalization == "sinkhorn":
        if not plain:
            raise ValueError(
                "chunked Sinkhorn attention takes no biases; use `chunk_size=None`."
            )
        return _sinkhorn_chunked(x, Q, K, V, beta, log_w, sinkhorn_iters, chunk_size)
    if chunked:
        return attend_rows(
            x,
            jnp.arange(n),
            x,
            Q,
            K,
            V,
            beta,
            normalization=normalization,
            causal=causal,
            log_weights=log_w,
            chunk_size=chunk_size,
            query_bias=query_bias,
            key_bias=key_bias,
            value_bias=value_bias,
            key_mask=key_mask,
        )
    if normalization in ("softmax", "unnormalized"):
        lw = None if log_weights is None else jnp.asarray(log_weights, x.dtype)
        if Q.shape[0] == 1:  # one head: no head axis (see `_dense_attention`)
            Q, K, V = Q[0], K[0], V[0]
            biases = tuple(None if b is None else b[0] for b in biases)
            if key_mask is not None and key_mask.ndim == 2:
                key_mask = key_mask[0]
        return _dense_attention(
            x,
            Q,
            K,
            V,
            beta,
            lw,
            causal=causal,
            normalization=normalization,
            biases=biases,
            key_mask=key_mask,
        )
    values = jnp.einsum("hed,nd->hne", V, x)  # V_h x_j, shape (h, n, d)
    if value_bias is not None:
        values = values + value_bias[:, None, :]
    mask = _mask(jnp.arange(n), n, causal, key_mask)
    if normalization == "sinkhorn":
        A = attention_matrix(
            x,
            Q,
            K,
            beta,
            normalization="sinkhorn",
            log_weights=log_w,
            sinkhorn_iters=sinkhorn_iters,
            query_bias=query_bias,
            key_bias=key_bias,
        )
    else:
        s = scores(x, x, Q, K, query_bias, key_bias)
        A = _row_weights(s, beta, log_w, mask, normalization)
    return jnp.einsum("hij,hje->ie", A, values)


def _project_one(A: Array | None, x: Array, bias: Array | None) -> Array:
    """`A x_j + b` for every token: `x` itself for `A = None` (identity), `(n, k)`
    for a `(k, d)` matrix, `(h, n, k)` for `(h, k, d)` heads."""
    if A is None:
        out = x
    elif A.ndim == 2:
        out = x @ A.T
    else:
        out = jnp.einsum("hkd,nd->hnk", A, x)
    return out if bias is None else out + bias[..., None, :]


def _dense_attention(
    x: Float[Array, "n d"],
    Q: Array | None,
    K: Array | None,
    V: Array | None,
    beta: Array,
    log_weights: Float[Array, " n"] | None,
    *,
    causal: bool,
    normalization: str,
    biases: tuple[Array | None, ...] = (None, None, None),
    key_mask: Array | None = None,
) -> Float[Array, "n e"]:
    r"""Dense softmax or unnormalized attention, $\sum_h \sum_j A^h_{ij}
    (V_h x_j + c_h)$, the one kernel behind `attend`'s dense path and
    `IdentityAttention`.

    `Q`, `K`, `V` are `(h, k, d)` heads, a single `(k, d)` head without a head
    axis, or `None` for the identity (no projection computed); `biases` are the
    matching `(a, b, c)` (each `None`, `(h, .)` or `(.,)`). With the logits
    $\ell_{ij} = \beta\langle Q x_i + a, K x_j + b\rangle + \log w_j$ (masked
    to $-\infty$ by `causal` and `key_mask`) and their row maximum $m_i$ (a pure
    shift, held under `stop_gradient`), it forms $p = e^{\ell - m}$ and
    $p\,(V x + c)$ and then divides by the row sums (`"softmax"`) or multiplies
    by $e^{m}$ (`"unnormalized"`): `n x d` divisions, not `n x n`.

    `beta` scales the `(n, k)` queries, not the `(n, n)` scores, and uniform
    weights (`log_weights=None`) shift every logit by the same `-log n`, which
    softmax drops and `"unnormalized"` applies as a factor `1/n`. A single head is
    best passed without its head axis: under `jax.vmap` over an ensemble XLA then
    runs batched products with one batch axis instead of two, about 1.5x faster at
    small `n` on CPU (`benchmarks/ensemble.py`).
    """
    n = x.shape[0]
    qx = beta * _project_one(Q, x, biases[0])
    kx = _project_one(K, x, biases[1])
    vals = _project_one(V, x, biases[2])
    logits = jnp.einsum("...ik,...jk->...ij", qx, kx)
    if log_weights is not None:
        logits = logits + log_weights
    mask = _mask(jnp.arange(n), n, causal, key_mask)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.asarray(-jnp.inf, x.dtype))
    m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    p = jnp.exp(logits - m)
    out = jnp.einsum("...ij,...je->...ie", p, vals)
    if normalization == "softmax":
        out = out / jnp.sum(p, axis=-1, keepdims=True)
    elif normalization == "unnormalized":
        scale = jnp.exp(m)
        out = out * (scale if log_weights is not None else scale / n)
    else:
        raise ValueError(
            f"`normalization` must be 'softmax' or 'unnormalized'; got "
            f"{normalization!r}."
        )
    return out if out.ndim == 2 else jnp.sum(out, axis=0)
