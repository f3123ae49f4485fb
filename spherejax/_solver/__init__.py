from .base import (
    AbstractManifoldSolver as AbstractManifoldSolver,
    ProjectedInterpolation as ProjectedInterpolation,
)
from .retract import Retract as Retract
from .rk4 import RK4 as RK4
from .crouch_grossman import CG2 as CG2
from .crouch_grossman import CG2_3 as CG2_3
from .crouch_grossman import CG3 as CG3
from .crouch_grossman import CG4a as CG4a
from .lie_euler import LieEuler as LieEuler
from .rkmk import RKMK4 as RKMK4
from .splitting import LieTrotter as LieTrotter
from .splitting import Strang as Strang
from .rattle import (
    Rattle as Rattle,
    TangentBundleInterpolation as TangentBundleInterpolation,
)
