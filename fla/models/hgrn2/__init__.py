from fla.models.modeling_base import register
from fla.models.hgrn2.configuration_hgrn2 import HGRN2Config
from fla.models.hgrn2.modeling_hgrn2 import HGRN2ForCausalLM, HGRN2Model

register(HGRN2Config, HGRN2Model, HGRN2ForCausalLM)

__all__ = ["HGRN2Config", "HGRN2ForCausalLM", "HGRN2Model"]
