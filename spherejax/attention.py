"""The abstract bases of the attention parts (for writing your own; see the
extending page of the docs) and helpers. The concrete parts are at the top level:
`sj.Softmax()`, `sj.Unnormalized()`, `sj.Sinkhorn(iterations)`, `sj.Hardmax()`,
`sj.Causal()`, `sj.SlidingWindow(size)`, `sj.KeyMask(mask)`, `sj.RoPE(...)`,
`sj.Dense()`, `sj.Chunked(size)`, with `sj.AbstractNormalization`."""

from ._attention import (
    NORMALIZATIONS as NORMALIZATIONS,
    AbstractElementwiseNormalization as AbstractElementwiseNormalization,
    AbstractEvaluation as AbstractEvaluation,
    AbstractMask as AbstractMask,
    AbstractPosition as AbstractPosition,
    normalization_from_name as normalization_from_name,
    normalization_name as normalization_name,
    uses_dot_product_attention as uses_dot_product_attention,
)
from ._field import AbstractAttention as AbstractAttention
