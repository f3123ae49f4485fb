r"""Vector fields of attention flows: `field(t, y, args) -> tangent vectors`.

Every field is an `eqx.Module` whose `__call__(t, y, args)` takes tokens `y` of shape
`(n, d)` and returns velocities of the same shape, tangent to `field.manifold` at
`y`, so it can be handed to `diffrax.ODETerm` directly.
"""

import abc
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._attention import (
    AbstractEvaluation,
    AbstractMask,
    AbstractNormalization,
    AbstractPosition,
    Causal,
    Chunked,
    Dense,
    KeyMask,
    Softmax,
    legacy_parts,
    mask_fn,
    uniform_log_weights,
)
from ._attention._heads import expand_groups, project, queries_keys
from ._checks import as_float
from ._manifold import AbstractManifold, Sphere
from ._misc import is_concrete


class AbstractField(eqx.Module):
    """A time-dependent tangent vector field on `manifold^n`."""

    manifold: eqx.AbstractVar[AbstractManifold]

    @abc.abstractmethod
    def __call__(self, t, y: Float[Array, "n d"], args=None) -> Float[Array, "n d"]:
        """Velocity of every token at time `t`."""

    def check_tokens(self, y: Array) -> None:
        """Raise a `ValueError` if `y` is not a valid `(n, d)` input for this field."""
        if y.ndim != 2:
            raise ValueError(
                f"`y0` must have shape `(n, d)`; got shape {tuple(y.shape)} "
                "(use `jax.vmap` over a batch axis)."
            )
        self.manifold.check_dimension(y.shape[-1])

    def jump_times(self) -> Array | None:
        """Times where the field jumps (a step controller should stop there)."""
        return None


def _check_token_dim(y: Array, d: int) -> None:
    """Raise a `ValueError` unless the tokens `y` have dimension `d` (last axis)."""
    if y.shape[-1] != d:
        raise ValueError(
            f"`y0` has dimension d={y.shape[-1]} but the field expects d={d}."
        )


def _check_weight_count(y: Array, weights: Array | None) -> None:
    """Raise a `ValueError` unless `weights` (if any) has one entry per token of `y`."""
    if weights is not None and y.shape[-2] != weights.shape[0]:
        raise ValueError(
            f"`y0` has n={y.shape[-2]} tokens but `weights` has "
            f"{weights.shape[0]} entries."
        )


def _scalar(name: str, value) -> Array:
    value = as_float(value)
    if value.ndim != 0:
        raise ValueError(f"`{name}` must be a scalar; got shape {value.shape}.")
    if is_concrete(value) and not bool(np.isfinite(np.asarray(value))):
        raise ValueError(f"`{name}` must be finite; got {value}.")
    return value


def _bias(name: str, value, shape: tuple[int, ...]) -> Array | None:
    """A bias of the given shape (a single-head bias may omit the head axis)."""
    if value is None:
        return None
    value = as_float(value)
    if value.shape != shape and len(shape) == 2 and shape[0] == 1:
        value = value[None]
    if value.shape != shape:
        raise ValueError(f"`{name}` must have shape {shape}; got {value.shape}.")
    return value


def _as_heads(name: str, a, ndim_single: int) -> Array:
    a = as_float(a)
    if a.ndim == ndim_single:
        return a[None]
    if a.ndim == ndim_single + 1:
        return a
    raise ValueError(
        f"`{name}` must have {ndim_single} dimensions (one head) or "
        f"{ndim_single + 1} (heads first); got shape {a.shape}."
    )


def _check_weights(weights) -> Array | None:
    if weights is None:
        return None
    weights = jnp.asarray(weights)
    if weights.ndim != 1:
        raise ValueError(f"`weights` must be one-dimensional; got {weights.shape}.")
    if is_concrete(weights):
        w = np.asarray(weights, dtype=float)
        if not (np.all(np.isfinite(w)) and np.all(w > 0)):
            raise ValueError("`weights` must be positive and finite.")
        if abs(w.sum() - 1) > 1e-6:
            raise ValueError(f"`weights` must sum to 1; they sum to {w.sum()}.")
    return weights


