r"""Normalisations: how the kernel $k_{ij} = w_j m_{ij} e^{\beta s_{ij}}$ becomes
the attention matrix $A$.

With raw scores $s_{ij} = \langle q_i, k_j\rangle$ (queries and keys already
projected and position-encoded), quadrature weights $w_j$ and mask $m_{ij}$:

- `Softmax()` (SA): $A_{ij} = k_{ij} / \sum_l k_{il}$;
- `Unnormalized()` (USA): $A_{ij} = k_{ij}$ (the weights already sum to one);
- `Sinkhorn(iterations)` (Sinkformers): $A_{ij} = e^{\beta s_{ij} + f_i + g_j} w_j$
  with rows summing to one and $\sum_i w_i A_{ij} = w_j$;
- `Hardmax()` ($\beta \to \infty$): uniform ($w$-weighted) weight on the argmax set
  of $j \mapsto s_{ij}$.

Each normalisation owns three evaluations of $\sum_j A_{ij} v_j$: `matrix` (the
attention matrix itself), `dense` (the product, possibly without forming `A`) and
`blocked` (key blocks of a given size, memory `O(n d)`). A new normalisation
subclasses `AbstractNormalization` (implementing `matrix`; rows of `A` that depend
on their own row only get a blocked pass over query blocks for free) or
`AbstractElementwiseNormalization` ($A_{ij} = w_j m_{ij} \varphi(\beta s_{ij})$:
implementing `activation` $\varphi$ gives all three, the blocked one over key
blocks).
"""

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from jaxtyping import Array, Bool, Float

from ._blocked import _split, finite_shift, key_scan, online_lse_step
from ._mask import MaskFn


def uniform_log_weights(n: int, dtype) -> Array:
    """`log(1/n)` for every one of `n` keys."""
    return jnp.full((n,), -jnp.log(n), dtype)


def _masked(logits: Array, mask: Array | None) -> Array:
    if mask is None:
        return logits
    return jnp.where(mask, logits, jnp.asarray(-jnp.inf, logits.dtype))


def _scores(q: Array, k: Array) -> Array:
    return jnp.einsum("...ic,...jc->...ij", q, k)


def _shifted_kernel(q, k, beta, log_weights, mask) -> tuple[Array, Array]:
    """`exp(logits - m)` and the row maxima `m` of the logits
    `beta <q_i, k_j> + log w_j` (masked to `-inf`): `beta` scales the `(n, c)`
    queries, not the `(n, n)` scores, and `m` is a pure shift held under
    `stop_gradient`."""
    logits = _scores(beta * q, k)
    if log_weights is not None:
        logits = logits + log_weights
    logits = _masked(logits, mask)
    m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    return jnp.exp(logits - m), m


class AbstractNormalization(eqx.Module):
    r"""How attention turns scores into weights.

    Arrays: queries `q` `(..., nq, c)`, keys `k` `(..., nk, c)`, values
    `v` `(..., nk, e)` (the leading axis, if present, is the head axis); raw scores
    $s_{ij} = \langle q_i, k_j\rangle$; `log_weights` `(nk,)` the log-quadrature
    weights ($\log w_j$; `None` in `dense` and `blocked` means uniform $1/n_k$);
    `mask` a boolean array broadcasting against `(..., nq, nk)`, or `None`.

    Subclasses implement `matrix`. They may override `dense` (for speed) and
    `blocked` (the default processes `size` query rows at a time against all keys,
    which is exact for any normalisation whose row $i$ depends on row $i$ of the
    scores only, with memory `O(size n)`). Class variables: `row_local`
    (rows are independent: masks, token sharding and the default blocked pass
    apply), `supports_replay` (`ReplayAdjoint` may use the stored-output pullback
    through `matrix`).
    """

    row_local: ClassVar[bool] = True
    supports_replay: ClassVar[bool] = False

    @abc.abstractmethod
    def matrix(
        self,
        s: Float[Array, "*h nq nk"],
        beta: Float[Array, ""],
        log_weights: Float[Array, " nk"],
        mask: Bool[Array, "..."] | None,
    ) -> Float[Array, "*h nq nk"]:
        """The attention matrix `A` from the raw scores `s`."""

    def dense(
        self,
        q: Float[Array, "*h nq c"],
        k: Float[Array, "*h nk c"],
        v: Float[Array, "*h nk e"],
        beta: Float[Array, ""],
        log_weights: Float[Array, " nk"] | None,
        mask: Bool[Array, "..."] | None,
    ) -> Float[Array, "*h nq e"]:
        r"""$\sum_j A_{ij} v_j$ with the whole score matrix formed at once."""
        if log_weights is None:
            log_weights = uniform_log_weights(k.shape[-2], k.dtype)
        a = self.matrix(_scores(q, k), beta, log_weights, mask)
        return jnp.einsum("...ij,...je->...ie", a, v)

    def blocked(
        self,
        q: Float[Array, "h nq c"],
        qidx: Array,
        k: Float[Array, "h nk c"],
        kidx: Array,
        v: Float[Array, "h nk e"],
        beta: Float[Array, ""],
        log_weights: Float[Array, " nk"] | None,
        mask: MaskFn | None,
        size: int,
    ) -> Float[Array, "h nq e"]:
        """$\\sum_j A_{ij} v_j$ evaluated `size` rows at a time (token indices
        `qidx`, `kidx` feed the mask function `mask(qidx, kidx)`)."""
        if not self.row_local:
            raise ValueError(
                f"{type(self).__name__} is not row-local: it must implement its "
                "own `blocked` pass."
            )
        nq = q.shape[1]
        c = min(size, nq)

        def one(qb):
            qx, qi = qb
            m = None if mask is None else mask(qi, kidx)
            if m is not None and m.ndim == 2:
                m = m[None]
            return self.dense(qx, k, v, beta, log_weights, m)

        out = jax.lax.map(jax.checkpoint(one), (_split(q, c, 1), _split(qidx, c, 0)))
        out = jnp.moveaxis(out, 0, 1)
        return out.reshape(out.shape[0], -1, out.shape[-1])[:, :nq]


