"""Configuration of the RWKV-7 family (model_type "rwkv7")."""
from __future__ import annotations

from fla.models.configuration_base import FLAConfig, check_choice


class RWKV7Config(FLAConfig):
    """The peer's fields, names and defaults (its defaults for the shared fields too: norm_eps 1e-5, use_l2warp True).
    An RWKV-7 block is LayerNorm + RWKV7Attention and LayerNorm + the RWKV channel mix (token shift, then
    W_value sqrelu(W_key x)), with one more LayerNorm before the first block (norm_first).

    Args:
        attn_mode: the peer's kernel choice ("chunk", "fused_recurrent"): checked (kernels are picked per call)
        head_dim / num_heads: one sets the other (hidden_size = head_dim * num_heads)
        decay_low_rank_dim, gate_low_rank_dim, a_low_rank_dim, v_low_rank_dim: the LoRA widths
        hidden_ratio / intermediate_size: channel-mix width (default hidden_ratio * hidden_size rounded up to 32)
        hidden_act: the channel mix's activation ("sqrelu": relu(x)^2)
        norm_first: the extra LayerNorm on the embeddings (layer 0's pre_norm)
        norm_bias: LayerNorms with a bias
        value_dim: value width per layer (an int for all, a list of one per layer, default hidden_size)
    """

    model_type = "rwkv7"
    attn_modes = ("chunk", "fused_recurrent")
    peer_ignored = {"fuse_swiglu": True}  # the channel mix is no SwiGLU, and the peer's RWKV7Config has no such field

    def __init__(
        self,
        attn_mode: str = "chunk",
        hidden_size: int = 2048,
        hidden_ratio: int | None = 4,
        intermediate_size: int | None = None,
        num_hidden_layers: int = 24,
        head_dim: int | None = 64,
        num_heads: int | None = None,
        decay_low_rank_dim: int = 64,
        gate_low_rank_dim: int = 128,
        a_low_rank_dim: int = 64,
        v_low_rank_dim: int = 16,
        hidden_act: str = "sqrelu",
        norm_first: bool = True,
        norm_bias: bool = True,
        norm_eps: float = 1e-5,
        use_l2warp: bool = True,
        value_dim: int | list[int] | None = None,
        **kwargs,
    ):
        check_choice("attn_mode", attn_mode, self.attn_modes)
        check_choice("hidden_act", hidden_act, ("sqrelu",))
        if head_dim is None and num_heads is None:
            raise ValueError("give head_dim or num_heads")
        if head_dim is None:
            head_dim = hidden_size // num_heads
        elif num_heads is None:
            num_heads = hidden_size // head_dim
        if head_dim * num_heads != hidden_size:
            raise ValueError(f"head_dim * num_heads must be hidden_size (got {head_dim} * {num_heads} != "
                             f"{hidden_size})")
        if value_dim is None:
            value_dim = [hidden_size] * num_hidden_layers
        elif isinstance(value_dim, int):
            value_dim = [value_dim] * num_hidden_layers
        value_dim = list(value_dim)
        if len(value_dim) != num_hidden_layers or any(v < hidden_size or v % hidden_size for v in value_dim):
            raise ValueError(f"value_dim must be one multiple of hidden_size ({hidden_size}) or a list of one per "
                             f"layer ({num_hidden_layers}) (got {value_dim})")
        self.attn_mode = attn_mode
        self.head_dim, self.num_heads = head_dim, num_heads
        self.decay_low_rank_dim = decay_low_rank_dim
        self.gate_low_rank_dim = gate_low_rank_dim
        self.a_low_rank_dim = a_low_rank_dim
        self.v_low_rank_dim = v_low_rank_dim
        self.norm_first, self.norm_bias = norm_first, norm_bias
        self.value_dim = value_dim
        # FLAConfig checks hidden_act against its SwiGLU MLP; the channel mix here has its own activation
        super().__init__(hidden_size=hidden_size, hidden_ratio=hidden_ratio, intermediate_size=intermediate_size,
                         num_hidden_layers=num_hidden_layers, norm_eps=norm_eps, use_l2warp=use_l2warp,
                         hidden_act="swish", **kwargs)
        self.hidden_act = hidden_act

    @property
    def ffn_intermediate_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        size = int(self.hidden_size * (4 if self.hidden_ratio is None else self.hidden_ratio))
        return 32 * ((size + 31) // 32)