def _check_parts(
    normalization: AbstractNormalization,
    masks: tuple[AbstractMask, ...],
    position: AbstractPosition | None,
    evaluation: AbstractEvaluation | None,
    manifold: AbstractManifold,
) -> AbstractEvaluation:
    """Validate the attention parts; returns the evaluation (default `Dense()`)."""
    name = type(normalization).__name__
    if masks and not normalization.row_local:
        if any(isinstance(m, KeyMask) for m in masks):
            raise ValueError(
                f"`key_mask` cannot be combined with `{name}` attention (its column "
                "constraint would involve the removed keys); use quadrature "
                "`weights` instead."
            )
        raise ValueError(
            f"`{name}` attention is not row-local: it cannot be combined with a "
            "mask (causal masking `Causal()`, `SlidingWindow(size)`, ...)."
        )
    if position is not None and not isinstance(position, AbstractPosition):
        raise ValueError(
            f"`position` must be a position part such as `RoPE()`; got {position!r}."
        )
    if evaluation is None:
        evaluation = Dense()
    if not isinstance(evaluation, AbstractEvaluation):
        raise ValueError(
            "`evaluation` must be an evaluation strategy (`Dense()`, `Chunked(size)`, "
            f"...); got {evaluation!r}."
        )
    if not isinstance(manifold, AbstractManifold):
        raise ValueError(f"`manifold` must be a spherejax manifold; got {manifold!r}.")
    return evaluation


class AbstractAttention(AbstractField):
    r"""Attention composed of parts: a normalisation, masks, a position part and
    an evaluation strategy (see `spherejax.attention`), with quadrature weights
    `weights` and inverse temperature `beta`. Subclasses say how tokens are
    projected into queries, keys and values."""

    beta: eqx.AbstractVar[Float[Array, ""]]
    weights: eqx.AbstractVar[Float[Array, " n"] | None]
    normalization: eqx.AbstractVar[AbstractNormalization]
    mask: eqx.AbstractVar[tuple[AbstractMask, ...] | None]
    position: eqx.AbstractVar[AbstractPosition | None]
    evaluation: eqx.AbstractVar[AbstractEvaluation]

    @abc.abstractmethod
    def attention_rows(
        self, y_rows: Float[Array, "m d"], rows: Array, y: Float[Array, "n d"]
    ) -> Float[Array, "m d"]:
        """The attention output (before the tangent projection) of the query
        tokens `y_rows` (token indices `rows`) against all tokens `y`."""

    def attention(self, y: Float[Array, "n d"]) -> Float[Array, "n d"]:
        r"""The attention output before the tangent projection, $v_i = \sum_h
        \sum_j A^h_{ij} (\text{value}_h)_j$ (the field is `to_tangent(y, v)`)."""
        self.check_tokens(y)
        return self.attention_rows(y, jnp.arange(y.shape[0]), y)

    def __call__(self, t, y, args=None):
        del t, args
        return self.manifold.to_tangent(y, self.attention(y))

    @property
    def masks(self) -> tuple[AbstractMask, ...]:
        """The masks, all applying (an empty tuple for none). The field `mask`
        holds `None` rather than `()` for no mask: the empty tuple is one shared
        object, which `equinox.tree_at` (used by diffrax's adjoints) cannot tell
        apart from other empty tuples."""
        return () if self.mask is None else self.mask

    @property
    def causal(self) -> bool:
        """Whether a `Causal` mask is among the masks."""
        return any(type(m) is Causal for m in self.masks)

    @property
    def chunk_size(self) -> int | None:
        """The block size of `Chunked` evaluation, `None` otherwise."""
        ev = self.evaluation
        return ev.size if isinstance(ev, Chunked) else None

    @property
    def key_mask(self) -> Array | None:
        """The array of the first `KeyMask` among the masks, if any."""
        for m in self.masks:
            if isinstance(m, KeyMask):
                return m.mask
        return None

    def _log_weights(self, dtype) -> Array | None:
        return None if self.weights is None else jnp.log(self.weights.astype(dtype))

    def _evaluate(self, q, k, v, dtype, qidx, kidx) -> Array:
        beta = self.beta.astype(dtype)
        return self.evaluation(
            self.normalization,
            q,
            k,
            v,
            beta,
            self._log_weights(dtype),
            self.masks,
            qidx,
            kidx,
        )

    def _check_common(self, y: Array, heads: int) -> None:
        _check_weight_count(y, self.weights)
        for m in self.masks:
            m.check(y.shape[-2], heads)
        self.evaluation.check(self.normalization, y.shape[-1])


