from fla.models.modeling_base import register
from fla.models.gla.configuration_gla import GLAConfig
from fla.models.gla.modeling_gla import GLAForCausalLM, GLAModel

register(GLAConfig, GLAModel, GLAForCausalLM)

__all__ = ["GLAConfig", "GLAForCausalLM", "GLAModel"]
