r"""Measures of the dynamics of an imported network read as a flow: how far each
layer is from its continuous-time limit, how much time each layer integrates,
causal clustering towards the first token, attention sinks, and pairwise-cosine
histograms. They take a `TransformerFlow` or a `DecoderFlow` (from
`from_huggingface`), or arrays of states.
"""

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._field import SelfAttention
from ._decoder import DecoderFlow
from ._flow import TransformerFlow


def _check_model(model):
    if not isinstance(model, (TransformerFlow, DecoderFlow)):
        raise ValueError(
            "`model` must be an imported model (`TransformerFlow` or `DecoderFlow`, "
            f"from `spherejax.models.from_huggingface`); got {type(model).__name__}."
        )


def _batched(states) -> Array:
    zs = jnp.asarray(states)
    if zs.ndim not in (3, 4):
        raise ValueError(
            f"`states` must have shape `(L + 1, [B,] n, d)`; got {zs.shape}."
        )
    return zs if zs.ndim == 4 else zs[:, None]


def _keep(attention_mask, shape) -> Array:
    if attention_mask is None:
        return jnp.ones(shape, bool)
    m = np.asarray(attention_mask)
    if m.size != shape[0] * shape[1]:
        raise ValueError(
            f"`attention_mask` must have {shape[1]} entries per sequence for "
            f"{shape[0]} sequences; got shape {m.shape}."
        )
    return jnp.asarray(m.astype(bool).reshape(shape))


def continuum_distance(
    model, input_ids, attention_mask=None, *, num_substeps: int = 32
) -> Float[Array, " L"]:
    r"""The distance of each layer of the network to its own continuous limit,
    relative to the layer's update:

    $$\delta_k = \frac{\|x_{k+1} - \Phi^k_1(x_k)\|}{\|x_{k+1} - x_k\|},$$

    with $x_k$ the network's states (`model.states`), $\Phi^k_1$ the flow of layer
    `k` over its unit time interval (`num_substeps` Strang sub-steps, second
    order) and the norms over all kept tokens of the batch. $\delta_k \ll 1$: the
    layer is one accurate step of its flow; $\delta_k \sim 1$: the step is as
    large as the motion.
    """
    _check_model(model)
    zs = model.states(input_ids, attention_mask)
    maps = model.layer_maps(
        zs, num_substeps, scheme="strang", attention_mask=attention_mask
    )
    zs, maps = _batched(zs), _batched(maps)
    keep = _keep(attention_mask, zs.shape[1:3])[None, ..., None]
    num = jnp.sqrt(jnp.sum(jnp.where(keep, (zs[1:] - maps[1:]) ** 2, 0), (1, 2, 3)))
    den = jnp.sqrt(jnp.sum(jnp.where(keep, (zs[1:] - zs[:-1]) ** 2, 0), (1, 2, 3)))
    return num / den


def effective_time(
    flow_map: Callable[[Array, Array], Array],
    velocity: Callable[[Array], Array],
    x0: Float[ArrayLike, "n d"],
    x1: Float[ArrayLike, "n d"],
    *,
    iterations: int = 8,
) -> tuple[Array, Array]:
    r"""The time $h$ for which one step of an autonomous flow best matches a given
    update $x_0 \mapsto x_1$:

    $$h^\star = \operatorname*{arg\,min}_h \|x_1 - \Phi_h(x_0)\|^2,$$

    by Gauss–Newton on the scalar $h$, using $\partial_h \Phi_h(x_0) =
    v(\Phi_h(x_0))$: from the explicit-Euler estimate $h_0 = \langle x_1 - x_0,
    v(x_0)\rangle / \|v(x_0)\|^2$,

    $$h_{i+1} = h_i + \frac{\langle x_1 - \Phi_{h_i}(x_0),\ v(\Phi_{h_i}(x_0))
    \rangle}{\|v(\Phi_{h_i}(x_0))\|^2}.$$

    **Arguments:**

    - `flow_map`: `(x, h) -> Phi_h(x)`.
    - `velocity`: `x -> v(x)`, the flow's velocity.
    - `x0`, `x1`: the states before and after the update.
    - `iterations`: Gauss–Newton iterations (default 8).

    **Returns:** `(h, residual)` with `residual` $= \|x_1 - \Phi_h(x_0)\| /
    \|x_1 - x_0\|$ (0 when the update is exactly a step of the flow).
    """
    x0, x1 = jnp.asarray(x0), jnp.asarray(x1)
    v0 = velocity(x0)
    h = jnp.vdot(x1 - x0, v0) / jnp.vdot(v0, v0)
    for _ in range(int(iterations)):
        y = flow_map(x0, h)
        v = velocity(y)
        h = h + jnp.vdot(x1 - y, v) / jnp.vdot(v, v)
    res = jnp.linalg.norm(x1 - flow_map(x0, h)) / jnp.linalg.norm(x1 - x0)
    return h, res


@eqx.filter_jit
def _layer_velocity(layer, x, pos, keep):
    out = layer.velocity(0, x, pos, keep) + layer.velocity(1, x, pos, keep)
    return jnp.where(keep[:, None], out, 0)


