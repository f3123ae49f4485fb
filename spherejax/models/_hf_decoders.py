"""Hugging Face Llama-era decoders (`llama`, `mistral`, `qwen2`, `qwen3`, `gemma`,
`gemma2`, `gpt_neox`, `olmo2`, `phi3`) as `DecoderFlow`s: the config read, every weight
checked against the shape the config implies, stacked over the layers one tensor
at a time and cast to the requested float type on load."""

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._attention import RoPE
from .._transformer import LayerNorm
from ._activations import ACTIVATIONS as _ACTS
from ._decoder import DecoderFlow, DecoderLayer
from ._norms import RMSNorm


DECODERS = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gpt_neox",
    "olmo2",
    "phi3",
)
"""The decoder `model_type`s `from_huggingface` imports."""

ROPE_TYPES = ("default", "linear", "llama3")
"""The supported `rope_scaling` / `rope_parameters` types."""


class _Reader:
    """Weights by name (after a prefix), checked and cast."""

    def __init__(self, weights: Mapping[str, np.ndarray], prefix: str, dtype):
        self.weights = weights
        self.prefix = prefix
        self.np_dtype = np.dtype(dtype)

    def has(self, name: str) -> bool:
        return self.prefix + name in self.weights

    def _raw(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        key = self.prefix + name
        if key not in self.weights:
            raise ValueError(
                f"the weights have no tensor {key!r}: is the checkpoint complete and "
                "its config.json the one it was saved with?"
            )
        a = self.weights[key]
        if tuple(a.shape) != tuple(shape):
            raise ValueError(
                f"tensor {key!r} has shape {tuple(a.shape)}; the config implies "
                f"{tuple(shape)}: config.json and the weights disagree (fix the "
                "config's sizes, e.g. hidden_size, num_attention_heads, "
                "num_key_value_heads, head_dim, intermediate_size, vocab_size)."
            )
        return a

    def get(self, name: str, shape) -> jnp.ndarray:
        return jnp.asarray(np.asarray(self._raw(name, shape), self.np_dtype))

    def stack(self, fmt: str, L: int, shape, transform=None) -> jnp.ndarray:
        """`fmt.format(k)` for every layer, stacked `(L, ...)` (filled in place:
        one layer's tensor at a time besides the stack)."""
        out = None
        for k in range(L):
            a = np.asarray(self._raw(fmt.format(k), shape), self.np_dtype)
            if transform is not None:
                a = transform(a)
            if out is None:
                out = np.empty((L, *a.shape), self.np_dtype)
            out[k] = a
        assert out is not None
        return jnp.asarray(out)


def _rope(config: dict) -> tuple[float, float, dict | None]:
    """`(theta, fraction, scaling)` from `rope_parameters` (transformers 5) or
    `rope_theta`/`rope_scaling`/`partial_rotary_factor`/`rotary_pct` (4.x)."""
    params = dict(config.get("rope_parameters") or {})
    if params and all(isinstance(v, dict) for v in params.values()):
        raise ValueError(
            "unsupported `rope_parameters` with one set per layer type "
            f"({sorted(params)}); supported: one set for every layer."
        )
    scaling = dict(config.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    fraction = float(
        params.get(
            "partial_rotary_factor",
            config.get("partial_rotary_factor", config.get("rotary_pct", 1.0)),
        )
    )
    merged = {**params, **scaling}
    kind = merged.get("rope_type", merged.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(
            f"unsupported rope scaling type {kind!r} (config `rope_scaling` / "
            f"`rope_parameters`); supported: {list(ROPE_TYPES)}."
        )
    if merged.get("attention_factor") not in (None, 1, 1.0):
        raise ValueError(
            f"unsupported rope `attention_factor` {merged['attention_factor']!r}; "
            "supported: 1."
        )
    if kind == "default":
        return theta, fraction, None
    keep = {
        k: v
        for k, v in merged.items()
        if k not in ("rope_theta", "partial_rotary_factor")
    }
    keep["rope_type"] = kind
    return theta, fraction, keep


def _windows(config: dict, model_type: str, L: int) -> np.ndarray:
    size = config.get("sliding_window")
    types = config.get("layer_types")
    if types is not None:
        if len(types) < L:
            raise ValueError(
                f"`layer_types` lists {len(types)} layers; the model has {L}."
            )
        bad = sorted({t for t in types[:L]} - {"full_attention", "sliding_attention"})
        if bad:
            raise ValueError(
                f"unsupported `layer_types` {bad}; supported: 'full_attention', "
                "'sliding_attention'."
            )
        sliding = [t == "sliding_attention" for t in types[:L]]
    elif model_type in ("mistral", "phi3"):
        sliding = [size is not None] * L
    else:
        sliding = [False] * L
    if not any(sliding):
        return np.zeros(L, np.int32)
    if size is None or int(size) < 1:
        raise ValueError(
            f"sliding-window layers need a `sliding_window` >= 1; got {size!r}."
        )
    return np.array([int(size) if s else 0 for s in sliding], np.int32)


def _activation(config: dict) -> Callable:
    name = config.get("hidden_activation") or config.get("hidden_act", "silu")
    if name not in _ACTS:
        raise ValueError(
            f"unsupported activation {name!r} (`hidden_act`); supported: "
            f"{sorted(_ACTS)}."
        )
    return _ACTS[name]


def _prefix(weights: Mapping[str, np.ndarray], model_type: str) -> str:
    cands = ("gpt_neox.",) if model_type == "gpt_neox" else ("model.",)
    for p in cands:
        if any(k.startswith(p) for k in weights):
            return p
    return ""


def import_decoder(
    config: dict, weights: Mapping[str, np.ndarray], dtype
) -> DecoderFlow:
    """A `DecoderFlow` from a config dict and weights by name."""
    mt = config["model_type"]
    need = ("hidden_size", "num_hidden_layers", "num_attention_heads")
    need += ("intermediate_size", "vocab_size")
    missing = [k for k in need if config.get(k) is None]
    if missing:
        raise ValueError(f"config.json of this {mt} model lacks {missing}.")
    if config.get("use_bidirectional_attention"):
        raise ValueError("unsupported `use_bidirectional_attention` (decoders only).")
    d = int(config["hidden_size"])
    L = int(config["num_hidden_layers"])
    h = int(config["num_attention_heads"])
    g = int(config.get("num_key_value_heads") or h)
    c = int(config.get("head_dim") or d // h)
    m = int(config["intermediate_size"])
    V = int(config["vocab_size"])
    if h % g:
        raise ValueError(
            f"`num_attention_heads` {h} must be a multiple of "
            f"`num_key_value_heads` {g}."
        )
    gemma = mt in ("gemma", "gemma2")
    offset = 1.0 if gemma else 0.0
    eps = float(config.get("rms_norm_eps", config.get("layer_norm_eps", 1e-6)))
    prefix = _prefix(weights, mt)
    r = _Reader(weights, prefix, dtype)
    theta, fraction, scaling = _rope(config)
    rope = RoPE(theta, fraction, scaling)
    if int(c * fraction) % 2:
        raise ValueError(
            f"the rotary dimension int(head_dim * partial_rotary_factor) = "
            f"{int(c * fraction)} is odd (head_dim {c}, factor {fraction}); supported: "
            "an even number of rotated coordinates per head."
        )
    act = _activation(config)
    lay = "layers.{}."

    def stack(name, shape, transform=None):
        return r.stack(lay + name, L, shape, transform)

    def opt_stack(name, shape, transform=None):
        return stack(name, shape, transform) if r.has(lay.format(0) + name) else None

    def rms(name, size=d):
        return RMSNorm(stack(name + ".weight", (size,)), eps, offset)

    def opt_rms(name, size=d):
        return rms(name, size) if r.has(lay.format(0) + name + ".weight") else None

    def heads(n):  # (n c, d) -> (n, c, d)
        return lambda a: a.reshape(n, c, d)

    if mt == "gpt_neox":
        ln = lambda name: LayerNorm(  # noqa: E731
            stack(name + ".weight", (d,)), stack(name + ".bias", (d,)), eps
        )

        def part(i):  # rows of head a: [q_a, k_a, v_a], each c
            return lambda a: a.reshape(h, 3, c, *a.shape[1:])[:, i]

        qkv = "attention.query_key_value."
        Wq, Wk, Wv = (stack(qkv + "weight", (3 * d, d), part(i)) for i in range(3))
        bq, bk, bv = (opt_stack(qkv + "bias", (3 * d,), part(i)) for i in range(3))
        Wo = stack(
            "attention.dense.weight",
            (d, h * c),
            lambda a: a.reshape(d, h, c).transpose(1, 0, 2),
        )
        bo = opt_stack("attention.dense.bias", (d,))
        mlp: dict[str, Any] = dict(
            W_gate=None,
            b_gate=None,
            W_up=stack("mlp.dense_h_to_4h.weight", (m, d)),
            b_up=opt_stack("mlp.dense_h_to_4h.bias", (m,)),
            W_down=stack("mlp.dense_4h_to_h.weight", (d, m)),
            b_down=opt_stack("mlp.dense_4h_to_h.bias", (d,)),
        )
        norms: dict[str, Any] = dict(
            attn_norm=ln("input_layernorm"),
            attn_out_norm=None,
            mlp_norm=ln("post_attention_layernorm"),
            mlp_out_norm=None,
        )
        qn = kn = None
        final = LayerNorm(
            r.get("final_layer_norm.weight", (d,)),
            r.get("final_layer_norm.bias", (d,)),
            eps,
        )
        embed = r.get("embed_in.weight", (V, d))
        parallel = bool(config.get("use_parallel_residual", True))
        head_names = ("embed_out.weight", "lm_head.weight")
    else:
        sa = "self_attn."
        if mt == "phi3":  # fused projections: rows [q (h c), k (g c), v (g c)]
            qkv, rows = sa + "qkv_proj.weight", ((h + 2 * g) * c, d)
            Wq = stack(qkv, rows, lambda a: a[: h * c].reshape(h, c, d))
            Wk = stack(qkv, rows, lambda a: a[h * c : (h + g) * c].reshape(g, c, d))
            Wv = stack(qkv, rows, lambda a: a[(h + g) * c :].reshape(g, c, d))
            bq = bk = bv = None
        else:
            Wq = stack(sa + "q_proj.weight", (h * c, d), heads(h))
            Wk = stack(sa + "k_proj.weight", (g * c, d), heads(g))
            Wv = stack(sa + "v_proj.weight", (g * c, d), heads(g))
            bq = opt_stack(sa + "q_proj.bias", (h * c,), lambda a: a.reshape(h, c))
            bk = opt_stack(sa + "k_proj.bias", (g * c,), lambda a: a.reshape(g, c))
            bv = opt_stack(sa + "v_proj.bias", (g * c,), lambda a: a.reshape(g, c))
        Wo = stack(
            sa + "o_proj.weight",
            (d, h * c),
            lambda a: a.reshape(d, h, c).transpose(1, 0, 2),
        )
        bo = opt_stack(sa + "o_proj.bias", (d,))
        if mt == "phi3":  # rows [gate (m), up (m)]
            gu = "mlp.gate_up_proj.weight"
            mlp = dict(
                W_gate=stack(gu, (2 * m, d), lambda a: a[:m]),
                b_gate=None,
                W_up=stack(gu, (2 * m, d), lambda a: a[m:]),
                b_up=None,
                W_down=stack("mlp.down_proj.weight", (d, m)),
                b_down=None,
            )
        else:
            mlp = dict(
                W_gate=stack("mlp.gate_proj.weight", (m, d)),
                b_gate=opt_stack("mlp.gate_proj.bias", (m,)),
                W_up=stack("mlp.up_proj.weight", (m, d)),
                b_up=opt_stack("mlp.up_proj.bias", (m,)),
                W_down=stack("mlp.down_proj.weight", (d, m)),
                b_down=opt_stack("mlp.down_proj.bias", (d,)),
            )
        if mt == "olmo2":
            qn, kn = opt_rms(sa + "q_norm", h * c), opt_rms(sa + "k_norm", g * c)
            norms = dict(
                attn_norm=None,
                attn_out_norm=rms("post_attention_layernorm"),
                mlp_norm=None,
                mlp_out_norm=rms("post_feedforward_layernorm"),
            )
        else:
            qn, kn = opt_rms(sa + "q_norm", c), opt_rms(sa + "k_norm", c)
            if mt == "gemma2":
                norms = dict(
                    attn_norm=rms("input_layernorm"),
                    attn_out_norm=rms("post_attention_layernorm"),
                    mlp_norm=rms("pre_feedforward_layernorm"),
                    mlp_out_norm=rms("post_feedforward_layernorm"),
                )
            else:
                norms = dict(
                    attn_norm=rms("input_layernorm"),
                    attn_out_norm=None,
                    mlp_norm=rms("post_attention_layernorm"),
                    mlp_out_norm=None,
                )
        final = RMSNorm(r.get("norm.weight", (d,)), eps, offset)
        embed = r.get("embed_tokens.weight", (V, d))
        parallel = False
        head_names = ("lm_head.weight",)
    if mt == "gemma2":
        scale = float(config.get("query_pre_attn_scalar") or c) ** -0.5
    else:
        scale = c**-0.5
    softcap = config.get("attn_logit_softcapping") if mt == "gemma2" else None
    layers = DecoderLayer(
        Wq=Wq,
        Wk=Wk,
        Wv=Wv,
        Wo=Wo,
        bq=bq,
        bk=bk,
        bv=bv,
        bo=bo,
        q_norm=qn,
        k_norm=kn,
        **mlp,
        **norms,
        window=jnp.asarray(_windows(config, mt, L)),
        scale=scale,
        softcap=None if softcap is None else float(softcap),
        rope=rope,
        qk_norm_per_head=mt != "olmo2",
        activation=act,
    )
    lm_head = None
    for name in head_names:
        if name in weights:
            lm_head = jnp.asarray(
                np.asarray(_check_head(weights, name, (V, d)), r.np_dtype)
            )
            break
    if (
        lm_head is None
        and config.get("tie_word_embeddings", False)
        and any(k.startswith(prefix) for k in weights)
        and prefix
    ):
        lm_head = embed  # tied: the head is the embedding matrix
    final_cap = config.get("final_logit_softcapping") if mt == "gemma2" else None
    archs = config.get("architectures") or [f"{mt}"]
    return DecoderFlow(
        layers=layers,
        embeddings=embed,
        final_norm=final,
        lm_head=lm_head,
        num_layers=L,
        parallel=parallel,
        embed_scale=math.sqrt(d) if gemma else None,
        final_softcap=None if final_cap is None else float(final_cap),
        architecture=str(archs[0]),
    )


def _check_head(weights, name, shape):
    a = weights[name]
    if tuple(a.shape) != tuple(shape):
        raise ValueError(
            f"tensor {name!r} has shape {tuple(a.shape)}; the config implies "
            f"{tuple(shape)}: config.json and the weights disagree."
        )
    return a
