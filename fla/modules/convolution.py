"""Short causal depthwise convolution (the token shift in front of q/k/v of linear-attention layers).

    y[t, d] = act(bias[d] + sum_{i < W} weight[d, i] * x[t - (W - 1) + i, d])

Inputs before a sequence's first token are zero, or come from `cache`. The cache is the last W inputs of each
sequence `[N, D, W]` (newest at index W - 1, as `nn.Conv1d` sees them): with T == 1 it drives the one-step decode,
with T > 1 it is the prefix context of a continued prefill. Under `cu_seqlens` nothing crosses a document boundary.
Left padding is the caller's job: zero the padded inputs (`x * attention_mask[..., None]`) before calling.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl

from fla.modules.long_conv import (  # noqa: F401 - the peer's fla.modules.convolution has the long convolutions too
    ImplicitLongConvolution, LongConvolution, PositionalEmbedding, fft_conv,
)
from fla.ops.cp.comm import halo_before
from fla.ops.utils.checks import check_cu_seqlens
from fla.ops.utils.dispatch import dispatch
from fla.ops.utils.index import prepare_chunk_indices, prepare_token_indices, sequence_bounds, varlen_index

ACTIVATIONS = (None, "silu", "swish")
BT = 32  # tokens per program


@triton.jit
def _conv_input(x, cache, i_n, bos, o_s, o_d, m_t, m_d, D, W: tl.constexpr, HAS_CACHE: tl.constexpr):
    """x at sequence positions o_s [BT] for channels o_d [BD]; positions < 0 read the cache (or are zero)."""
    m = ((o_s >= 0) & m_t)[:, None] & m_d[None, :]
    b_x = tl.load(x + (bos + o_s).to(tl.int64)[:, None] * D + o_d[None, :], mask=m, other=0.).to(tl.float32)
    if HAS_CACHE:
        # cache[n, d, W + p] holds the input at position p < 0
        m_c = ((o_s < 0) & m_t)[:, None] & m_d[None, :]
        p_c = cache + i_n.to(tl.int64) * D * W + o_d[None, :] * W + (W + o_s)[:, None]
        b_x += tl.load(p_c, mask=m_c, other=0.).to(tl.float32)
    return b_x


@triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})
@triton.jit
def short_conv_fwd_kernel(
    x, weight, bias, cache, dy, out, cu_seqlens, chunk_indices, T, D,
    W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_CACHE: tl.constexpr, USE_SILU: tl.constexpr, STORE_DZ: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    # grid: (time blocks, cdiv(D, BD), B); x/dy/out [B, T, D] (row stride D), weight [D, W], cache [N, D, W].
    # STORE_DZ: recompute the pre-activation z and write dz = dy * silu'(z) instead of y (first backward step).
    i_t, i_d, i_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if IS_VARLEN:
        i_n, i_t = tl.load(chunk_indices + i_t * 2).to(tl.int32), tl.load(chunk_indices + i_t * 2 + 1).to(tl.int32)
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    o_t = i_t * BT + tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    m_t, m_d = o_t < T, o_d < D
    b_z = tl.zeros([BT, BD], dtype=tl.float32)
    for i in tl.static_range(W):
        b_x = _conv_input(x, cache, i_n, bos, o_t - (W - 1) + i, o_d, m_t, m_d, D, W, HAS_CACHE)
        b_z += b_x * tl.load(weight + o_d * W + i, mask=m_d, other=0.).to(tl.float32)[None, :]
    if HAS_BIAS:
        b_z += tl.load(bias + o_d, mask=m_d, other=0.).to(tl.float32)[None, :]
    offs = (bos + o_t).to(tl.int64)[:, None] * D + o_d[None, :]
    m = m_t[:, None] & m_d[None, :]
    if STORE_DZ:
        b_s = tl.sigmoid(b_z)
        b_out = tl.load(dy + offs, mask=m, other=0.).to(tl.float32) * b_s * (1 + b_z * (1 - b_s))
    elif USE_SILU:
        b_out = b_z * tl.sigmoid(b_z)
    else:
        b_out = b_z
    tl.store(out + offs, b_out.to(out.dtype.element_ty), mask=m)


@triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})
@triton.jit
def short_conv_bwd_kernel(
    x, weight, cache, dz, dx, dw_partial, db_partial, cu_seqlens, chunk_indices, T, D,
    W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
    HAS_CACHE: tl.constexpr, HAS_BIAS: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid as the forward; dz [B, T, D] is dL/d(pre-activation); dw_partial [P, D, W], db_partial [P, D] float32
    # with one row per time-block program P (summed by the launcher).
    i_t, i_d, i_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if IS_VARLEN:
        i_p = i_t
        i_n, i_t = tl.load(chunk_indices + i_t * 2).to(tl.int32), tl.load(chunk_indices + i_t * 2 + 1).to(tl.int32)
    else:
        i_p = i_n * tl.num_programs(0) + i_t
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    o_t = i_t * BT + tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    m_t, m_d = o_t < T, o_d < D
    m = m_t[:, None] & m_d[None, :]
    b_dz = tl.load(dz + (bos + o_t).to(tl.int64)[:, None] * D + o_d[None, :], mask=m, other=0.).to(tl.float32)
    b_dx = tl.zeros([BT, BD], dtype=tl.float32)
    for i in tl.static_range(W):
        b_w = tl.load(weight + o_d * W + i, mask=m_d, other=0.).to(tl.float32)
        # x[s] feeds y[s + (W - 1) - i] through weight i
        o_f = o_t + (W - 1) - i
        m_f = (o_f < T)[:, None] & m_d[None, :]
        b_dzf = tl.load(dz + (bos + o_f).to(tl.int64)[:, None] * D + o_d[None, :], mask=m_f, other=0.).to(tl.float32)
        b_dx += b_dzf * b_w[None, :]
        b_x = _conv_input(x, cache, i_n, bos, o_t - (W - 1) + i, o_d, m_t, m_d, D, W, HAS_CACHE)
        tl.store(dw_partial + (i_p.to(tl.int64) * D + o_d) * W + i, tl.sum(b_dz * b_x, axis=0), mask=m_d)
    if HAS_BIAS:
        tl.store(db_partial + i_p.to(tl.int64) * D + o_d, tl.sum(b_dz, axis=0), mask=m_d)
    tl.store(dx + (bos + o_t).to(tl.int64)[:, None] * D + o_d[None, :], b_dx.to(dx.dtype.element_ty), mask=m)


def _grid(x, cu_seqlens):
    B, T, D = x.shape
    BD = min(64, triton.next_power_of_2(D))
    if cu_seqlens is not None:
        chunk_indices = prepare_chunk_indices(cu_seqlens, BT)
        return (len(chunk_indices), triton.cdiv(D, BD), 1), chunk_indices, BD
    return (triton.cdiv(T, BT), triton.cdiv(D, BD), B), None, BD


class ShortConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, cache, cu_seqlens, activation):
        B, T, D = x.shape
        W = weight.shape[1]
        grid, chunk_indices, BD = _grid(x, cu_seqlens)
        y = torch.empty_like(x)
        if grid[0] > 0:
            short_conv_fwd_kernel[grid](
                x, weight, bias, cache, None, y, cu_seqlens, chunk_indices, T, D, W=W, BT=BT, BD=BD,
                HAS_BIAS=bias is not None, HAS_CACHE=cache is not None, USE_SILU=activation is not None,
                STORE_DZ=False,
            )
        ctx.save_for_backward(x, weight, bias, cache, cu_seqlens)
        ctx.activation = activation
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, cache, cu_seqlens = ctx.saved_tensors
        B, T, D = x.shape
        W = weight.shape[1]
        dy = dy.contiguous()
        grid, chunk_indices, BD = _grid(x, cu_seqlens)
        flags = dict(W=W, BT=BT, BD=BD, HAS_CACHE=cache is not None, HAS_BIAS=bias is not None)
        dx = torch.empty_like(x)
        dw_partial = x.new_empty(grid[0] * grid[2], D, W, dtype=torch.float32)
        db_partial = x.new_empty(grid[0] * grid[2], D, dtype=torch.float32) if bias is not None else None
        if grid[0] == 0:
            return dx, torch.zeros_like(weight), None if bias is None else torch.zeros_like(bias), None, None, None
        dz = dy
        if ctx.activation is not None:
            dz = torch.empty_like(dy, dtype=torch.float32)
            short_conv_fwd_kernel[grid](
                x, weight, bias, cache, dy, dz, cu_seqlens, chunk_indices, T, D, USE_SILU=True, STORE_DZ=True,
                **flags,
            )
        short_conv_bwd_kernel[grid](x, weight, cache, dz, dx, dw_partial, db_partial, cu_seqlens, chunk_indices, T, D,
                                    **flags)
        dw = dw_partial.sum(0).to(weight.dtype)
        db = db_partial.sum(0).to(bias.dtype) if bias is not None else None
        dcache = cache_grad(dz, weight, cu_seqlens).to(cache.dtype) if cache is not None and ctx.needs_input_grad[3] \
            else None
        return dx, dw, db, dcache, None, None


def cache_grad(dz: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    """d cache [N, D, W] from dz [B, T, D] (the pre-activation gradient): cache slot j (input position j - W before
    the sequence) feeds output t < j through weight j - 1 - t; slot 0 feeds nothing. Only the first W - 1 outputs
    of each sequence read the cache, so this is a few [N, D] products in PyTorch."""
    B, T, D = dz.shape
    W = weight.shape[1]
    if cu_seqlens is None:
        bos, lengths = torch.arange(B, device=dz.device) * T, torch.full((B,), T, device=dz.device)
    else:
        bos, lengths = cu_seqlens[:-1].long(), (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    t = torch.arange(W - 1, device=dz.device)
    idx = (bos[:, None] + t[None, :]).clamp(max=max(B * T - 1, 0))
    first = dz.reshape(-1, D)[idx].float() * (t[None, :] < lengths[:, None])[..., None]  # [N, W - 1, D]
    wf = weight.float()
    dcache = dz.new_zeros(len(bos), D, W, dtype=torch.float32)
    for j in range(1, W):
        dcache[:, :, j] = sum(first[:, u] * wf[:, j - 1 - u] for u in range(j))
    return dcache


def _short_conv_triton(x, weight, bias, cache, cu_seqlens, activation):
    return ShortConvFunction.apply(x, weight, bias, cache, cu_seqlens, activation)


def _short_conv_torch(x, weight, bias, cache, cu_seqlens, activation):
    # Shift-and-add over the W taps, vectorized over documents: a token's position in its document decides whether
    # a tap reads x, the cache, or zero (no host loop over documents).
    B, T, D = x.shape
    W = weight.shape[1]
    if cu_seqlens is None:
        seq = torch.arange(B, device=x.device)[:, None].expand(B, T)
        pos = torch.arange(T, device=x.device)[None, :].expand(B, T)
    else:
        index = prepare_token_indices(cu_seqlens).long()
        seq, pos = index[None, :, 0], index[None, :, 1]
    xf = x.float()
    z = xf.new_zeros(B, T, D)
    for i in range(W):
        shift = W - 1 - i  # tap i reads x[t - shift]
        inside = (pos >= shift)[..., None]
        earlier = cache[seq, :, (W + pos - shift).clamp(0, W - 1)].float() if cache is not None else 0.
        z = z + torch.where(inside, F.pad(xf, (0, 0, shift, 0))[:, :T], earlier) * weight[:, i].float()
    if bias is not None:
        z = z + bias.float()
    return (F.silu(z) if activation is not None else z).to(x.dtype)


short_conv = dispatch(_short_conv_triton, _short_conv_torch)


@triton.jit
def short_conv_step_kernel(
    x, weight, bias, cache, y, D, W: tl.constexpr, BD: tl.constexpr, BW: tl.constexpr,
    HAS_BIAS: tl.constexpr, USE_SILU: tl.constexpr,
):
    # grid: (B, cdiv(D, BD)); x/y [B, 1, D], cache [B, D, W] updated in place: shift left, append x.
    i_n, i_d = tl.program_id(0).to(tl.int64), tl.program_id(1)
    o_d = i_d * BD + tl.arange(0, BD)
    o_w = tl.arange(0, BW)
    m_d = o_d < D
    m = m_d[:, None] & (o_w < W)[None, :]
    p_c = cache + i_n * D * W + o_d[:, None] * W + o_w[None, :]
    b_c = tl.load(p_c + 1, mask=m_d[:, None] & (o_w < W - 1)[None, :], other=0.).to(tl.float32)
    b_x = tl.load(x + i_n * D + o_d, mask=m_d, other=0.).to(tl.float32)
    b_c = tl.where((o_w == W - 1)[None, :], b_x[:, None], b_c)
    b_w = tl.load(weight + o_d[:, None] * W + o_w[None, :], mask=m, other=0.).to(tl.float32)
    b_y = tl.sum(b_c * b_w, axis=1)
    if HAS_BIAS:
        b_y += tl.load(bias + o_d, mask=m_d, other=0.).to(tl.float32)
    if USE_SILU:
        b_y = b_y * tl.sigmoid(b_y)
    tl.store(p_c, b_c.to(cache.dtype.element_ty), mask=m)
    tl.store(y + i_n * D + o_d, b_y.to(y.dtype.element_ty), mask=m_d)


def _step_triton(x, weight, bias, cache, activation):
    B, _, D = x.shape
    W = weight.shape[1]
    y = torch.empty_like(x)
    BD = min(128, triton.next_power_of_2(D))
    short_conv_step_kernel[(B, triton.cdiv(D, BD))](
        x, weight, bias, cache, y, D, W=W, BD=BD, BW=triton.next_power_of_2(W),
        HAS_BIAS=bias is not None, USE_SILU=activation is not None,
    )
    return y


def _step_torch(x, weight, bias, cache, activation):
    cache.copy_(torch.cat([cache[:, :, 1:], x.transpose(1, 2).to(cache.dtype)], -1))
    z = (cache.float() * weight.float()).sum(-1)
    if bias is not None:
        z = z + bias.float()
    z = F.silu(z) if activation is not None else z
    return z[:, None].to(x.dtype)


short_conv_step = dispatch(_step_triton, _step_torch)


def final_conv_state(x: torch.Tensor, cache: torch.Tensor | None, cu_seqlens: torch.Tensor | None, W: int):
    """The last W inputs of every sequence [N, D, W] (earlier positions from `cache`, or zero)."""
    B, T, D = x.shape
    if cu_seqlens is None:
        bos = torch.arange(B, device=x.device) * T
        eos = bos + T
    else:
        bos, eos = cu_seqlens[:-1].long(), cu_seqlens[1:].long()
    flat = x.reshape(-1, D)
    idx = eos[:, None] - W + torch.arange(W, device=x.device)[None, :]
    inside = (idx >= bos[:, None])[..., None]
    state = torch.where(inside, flat[idx.clamp(min=0)], 0).to(x.dtype)
    if cache is not None:
        j = (W + idx - bos[:, None]).clamp(0, W - 1)
        earlier = torch.gather(cache.transpose(1, 2), 1, j[..., None].expand(-1, -1, D))
        state = torch.where(inside, state, earlier.to(x.dtype))
    return state.transpose(1, 2).contiguous()


class ShortConvolution(nn.Conv1d):
    """Depthwise causal convolution over time with window `kernel_size`, an `nn.Conv1d` (weight [D, 1, W]).

    `forward(x [B, T, D], cache=None, output_final_state=False, cu_seqlens=None) -> (y [B, T, D], cache or None)`.
    `cache` [N, D, W] holds the last W inputs per sequence: with T == 1 (and no gradient needed) it takes the
    one-step decode path (`step`) and is updated in place; otherwise it is the prefix before x, and the returned
    final cache is a new tensor. Gradients flow to x, weight, bias and a given cache, also through the returned final
    cache (as in the peer library). Left padding: zero the
    padded positions of x first (`x * attention_mask[..., None]`), the module cannot see the mask.
    """

    def __init__(
        self, hidden_size: int, kernel_size: int = 4, bias: bool = False, activation: str | None = "silu",
        backend: str = "triton", device=None, dtype=None,
    ):
        # backend is the peer library's choice of kernel; here fla.ops.utils.dispatch picks one by device
        if backend not in ("triton", "cuda"):
            raise ValueError(f"backend must be 'triton' or 'cuda' (got {backend!r}); fla picks its kernel by device")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS} (got {activation!r})")
        super().__init__(
            hidden_size, hidden_size, kernel_size, groups=hidden_size, padding=kernel_size - 1, bias=bias,
            device=device, dtype=dtype,
        )
        self.hidden_size, self.activation = hidden_size, activation

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, kernel_size={self.kernel_size[0]}, bias={self.bias is not None}, " \
               f"activation={self.activation!r}"

    def _check(self, x, cache, cu_seqlens):
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.hidden_size:
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, T, D] with D = hidden_size = {self.hidden_size} (got {got})")
        B, T, _ = x.shape
        N = B if cu_seqlens is None else check_cu_seqlens(cu_seqlens, B, T)
        W = self.kernel_size[0]
        if cache is not None:
            if not isinstance(cache, torch.Tensor) or tuple(cache.shape) != (N, self.hidden_size, W):
                raise ValueError(
                    f"cache must be [N, D, W] = [{N}, {self.hidden_size}, {W}] (one row per sequence, the last W "
                    f"inputs, newest last), got {getattr(cache, 'shape', cache)}"
                )
            if not cache.is_contiguous():
                raise ValueError("cache must be contiguous: call .contiguous() on it")

    def forward(self, x, residual=None, mask=None, cache=None, output_final_state=False, cu_seqlens=None,
                chunk_indices=None, *, cp_context=None):
        """x [B, T, D] -> (y [B, T, D], final cache [N, D, W] or None); the peer library's argument order.
        residual [B, T, D] is added to the output (after the activation); mask [B, T] (0/1) zeroes padded inputs
        first (not with cu_seqlens, whose packing has no padding). chunk_indices (the peer's precomputed
        (sequence, block) index of cu_seqlens) is accepted for its call form and not needed: the varlen index is
        built once per cu_seqlens and memoized (`fla.ops.utils.index.varlen_index`). cp_context: this rank's piece of
        a sequence split across ranks (fla.ops.cp.build_cp_context; see `short_conv_cp`)."""
        if cp_context is not None:
            return short_conv_cp(self, x, residual, mask, cache, output_final_state, cu_seqlens, cp_context)
        if mask is not None:
            if cu_seqlens is not None:
                raise ValueError("mask and cu_seqlens cannot be given together: packed sequences have no padding")
            x = x * mask[..., None].to(x.dtype)
        self._check(x, cache, cu_seqlens)
        W = self.kernel_size[0]
        grad_needed = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        one_token_each = x.shape[1] == 1 if cu_seqlens is None else x.shape[1] == cu_seqlens.shape[0] - 1
        if cache is not None and one_token_each and not grad_needed:
            return self.step(x, residual, cache, output_final_state, cu_seqlens)
        x = x.contiguous()
        y = short_conv(x, self.weight.view(self.hidden_size, W), self.bias, cache, cu_seqlens, self.activation)
        final = final_conv_state(x, cache, cu_seqlens, W) if output_final_state else None
        return (y if residual is None else y + residual), final

    def step(self, x: torch.Tensor, residual: torch.Tensor | None, cache: torch.Tensor | None,
             output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One decode step (the peer library's signature): x [B, 1, D] (or [B, D]; or [1, N, D] with cu_seqlens, one
        token per sequence); cache [N, D, W] is shifted and updated in place (a zero one is made if None).
        Returns (y like x, plus residual if given; the cache if output_final_state else None)."""
        shape = x.shape
        if cu_seqlens is not None:  # one token per packed sequence: [1, N, D] -> [N, 1, D]
            if x.dim() != 3 or x.shape[0] != 1 or x.shape[1] != cu_seqlens.shape[0] - 1:
                raise ValueError(f"with cu_seqlens, step takes one token per sequence, x [1, N, D] (got {list(shape)})")
            x = x.transpose(0, 1)
        elif x.dim() == 2:
            x = x[:, None]
        if cache is None:
            cache = x.new_zeros(x.shape[0], self.hidden_size, self.kernel_size[0])
        self._check(x, cache, None)
        if x.shape[1] != 1:
            raise ValueError(f"step takes one token per sequence, x [B, 1, D] (got {list(shape)})")
        W = self.kernel_size[0]
        y = short_conv_step(x.contiguous(), self.weight.view(self.hidden_size, W), self.bias, cache, self.activation)
        y = y.transpose(0, 1) if cu_seqlens is not None else y.view(shape)
        if residual is not None:
            y = y + residual
        return y, (cache if output_final_state else None)


