"""The variational side of attention flows: Lagrangians, the action functional, the
constrained Euler–Lagrange residual, geodesics and minimum-action paths, the
second-order (tangent-bundle) dynamics and its `Rattle` solver, and fitting with
Optax (`fit`, `riemannian`, trajectory losses)."""

from .._action import (
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
from .._fit import (
    AbstractLoss as AbstractLoss,
    EndpointLoss as EndpointLoss,
    ShootingLoss as ShootingLoss,
    TrackingLoss as TrackingLoss,
    fit as fit,
    riemannian as riemannian,
)
from .._solver import Rattle as Rattle
