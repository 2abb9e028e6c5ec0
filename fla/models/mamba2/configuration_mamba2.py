"""Configuration of the Mamba-2 family (model_type "mamba2")."""
from __future__ import annotations

from fla.models.configuration_base import FLAConfig


class Mamba2Config(FLAConfig):
    """The mixer's fields, with the peer's names and defaults (its defaults for the shared fields too: 48 layers,
    norm_eps 1e-5, pad_token_id 0, hidden_act "silu"). A Mamba-2 block is norm + mixer, with no MLP, so the MLP
    fields of FLAConfig (hidden_ratio, intermediate_size, fuse_swiglu) have no effect.

    Args:
        head_dim: channels P per head; num_heads: expand * hidden_size / head_dim (computed when None)
        state_size: N; expand: inner width expand * hidden_size; n_groups: B/C groups
        conv_kernel / use_conv_bias / conv_init: the short convolution over x, B, C
        A_init_range, dt_min, dt_max, dt_init_floor: SSM parameter init; dt_limit: clamp of dt
        D_has_hdim: D per channel instead of per head
        rmsnorm / norm_before_gate: the gated output norm (RMSNorm(y * silu(z)) by default)
        use_bias: biases on the in/out projections
        residual_in_fp32: the residual add in float32
        rescale_prenorm_residual: out_proj drawn as kaiming-uniform / sqrt(num_hidden_layers) (GPT-2's scheme)
        chunk_size: the peer's SSD chunk size (kept; the chunked kernel picks its own)
    """

    model_type = "mamba2"
    peer_ignored = {"fuse_swiglu": True}  # no MLP here, and the peer's Mamba2Config has no such field

    def __init__(
        self,
        head_dim: int = 64,
        vocab_size: int = 32000,
        hidden_size: int = 2048,
        state_size: int = 128,
        num_hidden_layers: int = 48,
        norm_eps: float = 1e-5,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        expand: int = 2,
        conv_kernel: int = 4,
        n_groups: int = 1,
        use_bias: bool = False,
        use_conv_bias: bool = True,
        conv_init: float | None = None,
        A_init_range: tuple[float, float] = (1, 16),
        D_has_hdim: bool = False,
        hidden_act: str = "silu",
        initializer_range: float = 0.02,
        residual_in_fp32: bool = True,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        rescale_prenorm_residual: bool = True,
        use_cache: bool = True,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        chunk_size: int = 256,
        num_heads: int | None = None,
        **kwargs,
    ):
        A_init_range, dt_limit = tuple(A_init_range), tuple(float(v) for v in dt_limit)  # JSON gives lists
        if len(A_init_range) != 2 or not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"A_init_range must be a positive (min, max) pair (got {A_init_range!r})")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max (got {dt_min}, {dt_max})")
        if dt_init_floor <= 0:
            raise ValueError(f"dt_init_floor must be > 0 (got {dt_init_floor})")
        if head_dim < 1 or (expand * hidden_size) % head_dim:
            raise ValueError(f"expand * hidden_size ({expand * hidden_size}) must be divisible by head_dim "
                             f"({head_dim})")
        inferred = int(expand * hidden_size / head_dim)
        if num_heads and num_heads != inferred:
            raise ValueError(f"num_heads={num_heads} must be expand * hidden_size / head_dim = {inferred}")
        if inferred % n_groups:
            raise ValueError(f"num_heads ({inferred}) must be a multiple of n_groups ({n_groups})")
        self.head_dim = head_dim
        self.state_size = state_size
        self.expand = expand
        self.conv_kernel = conv_kernel
        self.n_groups = n_groups
        self.use_bias = use_bias
        self.use_conv_bias = use_conv_bias
        self.conv_init = conv_init
        self.A_init_range = A_init_range
        self.D_has_hdim = D_has_hdim
        self.residual_in_fp32 = residual_in_fp32
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.dt_init_floor = dt_init_floor
        self.dt_limit = dt_limit
        self.rescale_prenorm_residual = rescale_prenorm_residual
        self.rmsnorm = rmsnorm
        self.norm_before_gate = norm_before_gate
        self.chunk_size = chunk_size
        self.num_heads = inferred
        super().__init__(
            vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, norm_eps=norm_eps,
            pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, hidden_act=hidden_act,
            initializer_range=initializer_range, use_cache=use_cache, **kwargs,
        )

    def peer_mismatches(self) -> list[str]:
        out = super().peer_mismatches()
        if self.attn is not None:
            out.append("attn (its Mamba-2 has no hybrid layers)")
        return out
