"""The peer library's import path of `fused_chunk_retention` (`from fla.ops.retention.fused_chunk import ...`): the same
function as `fla.ops.retention.fused_chunk_retention`, defined in `chunk.py`."""
from fla.ops.retention.chunk import fused_chunk_retention

__all__ = ["fused_chunk_retention"]
