from fla.models.modeling_base import register
from fla.models.linear_attn.configuration_linear_attn import LinearAttentionConfig
from fla.models.linear_attn.modeling_linear_attn import LinearAttentionForCausalLM, LinearAttentionModel

register(LinearAttentionConfig, LinearAttentionModel, LinearAttentionForCausalLM)

__all__ = ["LinearAttentionConfig", "LinearAttentionForCausalLM", "LinearAttentionModel"]