class AbstractElementwiseNormalization(AbstractNormalization):
    r"""A normalisation acting entry by entry, $A_{ij} = w_j m_{ij}
    \varphi(\beta s_{ij})$ (no row coupling): unnormalised attention
    ($\varphi = \exp$), sigmoid attention, ReLU attention. Subclasses implement
    `activation` $\varphi$ only; the blocked pass sums over key blocks (memory
    `O(n d)`)."""

    @abc.abstractmethod
    def activation(self, logits: Float[Array, "*h nq nk"]) -> Float[Array, "*h nq nk"]:
        r"""$\varphi(\beta s_{ij})$, elementwise."""

    def matrix(self, s, beta, log_weights, mask):
        a = self.activation(beta * s) * jnp.exp(log_weights)
        return a if mask is None else jnp.where(mask, a, jnp.zeros((), a.dtype))

    def blocked(self, q, qidx, k, kidx, v, beta, log_weights, mask, size):
        nk = k.shape[1]
        if log_weights is None:
            log_weights = uniform_log_weights(nk, k.dtype)
        h = q.shape[0]

        def init(h, c, e, dtype):
            return jnp.zeros((h, c, e), dtype)

        def body(acc, s, valid, col, vb, row):
            del row
            p = self.activation(beta * s) * jnp.exp(col)
            p = jnp.where(valid, p, jnp.zeros((), p.dtype))
            return acc + jnp.einsum("hqk,hke->hqe", p, vb)

        col = jnp.broadcast_to(log_weights, (h, nk))
        row = jnp.zeros(q.shape[:2], q.dtype)
        return key_scan(
            q,
            qidx,
            k,
            kidx,
            v,
            col,
            row,
            size,
            mask=mask,
            init=init,
            body=body,
            finish=lambda acc, row: acc,
        )


def _online(q, qidx, k, kidx, v, beta, log_weights, mask, size, finish):
    h, nk = q.shape[0], k.shape[1]
    if log_weights is None:
        log_weights = uniform_log_weights(nk, k.dtype)
    init, body = online_lse_step(beta, with_values=True)
    col = jnp.broadcast_to(log_weights, (h, nk))
    row = jnp.zeros(q.shape[:2], q.dtype)
    return key_scan(
        q, qidx, k, kidx, v, col, row, size, mask=mask, init=init, body=body,
        finish=finish,
    )  # fmt: skip


class Softmax(AbstractNormalization):
    r"""Softmax attention (SA): $A_{ij} = w_j m_{ij} e^{\beta s_{ij}} / \sum_l
    w_l m_{il} e^{\beta s_{il}}$.

    The dense evaluation scales the `(n, c)` queries by $\beta$ rather than the
    `(n, n)` scores, subtracts each row's maximum logit (a pure shift, held under
    `stop_gradient`) and divides the `(n, e)` products by the row sums; the blocked
    one keeps an online log-sum-exp over key blocks.
    """

    supports_replay: ClassVar[bool] = True

    def matrix(self, s, beta, log_weights, mask):
        return jax.nn.softmax(_masked(beta * s + log_weights, mask), axis=-1)

    def dense(self, q, k, v, beta, log_weights, mask):
        p, _ = _shifted_kernel(q, k, beta, log_weights, mask)
        out = jnp.einsum("...ij,...je->...ie", p, v)
        return out / jnp.sum(p, axis=-1, keepdims=True)

    def blocked(self, q, qidx, k, kidx, v, beta, log_weights, mask, size):
        return _online(
            q, qidx, k, kidx, v, beta, log_weights, mask, size, _softmax_finish
        )


