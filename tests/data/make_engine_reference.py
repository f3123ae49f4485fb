"""Record the outputs of every stepping path in `tests/data/engine_reference.npz`.

The file holds the outputs of the code at commit a1d3cf9, before the discrete
stacks (`transformer`, `tai_transformer`, `TransformerFlow`'s sub-steps) became
wrappers over `diffrax.diffeqsolve` with layer-update solvers; `tests/test_engine.py`
checks that the current code reproduces them to 1e-12 in float64. The cases are
those of `tests/engine_cases.py`; the MiniLM cases need the `real` extra.

Run `python tests/data/make_engine_reference.py` (the repository's `spherejax` is
imported, not an installed one).
"""

import pathlib
import sys

import jax


jax.config.update("jax_enable_x64", True)
sys.path[:0] = [str(pathlib.Path(__file__).parents[i]) for i in (2, 1)]

from engine_cases import CASES, MINILM_CASES  # noqa: E402


def main() -> None:
    out = {}
    for name, case in {**CASES, **MINILM_CASES}.items():
        out[name] = jax.device_get(case())
        print(name, out[name].shape, out[name].dtype)
    path = pathlib.Path(__file__).parent / "engine_reference.npz"
    import numpy as np

    np.savez_compressed(path, **out)


if __name__ == "__main__":
    main()
