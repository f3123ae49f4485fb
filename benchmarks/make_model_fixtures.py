"""Write the small reference fixtures of `tests/test_models.py` (needs torch and
transformers, the optional `real` extra):

- `tests/data/tiny_bert/` and `tests/data/tiny_gpt2/`: a `config.json`, a
  `model.safetensors` (float64) and `hidden.npz` (input ids, attention mask and
  Hugging Face's `output_hidden_states`, computed by transformers in float64) of a
  2-layer BERT and a 2-layer GPT-2 with random weights, random non-zero biases and
  LayerNorm parameters;
- `tests/data/minilm_hidden_hf.npz`: all-MiniLM-L6-v2's hidden states (float64) for
  the first sentence of the cached MiniLM paths (`spherejax.models.minilm_dataset()`).

With these the importer is checked against transformers where torch is absent.

    PYTHONPATH=. python benchmarks/make_model_fixtures.py
"""

import json
import pathlib

import numpy as np


OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"
IDS = np.array([[3, 17, 5, 42, 8, 2, 11], [7, 7, 30, 1, 0, 0, 0]])
MASK = np.array([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]])


def randomise(model, torch, seed: int):
    """Random non-zero biases and LayerNorm parameters (the defaults are 0 and 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or "LayerNorm" in name or ".ln_" in name:
                noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
                p.copy_(0.3 * noise + (1.0 if name.endswith("weight") else 0.0))
    return model


def tiny_bert(torch, transformers, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=24,
        max_position_embeddings=16,
        layer_norm_eps=1e-12,
    )
    model = transformers.BertModel(config, add_pooling_layer=False)
    return randomise(model.double().eval(), torch, seed)


def tiny_gpt2(torch, transformers, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=4,
        layer_norm_epsilon=1e-5,
    )  # fmt: skip
    return randomise(transformers.GPT2Model(config).double().eval(), torch, seed)


def hidden(model, torch, ids, mask) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(ids),
            attention_mask=torch.as_tensor(mask),
            output_hidden_states=True,
        )
    return np.stack([h.numpy() for h in out.hidden_states])


def write(model, torch, name: str):
    from safetensors.numpy import save_file

    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    (folder / "config.json").write_text(json.dumps(config, indent=1, default=str))
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    save_file(weights, str(folder / "model.safetensors"))
    np.savez_compressed(
        folder / "hidden.npz",
        input_ids=IDS,
        attention_mask=MASK,
        hidden_states=hidden(model, torch, IDS, MASK),
    )
    print(f"wrote {folder}")


def main():
    import torch
    import transformers

    import spherejax as sj
    from spherejax.models import tokenize

    write(tiny_bert(torch, transformers), torch, "tiny_bert")
    write(tiny_gpt2(torch, transformers), torch, "tiny_gpt2")
    path = sj.models.minilm_path()
    ids, mask = tokenize(path, [sj.models.minilm_dataset().sentences[0]])
    model = transformers.AutoModel.from_pretrained(
        path, local_files_only=True, attn_implementation="eager"
    )
    hs = hidden(model.double().eval(), torch, ids, mask)
    np.savez_compressed(
        OUT / "minilm_hidden_hf.npz",
        input_ids=ids,
        attention_mask=mask,
        hidden_states=hs,
    )
    print(f"wrote {OUT / 'minilm_hidden_hf.npz'} {hs.shape}")


if __name__ == "__main__":
    main()
