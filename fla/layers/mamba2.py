"""Mamba-2 (Dao & Gu, 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured
State Space Duality").

Per head h (P = head_dim channels, N = state_size), with B_t, C_t of the head's group:
    dt_t = clamp(softplus(W_dt x_t + dt_bias), dt_limit),   a_t = exp(-exp(A_log) * dt_t)
    S_t  = a_t S_{t-1} + (x_t * dt_t) B_t^T        S: [P, N]
    y_t  = S_t C_t + D * x_t,                       out = W_out GatedRMSNorm(y, z)
where x, B, C come out of a causal depthwise SiLU convolution over one projection and z is the gate branch.
The scan S is scalar-gated linear attention with queries C, keys B, values x * dt, log decay -exp(A_log) * dt
and scale 1, so it runs on `chunk_simple_gla` (training, long prompts) and `fused_recurrent_simple_gla`
(decoding); no `mamba_ssm` kernels.
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.layers.utils import RecurrentStep, init_dt_bias, recurrent_flops_per_token
from fla.modules import ShortConvolution, rms_norm, rms_norm_gated
from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla


class GatedRMSNorm(nn.Module):
    """Mamba-2's output norm over groups of `group_size` channels: RMSNorm(y * silu(z)) * weight (the default,
    norm_before_gate=False), or RMSNorm(y) * weight * silu(z). `fla.modules.FusedRMSNormGated` is the second form
    over the whole width only, hence this small composition of the same kernels. weight: [hidden_size]."""

    def __init__(self, hidden_size: int, group_size: int, eps: float = 1e-5, norm_before_gate: bool = False):
        super().__init__()
        self.hidden_size, self.group_size, self.eps = hidden_size, group_size, eps
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, group_size={self.group_size}, eps={self.eps}, " \
               f"norm_before_gate={self.norm_before_gate}"

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y, z: [..., hidden_size] -> [..., hidden_size] in y's dtype."""
        shape = y.shape
        whole = self.group_size == self.hidden_size
        weight = self.weight if whole else None  # per-group weights: one multiply after the kernel
        yg = y.reshape(*shape[:-1], -1, self.group_size)
        zg = z.reshape(*shape[:-1], -1, self.group_size)
        if self.norm_before_gate:
            out = rms_norm_gated(yg, zg, weight, eps=self.eps, activation="silu")
        else:
            out = rms_norm(yg * F.silu(zg), weight, eps=self.eps)
        out = out.reshape(shape)
        return out if whole else out * self.weight.to(out.dtype)


class _Conv(ShortConvolution):
    """The x/B/C convolution; `conv_init` (the peer's option) draws its weight from U(-conv_init, conv_init) at
    every reset, so a model's re-initialization keeps it."""

    def __init__(self, hidden_size: int, kernel_size: int, bias: bool, activation: str, conv_init: float | None):
        self.conv_init = conv_init  # read by reset_parameters, which nn.Conv1d's constructor calls
        super().__init__(hidden_size, kernel_size, bias=bias, activation=activation)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "conv_init", None) is not None:
            nn.init.uniform_(self.weight, -self.conv_init, self.conv_init)


