"""Peak host memory of `from_huggingface` loading a decoder checkpoint, as a
multiple of the checkpoint's size.

    python benchmarks/llm_load_memory.py [--dim 1024] [--layers 6] [--shards 3]
                                         [--dtype float32]

Writes a synthetic Llama checkpoint with numpy (random float32 weights, `--layers`
layers of width `--dim`, vocabulary 32000, split into `--shards` safetensors
files with a `model.safetensors.index.json`; no torch needed), then loads it in a
fresh process that has imported jax and spherejax first. Printed: the checkpoint
size, the process's resident memory before the load and its peak (`ru_maxrss`)
after, and (peak - before) / checkpoint size. The loader reads one tensor at a
time; converting a float32 checkpoint to `--dtype float64` doubles the
parameters themselves.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np


CHILD = r"""
import resource, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import spherejax as sj
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
before = rss_mb()
base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
model = sj.models.from_huggingface(sys.argv[1], dtype=jnp.dtype(sys.argv[2]))
jax.block_until_ready(model.layers.Wq)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(before, base_peak, peak, dt)
"""


def write_checkpoint(folder: pathlib.Path, d: int, L: int, shards: int) -> int:
    from safetensors.numpy import save_file

    V, m, h, g = 32000, int(8 * d / 3) // 64 * 64, d // 64, max(d // 256, 1)
    c = 64
    config = dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        hidden_size=d,
        intermediate_size=m,
        num_hidden_layers=L,
        num_attention_heads=h,
        num_key_value_heads=g,
        head_dim=c,
        vocab_size=V,
        rms_norm_eps=1e-5,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        hidden_act="silu",
        tie_word_embeddings=False,
    )
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape, np.float32) / np.sqrt(shape[-1])).astype(
            np.float32
        )

    names: list[tuple[str, tuple]] = [("model.embed_tokens.weight", (V, d))]
    for k in range(L):
        pre = f"model.layers.{k}."
        names += [
            (pre + "self_attn.q_proj.weight", (h * c, d)),
            (pre + "self_attn.k_proj.weight", (g * c, d)),
            (pre + "self_attn.v_proj.weight", (g * c, d)),
            (pre + "self_attn.o_proj.weight", (d, h * c)),
            (pre + "mlp.gate_proj.weight", (m, d)),
            (pre + "mlp.up_proj.weight", (m, d)),
            (pre + "mlp.down_proj.weight", (d, m)),
            (pre + "input_layernorm.weight", (d,)),
            (pre + "post_attention_layernorm.weight", (d,)),
        ]
    names += [("model.norm.weight", (d,)), ("lm_head.weight", (V, d))]
    per = -(-len(names) // shards)
    weight_map, total = {}, 0
    for s in range(shards):
        part = names[s * per : (s + 1) * per]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {n: w(*shape) for n, shape in part}
        total += sum(t.nbytes for t in tensors.values())
        save_file(tensors, str(folder / fname))
        weight_map.update({n: fname for n, _ in part})
        del tensors
    index = dict(metadata=dict(total_size=total), weight_map=weight_map)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--shards", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        size = write_checkpoint(folder, a.dim, a.layers, a.shards) / 2**20
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(folder), a.dtype],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    before, base_peak, peak, dt = (float(x) for x in out[-4:])
    print(f"checkpoint {size:.0f} MB (float32, {a.shards} shards), load as {a.dtype}")
    print(f"resident before {before:.0f} MB (peak so far {base_peak:.0f} MB)")
    print(f"peak after loading {peak:.0f} MB, in {dt:.1f} s")
    print(f"(peak - before) / checkpoint size: {(peak - before) / size:.2f}")


if __name__ == "__main__":
    main()
