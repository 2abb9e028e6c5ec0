from fla.models.modeling_base import register
from fla.models.hgrn.configuration_hgrn import HGRNConfig
from fla.models.hgrn.modeling_hgrn import HGRNForCausalLM, HGRNModel

register(HGRNConfig, HGRNModel, HGRNForCausalLM)

__all__ = ["HGRNConfig", "HGRNForCausalLM", "HGRNModel"]
