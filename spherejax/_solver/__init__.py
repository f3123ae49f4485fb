from .base import (
    AbstractManifoldSolver as AbstractManifoldSolver,
    ProjectedInterpolation as ProjectedInterpolation,
)
from .crouch_grossman import CG2 as CG2, CG2_3 as CG2_3, CG3 as CG3, CG4a as CG4a
from .lie_euler import LieEuler as LieEuler
from .rattle import (
    Rattle as Rattle,
    TangentBundleInterpolation as TangentBundleInterpolation,
)
from .retract import Retract as Retract
from .rk4 import RK4 as RK4
from .rkmk import RKMK4 as RKMK4
from .splitting import LieTrotter as LieTrotter, Strang as Strang
