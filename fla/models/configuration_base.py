"""The configuration fields every `fla.models` family shares; a family's config adds its mixer's fields."""
from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class FLAConfig(PretrainedConfig):
    """Fields of the shared decoder backbone.

    Args:
        vocab_size, hidden_size, num_hidden_layers: the usual
        hidden_ratio / intermediate_size: MLP width; intermediate_size defaults to 2/3 * hidden_ratio * hidden_size
            rounded up to a multiple of 256 (SwiGLU with the parameter count of a 4x MLP)
        hidden_act: MLP activation ("swish")
        norm_eps: RMSNorm epsilon
        initializer_range: std of the normal init of every linear and embedding weight
        tie_word_embeddings: share the LM head with the input embeddings
        fuse_cross_entropy: FusedCrossEntropyLoss on the logits (when not fusing the linear head)
        fuse_linear_cross_entropy: loss straight from hidden states and head weight, never materializing the logits
            (the forward returns logits=None when labels are given)
        attn: hybrid models: {"layers": [indices], "num_heads": H, "num_kv_heads": H_kv, "window_size": W or None,
            "qkv_bias": False, "rope_theta": 10000.0}; these layers use softmax attention instead of the mixer
        max_position_embeddings: informational (rotary needs no table)
    """

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 2048,
        num_hidden_layers: int = 24,
        hidden_ratio: float = 4,
        intermediate_size: int | None = None,
        hidden_act: str = "swish",
        norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        max_position_embeddings: int = 2048,
        attn: dict[str, Any] | None = None,
        fuse_cross_entropy: bool = True,
        fuse_linear_cross_entropy: bool = True,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.norm_eps = norm_eps
        self.initializer_range = initializer_range
        self.max_position_embeddings = max_position_embeddings
        self.fuse_cross_entropy = fuse_cross_entropy
        self.fuse_linear_cross_entropy = fuse_linear_cross_entropy
        self.use_cache = use_cache
        if attn is not None:
            if not isinstance(attn, dict) or "layers" not in attn or "num_heads" not in attn:
                raise ValueError(
                    "attn must be a dict with at least 'layers' (indices of softmax-attention layers) and 'num_heads'"
                )
            bad = [i for i in attn["layers"] if not 0 <= i < num_hidden_layers]
            if bad:
                raise ValueError(f"attn['layers'] has indices outside [0, {num_hidden_layers}): {bad}")
            attn = {"num_kv_heads": attn["num_heads"], "window_size": None, "qkv_bias": False,
                    "rope_theta": 10000.0, **attn}
        self.attn = attn
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def mlp_intermediate_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        size = int(self.hidden_size * self.hidden_ratio * 2 / 3)
        return 256 * ((size + 255) // 256)
