"""Import `torch.nn.TransformerEncoder` / `TransformerEncoderLayer` as a
`TransformerFlow`."""

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._field import FeedForward, Layerwise, Sum
from .._transformer import LayerNorm
from ._activations import _gelu_exact, _gelu_tanh, _relu
from ._flow import TransformerFlow
from ._hf import _attention, _heads_from_linear


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _activation(layer: Any, torch: Any) -> Callable:
    act = layer.activation
    F = torch.nn.functional
    if act is F.relu or isinstance(act, torch.nn.ReLU):
        return _relu
    if act is F.gelu:
        return _gelu_exact
    if isinstance(act, torch.nn.GELU):
        return _gelu_tanh if act.approximate == "tanh" else _gelu_exact
    raise ValueError(
        f"unsupported activation {act!r} (supported: ReLU, GELU, tanh GELU)."
    )


def from_torch_encoder(module: Any, *, dtype=None) -> TransformerFlow:
    r"""Import a `torch.nn.TransformerEncoder` (or a single
    `torch.nn.TransformerEncoderLayer`), post-LN (`norm_first=False`) or pre-LN
    (`norm_first=True`), ReLU or GELU, with or without biases, as a
    `TransformerFlow` with no embedding layer.

    Its `hidden_states(x, attention_mask)` takes float tokens `(n, d)` or
    `(B, n, d)` (batch first) and a key mask `(B, n)` (1 keeps, 0 pads: the
    complement of torch's `src_key_padding_mask`) and returns the input and the
    output of every layer, stacked `(L + 1, B, n, d)`; the encoder's final `norm`,
    if any, is applied to the last one. Dropout is ignored (evaluation mode).

    **Raises:** `ValueError` for another module or an unsupported option (an
    activation other than ReLU/GELU, `bias=False` on some but not all parts);
    `ImportError` naming the extra `real` when torch is missing.
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "importing torch modules needs torch: install the optional extra `real` "
            '(`pip install "spherejax[real]"`).'
        ) from e
    final = None
    layers: list[Any]
    if isinstance(module, torch.nn.TransformerEncoder):
        layers = list(module.layers)
        final = module.norm
    elif isinstance(module, torch.nn.TransformerEncoderLayer):
        layers = [module]
    else:
        raise ValueError(
            "`module` must be a torch.nn.TransformerEncoder or "
            f"TransformerEncoderLayer; got {type(module).__name__}."
        )
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    pre = {bool(layer.norm_first) for layer in layers}
    if len(pre) != 1:
        raise ValueError("all layers must share `norm_first`.")
    norm = "pre" if pre.pop() else "post"

    def arr(t):
        return jnp.asarray(_np(t), dtype)

    def bias(t, size):
        return jnp.zeros(size, dtype) if t is None else arr(t)

    def ln(m):
        d = m.normalized_shape[0]
        g = jnp.ones(d, dtype) if m.weight is None else arr(m.weight)
        return g, bias(m.bias, d), float(m.eps)

    sublayers, first, second = [], [], []
    d = None
    for layer in layers:
        att: Any = layer.self_attn
        if not att._qkv_same_embed_dim or att.bias_k is not None:
            raise ValueError("unsupported attention: separate k/v dims or bias_kv.")
        d = att.embed_dim
        W = arr(att.in_proj_weight)
        b = bias(att.in_proj_bias, 3 * d)
        Wq, Wk, Wv = W[:d], W[d : 2 * d], W[2 * d :]
        bq, bk, bv = b[:d], b[d : 2 * d], b[2 * d :]
        Wo = arr(att.out_proj.weight)
        bo = bias(att.out_proj.bias, d)
        p = _heads_from_linear(Wq, bq, Wk, bk, Wv, bv, Wo, bo, att.num_heads)
        m = layer.linear1.out_features
        ffn = FeedForward(
            arr(layer.linear1.weight),
            bias(layer.linear1.bias, m),
            arr(layer.linear2.weight),
            bias(layer.linear2.bias, d),
            activation=_activation(layer, torch),
            manifold=_attention(p, False).manifold,
        )
        sublayers.append(Sum(_attention(p, causal=False), ffn))
        first.append(ln(layer.norm1))
        second.append(ln(layer.norm2))
    assert d is not None
    eps = {e for *_, e in first + second}
    if len(eps) != 1:
        raise ValueError("all LayerNorms must share `eps`.")
    eps = eps.pop()
    L = len(layers)
    field = Layerwise(sublayers, jnp.arange(L + 1, dtype=dtype))

    def stack(pairs):
        return LayerNorm(
            jnp.stack([g for g, _, _ in pairs]),
            jnp.stack([b for _, b, _ in pairs]),
            eps,
        )

    final_norm = None if final is None else LayerNorm(*ln(final))
    if norm == "pre":
        return TransformerFlow(
            field,
            (stack(first), stack(second)),
            norm="pre",
            architecture=type(module).__name__,
            final_norm=final_norm,
        )
    ident = (jnp.ones(d, dtype), jnp.zeros(d, dtype), eps)
    return TransformerFlow(
        field,
        (stack([ident] + second[:-1]), stack(first)),
        norm="post",
        architecture=type(module).__name__,
        readout_norm=LayerNorm(*second[-1]),
        final_norm=final_norm,
    )
