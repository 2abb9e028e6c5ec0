"""The peer library's import path of `fused_chunk_delta_rule` (`from fla.ops.delta_rule.fused_chunk import ...`): the same
function as `fla.ops.delta_rule.fused_chunk_delta_rule`, defined in `chunk.py`."""
from fla.ops.delta_rule.chunk import fused_chunk_delta_rule

__all__ = ["fused_chunk_delta_rule"]