def effective_times(
    model: DecoderFlow,
    input_ids,
    attention_mask=None,
    *,
    num_substeps: int = 16,
    iterations: int = 6,
) -> tuple[Array, Array]:
    r"""The effective integration time $h_k$ of every layer of a decoder, for one
    sequence: the time for which the flow of layer `k` alone, run from the
    network's state $x_k$, best reaches $x_{k+1}$ (`effective_time`, with the
    layer's flow by `num_substeps` Strang steps). $h_k = 1$ with a zero residual
    is a layer that is exactly a unit step of its flow; the residual says how far
    the layer's update is from any step of the flow.

    **Returns:** `(h, residual)`, each `(L,)`.
    """
    if not isinstance(model, DecoderFlow):
        raise ValueError(
            f"`model` must be a `DecoderFlow`; got {type(model).__name__}."
        )
    ids = np.asarray(input_ids)
    if ids.ndim != 1:
        raise ValueError(f"`input_ids` must be one sequence `(n,)`; got {ids.shape}.")
    zs = model.states(ids, attention_mask)
    keep = None if attention_mask is None else np.asarray(attention_mask, bool)
    hs, rs = [], []
    for k in range(model.num_layers):
        layer = model.layer(k)
        kp = jnp.ones(ids.shape, bool) if keep is None else jnp.asarray(keep)
        pos = jnp.arange(ids.shape[0])

        def flow_map(x, h, k=k):
            return model.layer_flow_map(
                k, x, h, num_substeps, attention_mask=attention_mask
            )

        def velocity(x, layer=layer, kp=kp, pos=pos):
            return _layer_velocity(layer, x, pos, kp)

        x1 = jnp.where(kp[:, None], zs[k + 1], zs[k])
        h, r = effective_time(flow_map, velocity, zs[k], x1, iterations=iterations)
        hs.append(h)
        rs.append(r)
    return jnp.stack(hs), jnp.stack(rs)


def first_token_cosines(
    states: Float[ArrayLike, "L1 *B n d"], attention_mask=None
) -> Float[Array, "L1 *B n"]:
    r"""The cosine of every token to token 0 at every depth, $\cos\angle(x_i(t),
    x_0(t))$: under a causal mask attention dynamics cluster towards the first
    token (Karagodin, Polyanskiy, Rigollet 2024), so these rise to 1. Padded
    positions (mask 0) are NaN.

    ??? cite
        N. Karagodin, Y. Polyanskiy, P. Rigollet, *Clustering in causal attention
        masking*, NeurIPS 2024, arXiv:2411.04990.
    """
    zs = jnp.asarray(states)
    single = zs.ndim == 3
    zs = _batched(zs)
    u = zs / jnp.linalg.norm(zs, axis=-1, keepdims=True)
    cos = jnp.einsum("lbnd,lbd->lbn", u, u[:, :, 0])
    keep = _keep(attention_mask, zs.shape[1:3])
    cos = jnp.where(keep[None], cos, jnp.nan)
    return cos[:, 0] if single else cos


def first_token_attention(model, input_ids, attention_mask=None) -> Array:
    r"""The attention mass on token 0, $A_{i0}$ averaged over heads, for every
    layer and query token: `(L, [B,] n)` (an attention sink holds most of every
    row's mass). Padded queries are NaN."""
    _check_model(model)
    ids = np.asarray(input_ids)
    single = ids.ndim == 1
    zs = _batched(model.states(input_ids, attention_mask))
    mask = None if attention_mask is None else np.asarray(attention_mask)
    keep = _keep(mask, zs.shape[1:3])
    if isinstance(model, DecoderFlow):
        a = model.attention_weights(zs, keep)  # (L, B, h, n, n)
        mass = jnp.mean(a[..., 0], axis=2)
    else:
        rows = []
        for b in range(zs.shape[1]):
            flow = model.flow(keep[b])
            per_layer = []
            for k in range(model.num_layers):
                attn = flow.field.layer(k).fields[0]
                assert isinstance(attn, SelfAttention)
                ln = model.layer_norms[0].at(k)
                z = zs[k, b]
                u = ln.affine(z) if model.norm == "post" else ln(z)
                per_layer.append(jnp.mean(attn.attention_matrix(u)[..., 0], axis=0))
            rows.append(jnp.stack(per_layer))
        mass = jnp.stack(rows, axis=1)
    mass = jnp.where(keep[None], mass, jnp.nan)
    return mass[:, 0] if single else mass


def cosine_histograms(
    states: Float[ArrayLike, "L1 *B n d"],
    attention_mask=None,
    *,
    bins: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Histograms of the pairwise cosines $\cos\angle(x_i, x_j)$, $i < j$ kept
    tokens of the same sequence, at every depth (pooled over the batch), as
    densities on $[-1, 1]$: `(hist (L + 1, bins), edges (bins + 1,))`. Clustering
    moves the mass to 1."""
    zs = _batched(states)
    keep = np.asarray(_keep(attention_mask, zs.shape[1:3]))
    u = np.asarray(zs / jnp.linalg.norm(zs, axis=-1, keepdims=True))
    n = zs.shape[2]
    iu = np.triu_indices(n, 1)
    edges = np.linspace(-1.0, 1.0, int(bins) + 1)
    hist = []
    for layer in u:
        vals = []
        for b in range(zs.shape[1]):
            c = (layer[b] @ layer[b].T)[iu]
            ok = keep[b][iu[0]] & keep[b][iu[1]]
            vals.append(np.clip(c[ok], -1.0, 1.0))
        h, _ = np.histogram(np.concatenate(vals), bins=edges, density=True)
        hist.append(h)
    return np.stack(hist), edges
