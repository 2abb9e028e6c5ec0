from fla.models.modeling_base import register
from fla.models.retnet.configuration_retnet import RetNetConfig
from fla.models.retnet.modeling_retnet import RetNetForCausalLM, RetNetModel

register(RetNetConfig, RetNetModel, RetNetForCausalLM)

__all__ = ["RetNetConfig", "RetNetForCausalLM", "RetNetModel"]
