"""Real Transformers as attention flows: importers for Hugging Face BERT-family
encoders, GPT-2 and the Llama-era decoders (Llama, Mistral, Qwen 2/3, Gemma 1/2,
GPT-NeoX, OLMo 2, Phi-3) and for `torch.nn.TransformerEncoder`, the
`TransformerFlow` and `DecoderFlow` they return, measures of their dynamics, and
the MiniLM trajectories used for fitting."""

from ._decoder import (
    DecoderField as DecoderField,
    DecoderFlow as DecoderFlow,
    DecoderLayer as DecoderLayer,
)
from ._dynamics import (
    continuum_distance as continuum_distance,
    cosine_histograms as cosine_histograms,
    effective_time as effective_time,
    effective_times as effective_times,
    first_token_attention as first_token_attention,
    first_token_cosines as first_token_cosines,
)
from ._flow import ResidualFlow as ResidualFlow, TransformerFlow as TransformerFlow
from ._hf import from_huggingface as from_huggingface, tokenize as tokenize
from ._hf_decoders import DECODERS as DECODERS
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