def short_conv_cp(conv: ShortConvolution, x, residual, mask, cache, output_final_state, cu_seqlens, context):
    """`conv(x)` on this rank's piece under context parallelism: the first document's W - 1 tokens before the
    piece (fewer if it starts later) come from the earlier ranks as a halo (all-gathered; its gradient goes back to
    them), and the plain convolution runs on [halo, piece] with the first document extended by the halo. The final
    cache (output_final_state) is then right for every document of the piece, the first one included."""
    if mask is not None or cache is not None or cu_seqlens is not None:
        raise ValueError("with cp_context pass neither mask, cache nor cu_seqlens: the boundaries and the tokens "
                         "before this piece come from the context")
    B, T, _ = x.shape
    W = conv.kernel_size[0]
    h = min(W - 1, context.conv_prefix_tokens(T)) if context.receives_state else 0
    x_ext = torch.cat([halo_before(x, h, min(T, W - 1), context), x], 1)
    cu_ext = None
    if context.is_varlen:  # the first document grows by the halo; memoized with its varlen index (no device sync)
        key = ("short_conv_halo", h)
        if key not in context._memo:
            host = torch.cat([context.cu_seqlens_cpu[:1], context.cu_seqlens_cpu[1:] + h])
            context._memo[key] = host.to(context.cu_seqlens.device, non_blocking=True)
            varlen_index(context._memo[key], host)
        cu_ext = context._memo[key]
    y, final = conv(x_ext, output_final_state=output_final_state, cu_seqlens=cu_ext)
    y = y[:, h:]
    return (y if residual is None else y + residual), final


