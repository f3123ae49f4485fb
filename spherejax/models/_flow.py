r"""A real Transformer (embeddings, attention and feed-forward sub-layers,
LayerNorms) as the discretisation of an attention flow.

**The network.** Layer $k$ of an encoder or decoder stack has two sub-layers
$s \in \{\mathrm{attn}, \mathrm{ffn}\}$ with raw updates $f^k_s$ (multi-head
attention with its biases and masks, `spherejax.SelfAttention` on `Euclidean()`;
the MLP, `spherejax.FeedForward`) and LayerNorms
$\mathrm{LN}(x) = \gamma \odot N_\varepsilon(x) + \beta$,
$N_\varepsilon(x) = (x - \bar x)/\sqrt{\operatorname{var} x + \varepsilon}$.

- **Post-LN** (BERT, MiniLM, `nn.TransformerEncoderLayer`): the network moves the
  normalised state $z = N_\varepsilon(\cdot)$ of the last residual sum; sub-layer
  $s$ reads $u = \gamma_s \odot z + \beta_s$ (the affine map of the LayerNorm
  before it) and $z \leftarrow N_\varepsilon(u + f_s(u))$. The hidden states HF
  reports are the read-outs $\gamma \odot z + \beta$.
- **Pre-LN** (GPT-2): the residual stream $x$ itself,
  $x \leftarrow x + f_s(\mathrm{LN}_s(x))$, and a final LayerNorm.

**The continuous-time limit.** Layer $k$ occupies the unit time interval
$[k, k+1)$; with $m$ sub-steps of $h = 1/m$ (Lie: each sub-layer in turn, as one
explicit step $z \leftarrow N_\varepsilon(z + h(u - z + f_s(u)))$ resp.
$x \leftarrow x + h f_s(\mathrm{LN}_s(x))$) the runs converge at order 1, and with
the symmetric (Strang) composition of midpoint sub-steps at order 2, to the flow

$$\dot z = P_z \sum_s \big[\gamma^k_s \odot z + \beta^k_s
+ f^k_s(\gamma^k_s \odot z + \beta^k_s)\big]\quad\text{(post-LN)},\qquad
\dot x = \sum_s f^k_s\big(\gamma^k_s \odot N_{\varepsilon}(x)
+ \beta^k_s\big)\quad\text{(pre-LN)}$$

on $t \in [k, k+1)$, where $P_z$ is the tangent projection of the LayerNorm
manifold $\{\bar z = 0,\ \operatorname{var} z = 1 - \varepsilon\}$ (the fixed set
of $N_\varepsilon$). So $\gamma$ enters post-LN dynamics as the linear drift
$P_z(\gamma\odot z)$ (zero for $\gamma = 1$), $\beta$ as a constant drift, the
attention biases through the logits and values, and $\varepsilon$ through the
radius (post-LN) or the normalisation inside the field (pre-LN). At $m = 1$ the
Lie scheme *is* the network: `hidden_states` runs it with
`spherejax.transformers.transformer(..., h=1, layer_norms=...)`.
"""

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from .._attention import KeyMask
from .._field import AbstractField, Layerwise, SelfAttention
from .._integrate import solve as _solve
from .._manifold import AbstractManifold, Euclidean, LayerNormSphere
from .._solver.layer_update import ProjectedMidpoint
from .._solver.splitting import Strang, field_parts
from .._transformer import LayerNorm, fixed_steps, layer_solver, transformer


def _at(field: AbstractField, k) -> AbstractField:
    return field.layer(k) if isinstance(field, Layerwise) else field


def _sublayers(field: AbstractField, k) -> tuple[AbstractField, ...]:
    return field_parts(_at(field, k))


