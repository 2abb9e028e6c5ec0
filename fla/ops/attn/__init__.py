from fla.ops.attn.naive import naive_attn, naive_attn_decoding, naive_parallel_attn
from fla.ops.attn.parallel import parallel_attn, parallel_attn_q_offset

__all__ = ["naive_attn", "naive_attn_decoding", "naive_parallel_attn", "parallel_attn", "parallel_attn_q_offset"]
