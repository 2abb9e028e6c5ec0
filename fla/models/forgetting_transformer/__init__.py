from fla.models.modeling_base import register
from fla.models.forgetting_transformer.configuration_forgetting_transformer import ForgettingTransformerConfig
from fla.models.forgetting_transformer.modeling_forgetting_transformer import (
    ForgettingTransformerForCausalLM,
    ForgettingTransformerModel,
)

register(ForgettingTransformerConfig, ForgettingTransformerModel, ForgettingTransformerForCausalLM)

__all__ = ["ForgettingTransformerConfig", "ForgettingTransformerForCausalLM", "ForgettingTransformerModel"]
