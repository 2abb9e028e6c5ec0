from fla.ops.kda.chunk import chunk_kda
from fla.ops.kda.fused_recurrent import fused_recurrent_kda
from fla.ops.kda.gate import naive_kda_gate
from fla.ops.kda.naive import naive_chunk_kda, naive_recurrent_kda

__all__ = ["chunk_kda", "fused_recurrent_kda", "naive_chunk_kda", "naive_kda_gate", "naive_recurrent_kda"]