def _with_key_mask(field: AbstractField, key_mask: Array | None) -> AbstractField:
    """`field` (a `Layerwise` of `Sum(SelfAttention, ...)`, or one such `Sum`) with
    every `SelfAttention` given the key mask `(n,)`."""
    if key_mask is None:
        return field
    num_layers = field.num_layers if isinstance(field, Layerwise) else None

    def is_attention(x):
        return isinstance(x, SelfAttention)

    def set_mask(a):
        if not isinstance(a, SelfAttention):
            return a
        mask = key_mask
        if num_layers is not None:
            mask = jnp.broadcast_to(key_mask, (num_layers, *key_mask.shape))
        # the stacked layers index the mask's leading axis like every parameter
        key = eqx.tree_at(lambda m: m.mask, KeyMask(key_mask), mask)
        return eqx.tree_at(
            lambda m: m.mask, a, (*a.masks, key), is_leaf=lambda x: x is None
        )

    return jax.tree.map(set_mask, field, is_leaf=is_attention)


class ResidualFlow(AbstractField):
    r"""The continuous-time limit of a residual stack with LayerNorms (see the
    real-models page of the docs):

    - `norm="post"`: $\dot z = P_z \sum_s [u_s + f_s(t, u_s)]$,
      $u_s = \gamma_s \odot z + \beta_s$, on
      `LayerNormSphere(std=sqrt(1 - eps))`;
    - `norm="pre"`: $\dot x = \sum_s f_s(t, \gamma_s \odot N_\varepsilon(x) +
      \beta_s)$ on `Euclidean()`,

    with $f_s$ the raw (unprojected) sub-layer fields of `field` (the terms of a
    `Sum`, per layer of a `Layerwise`) and one `LayerNorm` per sub-layer in
    `layer_norms` (parameters `(L, d)` per layer). Layer `k` acts on
    `field.times[k] <= t < field.times[k + 1]`.
    """

    field: AbstractField
    layer_norms: tuple[LayerNorm, ...]
    norm: str = eqx.field(static=True)
    manifold: AbstractManifold

    def __init__(
        self, field: AbstractField, layer_norms: Sequence[LayerNorm], norm: str
    ):
        if norm not in ("post", "pre"):
            raise ValueError(f"`norm` must be 'post' or 'pre'; got {norm!r}.")
        layer_norms = tuple(layer_norms)
        if len(_sublayers(field, 0)) != len(layer_norms):
            raise ValueError(
                "`layer_norms` must hold one `LayerNorm` per sub-layer of `field`."
            )
        self.field = field
        self.layer_norms = layer_norms
        self.norm = norm
        if norm == "post":
            eps = max(ln.eps for ln in layer_norms)
            self.manifold = LayerNormSphere(std=math.sqrt(1.0 - eps))
        else:
            self.manifold = Euclidean()

    def check_tokens(self, y):
        super().check_tokens(y)
        _at(self.field, 0).check_tokens(y)

    def jump_times(self):
        return self.field.jump_times()

    def velocities(self, k, y, args=None) -> tuple[Array, ...]:
        """The velocity of each sub-layer of layer `k` at `y` (post-LN: projected on
        the tangent space of `manifold`)."""
        out = []
        for f, ln in zip(_sublayers(self.field, k), self.layer_norms):
            ln = ln.at(k)
            if self.norm == "post":
                u = ln.affine(y)
                out.append(self.manifold.to_tangent(y, u + f(0.0, u, args)))
            else:
                out.append(f(0.0, ln(y), args))
        return tuple(out)

    def __call__(self, t, y, args=None):
        k = self.field.index(t) if isinstance(self.field, Layerwise) else 0
        v = self.velocities(k, y, args)
        return sum(v[1:], v[0])

    def _on(self, field, layer_norms) -> "ResidualFlow":
        flow = ResidualFlow(field, layer_norms, self.norm)
        return eqx.tree_at(lambda f: f.manifold, flow, self.manifold)

    def layer(self, k) -> "ResidualFlow":
        """The flow of layer `k` alone: its sub-layers and LayerNorms, for all `t`
        (`k` may be traced)."""
        return self._on(_at(self.field, k), tuple(ln.at(k) for ln in self.layer_norms))

    def parts(self) -> tuple["ResidualFlow", ...]:
        """One flow per sub-layer (with its LayerNorm), on the same manifold: the
        parts a splitting composes."""
        return tuple(
            self._on(f, (ln,))
            for f, ln in zip(field_parts(self.field), self.layer_norms)
        )


