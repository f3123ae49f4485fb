"""jaxtyping aliases used across spherejax."""

from jaxtyping import ArrayLike, Real


RealScalarLike = Real[ArrayLike, ""]
"""A real scalar: a Python or NumPy number or a 0-d array (possibly traced), as
the times `t0`, `t1` and the step `dt0` of a solve."""
