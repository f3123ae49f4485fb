"""`DecoderFlow.hidden_states` against `transformers`' own CPU forward, side by side.

    python benchmarks/llm_speed.py [--layers 4] [--dim 256] [--batch 8] [--tokens 128]
                                   [--repeats 7] [--torch-threads N]

A random-weight Llama (`--layers` layers, `d = --dim`, 8 query heads, 4 key/value
heads, SwiGLU of width `8d/3` rounded, vocabulary 1000) written by
`save_pretrained`, run in float32 on a batch of `--batch x --tokens` token ids:
`transformers`' eager forward with `output_hidden_states=True` under
`torch.no_grad()`, and spherejax's imported `hidden_states` (compiled once before
timing). Printed: the median wall time of each over `--repeats` alternating runs,
the ratio spherejax / transformers, and the largest difference of the hidden
states. Needs torch and `transformers` (the `real` extra).
"""

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

import spherejax as sj


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch's intra-op threads (default: torch's own choice)",
    )
    a = p.parse_args()
    if a.torch_threads is not None:
        torch.set_num_threads(a.torch_threads)
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=a.dim,
        intermediate_size=int(8 * a.dim / 3) // 32 * 32,
        num_hidden_layers=a.layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=1000,
        max_position_embeddings=max(a.tokens, 128),
    )
    hf = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager"
    ).eval()
    folder = tempfile.mkdtemp()
    hf.save_pretrained(folder)
    model = sj.models.from_huggingface(folder, dtype=jnp.float32)
    ids = np.random.default_rng(0).integers(0, 1000, (a.batch, a.tokens))
    tids = torch.tensor(ids)

    def run_hf():
        with torch.no_grad():
            out = hf.model(tids, output_hidden_states=True)
        return out.hidden_states

    def run_sj():
        return jax.block_until_ready(model.hidden_states(ids))

    ref, ours = run_hf(), run_sj()  # warm-up and compilation
    err = max(float(np.abs(np.asarray(o) - r.numpy()).max()) for o, r in zip(ours, ref))
    t_hf, t_sj = [], []
    for _ in range(a.repeats):
        for fn, times in ((run_hf, t_hf), (run_sj, t_sj)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    m_hf, m_sj = statistics.median(t_hf), statistics.median(t_sj)
    print(
        f"Llama L={a.layers} d={a.dim} batch {a.batch}x{a.tokens}, float32, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"transformers forward  {m_hf * 1e3:8.1f} ms")
    print(f"spherejax hidden_states {m_sj * 1e3:6.1f} ms")
    print(f"ratio spherejax / transformers: {m_sj / m_hf:.2f}")
    print(f"max |difference| of the hidden states: {err:.1e}")


if __name__ == "__main__":
    main()
