"""RWKV-7: the shared backbone with RWKV's own block (LayerNorms, RWKV7Attention, the RWKV channel mix).

    block: h = pre_norm(x) (layer 0, norm_first);  h = h + attn(attn_norm(h), v_first);  h = h + ffn(ffn_norm(h))
The first layer's values (v_first) reach every later layer: `RWKV7Model.layer_inputs` hands each block the same
fresh holder per forward, the first RWKV layer fills it and the others read it (no change to the shared forward).
Parameter names are the peer's (`model.layers.N.{pre_norm,attn_norm,attn,ffn_norm,ffn}`, `ffn.{x_k,key,value}`,
LayerNorm `model.norm` with a bias), so its checkpoints load as they are. The channel mix keeps its token-shift state
in the cache as `ffn_state` (the peer's name), the time mix as `conv_state`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from fla.layers.rwkv7 import RWKV7Attention
from fla.layers.utils import current_token_mask, pad, unpad
from fla.models.cache import FLACache
from fla.models.modeling_base import FLAForCausalLM, FLAModel
from fla.modules.token_shift import token_shift
from fla.models.rwkv7.configuration_rwkv7 import RWKV7Config


class RWKV7FeedForward(nn.Module):
    """The RWKV channel mix: W_value relu(W_key (x + x' x_k))^2 with the token shift x' = x_{t-1} - x_t."""

    def __init__(self, hidden_size: int, hidden_ratio: int | None = None, intermediate_size: int | None = None,
                 hidden_act: str = "sqrelu", layer_idx: int | None = None, num_hidden_layers: int | None = None):
        super().__init__()
        if hidden_act != "sqrelu":
            raise ValueError(f"hidden_act must be 'sqrelu' for the RWKV channel mix (got {hidden_act!r})")
        if intermediate_size is None:
            intermediate_size = 32 * ((int(hidden_size * (hidden_ratio or 4)) + 31) // 32)
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.layer_idx, self.num_hidden_layers = layer_idx, num_hidden_layers
        self.x_k = nn.Parameter(torch.zeros(hidden_size))
        self.key = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.value = nn.Linear(intermediate_size, hidden_size, bias=False)
        for child in self.modules():
            child._rwkv_owned = child is not self  # the model's init leaves them to reset_parameters
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The peer's: x_k by channel and depth, orthogonal key, zero value."""
        idx, L = self.layer_idx or 0, self.num_hidden_layers
        ratio_1_to_almost0 = 1.0 - idx / L if L else 1.0
        ddd = torch.arange(self.hidden_size, dtype=torch.float32) / self.hidden_size
        self.x_k.copy_(1.0 - ddd ** (ratio_1_to_almost0 ** 4))
        weight = self.key.weight.float()
        nn.init.orthogonal_(weight)
        self.key.weight.copy_(weight)
        self.value.weight.zero_()

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, past_key_values=None,
                use_cache: bool = False, cu_seqlens: torch.Tensor | None = None, cp_context=None) -> torch.Tensor:
        """cp_context: this rank's piece of a sequence split across ranks (the block checked the rest): the token
        shift takes the previous rank's last token."""
        batch_size, seq_len = x.shape[:2]
        state = past_key_values.layer_state(self.layer_idx) if past_key_values is not None else None
        packed, cu, indices = unpad(x, current_token_mask(attention_mask, seq_len), cu_seqlens)
        delta, last = token_shift(packed, cu, state.ffn_state if state is not None else None, output_cache=True,
                                  cp_context=cp_context)
        if use_cache and past_key_values is not None:
            past_key_values.update(ffn_state=last, layer_idx=self.layer_idx, offset=0)  # the mixer counted them
        y = self.value(torch.relu(self.key(packed.addcmul(delta, self.x_k))).square())
        return pad(y, indices, batch_size, seq_len)


class RWKV7Block(nn.Module):
    """Same forward signature as FLABlock (plus the v_first holder from `RWKV7Model.layer_inputs`)."""

    passes_cp_context = True  # its forward hands cp_context to the mixer and to the channel mix's token shift

    def __init__(self, config: RWKV7Config, mixer: nn.Module):
        super().__init__()
        self.layer_idx = mixer.layer_idx
        norm = lambda: nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)  # noqa: E731
        if config.norm_first and self.layer_idx == 0:
            self.pre_norm = norm()
        self.attn_norm = norm()
        self.attn = mixer
        self.ffn_norm = norm()
        self.ffn = RWKV7FeedForward(config.hidden_size, config.hidden_ratio, config.intermediate_size,
                                    config.hidden_act, self.layer_idx, config.num_hidden_layers)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: FLACache | None = None,
        use_cache: bool = False,
        cu_seqlens: torch.Tensor | None = None,
        v_first: dict | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = self.pre_norm(hidden_states) if hasattr(self, "pre_norm") else hidden_states
        cp = {} if kwargs.get("cp_context") is None else {"cp_context": kwargs["cp_context"]}
        common = dict(attention_mask=attention_mask, past_key_values=past_key_values, use_cache=use_cache,
                      cu_seqlens=cu_seqlens, **cp)
        if isinstance(self.attn, RWKV7Attention):
            holder = v_first if v_first is not None else {}
            out, _, _, holder["v"] = self.attn(self.attn_norm(residual), v_first=holder.get("v"), **common)
        else:  # a softmax-attention layer of a hybrid
            out, _, _ = self.attn(self.attn_norm(residual), **common)
        hidden_states = residual + out
        return hidden_states + self.ffn(self.ffn_norm(hidden_states), **common)


