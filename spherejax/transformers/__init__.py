"""Discrete Transformers as time discretisations of attention flows: residual stacks
(`transformer`), the layer update rules as fixed-step solvers (`PostNorm`,
`PreNorm`, `PeriNorm`, `NGPT`, `Residual`, `ProjectedMidpoint`, built by
`layer_solver`), `LayerNorm`, `RMSNorm` and `ManifoldNorm`, the pre-LN flow on
`RadiusSphere` with its polar coordinates, and the operator splitting of Tai, Liu,
Li and Chan."""

from .._solver.layer_update import (
    NGPT as NGPT,
    AbstractLayerUpdate as AbstractLayerUpdate,
    ManifoldNorm as ManifoldNorm,
    PeriNorm as PeriNorm,
    PostNorm as PostNorm,
    PreNorm as PreNorm,
    ProjectedMidpoint as ProjectedMidpoint,
    Residual as Residual,
)
from .._tai import (
    MovingLayerNorm as MovingLayerNorm,
    TaiFlow as TaiFlow,
    TaiTransformer as TaiTransformer,
    relu_projection as relu_projection,
    tai_transformer as tai_transformer,
)
from .._transformer import (
    LayerNorm as LayerNorm,
    PreLNFlow as PreLNFlow,
    RadiusSphere as RadiusSphere,
    from_polar as from_polar,
    layer_solver as layer_solver,
    to_polar as to_polar,
    transformer as transformer,
    unprojected as unprojected,
)
from ..models._norms import RMSNorm as RMSNorm
