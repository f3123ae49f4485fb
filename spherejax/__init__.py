"""spherejax: attention flows on spheres, in JAX."""

import importlib.metadata

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
from ._attention import attention_matrix as attention_matrix
from ._continuum import (
    feature_continuum as feature_continuum,
    feature_operator as feature_operator,
    from_features as from_features,
    gaussian_closure as gaussian_closure,
    quadrature as quadrature,
    to_features as to_features,
    token_continuum as token_continuum,
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
from ._fit import (
    EndpointLoss as EndpointLoss,
    ShootingLoss as ShootingLoss,
    TrackingLoss as TrackingLoss,
    fit as fit,
    riemannian as riemannian,
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
from ._real import (
    LowRankLayerFlow as LowRankLayerFlow,
    MiniLMData as MiniLMData,
    constant_velocity_baseline as constant_velocity_baseline,
    interval_actions as interval_actions,
    minilm_dataset as minilm_dataset,
    minilm_trajectories as minilm_trajectories,
    tracking_ratio as tracking_ratio,
)
from ._sharding import (
    TokenSharded as TokenSharded,
    make_mesh as make_mesh,
    shard_ensemble as shard_ensemble,
    shard_tokens as shard_tokens,
    sharded_solve as sharded_solve,
)
from ._solver import (
    RK4 as RK4,
    AbstractManifoldSolver as AbstractManifoldSolver,
    ProjectedInterpolation as ProjectedInterpolation,
    Retract as Retract,
)
from ._solver.crouch_grossman import (
    CG2 as CG2,
    CG2_3 as CG2_3,
    CG3 as CG3,
    CG4a as CG4a,
)
from ._solver.lie_euler import LieEuler as LieEuler
from ._solver.rattle import (
    Rattle as Rattle,
    TangentBundleInterpolation as TangentBundleInterpolation,
)
from ._solver.rkmk import RKMK4 as RKMK4
from ._solver.splitting import LieTrotter as LieTrotter, Strang as Strang
from ._tai import (
    MovingLayerNorm as MovingLayerNorm,
    TaiFlow as TaiFlow,
    TaiTransformer as TaiTransformer,
    relu_projection as relu_projection,
    tai_transformer as tai_transformer,
)
from ._transformer import (
    PreLNFlow as PreLNFlow,
    RadiusSphere as RadiusSphere,
    from_polar as from_polar,
    to_polar as to_polar,
    transformer as transformer,
    unprojected as unprojected,
)


try:
    __version__ = importlib.metadata.version("spherejax")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0"
