"""Long causal convolution (Hyena-style), computed with FFTs in O(T log T).

Per channel h, with a filter k[h, :] of as many taps as the sequence has (longer filters are cut, shorter ones
are zero-padded):

    y[t, h] = u[t, h] + sum_{j <= t} k[h, j] * u[t - j, h]            (+ sum_{j < T} k_rev[h, j] * u[t + j, h])

The skip term `+ u` is part of the op (a Hyena D = 1 shortcut), as in the peer library. `LongConvolution` learns
k directly ([hidden_size, max_len]); `ImplicitLongConvolution` makes it with a small MLP over positional features.

Both FFTs are of size 2T, enough that no output wraps around. The peer's `fft_conv` transforms the whole filter at
that size, so with a filter longer than T + 1 taps its outputs also see future inputs (taps j > T wrap around to
t - j + 2T); this one uses only the first T taps, which is the causal convolution above. The two agree whenever
max_len <= seq_len + 1.

No Triton kernel: the work is two FFTs (cuFFT on a GPU), as in the peer. The transforms run in float32 (float64 for
double inputs), so half-precision inputs work on every device; outputs have the input's dtype.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _check_filter(name: str, k: torch.Tensor | None, u: torch.Tensor) -> None:
    if k is None:
        return
    if not isinstance(k, torch.Tensor) or not k.is_floating_point() or k.dim() < 1:
        raise ValueError(f"{name} must be a floating-point tensor [H, L] (got {type(k).__name__})")
    if k.dim() > 1 and k.shape[-2] not in (1, u.shape[1]):
        raise ValueError(f"{name} must have one filter per channel: [{u.shape[1]}, L] for u of shape "
                         f"{list(u.shape)} (got {list(k.shape)})")


def _spectrum(k: torch.Tensor, seq_len: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """rfft of the first `seq_len` taps of k at size n (the later taps cannot reach a causal output)."""
    return torch.fft.rfft(k[..., :seq_len].to(dtype), n=n)


def fft_conv(
    u: torch.Tensor,
    k: torch.Tensor,
    dropout_mask: torch.Tensor | None,
    gelu: bool = True,
    k_rev: torch.Tensor | None = None,
) -> torch.Tensor:
    """The long convolution of the module docstring (channels first), then GELU and a channel dropout mask.

    Args:
        u: [B, H, T] inputs (or [B, H, X, T]: the filter is shared across X)
        k: [H, L] or [1, H, L] causal filter; L > T taps are cut, L < T zero-padded
        dropout_mask: [B, H] multiplier per channel, or None
        gelu: apply GELU (exact) to `y`
        k_rev: like k, an anti-causal filter (tap j reads u[t + j]), or None
    Returns:
        [B, H, T] (like u) in u's dtype
    """
    if not isinstance(u, torch.Tensor) or not u.is_floating_point() or u.dim() < 3:
        got = list(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"u must be a floating-point [B, H, T] tensor, channels first (got {got})")
    _check_filter("k", k, u)
    _check_filter("k_rev", k_rev, u)
    if dropout_mask is not None and (not isinstance(dropout_mask, torch.Tensor)
                                     or dropout_mask.shape != u.shape[:2]):
        got = list(dropout_mask.shape) if isinstance(dropout_mask, torch.Tensor) else type(dropout_mask).__name__
        raise ValueError(f"dropout_mask must be [B, H] = {list(u.shape[:2])} or None (got {got})")
    T = u.shape[-1]
    n = 2 * T  # >= 2T - 1: the circular convolution of that size has no wrap-around on the first T outputs
    dtype = torch.float64 if torch.float64 in (u.dtype, k.dtype) else torch.float32
    k_f = _spectrum(k, T, n, dtype)
    if k_rev is not None:
        # the conjugate spectrum is the time-reversed filter: y[t] += sum_j k_rev[j] u[t + j]
        k_f = k_f + _spectrum(k_rev, T, n, dtype).conj()
    if u.dim() > 3:
        k_f = k_f.unsqueeze(-2)  # [H, F] -> [H, 1, F]: one filter for every row of a channel
    y = torch.fft.irfft(torch.fft.rfft(u.to(dtype), n=n) * k_f, n=n)[..., :T]
    out = y + u
    if gelu:
        out = F.gelu(out)
    if dropout_mask is not None:
        out = out * dropout_mask.reshape(*dropout_mask.shape, *([1] * (u.dim() - 2)))
    return out.to(u.dtype)


def _check_input(x: torch.Tensor, hidden_size: int) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 3 or x.shape[-1] != hidden_size:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point [batch_size, seq_len, hidden_size={hidden_size}] tensor "
                         f"(got {got})")


class LongConvolution(nn.Module):
    """Causal long convolution with a learned filter per channel (`filter`: [hidden_size, max_len], standard normal
    init): `forward(x [B, T, hidden_size]) -> x + conv(x, filter)` of the same shape and dtype (module docstring).
    Extra constructor and forward arguments are accepted and ignored, as in the peer library."""

    def __init__(self, hidden_size: int, max_len: int, **kwargs) -> None:
        super().__init__()
        self.hidden_size, self.max_len = hidden_size, max_len
        self.filter = nn.Parameter(torch.randn(hidden_size, max_len))

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, max_len={self.max_len}"

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        _check_input(x, self.hidden_size)
        return fft_conv(x.transpose(1, 2), self.filter, None, gelu=False).transpose(1, 2)


class PositionalEmbedding(nn.Module):
    """The features an implicit filter is computed from, `z`: [1, seq_len, emb_dim] (a frozen parameter):
    column 0 is t / (seq_len - 1) in [0, 1]; then cos(f_b w_t) for b < B and -sin(f_b w_t) for b < B, the real and
    imaginary parts of exp(-i f_b w_t), with w_t = 2 pi t / seq_len, B = (emb_dim - 1) / 2 bands and frequencies
    f evenly spaced from 1e-4 to B - 1. `forward(L)` -> z[:, :L]."""

    def __init__(self, emb_dim: int, seq_len: int, **kwargs) -> None:
        super().__init__()
        if not isinstance(emb_dim, int) or emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"emb_dim must be an odd int >= 3 (time, then cosine and sine bands), got {emb_dim!r}")
        self.seq_len = seq_len
        bands = (emb_dim - 1) // 2
        t = torch.linspace(0, 1, seq_len)[None, :, None]
        w = 2 * math.pi * torch.arange(seq_len, dtype=torch.float32)[None, :, None] / seq_len
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]
        z = torch.cat([t, torch.cos(f * w), -torch.sin(f * w)], dim=-1)
        self.z = nn.Parameter(z, requires_grad=False)  # a parameter (not a buffer): the peer's state-dict key

    def forward(self, L: int) -> torch.Tensor:
        return self.z[:, :L]


class ImplicitLongConvolution(nn.Module):
    """`LongConvolution` whose filter is `mlp(pos_emb(T))`, [1, hidden_size, T]: an MLP (Linear(d_emb, d_hidden),
    ReLU, Linear(d_hidden, hidden_size)) over `PositionalEmbedding(d_emb, max_len)` features, so the parameter count
    does not grow with max_len. d_emb must be odd and >= 3."""

    def __init__(self, hidden_size: int, max_len: int, d_emb: int = 3, d_hidden: int = 16, **kwargs) -> None:
        super().__init__()
        if not isinstance(d_emb, int) or d_emb < 3 or d_emb % 2 == 0:
            raise ValueError(f"d_emb must be an odd int >= 3 (time, then cosine and sine bands), got {d_emb!r}")
        self.hidden_size, self.d_emb = hidden_size, d_emb
        self.pos_emb = PositionalEmbedding(emb_dim=d_emb, seq_len=max_len)
        self.mlp = nn.Sequential(nn.Linear(d_emb, d_hidden), nn.ReLU(), nn.Linear(d_hidden, hidden_size))

    def filter(self, seq_len: int, *args, **kwargs) -> torch.Tensor:
        """[1, hidden_size, min(seq_len, max_len)]: the filter taps for a sequence of seq_len tokens."""
        return self.mlp(self.pos_emb(seq_len)).transpose(1, 2)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        _check_input(x, self.hidden_size)
        return fft_conv(x.transpose(1, 2), self.filter(x.shape[1]), None, gelu=False).transpose(1, 2)
