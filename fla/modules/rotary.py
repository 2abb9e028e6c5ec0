"""Rotary position embedding for q and k in the `[B, T, H, D]` layout.

Feature pairs (x1, x2) are rotated by the angle `position * inv_freq[j]`, inv_freq[j] = base^(-2j / dim):
    y1 = x1 cos - x2 sin,  y2 = x2 cos + x1 sin
Pairs are (j, j + dim/2) by default (GPT-NeoX) or (2j, 2j + 1) when `interleaved` (GPT-J). Only the first `dim`
features rotate; the rest pass through. Positions count from `seqlen_offset` and restart at every document under
`cu_seqlens`. The kernel computes cos/sin from the positions, so there is no cache to outgrow; the backward is the
rotation by the opposite angle.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import triton
import triton.language as tl

from fla.ops.utils.checks import check_cu_seqlens
from fla.ops.utils.dispatch import dispatch
from fla.ops.utils.index import prepare_token_indices


@triton.jit
def rotary_kernel(
    x, positions, inv_freq, out, T, H, D, pos_stride,
    R2: tl.constexpr, BT: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr,
    INTERLEAVED: tl.constexpr, INVERSE: tl.constexpr, HAS_PASS: tl.constexpr,
):
    # grid: (cdiv(T, BT), B); x/out [B, T, H, D] contiguous (row stride H * D); positions [B or 1, T] with batch
    # stride pos_stride (0 when shared); R2 = rotary dim / 2 rotated pairs; INVERSE rotates by -angle (backward).
    # One program serves every head of its tokens, so cos/sin are computed once per token, not once per head.
    i_t, i_b = tl.program_id(0), tl.program_id(1)
    o_t = i_t * BT + tl.arange(0, BT)
    o_r = tl.arange(0, BR)
    m_t, m_r = o_t < T, o_r < R2
    b_pos = tl.load(positions + i_b * pos_stride + o_t, mask=m_t, other=0).to(tl.float32)
    b_angle = b_pos[:, None] * tl.load(inv_freq + o_r, mask=m_r, other=0.)[None, :]
    b_cos, b_sin = tl.cos(b_angle), tl.sin(b_angle)
    if INVERSE:
        b_sin = -b_sin
    if INTERLEAVED:
        o_1, o_2 = 2 * o_r, 2 * o_r + 1
    else:
        o_1, o_2 = o_r, o_r + R2
    m = m_t[:, None] & m_r[None, :]
    o_p = 2 * R2 + tl.arange(0, BP)
    m_p = m_t[:, None] & (o_p < D)[None, :]
    for i_h in range(H):
        row = ((i_b * T + o_t).to(tl.int64) * H + i_h) * D
        p_1, p_2 = row[:, None] + o_1[None, :], row[:, None] + o_2[None, :]
        b_x1 = tl.load(x + p_1, mask=m, other=0.).to(tl.float32)
        b_x2 = tl.load(x + p_2, mask=m, other=0.).to(tl.float32)
        tl.store(out + p_1, (b_x1 * b_cos - b_x2 * b_sin).to(out.dtype.element_ty), mask=m)
        tl.store(out + p_2, (b_x2 * b_cos + b_x1 * b_sin).to(out.dtype.element_ty), mask=m)
        if HAS_PASS:
            p_p = row[:, None] + o_p[None, :]
            tl.store(out + p_p, tl.load(x + p_p, mask=m_p, other=0.), mask=m_p)


def _rotate(x, positions, inv_freq, interleaved, inverse):
    B, T, H, D = x.shape
    R2 = inv_freq.shape[0]
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    BT = 32
    rotary_kernel[(triton.cdiv(T, BT), B)](
        x, positions, inv_freq, out, T, H, D, 0 if positions.shape[0] == 1 else T,
        R2=R2, BT=BT, BR=triton.next_power_of_2(R2), BP=triton.next_power_of_2(max(1, D - 2 * R2)),
        INTERLEAVED=interleaved, INVERSE=inverse, HAS_PASS=D > 2 * R2,
    )
    return out


class RotaryFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, positions, inv_freq, interleaved):
        ctx.save_for_backward(positions, inv_freq)
        ctx.interleaved = interleaved
        return _rotate(x, positions, inv_freq, interleaved, False)

    @staticmethod
    def backward(ctx, dy):
        positions, inv_freq = ctx.saved_tensors
        return _rotate(dy.contiguous(), positions, inv_freq, ctx.interleaved, True), None, None, None


def _rotary_triton(x, positions, inv_freq, interleaved):
    return RotaryFunction.apply(x, positions, inv_freq, interleaved)


def _rotary_torch(x, positions, inv_freq, interleaved):
    R2 = inv_freq.shape[0]
    angle = positions.float()[:, :, None, None] * inv_freq.float()  # [B or 1, T, 1, R2]
    cos, sin = angle.cos(), angle.sin()
    xf = x.float()
    rot, rest = xf[..., :2 * R2], xf[..., 2 * R2:]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        y = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).flatten(-2)
    else:
        x1, x2 = rot[..., :R2], rot[..., R2:]
        y = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
    return torch.cat([y, rest], -1).to(x.dtype)


rotary = dispatch(_rotary_triton, _rotary_torch)


def rotary_positions(
    batch_size: int, seq_len: int, seqlen_offset: int | torch.Tensor = 0, cu_seqlens: torch.Tensor | None = None,
    device=None,
) -> torch.Tensor:
    """Position of every token, int32 [B, T] (or [1, T] when shared by the batch): t + offset, or the position
    inside its document under cu_seqlens (plus that document's offset)."""
    if cu_seqlens is not None:
        index = prepare_token_indices(cu_seqlens).long()
        pos = index[:, 1]
        if isinstance(seqlen_offset, torch.Tensor):
            pos = pos + seqlen_offset.to(pos.device).long()[index[:, 0]]
        else:
            pos = pos + seqlen_offset
        return pos[None].to(torch.int32)
    pos = torch.arange(seq_len, device=device)[None]
    if isinstance(seqlen_offset, torch.Tensor):
        pos = pos + seqlen_offset.to(device).long()[:, None]
    else:
        pos = pos + seqlen_offset
    return pos.to(torch.int32).contiguous()


def _check_offset(seqlen_offset, batch_size, num_seqs):
    if isinstance(seqlen_offset, torch.Tensor):
        if seqlen_offset.dim() != 1 or len(seqlen_offset) != num_seqs or seqlen_offset.is_floating_point():
            raise ValueError(
                f"seqlen_offset must be an int or an int tensor [N] = [{num_seqs}] (one offset per sequence), "
                f"got shape {list(seqlen_offset.shape)} {seqlen_offset.dtype}"
            )
    elif not isinstance(seqlen_offset, int):
        raise ValueError(f"seqlen_offset must be an int or an int tensor (got {type(seqlen_offset).__name__})")


def rotary_embedding_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False
                         ) -> torch.Tensor:
    """The rotation in plain PyTorch (the peer library's reference of that name): x [..., T, H, D]; cos, sin [T, R]
    for R = rotary dim / 2 -> x with its first 2R features rotated."""
    R = cos.shape[-1]
    if interleaved:
        x1, x2 = x[..., 0:2 * R:2], x[..., 1:2 * R:2]
    else:
        x1, x2 = x[..., :R], x[..., R:2 * R]
    c, s = cos[..., None, :], sin[..., None, :]  # over the heads
    y1, y2 = x1 * c - x2 * s, x2 * c + x1 * s
    rotated = torch.stack([y1, y2], -1).flatten(-2) if interleaved else torch.cat([y1, y2], -1)
    return torch.cat([rotated, x[..., 2 * R:]], -1)


