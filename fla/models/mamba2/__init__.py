from fla.models.modeling_base import register
from fla.models.mamba2.configuration_mamba2 import Mamba2Config
from fla.models.mamba2.modeling_mamba2 import Mamba2ForCausalLM, Mamba2Model, register_peer_key_renames

register(Mamba2Config, Mamba2Model, Mamba2ForCausalLM)
register_peer_key_renames()

__all__ = ["Mamba2Config", "Mamba2ForCausalLM", "Mamba2Model"]
