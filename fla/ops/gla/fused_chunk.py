"""The peer library's import path of `fused_chunk_gla` (`from fla.ops.gla.fused_chunk import ...`): the same
function as `fla.ops.gla.fused_chunk_gla`, defined in `chunk.py`."""
from fla.ops.gla.chunk import fused_chunk_gla

__all__ = ["fused_chunk_gla"]
