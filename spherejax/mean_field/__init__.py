"""Mean-field limits: densities on the circle and on S^2 under the continuity
equation, their Fourier and harmonic tools, continuum limits in the token and
feature variables, and losses between empirical measures."""

from .._continuum import (
    feature_continuum as feature_continuum,
    feature_operator as feature_operator,
    from_features as from_features,
    gaussian_closure as gaussian_closure,
    quadrature as quadrature,
    to_features as to_features,
    token_continuum as token_continuum,
)
from .._density import (
    AbstractDensity as AbstractDensity,
    CircleDensity as CircleDensity,
    SphereDensity as SphereDensity,
    circle_growth_rates as circle_growth_rates,
    empirical_fourier as empirical_fourier,
    fourier_distance as fourier_distance,
    solve_density as solve_density,
    sphere_harmonics as sphere_harmonics,
    sphere_quadrature as sphere_quadrature,
)
from .._measure import (
    MeasureLoss as MeasureLoss,
    mmd2 as mmd2,
    sinkhorn_divergence as sinkhorn_divergence,
)
