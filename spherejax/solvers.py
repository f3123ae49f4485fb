"""Building blocks for new solvers and manifolds: the abstract manifold solver, the
dense-output interpolations, and the Lie algebras of the group actions that the
Lie-group solvers step with. The built-in solvers themselves (`Retract`, `RK4`,
`LieEuler`, ...) are at the top, `spherejax.RK4`."""

from ._group import (
    AbstractLieAlgebra as AbstractLieAlgebra,
    GramAlgebra as GramAlgebra,
    ProductAlgebra as ProductAlgebra,
    TranslationAlgebra as TranslationAlgebra,
)
from ._solver import (
    AbstractManifoldSolver as AbstractManifoldSolver,
    ProjectedInterpolation as ProjectedInterpolation,
    TangentBundleInterpolation as TangentBundleInterpolation,
)
from ._solver.splitting import field_parts as field_parts