class TransformerFlow(eqx.Module):
    r"""An imported Transformer: embeddings, the layer-wise attention-flow field it
    discretises, its LayerNorms, and the read-out that gives the model's own hidden
    states. Built by `from_huggingface` or `from_torch_encoder`.

    - `embed(input_ids, token_type_ids=None)`: the embedding layer's output (the
      model's hidden state 0).
    - `hidden_states(inputs, attention_mask=None)`: the `L + 1` hidden states, in
      the order and shape of Hugging Face's `output_hidden_states`, stacked:
      `(L + 1, B, n, d)` for a batch of ids `(B, n)`, `(L + 1, n, d)` for one
      sequence `(n,)`. Padded positions (mask 0) are computed but meaningless.
    - `states(...)`: the flow's own states at `t = 0, 1, ..., L` (post-LN: the
      normalised $z_k$; pre-LN: the residual stream), `readout(states)` maps them to
      the hidden states.
    - `flow(attention_mask=None)`: the continuous-time field (`ResidualFlow`);
      `solve(...)` integrates it from the same initial state.
    - `substep_states(inputs, m, scheme=...)`: each layer run as `m` sub-steps of
      `h = 1/m` (Lie or Strang); `m = 1`, Lie is the network.

    The ODE, and how $\gamma$, $\beta$, $\varepsilon$ and the biases enter it, is
    stated in the docstring of `spherejax.models` (module `_flow`).
    """

    field: Layerwise
    layer_norms: tuple[LayerNorm, ...]
    readout_norm: LayerNorm | None
    final_norm: LayerNorm | None
    embedding_norm: LayerNorm | None
    word_embeddings: Float[Array, "V d"] | None
    position_embeddings: Float[Array, "P d"] | None
    token_type_embeddings: Float[Array, "T d"] | None
    norm: str = eqx.field(static=True)
    architecture: str = eqx.field(static=True)

    def __init__(
        self,
        field: Layerwise,
        layer_norms: Sequence[LayerNorm],
        *,
        norm: str,
        architecture: str,
        readout_norm: LayerNorm | None = None,
        final_norm: LayerNorm | None = None,
        embedding_norm: LayerNorm | None = None,
        word_embeddings: ArrayLike | None = None,
        position_embeddings: ArrayLike | None = None,
        token_type_embeddings: ArrayLike | None = None,
    ):
        if norm not in ("post", "pre"):
            raise ValueError(f"`norm` must be 'post' or 'pre'; got {norm!r}.")
        if not isinstance(field, Layerwise):
            raise ValueError(f"`field` must be a `Layerwise`; got {type(field)}.")
        self.field = field
        self.layer_norms = tuple(layer_norms)
        ResidualFlow(field, self.layer_norms, norm)  # checks the sub-layer count
        self.norm = norm
        self.architecture = architecture
        self.readout_norm = readout_norm
        self.final_norm = final_norm
        self.embedding_norm = embedding_norm

        def opt(a):
            return None if a is None else jnp.asarray(a)

        self.word_embeddings = opt(word_embeddings)
        self.position_embeddings = opt(position_embeddings)
        self.token_type_embeddings = opt(token_type_embeddings)

    # ---- sizes
    @property
    def num_layers(self) -> int:
        return self.field.num_layers

    @property
    def dim(self) -> int:
        return self.layer_norms[0].gamma.shape[-1]

    @property
    def vocab_size(self) -> int | None:
        w = self.word_embeddings
        return None if w is None else w.shape[0]

    # ---- inputs
    def _check_ids(self, input_ids, name="input_ids") -> Array:
        if self.word_embeddings is None:
            raise ValueError(
                f"this {self.architecture} has no embedding layer: pass float "
                "tokens `(n, d)` or `(B, n, d)`, not `input_ids`."
            )
        ids = np.asarray(input_ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"`{name}` must be integers; got dtype {ids.dtype}.")
        if ids.ndim not in (1, 2) or ids.shape[-1] == 0:
            raise ValueError(
                f"`{name}` must have shape `(n,)` or `(B, n)` with n >= 1; got "
                f"{ids.shape}."
            )
        bound = self.vocab_size if name == "input_ids" else None
        if name == "token_type_ids" and self.token_type_embeddings is not None:
            bound = self.token_type_embeddings.shape[0]
        if bound is not None and (ids.min() < 0 or ids.max() >= bound):
            raise ValueError(
                f"`{name}` must lie in [0, {bound}); got values in "
                f"[{ids.min()}, {ids.max()}]."
            )
        if self.position_embeddings is not None:
            P = self.position_embeddings.shape[0]
            if ids.shape[-1] > P:
                raise ValueError(
                    f"`{name}` has {ids.shape[-1]} positions; the model has {P}."
                )
        return jnp.asarray(ids)

    def _inputs(self, inputs, attention_mask, token_type_ids):
        """`(tokens (B, n, d) before the first sub-layer's read-out, mask (B, n),
        batched)` from ids or float tokens."""
        if self.word_embeddings is None:
            x = jnp.asarray(inputs)
            if not jnp.issubdtype(x.dtype, jnp.floating) or x.ndim not in (2, 3):
                raise ValueError(
                    "`inputs` must be float tokens `(n, d)` or `(B, n, d)`; got "
                    f"{x.dtype} {x.shape}."
                )
            if x.shape[-1] != self.dim:
                raise ValueError(
                    f"`inputs` have dimension {x.shape[-1]}; the model has {self.dim}."
                )
            batched = x.ndim == 3
            x = x if batched else x[None]
        else:
            ids = self._check_ids(inputs)
            batched = ids.ndim == 2
            tt = None
            if token_type_ids is not None:
                tt = self._check_ids(token_type_ids, "token_type_ids")
                if tt.shape != ids.shape:
                    raise ValueError(
                        f"`token_type_ids` must have the shape of `input_ids` "
                        f"{ids.shape}; got {tt.shape}."
                    )
            x = self._embed_sum(ids if batched else ids[None], tt)
        shape = x.shape[:2]
        if attention_mask is None:
            mask = jnp.ones(shape, bool)
        else:
            mask = np.asarray(attention_mask)
            want = shape if batched else shape[1:]
            if mask.shape != want:
                raise ValueError(
                    f"`attention_mask` must have the shape of the inputs {want}; got "
                    f"{mask.shape}."
                )
            if not np.all(np.isin(mask, (0, 1))):
                raise ValueError("`attention_mask` must hold 0 and 1 only.")
            mask = jnp.asarray(mask.astype(bool).reshape(shape))
            if not bool(jnp.all(jnp.any(mask, axis=-1))):
                raise ValueError("`attention_mask` masks every token of a sequence.")
        return x, mask, batched

    def _embed_sum(self, ids: Int[Array, "B n"], token_type_ids=None) -> Array:
        assert self.word_embeddings is not None
        x = self.word_embeddings[ids]
        if self.position_embeddings is not None:
            x = x + self.position_embeddings[jnp.arange(ids.shape[-1])]
        if self.token_type_embeddings is not None:
            tt = jnp.zeros_like(ids) if token_type_ids is None else token_type_ids
            if tt.ndim < ids.ndim:
                tt = tt[None]
            x = x + self.token_type_embeddings[tt]
        return x

    def _initial(self, x: Array) -> Array:
        """The flow's state at `t = 0` from the summed embeddings."""
        if self.norm == "post" and self.embedding_norm is not None:
            return self.embedding_norm.normalize(x)
        return x

    def embed(
        self, input_ids: Int[ArrayLike, "*B n"], token_type_ids=None
    ) -> Float[Array, "*B n d"]:
        """The embedding layer's output, the model's hidden state 0 (word plus
        position plus token-type embeddings, then the embedding LayerNorm where the
        model has one)."""
        x, _, batched = self._inputs(input_ids, None, token_type_ids)
        out = self.readout(self._initial(x)[None])[0]
        return out if batched else out[0]

    # ---- the discrete network and its read-out
    def readout(self, states: Float[Array, "L1 *B n d"]) -> Array:
        r"""Hidden states from flow states `(L + 1, ..., n, d)`: post-LN
        $\gamma_k \odot z_k + \beta_k$ with the LayerNorm that produced $z_k$;
        pre-LN the states themselves, the final LayerNorm on the last one."""
        states = jnp.asarray(states)
        L = states.shape[0] - 1
        out = []
        for k in range(L + 1):
            y = states[k]
            if self.norm == "post":
                if k < self.num_layers:
                    y = self.layer_norms[0].at(k).affine(y)
                elif self.readout_norm is not None:
                    y = self.readout_norm.affine(y)
            if k == self.num_layers and self.final_norm is not None:
                y = self.final_norm(y)
            out.append(y)
        return jnp.stack(out)

    def states(
        self, inputs, attention_mask=None, token_type_ids=None
    ) -> Float[Array, "L1 *B n d"]:
        """The flow's states at `t = 0, ..., L` of the real network (`h = 1`)."""
        x, mask, batched = self._inputs(inputs, attention_mask, token_type_ids)
        zs = _network(self, self._initial(x), mask)
        return zs if batched else zs[:, 0]

    def hidden_states(
        self, inputs, attention_mask=None, token_type_ids=None
    ) -> Float[Array, "L1 *B n d"]:
        """The model's `L + 1` hidden states (see the class docstring)."""
        return self.readout(self.states(inputs, attention_mask, token_type_ids))

    # ---- the continuous-time limit
    def flow(self, attention_mask: ArrayLike | None = None) -> ResidualFlow:
        """The continuous-time field of one sequence (optional key mask `(n,)`)."""
        mask = None if attention_mask is None else jnp.asarray(attention_mask, bool)
        return ResidualFlow(
            _with_key_mask(self.field, mask), self.layer_norms, self.norm
        )

    def substep_states(
        self,
        inputs,
        num_substeps: int,
        *,
        scheme: str = "lie",
        attention_mask=None,
        token_type_ids=None,
    ) -> Float[Array, "L1 *B n d"]:
        """Flow states at `t = 0, ..., L` with every layer run as `num_substeps`
        steps of `h = 1/num_substeps`: `"lie"` (each sub-layer in turn, one explicit
        step each; `num_substeps = 1` is the network) or `"strang"` (attention for
        `h/2`, feed-forward for `h`, attention for `h/2`, each by the explicit
        midpoint rule with the manifold's projection)."""
        if scheme not in ("lie", "strang"):
            raise ValueError(f"`scheme` must be 'lie' or 'strang'; got {scheme!r}.")
        if int(num_substeps) != num_substeps or num_substeps < 1:
            raise ValueError(
                f"`num_substeps` must be a positive integer; got {num_substeps}."
            )
        x, mask, batched = self._inputs(inputs, attention_mask, token_type_ids)
        zs = _substeps(
            self, self._initial(x), mask, jnp.asarray(int(num_substeps)), scheme
        )
        return zs if batched else zs[:, 0]

    def layer_maps(
        self,
        states: Float[ArrayLike, "L1 *B n d"],
        num_substeps: int,
        *,
        scheme: str = "strang",
        attention_mask=None,
    ) -> Float[Array, "L1 *B n d"]:
        """Each layer's sub-stepped map applied to the given states: entry `k + 1`
        is layer `k` run from `states[k]` with `num_substeps` steps of `scheme`
        (entry 0 is `states[0]`). With the network's own states and many Strang
        sub-steps, `layer_maps(states, m)[k + 1] - states[k + 1]` is how far layer
        `k` of the network is from its continuous-time limit."""
        if scheme not in ("lie", "strang"):
            raise ValueError(f"`scheme` must be 'lie' or 'strang'; got {scheme!r}.")
        if int(num_substeps) != num_substeps or num_substeps < 1:
            raise ValueError(
                f"`num_substeps` must be a positive integer; got {num_substeps}."
            )
        zs = jnp.asarray(states)
        if zs.ndim not in (3, 4) or zs.shape[0] != self.num_layers + 1:
            raise ValueError(
                f"`states` must have shape `(L + 1, [B,] n, d)` with L + 1 = "
                f"{self.num_layers + 1}; got {zs.shape}."
            )
        batched = zs.ndim == 4
        zs = zs if batched else zs[:, None]
        if attention_mask is None:
            mask = jnp.ones(zs.shape[1:3], bool)
        else:
            mask = jnp.asarray(attention_mask, bool).reshape(zs.shape[1:3])
        m = jnp.asarray(int(num_substeps))
        out = _substeps(self, zs, mask, m, scheme, restart=True)
        return out if batched else out[:, 0]

    def solve(
        self,
        inputs,
        attention_mask=None,
        token_type_ids=None,
        **kwargs,
    ):
        """Integrate the continuous-time flow of one sequence from the network's
        initial state over `[0, L]`, saving at `t = 0, 1, ..., L` unless `saveat` or
        `ts` is given; `kwargs` go to `spherejax.solve` (e.g. `solver`, `rtol`,
        `atol`). Returns the `diffrax.Solution` (flow states; `readout` maps them to
        hidden states)."""
        x, mask, batched = self._inputs(inputs, attention_mask, token_type_ids)
        if batched and x.shape[0] != 1:
            raise ValueError(
                "`solve` takes one sequence; use `jax.vmap` or a loop for a batch."
            )
        z0 = self._initial(x)[0]
        if "ts" not in kwargs and "saveat" not in kwargs:
            kwargs["ts"] = jnp.arange(self.num_layers + 1, dtype=z0.dtype)
        kwargs.setdefault("project", self.norm == "post")
        field = self.flow(mask[0])
        return _solve(field, z0, float(self.num_layers), **kwargs)


