"""Gated linear attention: a log forget gate per key channel (and optionally per value channel, recurrent form)."""
from fla.ops.gla.chunk import chunk_gla, fused_chunk_gla
from fla.ops.gla.fused_recurrent import fused_recurrent_gla
from fla.ops.gla.naive import naive_recurrent_gla

__all__ = ["chunk_gla", "fused_chunk_gla", "fused_recurrent_gla", "naive_recurrent_gla"]
