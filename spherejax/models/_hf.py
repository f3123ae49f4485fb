"""Import Hugging Face BERT-family encoders and GPT-2 decoders as `TransformerFlow`s.

The weights are read tensor by tensor from the safetensors files with numpy (no
torch, no `safetensors` package needed);
an in-memory `transformers` model is read through its `state_dict()`. Text is
tokenised with the `tokenizers` package (`tokenize`). Everything else is JAX.
"""

import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._attention import Causal
from .._field import FeedForward, Layerwise, SelfAttention, Sum
from .._manifold import Euclidean
from .._transformer import LayerNorm
from ._activations import ACTIVATIONS
from ._decoder import DecoderFlow
from ._flow import TransformerFlow
from ._hf_decoders import DECODERS, import_decoder
from ._safetensors import SafetensorsCheckpoint


_EXTRA = (
    'install the optional extra `hf` (`pip install "spherejax[hf]"`, no torch) or '
    '`real` (`pip install "spherejax[real]"`, with torch)'
)


def _activation(name: str, key: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(
            f"unsupported `{key}` {name!r}; supported: {sorted(ACTIVATIONS)}."
        )
    return ACTIVATIONS[name]


def _read_source(source) -> tuple[dict, Mapping[str, np.ndarray], str | None]:
    """`(config dict, weights by name, directory or None)`. A directory's
    `model.safetensors` (or the shards listed in `model.safetensors.index.json`)
    is read lazily, one tensor at a time when indexed."""
    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        if not path.is_dir():
            raise FileNotFoundError(f"`source` {str(path)!r} is not a directory.")
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(
                f"`source` {str(path)!r} has no config.json (a Hugging Face model "
                "directory holds config.json and model.safetensors, or the shards "
                "listed in model.safetensors.index.json)."
            )
        weights_file = path / "model.safetensors"
        index_file = path / "model.safetensors.index.json"
        if not (weights_file.is_file() or index_file.is_file()):
            raise FileNotFoundError(
                f"`source` {str(path)!r} has no model.safetensors nor "
                "model.safetensors.index.json (a Hugging Face model directory holds "
                "config.json and the weights; save them with "
                "`model.save_pretrained(dir)`, which writes safetensors)."
            )
        config = json.loads(config_file.read_text())
        return config, SafetensorsCheckpoint.from_directory(path), str(path)
    state_dict = getattr(source, "state_dict", None)
    config = getattr(source, "config", None)
    if state_dict is None or config is None:
        raise ValueError(
            "`source` must be a model directory (config.json + model.safetensors) or "
            f"an in-memory `transformers` model; got {type(source).__name__}."
        )
    weights = {
        k: v.detach().cpu().double().numpy()
        if v.is_floating_point()
        else v.detach().cpu().numpy()
        for k, v in state_dict().items()
    }
    return config.to_dict(), weights, None


class _Weights:
    """Weights by name with an optional prefix (`bert.`, `transformer.`)."""

    def __init__(self, weights: Mapping[str, np.ndarray], prefixes: Sequence[str]):
        self.weights = weights
        self.prefix = ""
        for p in prefixes:
            if any(k.startswith(p) for k in weights):
                self.prefix = p
                break

    def __call__(self, name: str, dtype) -> jnp.ndarray:
        key = self.prefix + name
        if key not in self.weights:
            raise ValueError(f"the weights have no tensor {key!r}.")
        return jnp.asarray(np.asarray(self.weights[key], np.float64), dtype)


def _heads_from_linear(Wq, bq, Wk, bk, Wv, bv, Wo, bo, heads: int):
    """`SelfAttention` parameters from column-convention projections
    (`q = Wq x + bq`, ..., `out = Wo concat(heads) + bo`), weights `(out, in)`."""
    d = Wq.shape[1]
    dh = Wq.shape[0] // heads
    Q = Wq.reshape(heads, dh, d)
    K = Wk.reshape(heads, dh, d)
    # values kept factorised, V_h = O_h W_h with W_h (dh, d) and O_h (d, dh): a
    # head costs O(n dh) as in the model, not O(n d)
    Wv_h = Wv.reshape(heads, dh, d)
    Wo_h = Wo.reshape(d, heads, dh).transpose(1, 0, 2)  # (h, d, dh)
    return dict(
        Q=Q,
        K=K,
        V=Wv_h,
        O=Wo_h,
        beta=1.0 / np.sqrt(dh),
        query_bias=bq.reshape(heads, dh),
        key_bias=bk.reshape(heads, dh),
        value_bias=bv.reshape(heads, dh),
        output_bias=bo,
    )


def _attention(p: dict, causal: bool) -> SelfAttention:
    return SelfAttention(
        p["Q"],
        p["K"],
        p["V"],
        p["beta"],
        O=p["O"],
        mask=Causal() if causal else None,
        manifold=Euclidean(),
        query_bias=p["query_bias"],
        key_bias=p["key_bias"],
        value_bias=p["value_bias"],
        output_bias=p["output_bias"],
    )


def _stack_norms(pairs: Sequence[tuple], eps: float) -> LayerNorm:
    gammas, betas = zip(*pairs)
    return LayerNorm(jnp.stack(gammas), jnp.stack(betas), eps)


def _check_unsupported(config: dict, checks: Sequence[tuple[str, Any, Any]]):
    for key, ok, what in checks:
        if key in config and config[key] is not None and not ok(config[key]):
            raise ValueError(
                f"unsupported config option `{key}` = {config[key]!r} ({what})."
            )


def _bert(config: dict, w: _Weights, dtype) -> TransformerFlow:
    _check_unsupported(
        config,
        (
            (
                "position_embedding_type",
                lambda v: v == "absolute",
                "only absolute position embeddings are supported",
            ),
            ("is_decoder", lambda v: not v, "encoders only"),
            ("add_cross_attention", lambda v: not v, "no cross-attention"),
        ),
    )
    L = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    eps = float(config.get("layer_norm_eps", 1e-12))
    act = _activation(config.get("hidden_act", "gelu"), "hidden_act")
    emb = LayerNorm(
        w("embeddings.LayerNorm.weight", dtype), w("embeddings.LayerNorm.bias", dtype)
    )
    sublayers, in_attn, in_ffn = [], [(emb.gamma, emb.beta)], []
    for k in range(L):
        pre = f"encoder.layer.{k}."
        p = _heads_from_linear(
            *(
                w(pre + f"attention.{m}.{t}", dtype)
                for m in ("self.query", "self.key", "self.value", "output.dense")
                for t in ("weight", "bias")
            ),
            heads=heads,
        )
        ffn = FeedForward(
            w(pre + "intermediate.dense.weight", dtype),
            w(pre + "intermediate.dense.bias", dtype),
            w(pre + "output.dense.weight", dtype),
            w(pre + "output.dense.bias", dtype),
            activation=act,
            manifold=Euclidean(),
        )
        sublayers.append(Sum(_attention(p, causal=False), ffn))
        ln_a: tuple = tuple(
            w(pre + f"attention.output.LayerNorm.{t}", dtype)
            for t in ("weight", "bias")
        )
        ln_f: tuple = tuple(
            w(pre + f"output.LayerNorm.{t}", dtype) for t in ("weight", "bias")
        )
        in_ffn.append(ln_a)
        in_attn.append(ln_f)
    field = Layerwise(sublayers, jnp.arange(L + 1, dtype=dtype))
    types = None
    if w.prefix + "embeddings.token_type_embeddings.weight" in w.weights:
        types = w("embeddings.token_type_embeddings.weight", dtype)
    return TransformerFlow(
        field,
        (_stack_norms(in_attn[:L], eps), _stack_norms(in_ffn, eps)),
        norm="post",
        architecture="BertModel",
        readout_norm=LayerNorm(*in_attn[L], eps),
        embedding_norm=LayerNorm(emb.gamma, emb.beta, eps),
        word_embeddings=w("embeddings.word_embeddings.weight", dtype),
        position_embeddings=w("embeddings.position_embeddings.weight", dtype),
        token_type_embeddings=types,
    )


def _gpt2(config: dict, w: _Weights, dtype) -> TransformerFlow:
    _check_unsupported(
        config,
        (
            (
                "scale_attn_by_inverse_layer_idx",
                lambda v: not v,
                "per-layer attention scaling",
            ),
            ("scale_attn_weights", lambda v: v, "unscaled attention"),
            ("add_cross_attention", lambda v: not v, "no cross-attention"),
        ),
    )
    L = int(config.get("n_layer", config.get("num_hidden_layers", 0)))
    heads = int(config.get("n_head", config.get("num_attention_heads", 0)))
    d = int(config.get("n_embd", config.get("hidden_size", 0)))
    eps = float(config.get("layer_norm_epsilon", 1e-5))
    act = _activation(
        config.get("activation_function", "gelu_new"), "activation_function"
    )
    sublayers, ln1, ln2 = [], [], []
    for k in range(L):
        pre = f"h.{k}."
        Wqkv = w(pre + "attn.c_attn.weight", dtype)  # (d, 3d): x @ W (Conv1D)
        bqkv = w(pre + "attn.c_attn.bias", dtype)
        Wq, Wk, Wv = (Wqkv[:, i * d : (i + 1) * d].T for i in range(3))
        bq, bk, bv = (bqkv[i * d : (i + 1) * d] for i in range(3))
        Wo = w(pre + "attn.c_proj.weight", dtype).T
        bo = w(pre + "attn.c_proj.bias", dtype)
        p = _heads_from_linear(Wq, bq, Wk, bk, Wv, bv, Wo, bo, heads)
        ffn = FeedForward(
            w(pre + "mlp.c_fc.weight", dtype).T,
            w(pre + "mlp.c_fc.bias", dtype),
            w(pre + "mlp.c_proj.weight", dtype).T,
            w(pre + "mlp.c_proj.bias", dtype),
            activation=act,
            manifold=Euclidean(),
        )
        sublayers.append(Sum(_attention(p, causal=True), ffn))
        ln1.append(tuple(w(pre + f"ln_1.{t}", dtype) for t in ("weight", "bias")))
        ln2.append(tuple(w(pre + f"ln_2.{t}", dtype) for t in ("weight", "bias")))
    field = Layerwise(sublayers, jnp.arange(L + 1, dtype=dtype))
    return TransformerFlow(
        field,
        (_stack_norms(ln1, eps), _stack_norms(ln2, eps)),
        norm="pre",
        architecture="GPT2Model",
        final_norm=LayerNorm(w("ln_f.weight", dtype), w("ln_f.bias", dtype), eps),
        word_embeddings=w("wte.weight", dtype),
        position_embeddings=w("wpe.weight", dtype),
    )


SUPPORTED = {"bert": ("BertModel", _bert), "gpt2": ("GPT2Model", _gpt2)}
"""Supported encoder and GPT-2 `config.model_type`s and their architectures (the
decoders of `DECODERS` come as `DecoderFlow`s)."""


def from_huggingface(source, *, dtype=None) -> TransformerFlow | DecoderFlow:
    r"""Import a Hugging Face BERT-family encoder (`BertModel`: BERT, MiniLM, e.g.
    all-MiniLM-L6-v2) or GPT-2 decoder (`GPT2Model`) as a `TransformerFlow`, or a
    Llama-era decoder (`model_type` in `DECODERS`: `llama`, `mistral`, `qwen2`,
    `qwen3`, `gemma`, `gemma2`, `gpt_neox`, `olmo2`, `phi3`; the base model or its
    `...ForCausalLM`) as a `DecoderFlow`.

    **Arguments:**

    - `source`: a directory holding `config.json` and `model.safetensors` or the
      shards of `model.safetensors.index.json` (read tensor by tensor with numpy:
      no torch needed; bfloat16 and float16 weights are cast), or an in-memory
      `transformers` model (`BertModel`, `GPT2Model`, a decoder, or a model
      wrapping one).
    - `dtype`: the float type of the parameters (default JAX's default float; use
      float64, `jax_enable_x64`, to reproduce the model to ~1e-12).

    **Returns:** a `TransformerFlow` (encoders, GPT-2) or a `DecoderFlow`, whose
    `hidden_states(input_ids, attention_mask)` are the model's
    `output_hidden_states` (stacked; eager attention), whose layers are unit time
    steps of a flow (layer `k` on `[k, k + 1)`) and whose `solve` integrates its
    continuous-time limit.

    **Raises:** `ValueError` naming an unsupported `model_type` (with the
    supported ones), rope scaling type or config option (e.g. relative position
    embeddings, cross-attention, an unknown activation), or a weight whose shape
    disagrees with the config; `FileNotFoundError` for a missing `config.json`,
    weights file, or a shard named in `model.safetensors.index.json`.
    """
    config, weights, _ = _read_source(source)
    model_type = config.get("model_type")
    if model_type in DECODERS:
        dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
        return import_decoder(config, weights, dtype)
    if model_type not in SUPPORTED:
        archs = config.get("architectures")
        raise ValueError(
            f"unsupported model_type {model_type!r} (architectures {archs}); "
            f"supported: {sorted([*SUPPORTED, *DECODERS])}."
        )
    for key in ("rope_theta", "rope_scaling", "rotary_dim", "rotary_emb_base"):
        if key in config:
            raise ValueError(
                f"unsupported config option `{key}` (rotary position embeddings)."
            )
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    prefixes = ("bert.", "model.") if model_type == "bert" else ("transformer.",)
    return SUPPORTED[model_type][1](config, _Weights(weights, prefixes), dtype)


def tokenize(
    source: str | os.PathLike, texts: str | Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise `texts` with the `tokenizer.json` of the model directory `source`
    (the `tokenizers` package; special tokens added, right padding to the longest
    text): `(input_ids (B, n), attention_mask (B, n))` as int arrays."""
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ImportError(f"tokenising text needs `tokenizers`: {_EXTRA}.") from e
    path = pathlib.Path(source) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"`source` {str(source)!r} has no tokenizer.json.")
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("`texts` must be a string or a non-empty list of strings.")
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    pad = tok.padding or {}
    tok.enable_padding(pad_id=int(pad.get("pad_id", 0)))
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], np.int32)
    mask = np.array([e.attention_mask for e in enc], np.int32)
    return ids, mask
