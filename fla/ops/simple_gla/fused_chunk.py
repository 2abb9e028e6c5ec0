"""The peer library's import path of `fused_chunk_simple_gla` (`from fla.ops.simple_gla.fused_chunk import ...`): the same
function as `fla.ops.simple_gla.fused_chunk_simple_gla`, defined in `chunk.py`."""
from fla.ops.simple_gla.chunk import fused_chunk_simple_gla

__all__ = ["fused_chunk_simple_gla"]
