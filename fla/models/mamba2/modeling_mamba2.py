"""Mamba-2: the shared backbone with blocks of RMSNorm + Mamba2 mixer (no MLP, as in the original).

Module names follow the backbone's contract with the trainer (`model.layers[i].attn_norm`, `.attn`,
`model.norm`); the peer library names the same tensors `backbone.layers.{i}.norm`, `.mixer`, `backbone.norm_f`,
and `PEER_KEY_RENAMES` maps one onto the other when a checkpoint is loaded or saved.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from fla.layers import Mamba2
from fla.models.cache import FLACache
from fla.models.mamba2.configuration_mamba2 import Mamba2Config
from fla.models.modeling_base import FLAForCausalLM, FLAModel
from fla.modules import RMSNorm

# The peer's checkpoint keys -> ours, for transformers' key renaming at load (and back at save, so our checkpoints
# load in the peer). Each rule matches keys no other rule matches. The order matters for the way back: transformers
# un-escapes the dots of the reversed patterns, so `layers.N.attn.` would also catch `layers.N.attn_norm.` if the
# mixer rule were not listed before the norm rule (tests/models/test_mamba2_checkpoints.py pins both directions).
PEER_KEY_RENAMES = (
    (r"^backbone\.norm_f\.", "model.norm."),
    (r"^backbone\.layers\.(\d+)\.mixer\.", r"model.layers.\1.attn."),
    (r"^backbone\.layers\.(\d+)\.norm\.", r"model.layers.\1.attn_norm."),
    (r"^backbone\.embeddings\.", "model.embeddings."),
)


def register_peer_key_renames() -> bool:
    """Register PEER_KEY_RENAMES for model_type "mamba2" (transformers >= 5); False where transformers has no
    checkpoint conversion mapping (a peer checkpoint then loads only after renaming its keys by hand)."""
    try:
        from transformers.conversion_mapping import register_checkpoint_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:
        return False
    register_checkpoint_conversion_mapping(
        Mamba2Config.model_type, [WeightRenaming(src, dst) for src, dst in PEER_KEY_RENAMES], overwrite=True)
    return True


class Mamba2Block(nn.Module):
    """x + mixer(RMSNorm(x)); with residual_in_fp32 the add is done in float32. Same forward signature as
    FLABlock."""

    passes_cp_context = True  # its forward hands cp_context (in **kwargs) to the mixer, as FLABlock does

    def __init__(self, config: Mamba2Config, mixer: nn.Module):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.attn_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = mixer

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: FLACache | None = None,
        use_cache: bool = False,
        cu_seqlens: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        out, _, _ = self.attn(
            self.attn_norm(hidden_states), attention_mask=attention_mask, past_key_values=past_key_values,
            use_cache=use_cache, cu_seqlens=cu_seqlens, **kwargs,
        )
        if self.residual_in_fp32:
            return (hidden_states.float() + out.float()).to(hidden_states.dtype)
        return hidden_states + out


class Mamba2InitMixin:
    """The peer's init on top of the backbone's: with rescale_prenorm_residual, each mixer's out_proj is
    kaiming-uniform (a = sqrt(5)) / sqrt(num_hidden_layers)."""

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if getattr(module, "_is_residual_out", False) and self.config.rescale_prenorm_residual:
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            module.weight /= math.sqrt(self.config.num_hidden_layers)


class Mamba2Model(Mamba2InitMixin, FLAModel):
    config_class = Mamba2Config
    block_class = Mamba2Block
    _no_split_modules = ["Mamba2Block", "FLABlock"]

    @staticmethod
    def build_mixer(config: Mamba2Config, layer_idx: int) -> nn.Module:
        return Mamba2(
            num_heads=config.num_heads,
            head_dim=config.head_dim,
            hidden_size=config.hidden_size,
            state_size=config.state_size,
            expand=config.expand,
            n_groups=config.n_groups,
            conv_kernel=config.conv_kernel,
            conv_init=config.conv_init,
            use_conv_bias=config.use_conv_bias,
            hidden_act=config.hidden_act,
            A_init_range=config.A_init_range,
            D_has_hdim=config.D_has_hdim,
            rmsnorm=config.rmsnorm,
            norm_before_gate=config.norm_before_gate,
            dt_min=config.dt_min,
            dt_max=config.dt_max,
            dt_init_floor=config.dt_init_floor,
            dt_limit=config.dt_limit,
            use_bias=config.use_bias,
            norm_eps=config.norm_eps,
            chunk_size=config.chunk_size,
            layer_idx=layer_idx,
        )


class Mamba2ForCausalLM(Mamba2InitMixin, FLAForCausalLM):
    config_class = Mamba2Config
    base_model_class = Mamba2Model
    _no_split_modules = ["Mamba2Block", "FLABlock"]
