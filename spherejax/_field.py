r"""Vector fields of attention flows: `field(t, y, args) -> tangent vectors`.

Every field is an `eqx.Module` whose `__call__(t, y, args)` takes tokens `y` of shape
`(n, d)` and returns velocities of the same shape, tangent to `field.manifold` at
`y`, so it can be handed to `diffrax.ODETerm` directly.
"""

import abc
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._attention import (
    _check_key_mask,
    _check_normalization,
    _dense_attention,
    attend,
    uses_dot_product_attention,
)
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


def _as_float(value) -> Array:
    """`value` as an array, integer and boolean input cast to the default float."""
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.inexact):
        value = value.astype(jnp.result_type(float))
    return value


def _scalar(name: str, value) -> Array:
    value = _as_float(value)
    if value.ndim != 0:
        raise ValueError(f"`{name}` must be a scalar; got shape {value.shape}.")
    if is_concrete(value) and not bool(np.isfinite(np.asarray(value))):
        raise ValueError(f"`{name}` must be finite; got {value}.")
    return value


def _bias(name: str, value, shape: tuple[int, ...]) -> Array | None:
    """A bias of the given shape (a single-head bias may omit the head axis)."""
    if value is None:
        return None
    value = _as_float(value)
    if value.shape != shape and len(shape) == 2 and shape[0] == 1:
        value = value[None]
    if value.shape != shape:
        raise ValueError(f"`{name}` must have shape {shape}; got {value.shape}.")
    return value


def _key_mask(value, heads: int, normalization: str) -> Array | None:
    """A boolean key mask `(n,)` or `(heads, n)`, checked."""
    if value is None:
        return None
    _check_key_mask(normalization, value)
    value = jnp.asarray(value)
    if value.dtype != jnp.bool_:
        raise ValueError(f"`key_mask` must be boolean; got dtype {value.dtype}.")
    if value.ndim not in (1, 2) or (value.ndim == 2 and value.shape[0] != heads):
        raise ValueError(
            f"`key_mask` must have shape `(n,)` or `({heads}, n)`; got {value.shape}."
        )
    if is_concrete(value) and not bool(np.all(np.any(np.asarray(value), axis=-1))):
        raise ValueError("`key_mask` must keep at least one key (per head).")
    return value


def _as_heads(name: str, a, ndim_single: int) -> Array:
    a = _as_float(a)
    if a.ndim == ndim_single:
        return a[None]
    if a.ndim == ndim_single + 1:
        return a
    raise ValueError(
        f"`{name}` must have {ndim_single} dimensions (one head) or "
        f"{ndim_single + 1} (heads first); got shape {a.shape}."
    )