_LEGACY_DOC = """
- `causal`, `chunk_size`, `sinkhorn_iters`, `key_mask`, and `normalization` given
  by name (`"softmax"`, ...): the options of earlier releases, still accepted with
  a `DeprecationWarning` (use `mask=Causal()`, `evaluation=Chunked(size)`,
  `Sinkhorn(iterations)`, `mask=KeyMask(m)`, `Softmax()`).
"""


def _mix_heads(out: Array, O: Array | None, dt) -> Array:  # noqa: E741
    """Per-head outputs `(h, m, e)` summed over heads (through `O` if given)."""
    if O is None:
        return jnp.sum(out, axis=0)
    return jnp.einsum("hne,hde->nd", out, O.astype(dt))


class SelfAttention(AbstractAttention):
    r"""Self-attention dynamics (Geshkovski–Letrouit–Polyanskiy–Rigollet, eq. 2.3/2.7),
    composed of parts:

    $$\dot x_i = P_{x_i}\Big[\sum_{a=1}^{h} \sum_j A^a_{ij}(X)\, O_a (W_a x_j + c_a)
    + b_o\Big],\qquad
    A^a_{ij} = \mathcal{N}\big(w_j\, m_{ij}\,
    e^{\beta \langle R_i(Q_a x_i + a_a),\,
    R_j(K_{\kappa(a)} x_j + b_{\kappa(a)})\rangle}\big)$$

    with $\mathcal{N}$ the `normalization` (`Softmax()`, `Unnormalized()`,
    `Sinkhorn(iterations)`, `Hardmax()` or one of your own), $m$ the `mask`
    (`Causal()`, `SlidingWindow(size)`, `KeyMask(mask)`, or a tuple of them, all
    applying), $R_i$ the `position` part (e.g. `RoPE()`; identity by default),
    $w$ the quadrature weights (default $1/n$), $\kappa(a)$ the key head of query
    head $a$ (grouped heads) and $P_x$ the tangent projection of `manifold`. The
    `evaluation` strategy (`Dense()`, `Chunked(size)`) changes the cost, not the
    result.

    Values: either one merged matrix per query head, `V` of shape `(h, d, d)`
    ($O_a W_a = V_a$, $c_a$ = `value_bias` `(h, d)`), or factorised as in a
    Transformer, `V` the value projections `(g, e, d)` (grouped like the keys),
    `O` the output projections `(h, d, e)` and `value_bias` `(g, e)`: then a head
    costs $O(n e)$ instead of $O(n d)$, as in the model. A standard multi-head layer
    $\sum_a \mathrm{softmax}((W^Q_a x + b^Q_a)^\top(W^K_a x + b^K_a)/\sqrt{d_a})
    (W^V_a x + b^V_a) W^O_a + b^O$ is `Q = W^Q`, `K = W^K`, `V = W^V`, `O = W^O`,
    the biases, and `beta = 1/sqrt(d_a)`; the query bias gives the logit term
    $\langle b^Q_a, W^K_a x_j\rangle$, linear in the key, which the bilinear form
    alone cannot express.

    ??? cite
        B. Geshkovski, C. Letrouit, Y. Polyanskiy, P. Rigollet, *A mathematical
        perspective on Transformers*, arXiv:2312.10794.
    """

    Q: Float[Array, "h k d"]
    K: Float[Array, "g k d"]
    V: Float[Array, "hv e d"]
    O: Float[Array, "h d e"] | None
    beta: Float[Array, ""]
    weights: Float[Array, " n"] | None
    normalization: AbstractNormalization
    mask: tuple[AbstractMask, ...] | None
    position: AbstractPosition | None
    evaluation: AbstractEvaluation
    manifold: AbstractManifold
    query_bias: Float[Array, "h k"] | None = None
    key_bias: Float[Array, "g k"] | None = None
    value_bias: Float[Array, "hv e"] | None = None
    output_bias: Float[Array, " d"] | None = None

    def __init__(
        self,
        Q: ArrayLike,
        K: ArrayLike,
        V: ArrayLike,
        beta: ArrayLike,
        *,
        O: ArrayLike | None = None,  # noqa: E741
        normalization: AbstractNormalization | str = Softmax(),
        mask: AbstractMask | tuple[AbstractMask, ...] | None = None,
        position: AbstractPosition | None = None,
        evaluation: AbstractEvaluation | None = None,
        weights: ArrayLike | None = None,
        manifold: AbstractManifold = Sphere(),
        query_bias: ArrayLike | None = None,
        key_bias: ArrayLike | None = None,
        value_bias: ArrayLike | None = None,
        output_bias: ArrayLike | None = None,
        causal: bool | None = None,
        chunk_size: int | None = None,
        sinkhorn_iters: int | None = None,
        key_mask: ArrayLike | None = None,
    ):
        normalization, masks, evaluation = legacy_parts(
            "SelfAttention",
            normalization,
            causal=causal,
            sinkhorn_iters=sinkhorn_iters,
            chunk_size=chunk_size,
            key_mask=key_mask,
            mask=mask,
            evaluation=evaluation,
        )
        self.evaluation = _check_parts(
            normalization, masks, position, evaluation, manifold
        )
        Q = _as_heads("Q", Q, 2)
        K = _as_heads("K", K, 2)
        h, k, d = Q.shape
        g = K.shape[0]
        if K.shape[1:] != (k, d) or h % g:
            raise ValueError(
                f"`Q` and `K` must match: `K` of shape `(g, {k}, {d})` with `g` "
                f"dividing the {h} query heads of `Q` (grouped key/value heads); got "
                f"`Q` {Q.shape} and `K` {K.shape}."
            )
        if O is None:
            V = _as_heads("V", V, 2)
            if V.shape != (h, d, d):
                raise ValueError(
                    f"`V` must have shape {(h, d, d) if h > 1 else (d, d)} to match "
                    f"`Q` of shape {Q.shape} (or pass the factorised value and "
                    f"output projections `V` `(g, e, d)` and `O` `(h, d, e)`); got "
                    f"{V.shape}."
                )
            value_heads = h
        else:
            V = _as_heads("V", V, 2)
            O = _as_heads("O", O, 2)
            e = V.shape[1]
            if V.shape != (g, e, d) or O.shape != (h, d, e):
                raise ValueError(
                    f"factorised values need `V` of shape `({g}, e, {d})` (one per key "
                    f"head) and `O` of shape `({h}, {d}, e)`; got `V` {V.shape} and "
                    f"`O` {O.shape}."
                )
            value_heads = g
        self.Q, self.K, self.V, self.O = Q, K, V, O
        self.beta = _scalar("beta", beta)
        self.weights = _check_weights(weights)
        self.normalization = normalization
        self.mask = masks or None  # `None`, not `()`: see `AbstractAttention`
        self.position = position
        self.manifold = manifold
        self.query_bias = _bias("query_bias", query_bias, (h, k))
        self.key_bias = _bias("key_bias", key_bias, (g, k))
        self.value_bias = _bias("value_bias", value_bias, (value_heads, V.shape[1]))
        self.output_bias = _bias("output_bias", output_bias, (d,))
        for m in masks:
            if isinstance(m, KeyMask) and m.per_head and m.mask.shape[0] != h:
                raise ValueError(
                    f"`key_mask` must have shape `(n,)` or `({h}, n)`; got "
                    f"{m.mask.shape}."
                )
        self.evaluation = self.evaluation.bind(self)

    @property
    def has_extras(self) -> bool:
        """Whether anything beyond GLPR's field is set: biases, a mask other than
        `Causal`, a position part, grouped heads or factorised values."""
        extras = (
            self.query_bias,
            self.key_bias,
            self.value_bias,
            self.output_bias,
            self.position,
            self.O,
        )
        return (
            any(a is not None for a in extras)
            or any(type(m) is not Causal for m in self.masks)
            or self.K.shape[0] != self.Q.shape[0]
        )

    @classmethod
    def identity(cls, d: int, beta: ArrayLike, *, heads: int | None = None, **kwargs):
        """`Q = K = V = I_d` (one head, or `heads` identical heads): the model
        studied in most of GLPR."""
        eye = jnp.eye(d)
        if heads is not None:
            eye = jnp.broadcast_to(eye, (heads, d, d))
        return cls(eye, eye, eye, beta, **kwargs)

    @property
    def dim(self) -> int:
        return self.Q.shape[-1]

    @property
    def heads(self) -> int:
        return self.Q.shape[0]

    def check_tokens(self, y):
        super().check_tokens(y)
        _check_token_dim(y, self.dim)
        self._check_common(y, self.heads)

    def _values(self, y: Array, dtype) -> Array:
        V = self.V.astype(dtype)
        c = None if self.value_bias is None else self.value_bias.astype(dtype)
        vals = project(V, y, c, "hed,nd->hne")
        return expand_groups(vals, self.heads)

    def attention_rows(self, y_rows, rows, y):
        dt = y.dtype
        Q, K = (a.astype(dt) for a in (self.Q, self.K))
        qb, kb = (
            None if b is None else b.astype(dt)
            for b in (self.query_bias, self.key_bias)
        )
        kidx = jnp.arange(y.shape[0], dtype=rows.dtype)
        v = self._values(y, dt)
        if self.evaluation.from_tokens:
            out = self.evaluation.attend(self, y_rows, rows, y, v)
            out = _mix_heads(out, self.O, dt)
        elif self.heads == 1:  # no head axis: faster batched products under vmap
            q, k = queries_keys(Q, K, qb, kb, self.position, y_rows, rows, y, kidx)
            out = self._evaluate(q[0], k[0], v[0], dt, rows, kidx)
            if self.O is not None:
                out = out @ self.O[0].astype(dt).T
        else:
            q, k = queries_keys(Q, K, qb, kb, self.position, y_rows, rows, y, kidx)
            out = _mix_heads(self._evaluate(q, k, v, dt, rows, kidx), self.O, dt)
        if self.output_bias is not None:
            out = out + self.output_bias.astype(dt)
        return out

    def attention_matrix(self, y: Float[Array, "n d"]) -> Float[Array, "h n n"]:
        """The attention matrices `A^a_ij` of every query head, `(h, n, n)`."""
        self.check_tokens(y)
        dt = y.dtype
        n = y.shape[0]
        idx = jnp.arange(n)
        Q, K = (a.astype(dt) for a in (self.Q, self.K))
        qb, kb = (
            None if b is None else b.astype(dt)
            for b in (self.query_bias, self.key_bias)
        )
        q, k = queries_keys(Q, K, qb, kb, self.position, y, idx, y, idx)
        lw = self._log_weights(dt)
        lw = uniform_log_weights(n, dt) if lw is None else lw
        fn = mask_fn(self.masks)
        m = None if fn is None else fn(idx, idx)
        s = jnp.einsum("hic,hjc->hij", q, k)
        return self.normalization.matrix(s, self.beta.astype(dt), lw, m)

    def attention_via_matrix(self, y: Float[Array, "n d"]) -> Float[Array, "n d"]:
        """`attention(y)` computed through `attention_matrix` (the formula, every
        matrix formed; for reverse rules and tests)."""
        a = self.attention_matrix(y)
        v = self._values(y, y.dtype)
        out = jnp.einsum("hij,hje->hie", a, v)
        if self.O is None:
            out = jnp.sum(out, axis=0)
        else:
            out = jnp.einsum("hne,hde->nd", out, self.O.astype(y.dtype))
        if self.output_bias is not None:
            out = out + self.output_bias.astype(y.dtype)
        return out


