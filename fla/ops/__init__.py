"""The ops: one folder per family, each with chunk (training), fused_recurrent (inference) and naive (reference)."""
from fla.ops.attn import parallel_attn
from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule
from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from fla.ops.generalized_delta_rule import chunk_dplr_delta_rule, fused_recurrent_dplr_delta_rule
from fla.ops.gla import chunk_gla, fused_recurrent_gla
from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn
from fla.ops.kda import chunk_kda, fused_recurrent_kda
from fla.ops.linear_attn import chunk_linear_attn, fused_recurrent_linear_attn
from fla.ops.retention import chunk_retention, fused_recurrent_retention
from fla.ops.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7
from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

__all__ = [
    "chunk_delta_rule", "chunk_gated_delta_rule", "chunk_gla", "chunk_linear_attn", "chunk_retention",
    "chunk_simple_gla", "fused_recurrent_delta_rule", "fused_recurrent_gated_delta_rule", "fused_recurrent_gla",
    "fused_recurrent_linear_attn", "fused_recurrent_retention", "fused_recurrent_simple_gla", "parallel_attn",
    "chunk_kda", "fused_recurrent_kda",
    "chunk_hgrn", "fused_recurrent_hgrn",
    "chunk_dplr_delta_rule", "fused_recurrent_dplr_delta_rule", "chunk_rwkv7", "fused_recurrent_rwkv7",
]