class Mamba2(nn.Module):
    """Args (the peer library's names and defaults):
        num_heads: heads H; None (or 0) = expand * hidden_size / head_dim, the only value allowed
        head_dim: channels P per head (values); state_size: N (keys/queries B, C)
        hidden_size: model width; expand: inner width = expand * hidden_size = H * P
        n_groups: B/C groups G (H a multiple of G: head h reads group h // (H / G)); the output norm is per group
        conv_kernel / use_conv_bias / conv_init: the causal depthwise convolution over x, B, C (activation
            hidden_act: "silu" / "swish"); conv_init draws its weight from U(-conv_init, conv_init)
        A_init_range, dt_min, dt_max, dt_init_floor: init of A = exp(A_log) ~ U(A_init_range) and dt_bias =
            softplus^-1(dt), dt ~ logU(dt_min, dt_max) floored at dt_init_floor
        dt_limit: clamp of dt after the softplus
        D_has_hdim: D per channel [H * P] instead of per head [H]
        rmsnorm / norm_before_gate: output GatedRMSNorm (else y * silu(z))
        use_bias: biases on in_proj and out_proj
        chunk_size: the peer's SSD chunk size (our chunked kernel picks its own; kept for the config)
        backend: the peer's convolution backend choice ("cuda" / "triton"); fla picks its kernels by device
    Parameters keep the peer's names (in_proj, conv1d, dt_bias, A_log, D, norm, out_proj), so its checkpoints
    load. The cache holds conv_state [B, conv_dim, conv_kernel] and recurrent_state [B, H, P, N] float32, the
    peer's layouts.
    """

    _no_weight_decay = ("A_log", "dt_bias", "D")
    supports_cp = True  # cp_context reaches its scan (chunk_simple_gla) and its convolution

    def __init__(
        self,
        num_heads: int | None = None,
        head_dim: int = 64,
        hidden_size: int = 2048,
        state_size: int = 128,
        expand: int = 2,
        n_groups: int = 1,
        conv_kernel: int = 4,
        conv_init: float | None = None,
        use_conv_bias: bool = True,
        hidden_act: str = "silu",
        A_init_range: tuple[float, float] = (1, 16),
        D_has_hdim: bool = False,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        use_bias: bool = False,
        norm_eps: float = 1e-5,
        chunk_size: int = 256,
        layer_idx: int | None = None,
        backend: str = "cuda",
    ):
        super().__init__()
        self.hidden_size, self.expand, self.head_dim = hidden_size, expand, head_dim
        self.intermediate_size = int(expand * hidden_size)
        if head_dim < 1 or self.intermediate_size % head_dim:
            raise ValueError(f"expand * hidden_size ({self.intermediate_size}) must be divisible by head_dim "
                             f"({head_dim})")
        inferred = self.intermediate_size // head_dim
        if num_heads and num_heads != inferred:
            raise ValueError(f"num_heads * head_dim ({num_heads * head_dim}) must equal expand * hidden_size "
                             f"({self.intermediate_size}); pass num_heads=None to infer it ({inferred})")
        self.num_heads = inferred
        if n_groups < 1 or self.num_heads % n_groups:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of n_groups ({n_groups})")
        if hidden_act not in ("silu", "swish"):
            raise ValueError(f"hidden_act={hidden_act!r}: Mamba-2's convolution uses 'silu' (alias 'swish')")
        if len(A_init_range) != 2 or not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"A_init_range must be a positive (min, max) pair (got {A_init_range!r})")
        if not 0 < dt_min <= dt_max or dt_init_floor <= 0:
            raise ValueError(f"need 0 < dt_min <= dt_max and dt_init_floor > 0 (got {dt_min}, {dt_max}, "
                             f"{dt_init_floor})")
        if len(dt_limit) != 2 or dt_limit[0] > dt_limit[1]:
            raise ValueError(f"dt_limit must be a (min, max) pair with min <= max (got {dt_limit!r})")
        if backend not in ("cuda", "triton"):
            raise ValueError(f"backend must be 'cuda' or 'triton' (got {backend!r}); fla picks its kernel by device")
        self.ssm_state_size, self.n_groups = state_size, n_groups
        self.conv_kernel_size, self.conv_init, self.use_conv_bias = conv_kernel, conv_init, use_conv_bias
        self.activation = hidden_act
        self.A_init_range, self.D_has_hdim = tuple(A_init_range), D_has_hdim
        self.rmsnorm, self.norm_before_gate, self.norm_eps = rmsnorm, norm_before_gate, norm_eps
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
        self.use_bias, self.chunk_size, self.backend = use_bias, chunk_size, backend
        self.layer_idx = layer_idx

        self.conv_dim = self.intermediate_size + 2 * n_groups * state_size
        # one projection: [z (gate) | x, B, C (convolved) | dt], the peer's order
        self.in_proj = nn.Linear(hidden_size, self.intermediate_size + self.conv_dim + self.num_heads, bias=use_bias)
        self.conv1d = _Conv(self.conv_dim, conv_kernel, use_conv_bias, hidden_act, conv_init)
        self.dt_bias = nn.Parameter(torch.empty(self.num_heads))
        self.A_log = nn.Parameter(torch.empty(self.num_heads))
        self.D = nn.Parameter(torch.empty(self.intermediate_size if D_has_hdim else self.num_heads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = GatedRMSNorm(self.intermediate_size, self.intermediate_size // n_groups, norm_eps,
                                 norm_before_gate) if rmsnorm else None
        self.out_proj = nn.Linear(self.intermediate_size, hidden_size, bias=use_bias)
        self.out_proj._is_residual_out = True  # the models' rescaled init (rescale_prenorm_residual) finds it
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The SSM parameters only (the peer's init): A ~ U(A_init_range) stored as log A, dt ~ logU(dt_min,
        dt_max) floored at dt_init_floor stored as softplus^-1(dt), D = 1. Projections, convolution and norm are
        initialized by the model (or their own reset)."""
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(*self.A_init_range).log())
        init_dt_bias(self.dt_bias, self.dt_min, self.dt_max, self.dt_init_floor)
        self.D.fill_(1.0)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
        cu_seqlens: torch.Tensor | None = None,
        cp_context=None,
        **kwargs,
    ) -> tuple[torch.Tensor, None, object]:
        step = RecurrentStep(self, hidden_states, attention_mask, past_key_values, use_cache, cu_seqlens, cp_context)
        H, P, G, N = self.num_heads, self.head_dim, self.n_groups, self.ssm_state_size
        z, xBC, dt = self.in_proj(step.x).split([self.intermediate_size, self.conv_dim, H], dim=-1)

        # the conv window is one tensor [B, conv_dim, W] (the peer's layout), not the tuple RecurrentStep keeps
        state = past_key_values.layer_state(self.layer_idx) if past_key_values is not None else None
        window = state.conv_state if state is not None else None
        xBC, window = self.conv1d(xBC, cache=window, output_final_state=step.use_cache, cu_seqlens=step.cu_seqlens,
                                   **step.cp_kwargs)
        x, Bg, Cg = xBC.split([self.intermediate_size, G * N, G * N], dim=-1)

        Bt, T = x.shape[:2]
        dt = F.softplus(dt.float() + self.dt_bias.float())
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(*self.dt_limit)
        g = -torch.exp(self.A_log.float()) * dt  # [B, T, H] log decay per head and token
        x = x.reshape(Bt, T, H, P)
        v = (x * dt[..., None]).to(x.dtype)
        # head h reads group h // (H / G), as in Mamba-2's grouped B/C
        k = Bg.reshape(Bt, T, G, N).repeat_interleave(H // G, dim=2)
        q = Cg.reshape(Bt, T, G, N).repeat_interleave(H // G, dim=2)
        op = fused_recurrent_simple_gla if step.mode == "fused_recurrent" else chunk_simple_gla
        y, final_state = op(q, k, v, g=g, scale=1.0, initial_state=step.initial_state,
                            output_final_state=step.use_cache, state_v_first=True, cu_seqlens=step.cu_seqlens,
                            **step.cp_kwargs)
        D = self.D.view(H, P) if self.D_has_hdim else self.D.view(H, 1)
        y = (y + x * D.to(x.dtype)).reshape(Bt, T, self.intermediate_size)
        y = self.norm(y, z) if self.rmsnorm else y * F.silu(z)
        out = self.out_proj(y)
        if step.use_cache:
            past_key_values.update(conv_state=window, layer_idx=self.layer_idx, offset=0)
        return step.finish(out, final_state), None, past_key_values

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of the chunked scan (see `recurrent_flops_per_token`: keys and queries of width
        state_size, values of width head_dim)."""
        return recurrent_flops_per_token(self.num_heads, self.ssm_state_size, self.head_dim)