def rotary_embedding(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved: bool = False,
    inplace: bool = False,
    seqlen_offsets: int | torch.Tensor = 0,
    cu_seqlens: torch.Tensor | None = None,
    chunk_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """The peer's table form: rotate x [B, T, H, D] by precomputed cos, sin [TR, R] (R = rotary dim / 2) read at each
    token's position (t + seqlen_offsets, an int or one per sequence [N]; inside its document under cu_seqlens,
    x [1, T_total, H, D]) -> the same shape and dtype; features past 2R pass through. `inplace` writes the result
    into x (no autograd through x then, as an in-place op on a leaf). `chunk_indices` is accepted and unused (our
    positions come from cu_seqlens directly).

    PyTorch only: the gather and the rotation of `rotary_embedding_ref`, in float32. RotaryEmbedding (the module)
    is the fused path: its kernel makes the angles from the positions and needs no table."""
    if x.dim() != 4:
        raise ValueError(f"x must be [B, T, H, D] (got {tuple(x.shape)})")
    if cos.shape != sin.shape or cos.dim() != 2 or 2 * cos.shape[1] > x.shape[-1]:
        raise ValueError(f"cos and sin must both be [TR, R] with 2R <= head dim {x.shape[-1]} (got "
                         f"{tuple(cos.shape)} and {tuple(sin.shape)})")
    B, T = x.shape[:2]
    num_seqs = B if cu_seqlens is None else check_cu_seqlens(cu_seqlens, B, T)
    _check_offset(seqlen_offsets, B, num_seqs)
    pos = rotary_positions(B, T, seqlen_offsets, cu_seqlens, x.device).long()
    if pos.numel() and int(pos.max()) >= cos.shape[0]:
        raise ValueError(f"positions reach {int(pos.max())} but the cos/sin tables have {cos.shape[0]} rows: "
                         "build them for the longest sequence plus its offset")
    y = rotary_embedding_ref(x.float(), cos.float()[pos], sin.float()[pos], interleaved).to(x.dtype)
    return x.copy_(y) if inplace else y


class RotaryEmbedding(nn.Module):
    """`forward(q, k, seqlen_offset=0, cu_seqlens=None, max_seqlen=None) -> (q, k)` with q/k [B, T, H, D], D >= dim.

    `seqlen_offset`: an int (tokens already seen, when decoding) or a tensor [B] (one per row; e.g. cache length
    minus left padding), or [N] per document under `cu_seqlens`. Angles are computed from the positions, so there is
    no table to size; `_cos_cached` / `_sin_cached` ([L, dim / 2] float32, L = max_seqlen or the furthest position of
    the last call), which the peer library's module keeps, are built on demand for code that reads them. `inv_freq`
    is a non-persistent buffer: `reset_parameters()` recomputes it (after building on the meta device and
    `to_empty`).
    """

    def __init__(self, dim: int, base: float = 10000.0, scale_base: float | None = None, interleaved: bool = False,
                 pos_idx_in_fp32: bool = True, device=None):
        # scale_base (xPos) and pos_idx_in_fp32 are the peer library's arguments, in its order; only the values that
        # describe what this module computes are accepted, any other is refused rather than ignored
        super().__init__()
        if scale_base is not None:
            raise ValueError("scale_base (xPos rotary scaling) is not supported by fla's RotaryEmbedding; pass None")
        if not pos_idx_in_fp32:
            raise ValueError("pos_idx_in_fp32=False is not supported: fla's RotaryEmbedding always computes "
                             "positions and angles in float32")
        if dim < 2 or dim % 2:
            raise ValueError(f"rotary dim must be a positive even number (got {dim})")
        self.dim, self.base, self.interleaved = dim, float(base), interleaved
        self.register_buffer("inv_freq", torch.empty(dim // 2, dtype=torch.float32, device=device), persistent=False)
        self._last_call = (0, 0, None)  # (seq_len, seqlen_offset, max_seqlen) of the last forward, for _cos_cached
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            exponent = torch.arange(0, self.dim, 2, dtype=torch.float32, device=self.inv_freq.device) / self.dim
            self.inv_freq.copy_(1.0 / self.base ** exponent)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}, interleaved={self.interleaved}"

    def forward(self, q, k, seqlen_offset=0, cu_seqlens=None, max_seqlen=None, chunk_indices=None):
        """q [B, T, HQ, D], k [B, T, H, D] -> both rotated at their positions (t + seqlen_offset, or the position
        inside each cu_seqlens document plus its offset). chunk_indices is the peer's precomputed (sequence, block)
        index of cu_seqlens; it is accepted for its call form and not needed: the varlen index is built once per
        cu_seqlens and memoized (`fla.ops.utils.index.varlen_index`)."""
        for name, t in (("q", q), ("k", k)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[-1] < self.dim:
                got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must be [B, T, H, D] with D >= rotary dim {self.dim} (got {got})")
        if k.shape[:2] != q.shape[:2]:
            raise ValueError(f"q and k must share [B, T] (got {list(q.shape[:2])} and {list(k.shape[:2])})")
        B, T = q.shape[:2]
        N = B if cu_seqlens is None else check_cu_seqlens(cu_seqlens, B, T)
        _check_offset(seqlen_offset, B, N)
        positions = rotary_positions(B, T, seqlen_offset, cu_seqlens, q.device)
        if not torch.compiler.is_compiling():  # bookkeeping for _cos_cached only; a compiled graph skips it
            self._last_call = (T, seqlen_offset, max_seqlen)
        inv_freq = self.inv_freq.float()
        return (
            rotary(q.contiguous(), positions, inv_freq, self.interleaved),
            rotary(k.contiguous(), positions, inv_freq, self.interleaved),
        )

    def _table(self) -> torch.Tensor:
        T, offset, max_seqlen = self._last_call
        if max_seqlen is None:
            max_seqlen = T + (int(offset.max()) if isinstance(offset, torch.Tensor) and offset.numel() else int(offset))
        positions = torch.arange(max(int(max_seqlen), 0), dtype=torch.float32, device=self.inv_freq.device)
        return positions[:, None] * self.inv_freq.float()[None, :]

    @property
    def _cos_cached(self) -> torch.Tensor:
        return self._table().cos()

    @property
    def _sin_cached(self) -> torch.Tensor:
        return self._table().sin()
