from fla.ops.hgrn.chunk import chunk_hgrn
from fla.ops.hgrn.fused_recurrent import fused_recurrent_hgrn
from fla.ops.hgrn.naive import naive_chunk_hgrn, naive_recurrent_hgrn

__all__ = ["chunk_hgrn", "fused_recurrent_hgrn", "naive_chunk_hgrn", "naive_recurrent_hgrn"]