class RWKV7PreTrainedMixin:
    """The peer's init on top of the backbone's: RWKV modules initialize themselves (and their children), the
    embeddings are uniform in +-1e-4, the head orthogonal with gain 0.5 * sqrt(vocab / hidden) (0.5 when the vocab
    is smaller), and each time mix's o_proj kaiming-uniform / sqrt(2 * num_hidden_layers)."""

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (RWKV7Attention, RWKV7FeedForward)):
            module.reset_parameters()
            if isinstance(module, RWKV7Attention):
                nn.init.kaiming_uniform_(module.o_proj.weight, a=math.sqrt(5))
                module.o_proj.weight /= math.sqrt(2 * self.config.num_hidden_layers)
            return
        if getattr(module, "_rwkv_owned", False):
            return  # a child of a time or channel mix: its owner initializes it
        if isinstance(module, nn.Embedding):
            nn.init.uniform_(module.weight, -1e-4, 1e-4)
            return
        if isinstance(module, nn.Linear) and module is getattr(self, "lm_head", None):
            cfg = self.config
            gain = 0.5 * math.sqrt(cfg.vocab_size / cfg.hidden_size) if cfg.vocab_size > cfg.hidden_size else 0.5
            weight = module.weight.float()
            nn.init.orthogonal_(weight, gain=gain)
            module.weight.copy_(weight)
            return
        super()._init_weights(module)


class RWKV7Model(RWKV7PreTrainedMixin, FLAModel):
    config_class = RWKV7Config
    block_class = RWKV7Block
    _no_split_modules = ["RWKV7Block"]

    def __init__(self, config: RWKV7Config):
        super().__init__(config)
        # the peer's final norm is a LayerNorm with a bias (the backbone's is an RMSNorm)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)

    @staticmethod
    def build_mixer(config: RWKV7Config, layer_idx: int) -> nn.Module:
        return RWKV7Attention(
            mode=config.attn_mode,
            hidden_size=config.hidden_size,
            head_dim=config.head_dim,
            num_heads=config.num_heads,
            decay_low_rank_dim=config.decay_low_rank_dim,
            gate_low_rank_dim=config.gate_low_rank_dim,
            a_low_rank_dim=config.a_low_rank_dim,
            v_low_rank_dim=config.v_low_rank_dim,
            norm_eps=config.norm_eps,
            fuse_norm=config.fuse_norm,
            layer_idx=layer_idx,
            value_dim=config.value_dim[layer_idx],
            num_hidden_layers=config.num_hidden_layers,
        )

    def layer_inputs(self) -> list[dict]:
        holder: dict = {}  # one per forward: the first RWKV layer's values, read by the later ones
        return [{"v_first": holder} for _ in self.layers]


class RWKV7ForCausalLM(RWKV7PreTrainedMixin, FLAForCausalLM):
    config_class = RWKV7Config
    base_model_class = RWKV7Model
    _no_split_modules = ["RWKV7Block"]
