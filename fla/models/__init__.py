"""Hugging Face models, one family per mixer on one shared backbone. Importing this registers every family with
transformers' AutoConfig / AutoModel / AutoModelForCausalLM by its model_type."""
from fla.models.cache import FLACache
from fla.models.configuration_base import FLAConfig
from fla.models.transformer import TransformerConfig, TransformerForCausalLM, TransformerModel
from fla.models.gla import GLAConfig, GLAForCausalLM, GLAModel
from fla.models.retnet import RetNetConfig, RetNetForCausalLM, RetNetModel
from fla.models.linear_attn import LinearAttentionConfig, LinearAttentionForCausalLM, LinearAttentionModel
from fla.models.delta_net import DeltaNetConfig, DeltaNetForCausalLM, DeltaNetModel
from fla.models.gated_deltanet import GatedDeltaNetConfig, GatedDeltaNetForCausalLM, GatedDeltaNetModel
from fla.models.modeling_base import FLAForCausalLM, FLAModel

__all__ = [
    "FLACache",
    "FLAConfig",
    "FLAForCausalLM",
    "FLAModel",
    "TransformerConfig",
    "TransformerForCausalLM",
    "TransformerModel",
    "GLAConfig",
    "GLAForCausalLM",
    "GLAModel",
    "RetNetConfig",
    "RetNetForCausalLM",
    "RetNetModel",
    "LinearAttentionConfig",
    "LinearAttentionForCausalLM",
    "LinearAttentionModel",
    "DeltaNetConfig",
    "DeltaNetForCausalLM",
    "DeltaNetModel",
    "GatedDeltaNetConfig",
    "GatedDeltaNetForCausalLM",
    "GatedDeltaNetModel",
]

from fla.models.mamba2 import Mamba2Config, Mamba2ForCausalLM, Mamba2Model  # noqa: E402
from fla.models.forgetting_transformer import (  # noqa: E402
    ForgettingTransformerConfig,
    ForgettingTransformerForCausalLM,
    ForgettingTransformerModel,
)

__all__ += [
    "Mamba2Config", "Mamba2ForCausalLM", "Mamba2Model",
    "ForgettingTransformerConfig", "ForgettingTransformerForCausalLM", "ForgettingTransformerModel",
]

from fla.models.gated_deltaproduct import (  # noqa: E402
    GatedDeltaProductConfig,
    GatedDeltaProductForCausalLM,
    GatedDeltaProductModel,
)
from fla.models.hgrn import HGRNConfig, HGRNForCausalLM, HGRNModel  # noqa: E402
from fla.models.hgrn2 import HGRN2Config, HGRN2ForCausalLM, HGRN2Model  # noqa: E402

__all__ += [
    "GatedDeltaProductConfig", "GatedDeltaProductForCausalLM", "GatedDeltaProductModel",
    "HGRNConfig", "HGRNForCausalLM", "HGRNModel", "HGRN2Config", "HGRN2ForCausalLM", "HGRN2Model",
]

from fla.models.kda import KDAConfig, KDAForCausalLM, KDAModel  # noqa: E402

__all__ += ["KDAConfig", "KDAForCausalLM", "KDAModel"]

from fla.models.rwkv7 import RWKV7Config, RWKV7ForCausalLM, RWKV7Model  # noqa: E402

__all__ += ["RWKV7Config", "RWKV7ForCausalLM", "RWKV7Model"]