Softmax.__init__.__doc__ = """**Arguments:** None."""


class Unnormalized(AbstractElementwiseNormalization):
    r"""Unnormalised attention (USA): $A_{ij} = w_j m_{ij} e^{\beta s_{ij}}$
    (the weights already sum to one). Evaluated with each row's maximum logit
    factored out, so large $\beta s$ does not overflow before it must."""

    supports_replay: ClassVar[bool] = True

    def activation(self, logits):
        return jnp.exp(logits)

    def dense(self, q, k, v, beta, log_weights, mask):
        p, m = _shifted_kernel(q, k, beta, log_weights, mask)
        out = jnp.einsum("...ij,...je->...ie", p, v)
        scale = jnp.exp(m)
        return out * (scale if log_weights is not None else scale / k.shape[-2])

    def blocked(self, q, qidx, k, kidx, v, beta, log_weights, mask, size):
        def finish(carry, row):
            m, _, acc = carry
            return jnp.exp(finite_shift(m))[:, :, None] * acc

        return _online(q, qidx, k, kidx, v, beta, log_weights, mask, size, finish)


Unnormalized.__init__.__doc__ = """**Arguments:** None."""


class Hardmax(AbstractNormalization):
    r"""Hardmax attention, the $\beta \to \infty$ limit of softmax: $A_{ij} =
    w_j [\,j \in J_i\,] / \sum_{l \in J_i} w_l$ on the argmax set $J_i$ of
    $j \mapsto s_{ij}$ among the allowed keys (ties within
    $64\,\varepsilon_{\mathrm{mach}}(1 + |\max_j s_{ij}|)$ count as equal).
    $\beta$ does not enter."""

    def matrix(self, s, beta, log_weights, mask):
        del beta
        masked = _masked(s, mask)
        top = jnp.max(masked, axis=-1, keepdims=True)
        on = masked >= top - _tie(top)
        wts = jnp.where(on, jnp.exp(log_weights), jnp.zeros((), s.dtype))
        return wts / jnp.sum(wts, axis=-1, keepdims=True)

    def blocked(self, q, qidx, k, kidx, v, beta, log_weights, mask, size):
        h, nk = q.shape[0], k.shape[1]
        if log_weights is None:
            log_weights = uniform_log_weights(nk, k.dtype)
        col = jnp.broadcast_to(log_weights, (h, nk))
        dtype = q.dtype
        neg_inf = jnp.asarray(-jnp.inf, dtype)

        def top_body(top, s, valid, col, vb, row):
            return jnp.maximum(top, jnp.max(jnp.where(valid, s, neg_inf), -1))

        zeros = jnp.zeros(q.shape[:2], dtype)
        top = key_scan(
            q, qidx, k, kidx, v[..., :0], col, zeros, size, mask=mask,
            init=lambda h, c, e, dt: jnp.full((h, c), -jnp.inf, dt),
            body=top_body, finish=lambda top, row: top,
        )  # fmt: skip
        top = jax.lax.stop_gradient(top)

        def body(carry, s, valid, col, vb, thr):
            wsum, acc = carry
            on = valid & (s >= thr[:, :, None])
            wts = jnp.where(on, jnp.exp(col), jnp.zeros((), s.dtype))
            return wsum + jnp.sum(wts, -1), acc + jnp.einsum("hqk,hke->hqe", wts, vb)

        def finish(carry, thr):
            wsum, acc = carry
            wsum = jnp.where(wsum > 0, wsum, jnp.ones((), wsum.dtype))
            return acc / wsum[:, :, None]

        return key_scan(
            q, qidx, k, kidx, v, col, top - _tie(top), size, mask=mask,
            init=lambda h, c, e, dt: (jnp.zeros((h, c), dt), jnp.zeros((h, c, e), dt)),
            body=body, finish=finish,
        )  # fmt: skip


def _tie(top: Array) -> Array:
    return 64 * jnp.finfo(top.dtype).eps * (1 + jnp.abs(top))


Hardmax.__init__.__doc__ = """**Arguments:** None."""


def _sinkhorn_loop(row, col, zeros: Array, iters: int) -> tuple[Array, Array]:
    """`f = row(0)`, then `iters` times `g = col(f)`, `f = row(g)`; returns
    `(f, g)` (the last update is the row one)."""

    def body(_, fg):
        f, g = fg
        g = col(f)
        return row(g), g

    return jax.lax.fori_loop(0, iters, body, (row(zeros), zeros))