class SelfAttention(AbstractField):
    r"""Self-attention dynamics (Geshkovski–Letrouit–Polyanskiy–Rigollet, eq. 2.3/2.7):

    $$\dot x_i = P_{x_i}\Big[\sum_h \sum_j A^h_{ij}(X)\, (V_h x_j + c_h)
    + b_o\Big],\qquad
    A^h_{ij} \propto w_j\, m^h_{ij}\,
    e^{\beta \langle Q_h x_i + a_h,\, K_h x_j + b_h\rangle}$$

    with the normalisation of `A` chosen by `normalization` (see
    `spherejax._attention`), `w` the quadrature weights (default `1/n`), `m` the
    mask (causal `j <= i` and/or a boolean `key_mask`, e.g. padding) and `P_x` the
    tangent projection of `manifold`. The biases `a_h` (`query_bias`), `b_h`
    (`key_bias`), `c_h` (`value_bias`) and `b_o` (`output_bias`) are zero by
    default. A standard multi-head attention layer
    $\sum_h \mathrm{softmax}\big((W^Q_h x + b^Q_h)^\top(W^K_h x + b^K_h)/\sqrt{d_h}
    \big)(W^V_h x + b^V_h) W^O_h + b^O$ is `Q_h = W^Q_h`, `K_h = W^K_h`,
    `V_h = W^O_h W^V_h`, `a_h = b^Q_h`, `b_h = b^K_h`, `c_h = W^O_h b^V_h`,
    `b_o = b^O`, `beta = 1/sqrt(d_h)` (column-vector convention): the query bias
    gives the logit term $\langle b^Q_h, W^K_h x_j\rangle$, linear in the key, which
    the bilinear form alone cannot express.

    ??? cite
        B. Geshkovski, C. Letrouit, Y. Polyanskiy, P. Rigollet, *A mathematical
        perspective on Transformers*, arXiv:2312.10794.
    """

    Q: Float[Array, "h k d"]
    K: Float[Array, "h k d"]
    V: Float[Array, "h d d"]
    beta: Float[Array, ""]
    weights: Float[Array, " n"] | None
    normalization: str = eqx.field(static=True)
    causal: bool = eqx.field(static=True)
    manifold: AbstractManifold
    chunk_size: int | None = eqx.field(static=True)
    sinkhorn_iters: int = eqx.field(static=True)
    query_bias: Float[Array, "h k"] | None = None
    key_bias: Float[Array, "h k"] | None = None
    value_bias: Float[Array, "h d"] | None = None
    output_bias: Float[Array, " d"] | None = None
    key_mask: Array | None = None

    def __init__(
        self,
        Q: ArrayLike,
        K: ArrayLike,
        V: ArrayLike,
        beta: ArrayLike,
        *,
        normalization: str = "softmax",
        causal: bool = False,
        weights: ArrayLike | None = None,
        manifold: AbstractManifold = Sphere(),
        chunk_size: int | None = None,
        sinkhorn_iters: int = 100,
        query_bias: ArrayLike | None = None,
        key_bias: ArrayLike | None = None,
        value_bias: ArrayLike | None = None,
        output_bias: ArrayLike | None = None,
        key_mask: ArrayLike | None = None,
    ):
        Q = _as_heads("Q", Q, 2)
        K = _as_heads("K", K, 2)
        V = _as_heads("V", V, 2)
        if Q.shape != K.shape:
            raise ValueError(
                f"`Q` and `K` must have the same shape; got {Q.shape} and {K.shape}."
            )
        h, _, d = Q.shape
        if V.shape != (h, d, d):
            raise ValueError(
                f"`V` must have shape {(h, d, d) if h > 1 else (d, d)} to match "
                f"`Q` of shape {Q.shape}; got {V.shape}."
            )
        _check_normalization(normalization, causal)
        if not isinstance(manifold, AbstractManifold):
            raise ValueError(
                f"`manifold` must be a spherejax manifold; got {manifold!r}."
            )
        if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
            raise ValueError(
                f"`chunk_size` must be a positive integer; got {chunk_size}."
            )
        if int(sinkhorn_iters) != sinkhorn_iters or sinkhorn_iters < 1:
            raise ValueError(
                f"`sinkhorn_iters` must be a positive integer; got {sinkhorn_iters}."
            )
        if weights is not None:
            weights = jnp.asarray(weights)
            if weights.ndim != 1:
                raise ValueError(
                    f"`weights` must be one-dimensional; got {weights.shape}."
                )
            if is_concrete(weights):
                w = np.asarray(weights, dtype=float)
                if not (np.all(np.isfinite(w)) and np.all(w > 0)):
                    raise ValueError("`weights` must be positive and finite.")
                if abs(w.sum() - 1) > 1e-6:
                    raise ValueError(f"`weights` must sum to 1; they sum to {w.sum()}.")
        self.Q, self.K, self.V = Q, K, V
        self.beta = _scalar("beta", beta)
        self.weights = weights
        self.normalization = normalization
        self.causal = bool(causal)
        self.manifold = manifold
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.sinkhorn_iters = int(sinkhorn_iters)
        k = Q.shape[1]
        self.query_bias = _bias("query_bias", query_bias, (h, k))
        self.key_bias = _bias("key_bias", key_bias, (h, k))
        self.value_bias = _bias("value_bias", value_bias, (h, d))
        self.output_bias = _bias("output_bias", output_bias, (d,))
        self.key_mask = _key_mask(key_mask, h, normalization)

    @property
    def has_extras(self) -> bool:
        """Whether any bias or key mask is set (the plain GLPR field if not)."""
        extras = (
            self.query_bias,
            self.key_bias,
            self.value_bias,
            self.output_bias,
            self.key_mask,
        )
        return any(a is not None for a in extras)

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
        _check_weight_count(y, self.weights)
        if self.key_mask is not None and self.key_mask.shape[-1] != y.shape[-2]:
            raise ValueError(
                f"`y0` has n={y.shape[-2]} tokens but `key_mask` has "
                f"{self.key_mask.shape[-1]} entries."
            )

    def _attend_args(self, dtype) -> tuple[tuple[Array, ...], dict]:
        """`(Q, K, V, beta)` cast to `dtype` and the keyword options that
        `attend` and `attend_rows` take from this field (log-weights included)."""
        log_w = None if self.weights is None else jnp.log(self.weights.astype(dtype))
        params = tuple(a.astype(dtype) for a in (self.Q, self.K, self.V, self.beta))
        options: dict = dict(
            normalization=self.normalization,
            causal=self.causal,
            log_weights=log_w,
            chunk_size=self.chunk_size,
        )
        for name in ("query_bias", "key_bias", "value_bias"):
            if (b := getattr(self, name)) is not None:
                options[name] = b.astype(dtype)
        if self.key_mask is not None:
            options["key_mask"] = self.key_mask
        return params, options

    def __call__(self, t, y, args=None):
        del t, args
        return self.manifold.to_tangent(y, self.attention(y))

    def attention(self, y: Float[Array, "n d"]) -> Float[Array, "n d"]:
        r"""The attention output before the tangent projection,
        $v_i = \sum_h \sum_j A^h_{ij} (V_h y_j + c_h) + b_o$ (the field is
        `to_tangent(y, v)`)."""
        self.check_tokens(y)
        params, options = self._attend_args(y.dtype)
        v = attend(y, *params, sinkhorn_iters=self.sinkhorn_iters, **options)
        if self.output_bias is not None:
            v = v + self.output_bias.astype(y.dtype)
        return v