@eqx.filter_jit
def _network(model: TransformerFlow, x0: Array, mask: Array) -> Array:
    def one(x, m):
        field = _with_key_mask(model.field, m)
        return transformer(
            field,
            x,
            model.num_layers,
            1.0,
            norm=model.norm,
            split=True,
            layer_norms=model.layer_norms,
        )

    return jax.vmap(one, in_axes=(0, 0), out_axes=1)(x0, mask)


@eqx.filter_jit
def _substeps(model: TransformerFlow, x0, mask, m, scheme: str, restart=False):
    """Layer `k` of the flow of each sequence run as `m` steps of `h = 1/m`: Lie,
    `LieTrotter` of the network's own layer update rules (`m = 1` is the network);
    Strang, `Strang` of the sub-layer flows with `ProjectedMidpoint` sub-steps."""
    dtype = x0.dtype
    h = 1.0 / m.astype(dtype)
    t0 = jnp.zeros((), dtype)

    def one(x, msk):
        flow = model.flow(msk)

        def run_layer(k, y):
            layer = flow.layer(k)
            if scheme == "lie":
                field, solver = layer_solver(
                    layer.field, model.norm, split=True, layer_norms=layer.layer_norms
                )
            else:
                field = layer
                inner = ProjectedMidpoint(manifold=flow.manifold)
                solver = Strang(*layer.parts(), solver=inner, manifold=flow.manifold)  # pyright: ignore[reportCallIssue]
            return fixed_steps(field, solver, y, t0, h, m, True)

        if restart:  # x holds the L + 1 states; layer k starts from x[k]
            ks = jnp.arange(model.num_layers)
            ys = jax.vmap(run_layer)(ks, x[:-1])
            return jnp.concatenate([x[:1], ys])

        def layer(y, k):
            y = run_layer(k, y)
            return y, y

        _, ys = jax.lax.scan(layer, x, jnp.arange(model.num_layers))
        return jnp.concatenate([x[None], ys])

    return jax.vmap(one, in_axes=(1 if restart else 0, 0), out_axes=1)(x0, mask)
