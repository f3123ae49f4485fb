"""spherejax: attention flows on spheres, in JAX."""

from . import attention as attention, models as models
from ._action import (
    AbstractLagrangian as AbstractLagrangian,
    Kinetic as Kinetic,
    KineticPotential as KineticPotential,
    TangentBundleField as TangentBundleField,
    Tracking as Tracking,
    action as action,
    euler_lagrange_residual as euler_lagrange_residual,
    geodesic as geodesic,
    geodesic_acceleration as geodesic_acceleration,
    minimum_action_path as minimum_action_path,
    node_velocities as node_velocities,
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
    Unnormalized as Unnormalized,
    attention_matrix as attention_matrix,
)
from ._continuum import (
    feature_continuum as feature_continuum,
    feature_operator as feature_operator,
    from_features as from_features,
    gaussian_closure as gaussian_closure,
    quadrature as quadrature,
    to_features as to_features,
    token_continuum as token_continuum,
)
from ._density import (
    CircleDensity as CircleDensity,
    SphereDensity as SphereDensity,
    circle_growth_rates as circle_growth_rates,
    empirical_fourier as empirical_fourier,
    fourier_distance as fourier_distance,
    solve_density as solve_density,
    sphere_harmonics as sphere_harmonics,
    sphere_quadrature as sphere_quadrature,
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
    AbstractAttention as AbstractAttention,
    AbstractField as AbstractField,
    FeedForward as FeedForward,
    IdentityAttention as IdentityAttention,
    Layerwise as Layerwise,
    SelfAttention as SelfAttention,
    Sum as Sum,
)
from ._fit import (
    EndpointLoss as EndpointLoss,
    ShootingLoss as ShootingLoss,
    TrackingLoss as TrackingLoss,
    fit as fit,
    riemannian as riemannian,
)
from ._group import (
    AbstractLieAlgebra as AbstractLieAlgebra,
    GramAlgebra as GramAlgebra,
    ProductAlgebra as ProductAlgebra,
    TranslationAlgebra as TranslationAlgebra,
)
from ._integrate import solve as solve
from ._io import (
    field_from_hyperparams as field_from_hyperparams,
    field_hyperparams as field_hyperparams,
    load as load,
    load_header as load_header,
    save as save,
)
from ._manifold import (
    AbstractManifold as AbstractManifold,
    Euclidean as Euclidean,
    LayerNormSphere as LayerNormSphere,
    Sphere as Sphere,
)
from ._measure import (
    MeasureLoss as MeasureLoss,
    mmd2 as mmd2,
    sinkhorn_divergence as sinkhorn_divergence,
)
from ._sharding import (
    TokenSharded as TokenSharded,
    make_mesh as make_mesh,
    shard_ensemble as shard_ensemble,
    shard_tokens as shard_tokens,
    sharded_solve as sharded_solve,
)
from ._solver import (
    CG2 as CG2,
    CG2_3 as CG2_3,
    CG3 as CG3,
    RK4 as RK4,
    RKMK4 as RKMK4,
    AbstractManifoldSolver as AbstractManifoldSolver,
    CG4a as CG4a,
    LieEuler as LieEuler,
    LieTrotter as LieTrotter,
    ProjectedInterpolation as ProjectedInterpolation,
    Rattle as Rattle,
    Retract as Retract,
    Strang as Strang,
    TangentBundleInterpolation as TangentBundleInterpolation,
)
from ._tai import (
    MovingLayerNorm as MovingLayerNorm,
    TaiFlow as TaiFlow,
    TaiTransformer as TaiTransformer,
    relu_projection as relu_projection,
    tai_transformer as tai_transformer,
)
from ._transformer import (
    LayerNorm as LayerNorm,
    PreLNFlow as PreLNFlow,
    RadiusSphere as RadiusSphere,
    from_polar as from_polar,
    to_polar as to_polar,
    transformer as transformer,
    unprojected as unprojected,
)
from ._version import __version__ as __version__
from .models import (
    ResidualFlow as ResidualFlow,
    TransformerFlow as TransformerFlow,
    from_huggingface as from_huggingface,
    from_torch_encoder as from_torch_encoder,
)


# The MiniLM research tools live in `spherejax.models` only; their former top-level
# names still resolve, with a DeprecationWarning naming the new home.
_MOVED_TO_MODELS = (
    "LowRankLayerFlow",
    "MiniLMData",
    "constant_velocity_baseline",
    "interval_actions",
    "minilm_dataset",
    "minilm_trajectories",
    "tracking_ratio",
)


def __getattr__(name: str):
    if name in _MOVED_TO_MODELS:
        import warnings

        warnings.warn(
            f"`spherejax.{name}` moved to `spherejax.models.{name}`.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(models, name)
    raise AttributeError(f"module 'spherejax' has no attribute {name!r}")
