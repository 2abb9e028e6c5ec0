"""fla: Triton kernels for linear attention and softmax flash attention, with PyTorch fallbacks.

`import fla` needs only torch, triton and einops. When transformers is installed (the `train` extra) it also imports
`fla.models`, which registers every model family with AutoConfig / AutoModel / AutoModelForCausalLM.
"""
import importlib.util

from fla.layers import (Attention, DeltaNet, GatedDeltaNet, GatedLinearAttention, LinearAttention,
                        MultiScaleRetention)
from fla.ops import (chunk_delta_rule, chunk_gated_delta_rule, chunk_gla, chunk_linear_attn, chunk_retention,
                     chunk_simple_gla, fused_recurrent_delta_rule, fused_recurrent_gated_delta_rule,
                     fused_recurrent_gla, fused_recurrent_linear_attn, fused_recurrent_retention,
                     fused_recurrent_simple_gla, parallel_attn)

if importlib.util.find_spec("transformers") is not None:
    from fla import models  # noqa: F401  (registers the Auto classes)

__version__ = "0.1.0"

__all__ = [
    "Attention", "DeltaNet", "GatedDeltaNet", "GatedLinearAttention", "LinearAttention", "MultiScaleRetention",
    "chunk_delta_rule", "chunk_gated_delta_rule", "chunk_gla", "chunk_linear_attn", "chunk_retention",
    "chunk_simple_gla", "fused_recurrent_delta_rule", "fused_recurrent_gated_delta_rule", "fused_recurrent_gla",
    "fused_recurrent_linear_attn", "fused_recurrent_retention", "fused_recurrent_simple_gla", "parallel_attn",
]