SelfAttention.__init__.__doc__ = (
    """**Arguments:**

- `Q`: query matrices, shape `(h, k, d)` (or `(k, d)` for one head).
- `K`: key matrices, `(g, k, d)` with `g` dividing `h` (`g < h`: grouped
  key/value heads, query head `a` reading key head `a // (h / g)`).
- `V`: merged value-output matrices `(h, d, d)` (or `(d, d)`); or, with `O`, the
  value projections `(g, e, d)`.
- `beta`: inverse temperature (a finite scalar; differentiable).
- `O`: the output projections `(h, d, e)` of factorised values (default `None`).
- `normalization`: `Softmax()` (default), `Unnormalized()`,
  `Sinkhorn(iterations)`, `Hardmax()`, or a subclass of `AbstractNormalization`.
- `mask`: `None`, a mask (`Causal()`, `SlidingWindow(size)`, `KeyMask(mask)` with
  a boolean `(n,)` or `(h, n)`), or a tuple of masks (all apply). At least one key
  must remain per row.
- `position`: `None` or a position part such as `RoPE(theta, fraction, scaling)`;
  token `i` has position `i`.
- `evaluation`: `Dense()` (default) or `Chunked(size)` (memory `O(n d)` forward
  and backward; equal to the dense result up to rounding).
- `weights`: quadrature weights `w_j > 0` summing to one, `(n,)` (default `1/n`).
- `manifold`: where tokens live (default `Sphere()`); outputs are projected onto
  its tangent spaces.
- `query_bias`, `key_bias`: biases `(h, k)`, `(g, k)` of the query and key
  projections (or `(k,)` for one head); default zero.
- `value_bias`: `(h, d)` added to `V_a x_j` (merged values) or `(g, e)` added to
  the value projections (factorised).
- `output_bias`: `b_o`, shape `(d,)`, added after the sum over heads.
"""
    + _LEGACY_DOC
)


