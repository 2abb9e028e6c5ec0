from fla.models.modeling_base import register
from fla.models.delta_net.configuration_delta_net import DeltaNetConfig
from fla.models.delta_net.modeling_delta_net import DeltaNetForCausalLM, DeltaNetModel

register(DeltaNetConfig, DeltaNetModel, DeltaNetForCausalLM)

__all__ = ["DeltaNetConfig", "DeltaNetForCausalLM", "DeltaNetModel"]
