from fla.models.modeling_base import register
from fla.models.kda.configuration_kda import KDAConfig
from fla.models.kda.modeling_kda import KDAForCausalLM, KDAModel

register(KDAConfig, KDAModel, KDAForCausalLM)

__all__ = ["KDAConfig", "KDAForCausalLM", "KDAModel"]