class IdentityAttention(AbstractAttention):
    r"""GLPR's pure self-attention, $Q = K = V = I_d$, with `beta` its only parameter:

    $$\dot x_i = P_{x_i}\Big[\sum_j A_{ij}(X)\, x_j\Big],\qquad
    A_{ij} = \mathcal{N}\big(w_j\, m_{ij}\, e^{\beta \langle x_i, x_j\rangle}\big)$$

    (the SA/USA dynamics of GLPR eq. 2.3/2.7 as most of their results state them),
    with the same parts as `SelfAttention` (normalisation, masks, position,
    evaluation). The same field as `SelfAttention.identity(d, beta, ...)`, but the
    identity projections `Q x`, `K x`, `V x` are not computed: dense
    softmax/unnormalized attention is two `n x n x d` products, where the general
    field adds three `n x d x d` ones (a `solve` at n = 256, d = 64 in float64
    takes 0.85-0.90x the time: `benchmarks/solve_peers.py`).

    ??? cite
        B. Geshkovski, C. Letrouit, Y. Polyanskiy, P. Rigollet, *A mathematical
        perspective on Transformers*, arXiv:2312.10794.
    """

    beta: Float[Array, ""]
    weights: Float[Array, " n"] | None
    normalization: AbstractNormalization
    mask: tuple[AbstractMask, ...] | None
    position: AbstractPosition | None
    evaluation: AbstractEvaluation
    manifold: AbstractManifold

    def __init__(
        self,
        beta: ArrayLike,
        *,
        normalization: AbstractNormalization | str = Softmax(),
        mask: AbstractMask | tuple[AbstractMask, ...] | None = None,
        position: AbstractPosition | None = None,
        evaluation: AbstractEvaluation | None = None,
        weights: ArrayLike | None = None,
        manifold: AbstractManifold = Sphere(),
        causal: bool | None = None,
        chunk_size: int | None = None,
        sinkhorn_iters: int | None = None,
        key_mask: ArrayLike | None = None,
    ):
        normalization, masks, evaluation = legacy_parts(
            "IdentityAttention",
            normalization,
            causal=causal,
            sinkhorn_iters=sinkhorn_iters,
            chunk_size=chunk_size,
            key_mask=key_mask,
            mask=mask,
            evaluation=evaluation,
        )
        self.evaluation = _check_parts(
            normalization, masks, position, evaluation, manifold
        )
        self.beta = _scalar("beta", beta)
        self.weights = _check_weights(weights)
        self.normalization = normalization
        self.mask = masks or None  # `None`, not `()`: see `AbstractAttention`
        self.position = position
        self.manifold = manifold
        self.evaluation = self.evaluation.bind(self)

    def as_self_attention(self, d: int) -> SelfAttention:
        """The same field as a `SelfAttention` with `Q = K = V = I_d`."""
        return SelfAttention.identity(
            d,
            self.beta,
            normalization=self.normalization,
            mask=self.masks,
            position=self.position,
            evaluation=self.evaluation,
            weights=self.weights,
            manifold=self.manifold,
        )

    def check_tokens(self, y):
        super().check_tokens(y)
        self._check_common(y, 1)

    def attention_rows(self, y_rows, rows, y):
        if self.evaluation.from_tokens:
            return self.evaluation.attend(self, y_rows, rows, y, y[None])[0]
        kidx = jnp.arange(y.shape[0], dtype=rows.dtype)
        q, k = queries_keys(
            None, None, None, None, self.position, y_rows, rows, y, kidx
        )
        return self._evaluate(q, k, y, y.dtype, rows, kidx)


