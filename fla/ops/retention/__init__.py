from fla.ops.retention.chunk import chunk_retention, fused_chunk_retention
from fla.ops.retention.fused_recurrent import fused_recurrent_retention
from fla.ops.retention.naive import naive_recurrent_retention, retention_log_decays
from fla.ops.retention.parallel import parallel_retention

__all__ = ["chunk_retention", "fused_chunk_retention", "fused_recurrent_retention", "naive_recurrent_retention",
           "parallel_retention", "retention_log_decays"]
