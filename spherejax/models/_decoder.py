r"""Llama-era decoders (Llama, Mistral, Qwen 2 and 3, Gemma 1 and 2, GPT-NeoX,
OLMo 2, Phi-3) as discretisations of attention flows.

**The network.** The state is the residual stream $x \in \mathbb{R}^{n\times d}$
(one row per token), started at the token embeddings (times $\sqrt d$ for Gemma).
Layer $k$ has two sub-layers $s \in \{\mathrm{attn}, \mathrm{mlp}\}$ with raw
updates $f^k_s$ and optional normalisations on their input, $\mathcal N^k_s$, and
on their output, $\mathcal M^k_s$ (RMSNorm, $(c + w)\odot x/\sqrt{|x|^2/d +
\varepsilon}$, or LayerNorm for GPT-NeoX); a missing one is the identity. The
sub-layer velocity is

$$v^k_s(x) = \mathcal M^k_s\big(f^k_s(\mathcal N^k_s(x))\big),$$

and the layer is $x \leftarrow x + v^k_{\mathrm{attn}}(x)$ then $x \leftarrow x +
v^k_{\mathrm{mlp}}(x)$ (sequential), or $x \leftarrow x + v^k_{\mathrm{attn}}(x)
+ v^k_{\mathrm{mlp}}(x)$ (parallel: GPT-NeoX). The placements:

- **pre-LN** (Llama, Mistral, Qwen, Gemma 1, GPT-NeoX, Phi-3): $\mathcal N$ only
  (`spherejax.transformers.PreNorm`);
- **peri-LN** (Gemma 2): $\mathcal N$ and $\mathcal M$
  (`spherejax.transformers.PeriNorm`);
- **output norm only** (OLMo 2): $\mathcal M$ only (`PeriNorm` with no input
  norm).

The attention $f_{\mathrm{attn}}$ is multi-head softmax attention with grouped
key/value heads, rotary positions $R(p)$ on the queries and keys (a fraction of
each head for GPT-NeoX; `rope_scaling` `linear` or `llama3`), biases, the causal
mask (with a sliding window on some layers), optional RMSNorms on the queries and
keys before the rotation (qk-norm: per head for Qwen 3, over all heads for
OLMo 2), and logit soft-capping $s \mapsto \kappa \tanh(s/\kappa)$ (Gemma 2):

$$f_{\mathrm{attn}}(u)_i = \sum_a O_a \sum_{j \le i} A^a_{ij} (W_a u_j + c_a)
+ b_o,\quad A^a_{ij} \propto \exp\Big(\kappa\tanh\frac{\beta \langle
R(p_i)\,\nu_q(Q_a u_i + b^Q_a),\ R(p_j)\,\nu_k(K_{\kappa(a)} u_j +
b^K_{\kappa(a)})\rangle}{\kappa}\Big),$$

$\beta = 1/\sqrt{d_{\mathrm{head}}}$ (Gemma 2: `query_pre_attn_scalar`$^{-1/2}$).
The MLP is gated, $f_{\mathrm{mlp}}(u) = W_{\mathrm{down}}(\sigma(W_{\mathrm{gate}}
u) \odot W_{\mathrm{up}} u)$ (SwiGLU, GeGLU), or plain (GPT-NeoX).

**The continuous-time limit.** Layer $k$ occupies $[k, k+1)$; the stack is the
Lie splitting (parallel: the explicit Euler step) with step 1 of the flow

$$\dot x = v^k_{\mathrm{attn}}(x) + v^k_{\mathrm{mlp}}(x),\qquad t\in[k, k+1),$$

to which `substep_states(..., m, scheme="lie")` converges at order 1 and
`scheme="strang"` (attention for $h/2$, MLP for $h$, attention for $h/2$, each
sub-step the explicit midpoint rule) at order 2. The gain $w$ and $\varepsilon$
of an input RMSNorm enter through $f_s$ evaluated at $(c + w)\odot N_\varepsilon
(x)$, which depends on $x$ only through its direction (exactly so for
$\varepsilon = 0$; $\varepsilon$ shrinks tokens of small mean square); an output
norm caps the speed, $|v_s| \le \sqrt d \max|c + w|$. Rotary positions make $f$
depend on the token order, not on time, and soft-capping bounds the logits by
$\kappa$, so the attention of one token never concentrates on a key faster than
$e^{2\kappa}$ relative odds.

For a pre-norm stream (no output norm, $\varepsilon = 0$) write $x = r\theta$,
$|\theta| = 1$: since $f_s$ sees only $\theta$,

$$\dot\theta = \frac1r P_\theta \sum_s f_s\big((c+w_s)\odot \sqrt d\,\theta\big),
\qquad \dot r = \Big\langle \theta, \sum_s f_s\big((c+w_s)\odot\sqrt d\,
\theta\big)\Big\rangle,$$

with $P_\theta = I - \theta\theta^\top$ (per token): the direction moves on the
sphere at a speed divided by the radius, the radius grows with the velocity's
radial part (Karagodin–Ge–Polyanskiy–Rigollet, 2025). The nGPT rule
(`spherejax.transformers.NGPT`) keeps $|x| = 1$ instead and flows by
$\dot x = P_x[\alpha\odot(\mathrm{Norm}(v_s(x)) - x)]$.

??? cite
    N. Karagodin, S. Ge, Y. Polyanskiy, P. Rigollet, *Normalization in attention
    dynamics*, NeurIPS 2025, arXiv:2510.22026.
    I. Loshchilov, C.-P. Hsieh, S. Sun, B. Ginsburg, *nGPT: Normalized Transformer
    with representation learning on the hypersphere*, arXiv:2410.01131.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from .._attention import RoPE
from .._attention._heads import expand_groups
from .._field import AbstractField
from .._integrate import solve as _solve
from .._manifold import AbstractManifold, Euclidean
from .._solver.layer_update import NGPT, PeriNorm, PreNorm, Residual


class DecoderLayer(eqx.Module):
    """The parameters of one decoder layer (or of all layers stacked on a leading
    axis): attention projections `Wq (h, c, d)`, `Wk`, `Wv (g, c, d)`,
    `Wo (h, d, c)` and biases; optional qk-norms; the MLP (`W_gate` `None` for a
    plain MLP); the four optional sub-layer norms; the sliding window (`0`: none)."""

    Wq: Array
    Wk: Array
    Wv: Array
    Wo: Array
    bq: Array | None
    bk: Array | None
    bv: Array | None
    bo: Array | None
    q_norm: Any
    k_norm: Any
    W_gate: Array | None
    b_gate: Array | None
    W_up: Array
    b_up: Array | None
    W_down: Array
    b_down: Array | None
    attn_norm: Any
    attn_out_norm: Any
    mlp_norm: Any
    mlp_out_norm: Any
    window: Array
    scale: float = eqx.field(static=True)
    softcap: float | None = eqx.field(static=True)
    rope: RoPE | None = eqx.field(static=True)
    qk_norm_per_head: bool = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    @property
    def heads(self) -> int:
        return self.Wq.shape[-3]

    def _qk(self, u, norm, W, b, pos):
        dt = u.dtype
        x = jnp.einsum("hcd,nd->hnc", W.astype(dt), u)
        if b is not None:
            x = x + b.astype(dt)[:, None, :]
        if norm is not None:
            if self.qk_norm_per_head:
                x = norm(x)
            else:  # one norm over the concatenated heads (OLMo 2)
                g, n, c = x.shape
                x = norm(x.transpose(1, 0, 2).reshape(n, g * c))
                x = x.reshape(n, g, c).transpose(1, 0, 2)
        if self.rope is not None:
            x = self.rope(x, pos)
        return x

    def scores(self, u, pos):
        """Soft-capped, scaled logits `(h, n, n)` before the mask."""
        q = self._qk(u, self.q_norm, self.Wq, self.bq, pos)
        k = self._qk(u, self.k_norm, self.Wk, self.bk, pos)
        k = expand_groups(k, q.shape[0])
        s = jnp.einsum("hnc,hmc->hnm", q, k) * jnp.asarray(self.scale, u.dtype)
        if self.softcap is not None:
            cap = jnp.asarray(self.softcap, u.dtype)
            s = cap * jnp.tanh(s / cap)
        return s

    def allowed(self, n: int, keep):
        """The mask `(n, n)`: causal, the window, the kept keys."""
        i = jnp.arange(n)
        q, k = i[:, None], i[None, :]
        m = (k <= q) & keep[None, :]
        w = self.window.astype(i.dtype)
        return m & ((w <= 0) | (k > q - w))

    def attention_weights(self, u, pos, keep) -> Array:
        """The attention matrices `(h, n, n)` of the sub-layer input `u`."""
        s = self.scores(u, pos)
        m = self.allowed(u.shape[0], keep)
        s = jnp.where(m, s, -jnp.inf)
        top = jnp.max(s, axis=-1, keepdims=True)
        top = jnp.where(jnp.isfinite(top), top, 0.0)
        e = jnp.where(m, jnp.exp(s - top), 0.0)
        tot = jnp.sum(e, axis=-1, keepdims=True)
        return e / jnp.where(tot > 0, tot, 1.0)

    def attn(self, u, pos, keep) -> Array:
        """The raw attention update `f_attn(u)`, `(n, d)`."""
        dt = u.dtype
        a = self.attention_weights(u, pos, keep)
        v = jnp.einsum("hcd,nd->hnc", self.Wv.astype(dt), u)
        if self.bv is not None:
            v = v + self.bv.astype(dt)[:, None, :]
        v = expand_groups(v, a.shape[0])
        out = jnp.einsum("hnm,hmc,hdc->nd", a, v, self.Wo.astype(dt))
        return out if self.bo is None else out + self.bo.astype(dt)

    def mlp(self, u) -> Array:
        """The raw MLP update `f_mlp(u)`, `(n, d)`."""
        dt = u.dtype

        def lin(W, b, x):
            y = x @ W.astype(dt).T
            return y if b is None else y + b.astype(dt)

        up = lin(self.W_up, self.b_up, u)
        if self.W_gate is None:
            hidden = self.activation(up)
        else:
            hidden = self.activation(lin(self.W_gate, self.b_gate, u)) * up
        return lin(self.W_down, self.b_down, hidden)

    def raw(self, part: int, pos, keep) -> Callable:
        """The raw sub-layer `f_s` as a field `(t, u, args) -> (n, d)`."""
        if part == 0:
            return lambda t, u, args: self.attn(u, pos, keep)
        return lambda t, u, args: self.mlp(u)

    def norms(self, part: int) -> tuple[Any, Any]:
        return (
            (self.attn_norm, self.attn_out_norm)
            if part == 0
            else (self.mlp_norm, self.mlp_out_norm)
        )

    def velocity(self, part: int, x, pos, keep) -> Array:
        r"""$v_s(x) = \mathcal M_s(f_s(\mathcal N_s(x)))$."""
        pre, post = self.norms(part)
        u = x if pre is None else pre(x)
        f = self.raw(part, pos, keep)(0.0, u, None)
        return f if post is None else post(f)

    def euler(self, part: int, x, h, pos, keep) -> Array:
        """One step of the network's own update rule for sub-layer `part`."""
        pre, post = self.norms(part)
        f = self.raw(part, pos, keep)
        if post is not None:
            return PeriNorm(pre, post).update(f, pre, 0.0, h, x, None)
        if pre is not None:
            return PreNorm(pre).update(f, pre, 0.0, h, x, None)
        return Residual().update(f, None, 0.0, h, x, None)


