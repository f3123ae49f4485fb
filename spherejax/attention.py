"""The parts attention is composed of, with their abstract bases (for writing your
own; see the extending page of the docs). The concrete parts are also at the top
level (`sj.Softmax()`, `sj.Causal()`, ...)."""

from ._attention import (
    NORMALIZATIONS as NORMALIZATIONS,
    AbstractElementwiseNormalization as AbstractElementwiseNormalization,
    AbstractEvaluation as AbstractEvaluation,
    AbstractMask as AbstractMask,
    AbstractNormalization as AbstractNormalization,
    AbstractPosition as AbstractPosition,
    Causal as Causal,
    Chunked as Chunked,
    Dense as Dense,
    Hardmax as Hardmax,
    KeyMask as KeyMask,
    RoPE as RoPE,
    Sinkhorn as Sinkhorn,
    SlidingWindow as SlidingWindow,
    Softmax as Softmax,
    Unnormalized as Unnormalized,
    attention_matrix as attention_matrix,
    normalization_from_name as normalization_from_name,
    normalization_name as normalization_name,
    uses_dot_product_attention as uses_dot_product_attention,
)
from ._field import AbstractAttention as AbstractAttention