SelfAttention.__init__.__doc__ = """**Arguments:**

- `Q`, `K`: query and key matrices, shape `(k, d)` (one head) or `(h, k, d)`.
- `V`: value matrices, shape `(d, d)` or `(h, d, d)`.
- `beta`: inverse temperature (a finite scalar; differentiable).
- `normalization`: `"softmax"` (default), `"unnormalized"`, `"sinkhorn"` or `"hardmax"`.
- `causal`: mask `j <= i` (token `i` attends to earlier tokens only).
- `weights`: quadrature weights `w_j > 0` summing to one (default `1/n`).
- `manifold`: where tokens live (default `Sphere()`); outputs are projected onto
  its tangent spaces.
- `chunk_size`: evaluate attention in `chunk_size x chunk_size` blocks with online
  log-sum-exps over key blocks (every normalisation; memory `O(n d)` in the forward
  and backward pass; equal to the dense result up to rounding).
- `sinkhorn_iters`: number of log-domain Sinkhorn iterations.
- `query_bias`, `key_bias`: per-head biases `a_h`, `b_h` of the query and key
  projections, shape `(h, k)` (or `(k,)` for one head); default zero.
- `value_bias`: per-head bias `c_h` added to `V_h x_j`, shape `(h, d)` (or `(d,)`).
- `output_bias`: `b_o`, shape `(d,)`, added after the sum over heads.
- `key_mask`: boolean, `(n,)` or `(h, n)` (per head): keys where it is `False` are
  removed from every row (padding). At least one key must remain per row. Not
  with Sinkhorn (use `weights`), nor with chunked hardmax.
"""


class IdentityAttention(AbstractField):
    r"""GLPR's pure self-attention, $Q = K = V = I_d$, with `beta` its only parameter:

    $$\dot x_i = P_{x_i}\Big[\sum_j A_{ij}(X)\, x_j\Big],\qquad
    A_{ij} \propto w_j\, m_{ij}\, e^{\beta \langle x_i, x_j\rangle}$$

    (the SA/USA dynamics of GLPR eq. 2.3/2.7 as most of their results state them).
    The same field as `SelfAttention.identity(d, beta, ...)`, but the identity
    projections `Q x`, `K x`, `V x` are not computed: dense softmax/unnormalized
    attention is two `n x n x d` products, where the general field adds three
    `n x d x d` ones (a `solve` at n = 256, d = 64 in float64 takes 0.85-0.90x the time:
    `benchmarks/solve_peers.py`). Other normalisations, chunked evaluation, and
    softmax on GPU/TPU (where `jax.nn.dot_product_attention` may serve it) go
    through `SelfAttention` with identity matrices.

    ??? cite
        B. Geshkovski, C. Letrouit, Y. Polyanskiy, P. Rigollet, *A mathematical
        perspective on Transformers*, arXiv:2312.10794.
    """

    beta: Float[Array, ""]
    weights: Float[Array, " n"] | None
    normalization: str = eqx.field(static=True)
    causal: bool = eqx.field(static=True)
    manifold: AbstractManifold
    chunk_size: int | None = eqx.field(static=True)
    sinkhorn_iters: int = eqx.field(static=True)

    def __init__(
        self,
        beta: ArrayLike,
        *,
        normalization: str = "softmax",
        causal: bool = False,
        weights: ArrayLike | None = None,
        manifold: AbstractManifold = Sphere(),
        chunk_size: int | None = None,
        sinkhorn_iters: int = 100,
    ):
        options: dict[str, Any] = dict(
            normalization=normalization,
            causal=causal,
            weights=weights,
            manifold=manifold,
            chunk_size=chunk_size,
            sinkhorn_iters=sinkhorn_iters,
        )
        # the general constructor validates every option (d is not known yet)
        general = SelfAttention.identity(1, beta, **options)
        for name in ("beta", *options):
            setattr(self, name, getattr(general, name))

    def as_self_attention(self, d: int) -> SelfAttention:
        """The same field as a `SelfAttention` with `Q = K = V = I_d`."""
        names = (
            "normalization",
            "causal",
            "weights",
            "manifold",
            "chunk_size",
            "sinkhorn_iters",
        )
        return SelfAttention.identity(
            d, self.beta, **{k: getattr(self, k) for k in names}
        )

    def check_tokens(self, y):
        super().check_tokens(y)
        _check_weight_count(y, self.weights)

    def __call__(self, t, y, args=None):
        self.check_tokens(y)
        n, d = y.shape
        dense = self.chunk_size is None or self.chunk_size >= n
        if (
            self.normalization not in ("softmax", "unnormalized")
            or not dense
            or uses_dot_product_attention(y.dtype, self.normalization, None, n)
        ):
            return self.as_self_attention(d)(t, y, args)
        dt = y.dtype
        log_w = None if self.weights is None else jnp.log(self.weights.astype(dt))
        v = _dense_attention(
            y,
            None,
            None,
            None,
            self.beta.astype(dt),
            log_w,
            causal=self.causal,
            normalization=self.normalization,
        )
        return self.manifold.to_tangent(y, v)


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
