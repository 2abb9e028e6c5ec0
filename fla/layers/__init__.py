"""Token mixers as `nn.Module`s, one signature for all:
`forward(hidden_states, attention_mask=None, past_key_values=None, use_cache=False, cu_seqlens=None, **kwargs)
-> (output, None, past_key_values)`."""
from fla.layers.attn import Attention
from fla.layers.delta_net import DeltaNet
from fla.layers.gated_deltanet import GatedDeltaNet
from fla.layers.gla import GatedLinearAttention
from fla.layers.linear_attn import LinearAttention
from fla.layers.multiscale_retention import MultiScaleRetention

__all__ = [
    "Attention", "DeltaNet", "GatedDeltaNet", "GatedLinearAttention", "LinearAttention", "MultiScaleRetention",
]

from fla.layers.forgetting_attn import ForgettingAttention  # noqa: E402
from fla.layers.mamba2 import Mamba2  # noqa: E402

__all__ += ["ForgettingAttention", "Mamba2"]

from fla.layers.gated_deltaproduct import GatedDeltaProduct  # noqa: E402
from fla.layers.hgrn import HGRNAttention  # noqa: E402
from fla.layers.hgrn2 import HGRN2Attention  # noqa: E402

__all__ += ["GatedDeltaProduct", "HGRN2Attention", "HGRNAttention"]

from fla.layers.kda import KimiDeltaAttention  # noqa: E402

__all__ += ["KimiDeltaAttention"]

from fla.layers.rwkv7 import RWKV7Attention  # noqa: E402

__all__ += ["RWKV7Attention"]