IdentityAttention.__init__.__doc__ = (
    """**Arguments:**

- `beta`: inverse temperature (a finite scalar; differentiable).
- `normalization`, `mask`, `position`, `evaluation`, `weights`, `manifold`: as for
  `SelfAttention`.
"""
    + _LEGACY_DOC
)


class FeedForward(AbstractField):
    r"""A token-wise feed-forward (MLP) term, projected to the tangent space:

    $$\dot x_i = P_{x_i}\big[W_2\, \sigma(W_1 x_i + b_1) + b_2\big].$$
    """

    W1: Float[Array, "m d"]
    b1: Float[Array, " m"]
    W2: Float[Array, "d m"]
    b2: Float[Array, " d"]
    activation: Callable = eqx.field(static=True)
    manifold: AbstractManifold

    def __init__(
        self,
        W1: ArrayLike,
        b1: ArrayLike,
        W2: ArrayLike,
        b2: ArrayLike,
        *,
        activation: Callable = jax.nn.relu,
        manifold: AbstractManifold = Sphere(),
    ):
        W1, b1, W2, b2 = (jnp.asarray(a) for a in (W1, b1, W2, b2))
        if W1.ndim != 2:
            raise ValueError(f"`W1` must have shape `(m, d)`; got {W1.shape}.")
        m, d = W1.shape
        for name, a, shape in (("b1", b1, (m,)), ("W2", W2, (d, m)), ("b2", b2, (d,))):
            if a.shape != shape:
                raise ValueError(f"`{name}` must have shape {shape}; got {a.shape}.")
        self.W1, self.b1, self.W2, self.b2 = W1, b1, W2, b2
        self.activation = activation
        self.manifold = manifold

    @classmethod
    def random(
        cls, key: PRNGKeyArray, d: int, hidden: int, *, scale: float = 1.0, **kwargs
    ):
        """Gaussian weights with variance `scale / fan_in`, zero biases."""
        k1, k2 = jr.split(key)
        W1 = jr.normal(k1, (hidden, d)) * jnp.sqrt(scale / d)
        W2 = jr.normal(k2, (d, hidden)) * jnp.sqrt(scale / hidden)
        return cls(W1, jnp.zeros(hidden), W2, jnp.zeros(d), **kwargs)

    def check_tokens(self, y):
        super().check_tokens(y)
        _check_token_dim(y, self.W1.shape[1])

    def __call__(self, t, y, args=None):
        del t, args
        self.check_tokens(y)
        dt = y.dtype
        hidden = self.activation(y @ self.W1.astype(dt).T + self.b1.astype(dt))
        v = hidden @ self.W2.astype(dt).T + self.b2.astype(dt)
        return self.manifold.to_tangent(y, v)


