"""The public namespace: a small core at the top, topic subpackages for the rest,
former top-level names still resolving (with a DeprecationWarning naming the new
home), and nothing heavy imported by `import spherejax`."""

import importlib
import json
import pkgutil
import re
import subprocess
import sys
import types
import warnings

import pytest

import spherejax as sj


# Every name that `spherejax` exported at the top before the topic subpackages
# (and the MiniLM tools that had already moved to `spherejax.models`).
FORMER = """
AbstractField AbstractLagrangian AbstractLieAlgebra AbstractManifold
AbstractManifoldSolver action attention_matrix CG2 CG2_3 CG3 CG4a CircleDensity
circle_growth_rates clusters cluster_count empirical_fourier EndpointLoss
EnsembleField equiangular Euclidean euler_lagrange_residual feature_continuum
feature_operator FeedForward field_from_hyperparams field_hyperparams fit
fourier_distance from_features from_huggingface from_polar from_torch_encoder
gaussian_closure geodesic geodesic_acceleration GramAlgebra IdentityAttention
interaction_energy Kinetic KineticPotential LayerNorm LayerNormSphere Layerwise
LieEuler LieTrotter load load_header make_mesh MeasureLoss minimum_action_path mmd2
MovingLayerNorm node_velocities pairwise_cosines PreLNFlow ProductAlgebra
ProjectedInterpolation quadrature RadiusSphere Rattle relu_projection ReplayAdjoint
ResidualFlow Retract riemannian RK4 RKMK4 save SelfAttention sharded_solve
shard_ensemble shard_tokens ShootingLoss sinkhorn_divergence solve solve_density
solve_ensemble Sphere SphereDensity sphere_harmonics sphere_quadrature Strang Sum
TaiFlow TaiTransformer tai_transformer TangentBundleField TangentBundleInterpolation
TokenSharded token_continuum to_features to_polar Tracking TrackingLoss transformer
TransformerFlow TranslationAlgebra unprojected worst_member_rms_norm
LowRankLayerFlow MiniLMData constant_velocity_baseline interval_actions
minilm_dataset minilm_trajectories tracking_ratio
""".split()

# the public subpackages (the command line, `spherejax.cli`, is the application)
SUBPACKAGES = sorted(
    m.name
    for m in pkgutil.iter_modules(sj.__path__)
    if not m.name.startswith("_") and m.name != "cli"
)


def _public(module: types.ModuleType) -> set[str]:
    return {
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }


def test_import_is_small_and_leaves_out_matplotlib():
    # a fresh interpreter: what `import spherejax` alone does
    code = (
        "import json, sys, warnings\n"
        "import spherejax as sj\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    sj.save\n"
        "print(json.dumps({'names': [n for n in dir(sj) if not n.startswith('_')],"
        " 'heavy': [m for m in ('matplotlib', 'torch', 'transformers')"
        " if m in sys.modules], 'warned_at': w[0].filename}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert len(out["names"]) <= 55, out["names"]
    assert {"solve", "Sphere", "SelfAttention", "mean_field"} <= set(out["names"])
    assert out["heavy"] == [], f"`import spherejax` imported {out['heavy']}"
    # a former name's warning points at the line that used it
    assert out["warned_at"] == "<string>"


def test_subpackages_are_attributes_of_the_top():
    assert {"io", "mean_field", "models", "sharding", "variational"} <= set(SUBPACKAGES)
    for name in SUBPACKAGES:
        assert isinstance(getattr(sj, name), types.ModuleType), name


def test_no_subpackage_takes_a_former_name():
    # a module called like a former function would make the old name unreachable
    # (e.g. a subpackage `spherejax.action` and the function `action`)
    assert not set(SUBPACKAGES) & set(FORMER)


def test_no_name_is_public_twice():
    homes: dict[str, list[str]] = {}
    for module in ["spherejax"] + [f"spherejax.{s}" for s in SUBPACKAGES]:
        for name in _public(importlib.import_module(module)):
            homes.setdefault(name, []).append(module)
    twice = {n: m for n, m in homes.items() if len(m) > 1}
    assert not twice, twice


@pytest.mark.parametrize("name", FORMER)
def test_former_name_resolves(name):
    if name in vars(sj):  # still at the top: no warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            getattr(sj, name)
        return
    assert name not in dir(sj)
    with pytest.warns(DeprecationWarning) as record:
        moved = getattr(sj, name)
    message = str(record[0].message)
    found = re.search(rf"`spherejax\.(\w+)\.{name}`", message)
    assert found, message
    home = importlib.import_module(f"spherejax.{found[1]}")
    assert found[1] in SUBPACKAGES
    assert moved is getattr(home, name)


def test_from_import_of_a_former_name():
    with pytest.warns(DeprecationWarning, match=r"spherejax\.variational\.action"):
        from spherejax import action  # pyright: ignore[reportAttributeAccessIssue]
    assert action is sj.variational.action


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        sj.no_such_name  # pyright: ignore[reportAttributeAccessIssue]