# ---------------------------------------------------------------------------------------------------------------------
# The peer library's functional forms (`fla.modules.convolution.causal_conv1d` / `causal_conv1d_update`), over the
# same kernels as ShortConvolution.

def _check_conv_weights(x: torch.Tensor, weight, bias, activation, D: int) -> int:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != D:
        raise ValueError(f"weight must be [D, W] with D = {D}, the last dim of x (got {getattr(weight, 'shape', weight)}"
                         "); a convolution without weights is not supported")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (D,)):
        raise ValueError(f"bias must be [D] = [{D}] or None (got {getattr(bias, 'shape', bias)})")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS} (got {activation!r})")
    return weight.shape[1]


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool | None = False,
    activation: str | None = None,
    backend: str | None = "triton",
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    chunk_indices: torch.Tensor | None = None,
    cp_context=None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Depthwise causal convolution, y_t = act(sum_i weight[:, i] * x_{t - W + 1 + i} + bias) + residual_t.

    Args:
        x: [B, T, D]; weight: [D, W]; bias: [D] or None; residual: [B, T, D] or None (added after the activation)
        initial_state: [N, D, W] the W inputs before each sequence (zeros if None); differentiable
        output_final_state: also return the last W inputs of every sequence [N, D, W]
        activation: None, "silu" or "swish"
        backend: the peer's kernel choice ("triton", "cuda", "mix"); here the device picks the kernel, so all three
            run the same one
        cu_seqlens: [N + 1] packed sequences (B == 1); cu_seqlens_cpu its host copy (spares a device sync);
            chunk_indices is accepted and not needed (the varlen index is memoized per cu_seqlens)
        cp_context: context parallelism is not supported by this function (use ShortConvolution under fla.ops.cp)
    Returns:
        (y [B, T, D] in x's dtype, final state [N, D, W] or None)
    """
    if kwargs:
        raise ValueError(f"causal_conv1d does not take {sorted(kwargs)} (options of the peer's 'mix' / 'cuda' "
                         "backends); drop them")
    if cp_context is not None:
        raise ValueError("cp_context is not supported by causal_conv1d; call ShortConvolution with cp_context")
    if backend not in ("triton", "cuda", "mix"):
        raise ValueError(f"backend must be 'triton', 'cuda' or 'mix' (got {backend!r}); fla picks its kernel by device")
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must be [B, T, D] (got {getattr(x, 'shape', type(x).__name__)})")
    B, T, D = x.shape
    W = _check_conv_weights(x, weight, bias, activation, D)
    N = B if cu_seqlens is None else check_cu_seqlens(cu_seqlens, B, T)
    if cu_seqlens is not None:
        varlen_index(cu_seqlens, cu_seqlens_cpu)  # memoized: the kernels' index needs no host read of cu_seqlens
    if initial_state is not None and (not isinstance(initial_state, torch.Tensor)
                                      or tuple(initial_state.shape) != (N, D, W)):
        raise ValueError(f"initial_state must be [N, D, W] = [{N}, {D}, {W}] (got "
                         f"{getattr(initial_state, 'shape', initial_state)})")
    if residual is not None and (not isinstance(residual, torch.Tensor) or residual.shape != x.shape):
        raise ValueError(f"residual must be like x, {list(x.shape)} (got {getattr(residual, 'shape', residual)})")
    x = x.contiguous()
    cache = initial_state.contiguous() if initial_state is not None else None
    y = short_conv(x, weight.contiguous(), bias, cache, cu_seqlens, activation)
    final = final_conv_state(x, cache, cu_seqlens, W) if output_final_state else None
    return (y if residual is None else y + residual), final


def causal_conv1d_update(
    x: torch.Tensor,
    cache: torch.Tensor,
    residual: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step per sequence: x [N, D], [N, 1, D] or [1, N, D] (one token each); cache [N, D, W] is shifted
    and gets x, in place. Returns (y like x, plus residual if given; the cache)."""
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3) or (x.dim() == 3 and 1 not in x.shape[:2]):
        raise ValueError(f"x must be [N, D], [N, 1, D] or [1, N, D] (got {getattr(x, 'shape', type(x).__name__)})")
    shape, D = x.shape, x.shape[-1]
    W = _check_conv_weights(x, weight, bias, activation, D)
    N = x.numel() // D
    if not isinstance(cache, torch.Tensor) or tuple(cache.shape) != (N, D, W):
        raise ValueError(f"cache must be [N, D, W] = [{N}, {D}, {W}] (got {getattr(cache, 'shape', cache)})")
    y = short_conv_step(x.reshape(N, 1, D).contiguous(), weight.contiguous(), bias, cache, activation)
    y = y.reshape(shape)
    return (y if residual is None else y + residual.reshape(shape)), cache