FeedForward.__init__.__doc__ = """**Arguments:**

- `W1`, `b1`: first layer, shapes `(m, d)` and `(m,)`.
- `W2`, `b2`: second layer, shapes `(d, m)` and `(d,)`.
- `activation`: the nonlinearity `sigma` (default ReLU).
- `manifold`: where tokens live (default `Sphere()`).
"""


def _common_manifold(fields: Sequence[AbstractField]) -> AbstractManifold:
    for f in fields:
        if not isinstance(f, AbstractField):
            raise ValueError(f"expected spherejax fields; got {type(f).__name__}.")
    manifold = fields[0].manifold
    for f in fields[1:]:
        if f.manifold != manifold:
            raise ValueError(
                f"all fields must live on the same manifold; got {manifold} and "
                f"{f.manifold}."
            )
    return manifold


class Sum(AbstractField):
    """The sum of several fields on the same manifold (e.g. attention + MLP)."""

    fields: tuple[AbstractField, ...]
    manifold: AbstractManifold

    def __init__(self, *fields: AbstractField):
        if len(fields) == 0:
            raise ValueError("`Sum` needs at least one field.")
        self.manifold = _common_manifold(fields)
        self.fields = tuple(fields)

    def check_tokens(self, y):
        for f in self.fields:
            f.check_tokens(y)

    def jump_times(self):
        jumps = [j for f in self.fields if (j := f.jump_times()) is not None]
        return jnp.sort(jnp.concatenate(jumps)) if jumps else None

    def __call__(self, t, y, args=None):
        out = self.fields[0](t, y, args)
        for f in self.fields[1:]:
            out = out + f(t, y, args)
        return out