def _index(tree, k):
    params, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.tree.map(lambda a: a[k], params), static)


def _sphere(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _layer_run(
    layer: DecoderLayer,
    x,
    m,
    pos,
    keep,
    scheme: str,
    parallel: bool,
    alpha=None,
    duration=1.0,
):
    """Layer `layer` run from `x` for the time `duration` as `m` sub-steps of
    `h = duration/m`."""
    h = jnp.asarray(duration, x.dtype) / m.astype(x.dtype)

    def f(part):
        return lambda t, y, args: layer.velocity(part, y, pos, keep)

    def v_own(part, y):
        return layer.velocity(part, y, pos, keep)

    def mid_own(part, y, tau):
        return y + tau * v_own(part, y + 0.5 * tau * v_own(part, y))

    def lie_own(y):
        if parallel:
            return y + h * (v_own(0, y) + v_own(1, y))
        return layer.euler(1, layer.euler(0, y, h, pos, keep), h, pos, keep)

    def v_ngpt(part, y):
        assert alpha is not None
        u = alpha[part].astype(y.dtype) * (_sphere(f(part)(0.0, y, None)) - y)
        return u - jnp.sum(u * y, axis=-1, keepdims=True) * y

    def mid_ngpt(part, y, tau):
        ym = _sphere(y + 0.5 * tau * v_ngpt(part, y))
        return _sphere(y + tau * v_ngpt(part, ym))

    def lie_ngpt(y):
        assert alpha is not None
        for part in (0, 1):
            y = NGPT.step_with(f(part), alpha[part], 0.0, h, y, None)
        return y

    mid, lie = (mid_own, lie_own) if alpha is None else (mid_ngpt, lie_ngpt)

    def strang(y):
        y = mid(0, y, 0.5 * h)
        y = mid(1, y, h)
        return mid(0, y, 0.5 * h)

    step = lie if scheme == "lie" else strang
    return jax.lax.fori_loop(0, m, lambda i, y: step(y), x)


class DecoderFlow(eqx.Module):
    r"""An imported decoder (`from_huggingface`): token embeddings, the stacked
    layers, the final norm and the language-model head, read as the flow stated in
    the docstring of module `spherejax.models._decoder` (see the real-models page).

    - `hidden_states(input_ids, attention_mask=None, position_ids=None)`: the
      `L + 1` hidden states of Hugging Face's `output_hidden_states` (the last one
      after the final norm), stacked: `(L + 1, B, n, d)` for ids `(B, n)`,
      `(L + 1, n, d)` for `(n,)`. Padded positions are computed but meaningless.
    - `logits(...)`: the language-model head's logits, where there is one.
    - `states(...)`: the residual stream at `t = 0, ..., L` (no final norm).
    - `substep_states(input_ids, m, scheme="lie" | "strang", ...)`: every layer
      run as `m` sub-steps of `h = 1/m`; `m = 1`, Lie, is the network. With
      `alpha=(alpha_attn, alpha_mlp)` the nGPT rule instead (states on the unit
      sphere).
    - `layer_maps(states, m, ...)`: each layer's sub-stepped map applied to given
      states; `flow(...)`: the continuous-time field of one sequence; `solve(...)`
      integrates it; `attention_weights(states, ...)`: every layer's attention.
    """

    layers: DecoderLayer
    embeddings: Float[Array, "V d"]
    final_norm: Any
    lm_head: Float[Array, "V d"] | None
    num_layers: int = eqx.field(static=True)
    parallel: bool = eqx.field(static=True)
    embed_scale: float | None = eqx.field(static=True)
    final_softcap: float | None = eqx.field(static=True)
    architecture: str = eqx.field(static=True)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.embeddings.shape[0]

    @property
    def heads(self) -> int:
        return self.layers.Wq.shape[1]

    def layer(self, k) -> DecoderLayer:
        """Layer `k`'s parameters (`k` may be traced)."""
        return _index(self.layers, k)

    # ---- inputs
    def _inputs(self, input_ids, attention_mask, position_ids):
        ids = np.asarray(input_ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"`input_ids` must be integers; got dtype {ids.dtype}.")
        if ids.ndim not in (1, 2) or ids.shape[-1] == 0:
            raise ValueError(
                f"`input_ids` must have shape `(n,)` or `(B, n)` with n >= 1; got "
                f"{ids.shape}."
            )
        V = self.vocab_size
        if ids.min() < 0 or ids.max() >= V:
            raise ValueError(
                f"`input_ids` must lie in [0, {V}) (the vocabulary of this "
                f"{self.architecture}); got values in [{ids.min()}, {ids.max()}]: "
                "tokenise with this model's tokenizer."
            )
        batched = ids.ndim == 2
        ids2 = ids if batched else ids[None]
        shape = ids2.shape
        if attention_mask is None:
            keep = np.ones(shape, bool)
        else:
            mask = np.asarray(attention_mask)
            if mask.shape != ids.shape:
                raise ValueError(
                    f"`attention_mask` must have the shape of `input_ids` "
                    f"{ids.shape}; got {mask.shape}."
                )
            if not np.all(np.isin(mask, (0, 1))):
                raise ValueError("`attention_mask` must hold 0 and 1 only.")
            keep = mask.astype(bool).reshape(shape)
            if not np.all(keep.any(axis=-1)):
                raise ValueError("`attention_mask` masks every token of a sequence.")
        if position_ids is None:
            pos = np.broadcast_to(np.arange(shape[1]), shape)
        else:
            pos = np.asarray(position_ids)
            if not np.issubdtype(pos.dtype, np.integer) or pos.shape not in (
                ids.shape,
                shape,
                shape[1:],
            ):
                raise ValueError(
                    f"`position_ids` must be integers of the shape of `input_ids` "
                    f"{ids.shape}; got {pos.dtype} {pos.shape}."
                )
            pos = np.broadcast_to(pos.reshape((-1, shape[1])), shape)
        return jnp.asarray(ids2), jnp.asarray(keep), jnp.asarray(pos), batched

    def _embed(self, ids):
        x = self.embeddings[ids]
        if self.embed_scale is not None:
            x = x * jnp.asarray(self.embed_scale, x.dtype)
        return x

    def embed(self, input_ids: Int[ArrayLike, "*B n"]) -> Float[Array, "*B n d"]:
        """The embeddings (times $\\sqrt d$ for Gemma): hidden state 0."""
        ids, _, _, batched = self._inputs(input_ids, None, None)
        x = self._embed(ids)
        return x if batched else x[0]

    # ---- the network
    def states(self, input_ids, attention_mask=None, position_ids=None) -> Array:
        """The residual stream at `t = 0, 1, ..., L` of the network (`h = 1`)."""
        return self.substep_states(
            input_ids, 1, attention_mask=attention_mask, position_ids=position_ids
        )

    def hidden_states(self, input_ids, attention_mask=None, position_ids=None) -> Array:
        """The model's `L + 1` hidden states (see the class docstring)."""
        zs = self.states(input_ids, attention_mask, position_ids)
        return zs.at[-1].set(self.final_norm(zs[-1]))

    def logits(self, input_ids, attention_mask=None, position_ids=None) -> Array:
        """The logits `([B,] n, V)` of the language-model head (soft-capped for
        Gemma 2)."""
        if self.lm_head is None:
            raise ValueError(
                f"this {self.architecture} has no language-model head: import the "
                "`...ForCausalLM` checkpoint, or use `hidden_states`."
            )
        last = self.hidden_states(input_ids, attention_mask, position_ids)[-1]
        out = last @ self.lm_head.astype(last.dtype).T
        if self.final_softcap is not None:
            cap = jnp.asarray(self.final_softcap, out.dtype)
            out = cap * jnp.tanh(out / cap)
        return out

    # ---- the continuous-time limit
    def _check_scheme(self, scheme, num_substeps):
        if scheme not in ("lie", "strang"):
            raise ValueError(f"`scheme` must be 'lie' or 'strang'; got {scheme!r}.")
        if (
            isinstance(num_substeps, bool)
            or int(num_substeps) != num_substeps
            or (num_substeps < 1)
        ):
            raise ValueError(
                f"`num_substeps` must be a positive integer; got {num_substeps}."
            )

    def _alpha(self, alpha):
        if alpha is None:
            return None
        a = [jnp.asarray(x, self.embeddings.dtype) for x in alpha]
        if len(a) != 2 or any(x.shape not in ((), (self.dim,)) for x in a):
            raise ValueError(
                "`alpha` must be a pair (attention, MLP) of step sizes, each a scalar "
                f"or of shape ({self.dim},)."
            )
        return jnp.stack([jnp.broadcast_to(x, (self.dim,)) for x in a])

    def substep_states(
        self,
        input_ids,
        num_substeps: int,
        *,
        scheme: str = "lie",
        attention_mask=None,
        position_ids=None,
        alpha=None,
    ) -> Array:
        """Flow states at `t = 0, ..., L` with every layer run as `num_substeps`
        steps of `h = 1/num_substeps`: `"lie"` (each sub-layer in turn by the
        network's own update rule; parallel layers by one explicit Euler step of
        the sum; `num_substeps = 1` is the network) or `"strang"` (attention for
        `h/2`, MLP for `h`, attention for `h/2`, each by the explicit midpoint
        rule). With `alpha = (alpha_attn, alpha_mlp)` (scalars or `(d,)`), the nGPT
        rule from the normalised embeddings: Lie, `NGPT` steps; Strang, midpoint
        steps retracted onto the sphere."""
        self._check_scheme(scheme, num_substeps)
        ids, keep, pos, batched = self._inputs(input_ids, attention_mask, position_ids)
        x0 = self._embed(ids)
        a = self._alpha(alpha)
        if a is not None:
            x0 = _sphere(x0)
        m = jnp.asarray(int(num_substeps))
        zs = _run(self, x0, keep, pos, m, scheme, a)
        return zs if batched else zs[:, 0]

    def layer_maps(
        self,
        states,
        num_substeps: int,
        *,
        scheme: str = "strang",
        attention_mask=None,
        position_ids=None,
    ) -> Array:
        """Each layer's sub-stepped map applied to the given states `(L + 1, [B,]
        n, d)`: entry `k + 1` is layer `k` run from `states[k]`; entry 0 is
        `states[0]`."""
        self._check_scheme(scheme, num_substeps)
        zs = jnp.asarray(states)
        if zs.ndim not in (3, 4) or zs.shape[0] != self.num_layers + 1:
            raise ValueError(
                f"`states` must have shape `(L + 1, [B,] n, d)` with L + 1 = "
                f"{self.num_layers + 1}; got {zs.shape}."
            )
        batched = zs.ndim == 4
        zs = zs if batched else zs[:, None]
        B, n = zs.shape[1:3]
        keep, pos = _mask_pos(attention_mask, position_ids, (B, n))
        m = jnp.asarray(int(num_substeps))
        out = _maps(self, zs, keep, pos, m, scheme)
        return out if batched else out[:, 0]

    def layer_velocities(self, states, attention_mask=None, position_ids=None) -> Array:
        """The flow's velocity of layer `k` at `states[k]`, `(L, [B,] n, d)`
        (`v_attn + v_mlp`)."""
        zs = jnp.asarray(states)
        batched = zs.ndim == 4
        zs = zs if batched else zs[:, None]
        keep, pos = _mask_pos(attention_mask, position_ids, zs.shape[1:3])
        out = _velocities(self, zs[:-1], keep, pos)
        return out if batched else out[:, 0]

    def attention_weights(
        self, states, attention_mask=None, position_ids=None
    ) -> Array:
        """Every layer's attention matrices at the given states `(L + 1, [B,] n,
        d)`: `(L, [B,] h, n, n)` (layer `k` reads `states[k]` through its input
        norm)."""
        zs = jnp.asarray(states)
        batched = zs.ndim == 4
        zs = zs if batched else zs[:, None]
        keep, pos = _mask_pos(attention_mask, position_ids, zs.shape[1:3])
        out = _attn_weights(self, zs[:-1], keep, pos)
        return out if batched else out[:, 0]

    def layer_flow_map(
        self,
        k,
        x,
        duration,
        num_substeps: int = 16,
        *,
        attention_mask=None,
        position_ids=None,
    ) -> Array:
        r"""The flow of layer `k` alone, $\dot x = v^k_{\mathrm{attn}}(x) +
        v^k_{\mathrm{mlp}}(x)$, run from one sequence's state `x` `(n, d)` for the
        time `duration` (`num_substeps` Strang steps)."""
        x = jnp.asarray(x)
        keep, pos = _mask_pos(attention_mask, position_ids, (1, x.shape[0]))
        m = jnp.asarray(int(num_substeps))
        duration = jnp.asarray(duration, x.dtype)  # traced: one compilation
        return _flow_map(self, jnp.asarray(k), x, keep[0], pos[0], m, duration)

    def flow(self, attention_mask=None, position_ids=None) -> "DecoderField":
        """The continuous-time field of one sequence (`Euclidean()` tokens)."""
        keep = None if attention_mask is None else jnp.asarray(attention_mask, bool)
        pos = None if position_ids is None else jnp.asarray(position_ids)
        return DecoderField(model=self, keep=keep, positions=pos)

    def solve(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        """Integrate the continuous-time flow of one sequence from its embeddings
        over `[0, L]` (saving at `t = 0, ..., L` unless `ts`/`saveat` is given);
        `kwargs` go to `spherejax.solve`. Returns the `diffrax.Solution`."""
        ids, keep, pos, batched = self._inputs(input_ids, attention_mask, position_ids)
        if batched and ids.shape[0] != 1:
            raise ValueError(
                "`solve` takes one sequence; use `jax.vmap` or a loop for a batch."
            )
        x0 = self._embed(ids)[0]
        if "ts" not in kwargs and "saveat" not in kwargs:
            kwargs["ts"] = jnp.arange(self.num_layers + 1, dtype=x0.dtype)
        kwargs.setdefault("project", False)
        return _solve(self.flow(keep[0], pos[0]), x0, float(self.num_layers), **kwargs)


def _mask_pos(attention_mask, position_ids, shape):
    B, n = shape
    keep = (
        jnp.ones((B, n), bool)
        if attention_mask is None
        else jnp.asarray(attention_mask, bool).reshape(B, n)
    )
    pos = (
        jnp.broadcast_to(jnp.arange(n), (B, n))
        if position_ids is None
        else jnp.broadcast_to(jnp.asarray(position_ids).reshape(-1, n), (B, n))
    )
    return keep, pos


@eqx.filter_jit
def _run(model: DecoderFlow, x0, keep, pos, m, scheme: str, alpha):
    params, static = eqx.partition(model.layers, eqx.is_array)

    def one(x, kp, ps):
        def body(y, p):
            layer = eqx.combine(p, static)
            y = _layer_run(layer, y, m, ps, kp, scheme, model.parallel, alpha)
            return y, y

        _, ys = jax.lax.scan(body, x, params)
        return jnp.concatenate([x[None], ys])

    return jax.vmap(one, in_axes=(0, 0, 0), out_axes=1)(x0, keep, pos)


@eqx.filter_jit
def _maps(model: DecoderFlow, zs, keep, pos, m, scheme: str):
    params, static = eqx.partition(model.layers, eqx.is_array)

    def one(x, kp, ps):  # x: (L + 1, n, d)
        def layer_map(p, y):
            layer = eqx.combine(p, static)
            return _layer_run(layer, y, m, ps, kp, scheme, model.parallel)

        ys = jax.vmap(layer_map)(params, x[:-1])
        return jnp.concatenate([x[:1], ys])

    return jax.vmap(one, in_axes=(1, 0, 0), out_axes=1)(zs, keep, pos)


@eqx.filter_jit
def _flow_map(model: DecoderFlow, k, x, keep, pos, m, duration):
    layer = model.layer(k)
    return _layer_run(
        layer, x, m, pos, keep, "strang", model.parallel, duration=duration
    )


@eqx.filter_jit
def _velocities(model: DecoderFlow, zs, keep, pos):
    params, static = eqx.partition(model.layers, eqx.is_array)

    def one(x, kp, ps):
        def vel(p, y):
            layer = eqx.combine(p, static)
            return layer.velocity(0, y, ps, kp) + layer.velocity(1, y, ps, kp)

        return jax.vmap(vel)(params, x)

    return jax.vmap(one, in_axes=(1, 0, 0), out_axes=1)(zs, keep, pos)


@eqx.filter_jit
def _attn_weights(model: DecoderFlow, zs, keep, pos):
    params, static = eqx.partition(model.layers, eqx.is_array)

    def one(x, kp, ps):
        def weights(p, y):
            layer = eqx.combine(p, static)
            u = y if layer.attn_norm is None else layer.attn_norm(y)
            return layer.attention_weights(u, ps, kp)

        return jax.vmap(weights)(params, x)

    return jax.vmap(one, in_axes=(1, 0, 0), out_axes=1)(zs, keep, pos)


class DecoderField(AbstractField):
    r"""The continuous-time field of an imported decoder for one sequence:
    $\dot x = v^k_{\mathrm{attn}}(x) + v^k_{\mathrm{mlp}}(x)$ on $[k, k+1)$ (see
    `DecoderFlow`), on `Euclidean()`."""

    model: DecoderFlow
    keep: Array | None
    positions: Array | None
    manifold: AbstractManifold = eqx.field(default_factory=Euclidean)

    def jump_times(self):
        return jnp.arange(1, self.model.num_layers, dtype=self.model.embeddings.dtype)

    def __call__(self, t, y, args=None):
        del args
        n = y.shape[0]
        keep = jnp.ones(n, bool) if self.keep is None else self.keep
        pos = jnp.arange(n) if self.positions is None else self.positions
        k = jnp.clip(jnp.floor(t).astype(jnp.int32), 0, self.model.num_layers - 1)
        layer = self.model.layer(k)
        return layer.velocity(0, y, pos, keep) + layer.velocity(1, y, pos, keep)
