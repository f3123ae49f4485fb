"""Real Transformers as attention flows: importers for Hugging Face BERT-family
encoders and GPT-2 decoders and for `torch.nn.TransformerEncoder`, the
`TransformerFlow` they return, and the MiniLM trajectories used for fitting."""

from ._flow import ResidualFlow as ResidualFlow, TransformerFlow as TransformerFlow
from ._hf import from_huggingface as from_huggingface, tokenize as tokenize
from ._minilm import (
    MINILM as MINILM,
    MINILM_CACHE as MINILM_CACHE,
    LowRankLayerFlow as LowRankLayerFlow,
    MiniLMData as MiniLMData,
    constant_velocity_baseline as constant_velocity_baseline,
    interval_actions as interval_actions,
    minilm_dataset as minilm_dataset,
    minilm_path as minilm_path,
    minilm_trajectories as minilm_trajectories,
    tracking_ratio as tracking_ratio,
)
from ._torch import from_torch_encoder as from_torch_encoder