Sum.__init__.__doc__ = """**Arguments:**

- `*fields`: fields on a common manifold; their velocities are added.
"""


class Layerwise(AbstractField):
    r"""A piecewise-constant-in-time field: layer `k` acts on `[t_k, t_{k+1})`.

    This is how a Transformer with per-layer weights becomes a non-autonomous ODE.
    The layers are stored stacked (one leading axis per parameter), so evaluation
    selects parameters by index and compiles once, whatever the depth. Outside
    `[t_0, t_L]` the first (before) or last (after) layer is used.
    """

    stacked: AbstractField
    times: Float[Array, " L1"]
    num_layers: int = eqx.field(static=True)

    def __init__(
        self, fields: Sequence[AbstractField], times: ArrayLike | Sequence[float]
    ):
        fields = list(fields)
        if len(fields) == 0:
            raise ValueError("`Layerwise` needs at least one field.")
        _common_manifold(fields)
        times = jnp.asarray(times)
        if times.shape != (len(fields) + 1,):
            raise ValueError(
                f"`times` must hold the {len(fields) + 1} layer boundaries "
                f"t_0 < ... < t_L for {len(fields)} fields; got shape {times.shape}."
            )
        if is_concrete(times) and not bool(np.all(np.diff(np.asarray(times)) > 0)):
            raise ValueError("`times` must be strictly increasing.")
        structures = {
            jax.tree_util.tree_structure(eqx.filter(f, eqx.is_array, inverse=True))
            for f in fields
        }
        dyn = [eqx.filter(f, eqx.is_array) for f in fields]
        shapes = {tuple(a.shape for a in jax.tree_util.tree_leaves(p)) for p in dyn}
        if len(structures) != 1 or len(shapes) != 1:
            raise ValueError(
                "all `fields` of `Layerwise` must have the same structure and shapes "
                "(same class, options and parameter shapes)."
            )
        params = jax.tree.map(lambda *xs: jnp.stack(xs), *dyn)
        static = eqx.filter(fields[0], eqx.is_array, inverse=True)
        self.stacked = eqx.combine(params, static)
        self.times = times
        self.num_layers = len(fields)

    @property
    def manifold(self):
        return self.stacked.manifold

    def layer(self, k) -> AbstractField:
        """The field of layer `k` (an integer, possibly traced)."""
        params, static = eqx.partition(self.stacked, eqx.is_array)
        return eqx.combine(jax.tree.map(lambda a: a[k], params), static)

    def index(self, t) -> Array:
        """Index of the layer acting at time `t`."""
        k = jnp.searchsorted(self.times, t, side="right") - 1
        return jnp.clip(k, 0, self.num_layers - 1)

    def check_tokens(self, y):
        self.layer(0).check_tokens(y)

    def jump_times(self):
        return self.times[1:-1]

    def __call__(self, t, y, args=None):
        return self.layer(self.index(t))(t, y, args)


Layerwise.__init__.__doc__ = """**Arguments:**

- `fields`: `L` fields of identical structure (one per layer).
- `times`: the `L + 1` increasing layer boundaries `t_0 < t_1 < ... < t_L`.
"""
