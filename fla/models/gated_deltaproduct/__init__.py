from fla.models.modeling_base import register
from fla.models.gated_deltaproduct.configuration_gated_deltaproduct import GatedDeltaProductConfig
from fla.models.gated_deltaproduct.modeling_gated_deltaproduct import (GatedDeltaProductForCausalLM,
                                                                       GatedDeltaProductModel)

register(GatedDeltaProductConfig, GatedDeltaProductModel, GatedDeltaProductForCausalLM)

__all__ = ["GatedDeltaProductConfig", "GatedDeltaProductForCausalLM", "GatedDeltaProductModel"]
