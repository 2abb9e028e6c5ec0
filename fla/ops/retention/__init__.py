from fla.ops.retention.chunk import chunk_retention
from fla.ops.retention.fused_recurrent import fused_recurrent_retention
from fla.ops.retention.naive import naive_recurrent_retention, retention_log_decays

__all__ = ["chunk_retention", "fused_recurrent_retention", "naive_recurrent_retention", "retention_log_decays"]
