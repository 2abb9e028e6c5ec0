from fla.models.modeling_base import register
from fla.models.gated_deltanet.configuration_gated_deltanet import GatedDeltaNetConfig
from fla.models.gated_deltanet.modeling_gated_deltanet import GatedDeltaNetForCausalLM, GatedDeltaNetModel

register(GatedDeltaNetConfig, GatedDeltaNetModel, GatedDeltaNetForCausalLM)

__all__ = ["GatedDeltaNetConfig", "GatedDeltaNetForCausalLM", "GatedDeltaNetModel"]
