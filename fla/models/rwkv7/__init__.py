from fla.models.modeling_base import register
from fla.models.rwkv7.configuration_rwkv7 import RWKV7Config
from fla.models.rwkv7.modeling_rwkv7 import RWKV7Block, RWKV7FeedForward, RWKV7ForCausalLM, RWKV7Model

register(RWKV7Config, RWKV7Model, RWKV7ForCausalLM)

__all__ = ["RWKV7Block", "RWKV7Config", "RWKV7FeedForward", "RWKV7ForCausalLM", "RWKV7Model"]
