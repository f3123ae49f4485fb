"""spherejax: attention flows on spheres, in JAX.

The core is at the top: manifolds, fields and the attention parts they are composed
of, `solve` and its solvers, adjoints, ensembles and diagnostics. The rest is in
topic subpackages:

- `spherejax.attention`: the attention parts with their abstract bases;
- `spherejax.mean_field`: densities, continuum limits, measure losses;
- `spherejax.variational`: Lagrangians, action, minimum-action paths, fitting;
- `spherejax.training`: training flows on data with the action as regulariser;
- `spherejax.transformers`: discrete stacks, LayerNorm, the pre-LN flow, Tai et al.;
- `spherejax.models`: real models (Hugging Face, torch) and the MiniLM tools;
- `spherejax.io`: saving and loading;
- `spherejax.sharding`: many devices;
- `spherejax.solvers`: building blocks for new solvers and manifolds.
"""

from . import (
    attention as attention,
    io as io,
    mean_field as mean_field,
    models as models,
    sharding as sharding,
    solvers as solvers,
    training as training,
    transformers as transformers,
    variational as variational,
)
from ._adjoint import ReplayAdjoint as ReplayAdjoint
from ._attention import (
    AbstractNormalization as AbstractNormalization,
    Causal as Causal,
    Chunked as Chunked,
    Dense as Dense,
    Hardmax as Hardmax,
    KeyMask as KeyMask,
    RoPE as RoPE,
    Sinkhorn as Sinkhorn,
    SlidingWindow as SlidingWindow,
    Softmax as Softmax,
    Spectral as Spectral,
    Unnormalized as Unnormalized,
    attention_matrix as attention_matrix,
)
from ._diagnostics import (
    cluster_count as cluster_count,
    clusters as clusters,
    equiangular as equiangular,
    pairwise_cosines as pairwise_cosines,
)
from ._energy import interaction_energy as interaction_energy
from ._ensemble import (
    EnsembleField as EnsembleField,
    solve_ensemble as solve_ensemble,
    worst_member_rms_norm as worst_member_rms_norm,
)
from ._field import (
    AbstractField as AbstractField,
    FeedForward as FeedForward,
    IdentityAttention as IdentityAttention,
    Layerwise as Layerwise,
    SelfAttention as SelfAttention,
    Sum as Sum,
)
from ._integrate import solve as solve
from ._manifold import (
    AbstractManifold as AbstractManifold,
    Euclidean as Euclidean,
    LayerNormSphere as LayerNormSphere,
    Sphere as Sphere,
)
from ._solver import (
    CG2 as CG2,
    CG2_3 as CG2_3,
    CG3 as CG3,
    RK4 as RK4,
    RKMK4 as RKMK4,
    CG4a as CG4a,
    LieEuler as LieEuler,
    LieTrotter as LieTrotter,
    Retract as Retract,
    Strang as Strang,
)
from ._version import __version__ as __version__


# Former top-level names, by their new home. Each still resolves (to the same
# object) with a DeprecationWarning naming the new home, and is not listed by dir().
_MOVED = {
    "io": (
        "field_from_hyperparams",
        "field_hyperparams",
        "load",
        "load_header",
        "save",
    ),
    "mean_field": (
        "CircleDensity",
        "MeasureLoss",
        "SphereDensity",
        "circle_growth_rates",
        "empirical_fourier",
        "feature_continuum",
        "feature_operator",
        "fourier_distance",
        "from_features",
        "gaussian_closure",
        "mmd2",
        "quadrature",
        "sinkhorn_divergence",
        "solve_density",
        "sphere_harmonics",
        "sphere_quadrature",
        "to_features",
        "token_continuum",
    ),
    "models": (
        "LowRankLayerFlow",
        "MiniLMData",
        "ResidualFlow",
        "TransformerFlow",
        "constant_velocity_baseline",
        "from_huggingface",
        "from_torch_encoder",
        "interval_actions",
        "minilm_dataset",
        "minilm_trajectories",
        "tracking_ratio",
    ),
    "sharding": (
        "TokenSharded",
        "make_mesh",
        "shard_ensemble",
        "shard_tokens",
        "sharded_solve",
    ),
    "solvers": (
        "AbstractLieAlgebra",
        "AbstractManifoldSolver",
        "GramAlgebra",
        "ProductAlgebra",
        "ProjectedInterpolation",
        "TangentBundleInterpolation",
        "TranslationAlgebra",
    ),
    "transformers": (
        "LayerNorm",
        "MovingLayerNorm",
        "PreLNFlow",
        "RadiusSphere",
        "TaiFlow",
        "TaiTransformer",
        "from_polar",
        "relu_projection",
        "tai_transformer",
        "to_polar",
        "transformer",
        "unprojected",
    ),
    "variational": (
        "AbstractLagrangian",
        "EndpointLoss",
        "Kinetic",
        "KineticPotential",
        "Rattle",
        "ShootingLoss",
        "TangentBundleField",
        "Tracking",
        "TrackingLoss",
        "action",
        "euler_lagrange_residual",
        "fit",
        "geodesic",
        "geodesic_acceleration",
        "minimum_action_path",
        "node_velocities",
        "riemannian",
    ),
}
_NEW_HOME = {name: home for home, names in _MOVED.items() for name in names}


def __getattr__(name: str):
    home = _NEW_HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'spherejax' has no attribute {name!r}")
    import warnings

    warnings.warn(
        f"`spherejax.{name}` has moved to `spherejax.{home}.{name}`; the old name "
        "will be removed in the next release.",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(globals()[home], name)
