"""jaxtyping aliases used across spherejax."""

from jaxtyping import Array, ArrayLike, Float


Tokens = Float[Array, "n d"]
"""Token configuration: `n` points of `R^d`, one per row."""

Path = Float[Array, "t n d"]
"""A discretised path of token configurations."""

Scalar = Float[Array, ""]
ScalarLike = float | Float[ArrayLike, ""]