class Sinkhorn(AbstractNormalization):
    r"""Sinkhorn attention (Sander et al., *Sinkformers*, 2022): $A_{ij} =
    e^{\beta s_{ij} + f_i + g_j} w_j$, with the potentials the fixed points of
    $f_i = -\mathrm{LSE}_j(\beta s_{ij} + g_j + \log w_j)$ and
    $g_j = -\mathrm{LSE}_i(\beta s_{ij} + f_i + \log w_i)$, found by `iterations`
    log-domain iterations ending with the row update, so rows sum to one exactly
    and $\sum_i w_i A_{ij} \approx w_j$ (doubly stochastic for uniform weights).
    Not row-local: no masks, no token sharding. Blocked evaluation runs the
    log-sum-exps block by block.

    ??? cite
        M. E. Sander, P. Ablin, M. Blondel, G. Peyré, *Sinkformers: Transformers
        with doubly stochastic attention*, AISTATS 2022.
    """

    iterations: int = eqx.field(static=True)
    row_local: ClassVar[bool] = False

    def __init__(self, iterations: int = 100):
        if isinstance(iterations, bool) or int(iterations) != iterations:
            raise ValueError(
                f"`iterations` must be a positive integer; got {iterations!r}."
            )
        if iterations < 1:
            raise ValueError(
                f"`iterations` must be a positive integer; got {iterations!r}."
            )
        self.iterations = int(iterations)

    def potentials(
        self, logits: Float[Array, "*h n n"], log_weights: Float[Array, " n"]
    ) -> tuple[Array, Array]:
        """The potentials `(f, g)` of the kernel `exp(logits)`."""
        lw = log_weights

        def row(g):
            return -logsumexp(logits + (g + lw)[..., None, :], axis=-1)

        def col(f):
            return -logsumexp(logits + (f + lw)[..., :, None], axis=-2)

        return _sinkhorn_loop(
            row, col, jnp.zeros(logits.shape[:-1], logits.dtype), self.iterations
        )

    def matrix(self, s, beta, log_weights, mask):
        if mask is not None:
            raise ValueError("Sinkhorn attention takes no mask.")
        logits = beta * s
        f, g = self.potentials(logits, log_weights)
        return jnp.exp(logits + f[..., :, None] + (g + log_weights)[..., None, :])

    def blocked(self, q, qidx, k, kidx, v, beta, log_weights, mask, size):
        if mask is not None:
            raise ValueError("Sinkhorn attention takes no mask.")
        h, n = q.shape[0], q.shape[1]
        if log_weights is None:
            log_weights = uniform_log_weights(n, q.dtype)
        lw = jnp.broadcast_to(log_weights, (h, n))
        zeros = jnp.zeros((h, n), q.dtype)
        none = v[..., :0]
        init, body = online_lse_step(beta, with_values=False)

        def lse(qs, ks, offsets):
            return key_scan(
                qs, qidx, ks, kidx, none, offsets, zeros, size, mask=None,
                init=init, body=body,
                finish=lambda c, row: finite_shift(c[0]) + jnp.log(c[1]),
            )  # fmt: skip

        def row(g):  # f_i = -LSE_j(beta s_ij + g_j + log w_j)
            return -lse(q, k, g + lw)

        def col(f):  # g_j = -LSE_i(beta s_ij + f_i + log w_i): keys act as queries
            return -lse(k, q, f + lw)

        _, g = _sinkhorn_loop(row, col, zeros, self.iterations)
        # the last update is the row one: A_ij = softmax_j(beta s_ij + g_j + log w_j)
        return _sinkhorn_out(q, qidx, k, kidx, v, beta, g + lw, size)


def _softmax_finish(carry, row):
    _, l, acc = carry
    l = jnp.where(l > 0, l, jnp.ones((), l.dtype))
    return acc / l[:, :, None]


def _sinkhorn_out(q, qidx, k, kidx, v, beta, col, size):
    init, body = online_lse_step(beta, with_values=True)
    row = jnp.zeros(q.shape[:2], q.dtype)
    return key_scan(
        q, qidx, k, kidx, v, col, row, size, mask=None, init=init, body=body,
        finish=_softmax_finish,
    )  # fmt: skip


Sinkhorn.__init__.__doc__ = """**Arguments:**

- `iterations`: the number of log-domain Sinkhorn iterations (default 100).
"""


NAMES: dict[str, type[AbstractNormalization]] = {
    "softmax": Softmax,
    "unnormalized": Unnormalized,
    "sinkhorn": Sinkhorn,
    "hardmax": Hardmax,
}


def normalization_name(normalization: AbstractNormalization) -> str | None:
    """The name of a built-in normalisation (`"softmax"`, ...), `None` for others."""
    for name, cls in NAMES.items():
        if type(normalization) is cls:
            return name
    return None
