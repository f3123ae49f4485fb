from .base import (
    AbstractManifoldSolver as AbstractManifoldSolver,
    ProjectedInterpolation as ProjectedInterpolation,
)
from .retract import Retract as Retract
from .rk4 import RK4 as RK4
from .rattle import (
    Rattle as Rattle,
    TangentBundleInterpolation as TangentBundleInterpolation,
)
