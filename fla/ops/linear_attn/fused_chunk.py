"""The peer library's import path of `fused_chunk_linear_attn` (`from fla.ops.linear_attn.fused_chunk import ...`): the same
function as `fla.ops.linear_attn.fused_chunk_linear_attn`, defined in `chunk.py`."""
from fla.ops.linear_attn.chunk import fused_chunk_linear_attn

__all__ = ["fused_chunk_linear_attn"]
