"""spherejax: attention flows on spheres, in JAX."""

import importlib.metadata

from ._attention import attention_matrix as attention_matrix
from ._diagnostics import (
    cluster_count as cluster_count,
    clusters as clusters,
    equiangular as equiangular,
    pairwise_cosines as pairwise_cosines,
)
from ._energy import interaction_energy as interaction_energy
from ._field import (
    AbstractField as AbstractField,
    FeedForward as FeedForward,
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
    AbstractManifoldSolver as AbstractManifoldSolver,
    ProjectedInterpolation as ProjectedInterpolation,
    Retract as Retract,
    RK4 as RK4,
)


try:
    __version__ = importlib.metadata.version("spherejax")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0"

from ._io import (
    field_from_hyperparams as field_from_hyperparams,
    field_hyperparams as field_hyperparams,
    load as load,
    load_header as load_header,
    save as save,
)
