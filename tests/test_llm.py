"""Llama-era decoders imported from Hugging Face checkpoints, against
`transformers` itself (live: random-weight checkpoints written by
`save_pretrained`, eager attention), their flows' convergence orders, and the
dynamics measures.

The float64 reference: `transformers` computes RMSNorm, the rotary angles and the
softmax in float32 even for a float64 model (measured: 5e-7 from a float64
computation for a tiny Llama, 1e-6 for Gemma 2), so `_hf_float64` promotes those
float32 requests to float64 (`Tensor.float`, `Tensor.to(float32)`,
`torch.arange(dtype=float32)`, `softmax(dtype=float32)`, the default dtype) while
the model is built and run: the reference is then HF's own code in float64.
"""

import contextlib
import json
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spherejax as sj


torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V, D = 50, 16
BASE = dict(
    hidden_size=D,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=V,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
LLAMA3 = dict(
    rope_type="llama3",
    rope_theta=10000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8,
)
FAMILIES = {
    # grouped heads, biases everywhere, llama3 rope scaling
    "llama": (
        "LlamaConfig",
        dict(attention_bias=True, mlp_bias=True, rope_parameters=LLAMA3),
    ),
    # a window shorter than the sequence; written in shards
    "mistral": ("MistralConfig", dict(sliding_window=3)),
    # biases on q, k, v; written in bfloat16
    "qwen2": ("Qwen2Config", {}),
    # per-head qk-norm, head_dim != hidden_size / heads
    "qwen3": ("Qwen3Config", dict(head_dim=8)),
    # (1 + w) RMSNorm, sqrt(d) embeddings, soft-capping, query_pre_attn_scalar,
    # alternate sliding layers, peri-LN; tied embeddings
    "gemma2": (
        "Gemma2Config",
        dict(
            head_dim=8,
            query_pre_attn_scalar=6,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
            sliding_window=3,
        ),
    ),
    # rotary on half of each head, parallel attention and MLP, LayerNorm
    "gpt_neox": (
        "GPTNeoXConfig",
        dict(
            rope_parameters=dict(
                rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5
            )
        ),
    ),
    # norms after each sub-layer, qk-norm over all heads
    "olmo2": ("Olmo2Config", {}),
    "gemma": ("GemmaConfig", dict(head_dim=8)),
    # fused qkv and gate/up projections, rotary on half of each head
    "phi3": (
        "Phi3Config",
        dict(
            rope_parameters=dict(
                rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5
            )
        ),
    ),
}
IDS = np.random.default_rng(0).integers(3, V, (2, 7))
MASK = np.ones((2, 7), np.int64)
MASK[1, 5:] = 0  # right padding
KEEP = MASK.astype(bool)


@contextlib.contextmanager
def _hf_float64():
    T = torch.Tensor
    saved = (T.float, T.to, torch.arange, torch.nn.functional.softmax)
    orig_to, orig_arange, orig_softmax = saved[1:]

    def promote(k):
        if k.get("dtype") is torch.float32:
            k["dtype"] = torch.float64
        return k

    def to(self, *a, **k):
        a = tuple(torch.float64 if x is torch.float32 else x for x in a)
        return orig_to(self, *a, **promote(k))

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    T.float = lambda self, *a, **k: self.double()
    T.to = to
    torch.arange = lambda *a, **k: orig_arange(*a, **promote(k))
    torch.nn.functional.softmax = lambda x, *a, **k: orig_softmax(x, *a, **promote(k))
    try:
        yield
    finally:
        T.float, T.to, torch.arange, torch.nn.functional.softmax = saved
        torch.set_default_dtype(old)


def _randomize(model):
    """Non-trivial weights: norm gains around 1, biases around 0, matrices
    1/sqrt(fan-in)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if p.ndim == 2:
                p.copy_(r / math.sqrt(p.shape[1]))
            elif "norm" in name and "bias" not in name:
                p.copy_(1 + 0.3 * r)
            else:
                p.copy_(0.3 * r)


def _write(family: str, folder) -> str:
    cls, extra = FAMILIES[family]
    config = getattr(transformers, cls)(**BASE, **extra)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    _randomize(model)
    if family == "qwen2":
        model = model.to(torch.bfloat16)
    shard = "20KB" if family == "mistral" else "5GB"
    model.save_pretrained(folder, max_shard_size=shard)
    return str(folder)


def _reference(folder: str, float64: bool, position_ids=None):
    ctx = _hf_float64() if float64 else contextlib.nullcontext()
    dtype = torch.float64 if float64 else torch.float32
    with ctx:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, attn_implementation="eager"
        ).eval()
        kw = (
            {}
            if position_ids is None
            else dict(position_ids=torch.tensor(position_ids))
        )
        with torch.no_grad():
            out = model(
                torch.tensor(IDS),
                attention_mask=torch.tensor(MASK),
                output_hidden_states=True,
                **kw,
            )
    hs = np.stack([h.numpy() for h in out.hidden_states])
    return hs, out.logits.numpy(), model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    base = tmp_path_factory.mktemp("decoders")
    return {f: _write(f, base / f) for f in FAMILIES}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_matches_transformers(checkpoints, family):
    folder = checkpoints[family]
    files = sorted(p.name for p in pathlib.Path(folder).iterdir())
    if family == "mistral":
        assert "model.safetensors.index.json" in files
        assert sum(f.endswith(".safetensors") for f in files) >= 2
    if family == "qwen2":  # the stored tensors are bfloat16
        raw = open(f"{folder}/model.safetensors", "rb").read(100_000)
        header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
        assert {e["dtype"] for k, e in header.items() if k != "__metadata__"} == {
            "BF16"
        }
    pos = None
    if family == "llama":  # explicit, shifted positions
        pos = np.arange(7)[None] + np.array([[3], [0]])
    for float64, tol in ((True, 1e-9), (False, 1e-4)):
        ref, ref_logits, hf = _reference(folder, float64, pos)
        dtype = jnp.float64 if float64 else jnp.float32
        model = sj.models.from_huggingface(folder, dtype=dtype)
        assert isinstance(model, sj.models.DecoderFlow)
        hs = np.asarray(model.hidden_states(IDS, MASK, pos))
        assert hs.dtype == np.dtype(dtype) and hs.shape == ref.shape == (3, 2, 7, D)
        scale = np.abs(ref[:, KEEP]).max()
        assert np.abs(hs - ref)[:, KEEP].max() < tol * max(1.0, scale)
        logits = np.asarray(model.logits(IDS, MASK, pos))
        assert np.abs(logits - ref_logits)[KEEP].max() < tol * max(1.0, scale)
    if family == "gemma2":  # an in-memory model is read through its state_dict
        mem = sj.models.from_huggingface(hf, dtype=jnp.float32)
        np.testing.assert_allclose(mem.hidden_states(IDS, MASK)[:, KEEP], hs[:, KEEP])


# ---- bad input


def test_bad_checkpoints_and_inputs(checkpoints, tmp_path):
    import shutil

    def copy(family):
        dst = tmp_path / family
        shutil.copytree(checkpoints[family], dst)
        return dst, json.loads((dst / "config.json").read_text())

    folder, config = copy("llama")
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    with pytest.raises(ValueError, match=r"unsupported model_type 'mamba'.*'llama'"):
        sj.models.from_huggingface(folder)
    rope = {**LLAMA3, "rope_type": "yarn"}
    (folder / "config.json").write_text(json.dumps({**config, "rope_parameters": rope}))
    with pytest.raises(ValueError, match=r"rope scaling type 'yarn'.*'llama3'"):
        sj.models.from_huggingface(folder)
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 20}))
    with pytest.raises(ValueError, match=r"mlp.gate_proj.weight' has shape \(24, 16\)"):
        sj.models.from_huggingface(folder)
    folder, _ = copy("mistral")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (folder / shard).unlink()
    with pytest.raises(FileNotFoundError, match=f"shard '{shard}'.*missing"):
        sj.models.from_huggingface(folder)
    model = sj.models.from_huggingface(checkpoints["qwen3"])
    with pytest.raises(ValueError, match=r"`input_ids` must lie in \[0, 50\)"):
        model.hidden_states(np.array([3, 50, 1]))
    with pytest.raises(ValueError, match="`attention_mask` must have the shape"):
        model.hidden_states(IDS, MASK[:, :5])
    with pytest.raises(ValueError, match="`position_ids` must be integers"):
        model.hidden_states(IDS, MASK, np.zeros((2, 3), int))


# ---- the flows: sub-stepping converges at order 1 (Lie) and 2 (Strang)

# sub-step counts in the asymptotic range of each family (Gemma 2's sqrt(d)
# embeddings and output norms make fast flows, which need finer steps)
ORDERS = {
    "llama": ((32, 64, 128), (16, 32, 64)),  # pre-LN
    "gpt_neox": ((32, 64, 128), (16, 32, 64)),  # pre-LN, parallel
    "olmo2": ((32, 64, 128), (16, 32, 64)),  # output norms
    "gemma2": ((256, 512, 1024), (32, 64, 128)),  # peri-LN
}
ALPHA = (0.5, np.linspace(0.2, 0.8, D))  # nGPT step sizes (attention, MLP)


def _slope(ms, errors):
    return -np.polyfit(np.log(ms), np.log(errors), 1)[0]


@pytest.mark.parametrize("family", list(ORDERS))
def test_substeps_converge_to_the_flow(checkpoints, family):
    model = sj.models.from_huggingface(checkpoints[family], dtype=jnp.float64)
    lie_ms, strang_ms = ORDERS[family]
    ref = model.substep_states(
        IDS, 16 * strang_ms[-1], scheme="strang", attention_mask=MASK
    )
    for scheme, ms, order in (("lie", lie_ms, 1.0), ("strang", strang_ms, 2.0)):
        errors = [
            np.abs(
                model.substep_states(IDS, m, scheme=scheme, attention_mask=MASK) - ref
            )[:, KEEP].max()
            for m in ms
        ]
        assert abs(_slope(ms, errors) - order) < 0.3, (scheme, errors)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_ngpt_rule_converges(checkpoints, family):
    model = sj.models.from_huggingface(checkpoints[family], dtype=jnp.float64)
    ms = (4, 8, 16)
    ref = model.substep_states(IDS, 512, scheme="strang", alpha=ALPHA)
    assert np.allclose(np.linalg.norm(ref, axis=-1), 1.0, atol=1e-12)
    for scheme, order in (("lie", 1.0), ("strang", 2.0)):
        errors = [
            np.abs(model.substep_states(IDS, m, scheme=scheme, alpha=ALPHA) - ref).max()
            for m in ms
        ]
        assert abs(_slope(ms, errors) - order) < 0.3, (scheme, errors)
    # one Lie step per layer is the nGPT update of each sub-layer, in numpy
    x = np.asarray(model.embed(IDS[0]))
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    one = np.asarray(model.substep_states(IDS, 1, alpha=ALPHA))[:, 0]
    layer = model.layer(0)
    pos, keep = jnp.arange(7), jnp.ones(7, bool)
    for part in (0, 1):
        v = np.asarray(layer.velocity(part, jnp.asarray(x), pos, keep))
        v = v / np.linalg.norm(v, axis=-1, keepdims=True)
        x = x + np.broadcast_to(ALPHA[part], (D,)) * (v - x)
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    np.testing.assert_allclose(one[1], x, atol=1e-12)


# ---- dynamics measures


def test_effective_time_recovers_known_steps():
    from scipy.linalg import expm

    rng = np.random.default_rng(1)
    A = rng.normal(size=(4, 4)) / 2
    x = rng.normal(size=(5, 4))
    steps = [0.3, 0.8, 1.7]

    def flow_map(y, h):
        return y @ jax.scipy.linalg.expm(h * jnp.asarray(A)).T

    def velocity(y):
        return y @ jnp.asarray(A).T

    for h in steps:
        x1 = x @ expm(h * A).T
        got, residual = sj.models.effective_time(flow_map, velocity, x, x1)
        assert abs(float(got) - h) < 1e-9 and float(residual) < 1e-9
        x = x1


def test_effective_times_of_a_decoder(checkpoints):
    model = sj.models.from_huggingface(checkpoints["llama"], dtype=jnp.float64)
    h, residual = sj.models.effective_times(model, IDS[0], num_substeps=32)
    assert h.shape == residual.shape == (2,)
    # each layer's update is matched better by its flow at h than at h = 1
    states = model.states(IDS[0])
    for k in range(2):
        at_h = model.layer_flow_map(k, states[k], h[k], 32)
        at_1 = model.layer_flow_map(k, states[k], 1.0, 32)
        err_h = np.linalg.norm(states[k + 1] - at_h)
        err_1 = np.linalg.norm(states[k + 1] - at_1)
        assert err_h <= err_1 + 1e-12
        assert (
            abs(err_h / np.linalg.norm(states[k + 1] - states[k]) - residual[k]) < 1e-9
        )


def test_causal_clustering_towards_the_first_token():
    rng = np.random.default_rng(2)
    x0 = rng.normal(size=(6, 3))
    x0 /= np.linalg.norm(x0, axis=1, keepdims=True)
    field = sj.IdentityAttention(1.0, mask=sj.Causal())
    ts = jnp.linspace(0.0, 60.0, 7)
    sol = sj.solve(field, x0, 60.0, ts=ts, rtol=1e-9, atol=1e-9)
    cos = np.asarray(sj.models.first_token_cosines(sol.ys))
    ys = np.asarray(sol.ys)
    np.testing.assert_allclose(cos, np.einsum("tnd,td->tn", ys, ys[:, 0]), atol=1e-12)
    assert cos[0, 1:].min() < 0.5 and cos[-1].min() > 0.999
    hist, edges = sj.models.cosine_histograms(sol.ys, bins=10)
    assert hist.shape == (7, 10) and edges[0] == -1 and edges[-1] == 1
    np.testing.assert_allclose(hist.sum(1) * 0.2, 1.0)
    assert hist[-1, -1] * 0.2 == pytest.approx(
        1.0
    )  # every pair in the top bin at the end
    padded = sj.models.first_token_cosines(
        sol.ys[:, None], np.array([[1, 1, 1, 1, 1, 0]])
    )
    assert np.isnan(padded[:, 0, -1]).all() and not np.isnan(padded[:, 0, :-1]).any()


def test_first_token_attention_matches_transformers(checkpoints):
    folder = checkpoints["gemma2"]
    with _hf_float64():
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float64, attn_implementation="eager"
        ).eval()
        with torch.no_grad():
            out = hf(
                torch.tensor(IDS),
                attention_mask=torch.tensor(MASK),
                output_attentions=True,
            )
    ref = np.stack([a.numpy()[..., 0].mean(1) for a in out.attentions])  # (L, B, n)
    model = sj.models.from_huggingface(folder, dtype=jnp.float64)
    got = np.asarray(sj.models.first_token_attention(model, IDS, MASK))
    assert got.shape == (2, 2, 7)
    np.testing.assert_allclose(got[:, KEEP], ref[:, KEEP], atol=1e-12)
    assert np.isnan(got[:, ~KEEP]).all()


def test_docs_example_runs():
    """The example of the docs; its solved flow is the limit of the sub-steps, and
    `continuum_distance` is each layer's distance to its flow solved adaptively."""
    text = pathlib.Path(__file__).resolve().parent.parent / "docs" / "real_models.md"
    section = text.read_text().split("## Llama-era decoders", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    ns: dict = {}
    exec(compile(blocks[0], "docs/real_models.md", "exec"), ns)
    assert ns["hs"].shape == (3, 2, 5, 16)
    assert ns["logits"].shape == (2, 5, 64)
    assert ns["hist"].shape == (3, 20)
    model, ids = ns["model"], ns["ids"][0]
    end = np.asarray(ns["sol"].ys)
    assert 1e-7 < np.abs(np.asarray(ns["lie"]) - end).max() < 1e-3  # order 1, 1/64
    states = model.states(ids)
    field = model.flow(jnp.ones(5, bool), jnp.arange(5))
    dist = []
    for k in range(2):
        t0, t1 = jnp.asarray(float(k)), jnp.asarray(k + 1.0)
        ts = jnp.array([k, k + 0.5, k + 1.0])
        layer = sj.solve(field, states[k], t1, t0=t0, ts=ts, rtol=1e-11, atol=1e-11)
        step = np.linalg.norm(states[k + 1] - states[k])
        dist.append(np.linalg.norm(states[k + 1] - layer.ys[-1]) / step)
    np.testing.assert_allclose(ns["delta"], dist, rtol=1e-3)
    assert np.all(np.asarray(ns["delta"]) > 1e-3)  # the network is not its own flow
