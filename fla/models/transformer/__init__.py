from fla.models.modeling_base import register
from fla.models.transformer.configuration_transformer import TransformerConfig
from fla.models.transformer.modeling_transformer import TransformerForCausalLM, TransformerModel

register(TransformerConfig, TransformerModel, TransformerForCausalLM)

__all__ = ["TransformerConfig", "TransformerForCausalLM", "TransformerModel"]
