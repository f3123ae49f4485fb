r"""Attention weights and attention-weighted sums.

For one head with parameters `Q, K` (shape `(k, d)`) the scores are
$s_{ij} = \beta \langle Q x_i, K x_j\rangle$ and the kernel is
$k_{ij} = w_j m_{ij} e^{s_{ij}}$ (quadrature weights `w`, mask `m`). The four
normalisations of DESIGN §1a turn the kernel into the attention matrix `A`:

- `"softmax"`: $A_{ij} = k_{ij} / \sum_l k_{il}$ (SA);
- `"unnormalized"`: $A_{ij} = k_{ij}$ (USA; the weights already sum to one);
- `"sinkhorn"`: $A_{ij} = e^{s_{ij} + f_i + g_j} w_j$ with rows summing to one and
  $\sum_i w_i A_{ij} = w_j$ (doubly stochastic for uniform weights), potentials found
  by log-domain Sinkhorn iterations (Sander et al., *Sinkformers*, 2022);
- `"hardmax"` ($\beta \to \infty$): uniform weight (`w`-weighted) on the argmax set
  of $j \mapsto \langle Q x_i, K x_j\rangle$.
"""

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from jaxtyping import Array, Float


NORMALIZATIONS = ("softmax", "unnormalized", "sinkhorn", "hardmax")


def scores(
    xq: Float[Array, "nq d"],
    xk: Float[Array, "nk d"],
    Q: Float[Array, "h k d"],
    K: Float[Array, "h k d"],
) -> Float[Array, "h nq nk"]:
    """Unscaled scores `<Q_h x_i, K_h x_j>` for every head."""
    qx = jnp.einsum("hkd,nd->hnk", Q, xq)
    kx = jnp.einsum("hkd,md->hmk", K, xk)
    return jnp.einsum("hnk,hmk->hnm", qx, kx)


def _mask(qidx: Array, nk: int, causal: bool) -> Array | None:
    if not causal:
        return None
    return qidx[:, None] >= jnp.arange(nk)[None, :]


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

    def body(_, fg):
        f, g = fg
        g = col(f)
        return row(g), g

    h, n, _ = logits.shape
    zeros = jnp.zeros((h, n), logits.dtype)
    f0 = row(zeros)
    f, g = jax.lax.fori_loop(0, iters, body, (f0, zeros))
    return f, g


def attention_matrix(
    x: Float[Array, "n d"],
    Q: Float[Array, "h k d"],
    K: Float[Array, "h k d"],
    beta: Array,
    *,
    normalization: str = "softmax",
    causal: bool = False,
    log_weights: Float[Array, " n"] | None = None,
    sinkhorn_iters: int = 100,
) -> Float[Array, "h n n"]:
    """The full attention matrix `A^h_ij`, shape `(h, n, n)` (dense; for analysis
    and tests). `Q`, `K` may also be single-head `(k, d)` arrays."""
    x = jnp.asarray(x)
    Q, K = (jnp.asarray(a) for a in (Q, K))
    Q, K = (a[None] if a.ndim == 2 else a for a in (Q, K))
    beta = jnp.asarray(beta, x.dtype)
    n = x.shape[0]
    log_w = (
        jnp.full((n,), -jnp.log(n), x.dtype) if log_weights is None else log_weights
    )
    s = scores(x, x, Q, K)
    mask = _mask(jnp.arange(n), n, causal)
    if normalization != "sinkhorn":
        return _row_weights(s, beta, log_w, mask, normalization)
    if causal:
        raise ValueError("`normalization='sinkhorn'` cannot be combined with `causal`.")
    logits = beta * s
    f, g = sinkhorn_potentials(logits, log_w, sinkhorn_iters)
    return jnp.exp(logits + f[:, :, None] + (g + log_w)[:, None, :])


def attend(
    x: Float[Array, "n d"],
    Q: Float[Array, "h k d"],
    K: Float[Array, "h k d"],
    V: Float[Array, "h d d"],
    beta: Array,
    *,
    normalization: str = "softmax",
    causal: bool = False,
    log_weights: Float[Array, " n"] | None = None,
    sinkhorn_iters: int = 100,
    chunk_size: int | None = None,
) -> Float[Array, "n d"]:
    r"""$\sum_h \sum_j A^h_{ij} V_h x_j$ for every token `i` (not yet projected).

    With `chunk_size`, queries are processed in blocks of `chunk_size` rows under
    `jax.checkpoint`, so at most `chunk_size x n` scores per head exist at once,
    in the forward and in the backward pass.
    """
    n = x.shape[0]
    log_w = (
        jnp.full((n,), -jnp.log(n), x.dtype) if log_weights is None else log_weights
    )
    values = jnp.einsum("hed,nd->hne", V, x)  # V_h x_j, shape (h, n, d)
    if normalization == "sinkhorn":
        if chunk_size is not None:
            raise ValueError(
                "`chunk_size` is not supported with `normalization='sinkhorn'` yet."
            )
        A = attention_matrix(
            x,
            Q,
            K,
            beta,
            normalization="sinkhorn",
            causal=causal,
            log_weights=log_w,
            sinkhorn_iters=sinkhorn_iters,
        )
        return jnp.einsum("hij,hje->ie", A, values)

    def block(xq, qidx):
        s = scores(xq, x, Q, K)
        A = _row_weights(s, beta, log_w, _mask(qidx, n, causal), normalization)
        return jnp.einsum("hij,hje->ie", A, values)

    if chunk_size is None or chunk_size >= n:
        return block(x, jnp.arange(n))
    nb = -(-n // chunk_size)
    pad = nb * chunk_size - n
    xq = jnp.concatenate([x, jnp.zeros((pad, x.shape[1]), x.dtype)]).reshape(
        nb, chunk_size, -1
    )
    qidx = jnp.arange(nb * chunk_size).reshape(nb, chunk_size)
    out = jax.lax.map(lambda a: jax.checkpoint(block)(*a), (xq, qidx))
    return out.reshape(nb * chunk_size, -1)[:n]
