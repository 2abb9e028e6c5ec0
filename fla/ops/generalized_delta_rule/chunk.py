"""The DPLR delta rule in chunks (training path), composed from `fla/ops/utils/dplr.py` and `dplr_h.py`.

    S_t = diag(exp(gk_t)) S_{t-1} + b_t^T (a_t S_{t-1}) + k_t^T v_t,   o_t = scale * q_t S_t   (state [K, V])
Forward: Gi = chunk-local cumsum of gk; the chunk matrices and gated rows (`dplr_fwd_intra`); the state pass, which
also gives the low-rank reads u (`dplr_fwd_h`); the output (`dplr_fwd_o`). Backward recomputes those, then walks the
states backwards (`dplr_bwd_dh`: dh and z = Tm^T du), and finishes per chunk (`dplr_bwd_dv`, `dplr_bwd_intra`); the
raw gate gradient is a reverse chunk-local cumsum. On a plain CPU the same function runs as a chunked PyTorch form
(`_chunk_dplr_torch`) that autograd differentiates.
"""
from __future__ import annotations

import torch

from fla.ops.cp.chunk import check_cp_call, chunk_cp
from fla.ops.cp.context import FLACPContext
from fla.ops.utils.checks import (check_cu_seqlens, check_head_dim, check_initial_state, check_scale, check_tensor,
                                  normalize_inputs)
from fla.ops.utils.cumsum import chunk_local_cumsum
from fla.ops.utils.dispatch import dispatch
from fla.ops.utils.dplr import dplr_bwd_intra, dplr_fwd_intra
from fla.ops.utils.dplr_h import dplr_bwd_dh, dplr_bwd_dv, dplr_fwd_h, dplr_fwd_o
from fla.ops.utils.index import sequence_spans

CHUNK_SIZE = 16


def check_dplr_inputs(q, k, v, a, b, gk, scale, initial_state, cu_seqlens) -> int:
    """The DPLR family's input checks; returns the number of sequences N."""
    check_tensor("q", q, "[B, T, H, K]", (None, None, None, None))
    B, T, H, K = q.shape
    check_head_dim("q", K)
    for name, x in (("k", k), ("a", a), ("b", b)):
        check_tensor(name, x, "[B, T, H, K]", (B, T, H, K), (q.dtype,), q.device)
    check_tensor("v", v, "[B, T, H, V]", (B, T, H, None), (q.dtype,), q.device)
    check_head_dim("v", v.shape[-1])
    check_tensor("gk", gk, "[B, T, H, K]", (B, T, H, K), device=q.device)
    check_scale(scale)
    N = B if cu_seqlens is None else check_cu_seqlens(cu_seqlens, B, T)
    check_initial_state(initial_state, N, (H, K, v.shape[-1]), "[N, H, K, V]", q.device)
    return N


# ------------------------------------------------------------------------------------------------------------------
# Triton path
# ------------------------------------------------------------------------------------------------------------------

def _forward_parts(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens, chunk_size):
    gk = gk.float()
    gi = chunk_local_cumsum(gk, chunk_size, cu_seqlens=cu_seqlens)
    qs = q.float() * scale
    Aqk, Aqb, Aak, Tm, Au, w, qg, kd, bd, ag = dplr_fwd_intra(qs, k, a, b, gi, gk, cu_seqlens, chunk_size)
    h, u, ht = dplr_fwd_h(v, w, kd, bd, Au, gi, initial_state, output_final_state, cu_seqlens, chunk_size)
    return dict(gk=gk, gi=gi, qs=qs, Aqk=Aqk, Aqb=Aqb, Aak=Aak, Tm=Tm, qg=qg, kd=kd, bd=bd, ag=ag, h=h, u=u, ht=ht)


def chunk_dplr_fwd(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens, chunk_size=CHUNK_SIZE):
    """-> (o [B, T, H, V] in v's dtype, final state float32 or None)."""
    p = _forward_parts(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens, chunk_size)
    o = dplr_fwd_o(p["qg"], v, p["u"], p["h"], p["Aqk"], p["Aqb"], cu_seqlens, chunk_size)
    return o, p["ht"]


def chunk_dplr_bwd(q, k, v, a, b, gk, scale, initial_state, do, dht, cu_seqlens, chunk_size=CHUNK_SIZE):
    """Gradients (dq, dk, dv, da, db, dgk, dh0), float32; everything the forward made is recomputed."""
    p = _forward_parts(q, k, v, a, b, gk, scale, initial_state, False, cu_seqlens, chunk_size)
    dh, z, dh0 = dplr_bwd_dh(p["qg"], p["ag"], p["bd"], do, p["Aqb"], p["Tm"], p["gi"], initial_state, dht,
                             cu_seqlens, chunk_size)
    dv = dplr_bwd_dv(p["kd"], do, z, dh, p["Aqk"], p["Aak"], cu_seqlens, chunk_size)
    dq, dk, da, db, dgs, dge = dplr_bwd_intra(p["qs"], k, a, b, p["gi"], p["gk"], v, p["u"], z, do, p["h"], dh,
                                              cu_seqlens, chunk_size)
    dgk = chunk_local_cumsum(dgs, chunk_size, reverse=True, cu_seqlens=cu_seqlens) - dge
    return dq * scale, dk, dv, da, db, dgk, dh0


class ChunkDPLRDeltaRuleFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens):
        o, ht = chunk_dplr_fwd(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens)
        ctx.save_for_backward(q, k, v, a, b, gk, initial_state, cu_seqlens)
        ctx.scale = scale
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        return dplr_backward(ctx, do, dht)


def dplr_backward(ctx, do, dht):
    """The backward shared by the chunk and fused_recurrent functions (same saved tensors, same math)."""
    q, k, v, a, b, gk, initial_state, cu_seqlens = ctx.saved_tensors
    dq, dk, dv, da, db, dgk, dh0 = chunk_dplr_bwd(q, k, v, a, b, gk, ctx.scale, initial_state, do.contiguous(),
                                                  dht.contiguous() if dht is not None else None, cu_seqlens)
    grads = (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), da.to(a.dtype), db.to(b.dtype), dgk.to(gk.dtype))
    return (*grads, None, dh0, None, None)


# ------------------------------------------------------------------------------------------------------------------
# PyTorch path (plain CPU): the same chunk equations on padded chunks, one sequence at a time, autograd backward
# ------------------------------------------------------------------------------------------------------------------

def _sequences_torch(q, k, v, a, b, gk, S, chunk_size):
    """q..gk: [N, H, L, *] float32 (q scaled; rows past a sequence's end all zero); S: [N, H, K, V] float32.
    Returns (o [N, H, L, V], final S). Everything inside a chunk is computed for all chunks at once; only the state
    pass walks the chunks. Zero rows neither write, read nor decay, so padding never touches a state."""
    L = q.shape[-2]
    BT = chunk_size
    pad = (-L) % BT

    def chunks(x):
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        return x.view(*x.shape[:-2], -1, BT, x.shape[-1])  # [N, H, NT, BT, *]

    q, k, v, a, b, gk = (chunks(x) for x in (q, k, v, a, b, gk))
    incl = torch.ones(BT, BT, dtype=torch.bool, device=q.device).tril()
    strict = incl.tril(-1)
    gi = gk.cumsum(-2)
    ge = gi - gk
    gl = gi[..., -1:, :]  # [N, H, NT, 1, K]
    if bool(gl.min() > -SPLIT_DECAY_LIMIT):
        # exp(Gi_t - Gi_s) = exp(Gi_t) exp(-Gi_s): both factors within exp(+-60) when no chunk decays further, so
        # the matrices are matmuls (the non-causal half, possibly large but finite, is masked after)
        qf, af = q * gi.exp(), a * ge.exp()
        kf, bf = (k * (-gi).exp()).transpose(-1, -2), (b * (-gi).exp()).transpose(-1, -2)
        Aqk, Aqb = (qf @ kf).masked_fill(~incl, 0), (qf @ bf).masked_fill(~incl, 0)
        Aak, Aab = (af @ kf).masked_fill(~strict, 0), (af @ bf).masked_fill(~strict, 0)
    else:
        # [..., t, s, K] decays, -inf off the causal part before the exp (see dplr.py); element-wise products and a
        # sum, not einsum, which lowers these to a bmm per (t, s) pair
        ei = torch.where(incl[:, :, None], gi[..., :, None, :] - gi[..., None, :, :], float("-inf")).exp()
        ee = torch.where(strict[:, :, None], ge[..., :, None, :] - gi[..., None, :, :], float("-inf")).exp()
        qe, ae = q[..., :, None, :] * ei, a[..., :, None, :] * ee
        Aqk, Aqb = (qe * k[..., None, :, :]).sum(-1), (qe * b[..., None, :, :]).sum(-1)
        Aak, Aab = (ae * k[..., None, :, :]).sum(-1), (ae * b[..., None, :, :]).sum(-1)
    system = torch.eye(BT, device=q.device) - Aab
    u0 = torch.linalg.solve_triangular(system, Aak @ v, upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(system, a * ge.exp(), upper=False, unitriangular=True)
    qg, dl = q * gi.exp(), (gl - gi).exp()
    kd, bd, decay = (k * dl).transpose(-1, -2), (b * dl).transpose(-1, -2), gl.exp().transpose(-1, -2)
    states, us = [], []
    for c in range(q.shape[-3]):
        states.append(S)
        u = u0[..., c, :, :] + w[..., c, :, :] @ S
        us.append(u)
        S = decay[..., c, :, :] * S + kd[..., c, :, :] @ v[..., c, :, :] + bd[..., c, :, :] @ u
    u, h = torch.stack(us, -3), torch.stack(states, -3)
    o = qg @ h + Aqk @ v + Aqb @ u
    return o.reshape(*o.shape[:-3], -1, o.shape[-1])[..., :L, :], S


# the PyTorch form's chunk: its state pass is a Python loop over chunks, so longer chunks than the kernels' 16 pay
# off
TORCH_CHUNK_SIZE = 32
# the largest chunk decay |Gi_last| for which the PyTorch form splits exp(Gi_t - Gi_s) into two factors
SPLIT_DECAY_LIMIT = 60.0


def _length_groups(spans: list[tuple[int, int, int]], chunk_size: int) -> list[list[int]]:
    """Packed sequences in groups padded to their longest together: longest first, a group closes when padding
    would more than double its tokens (many short documents and a few long ones stay cheap)."""
    order = sorted((i for i, (_, bos, eos) in enumerate(spans) if eos > bos),
                   key=lambda i: spans[i][1] - spans[i][2])
    groups, tokens = [], 0
    for i in order:
        n = spans[i][2] - spans[i][1]
        if groups:
            longest = -(-(spans[groups[-1][0]][2] - spans[groups[-1][0]][1]) // chunk_size) * chunk_size
            if longest * (len(groups[-1]) + 1) <= 2 * (tokens + n):
                groups[-1].append(i)
                tokens += n
                continue
        groups.append([i])
        tokens = n
    return groups


def _chunk_dplr_torch(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens,
                      chunk_size=TORCH_CHUNK_SIZE):
    B, T, H, K = q.shape
    V = v.shape[-1]
    xs = [x.float().transpose(1, 2) for x in (q.float() * scale, k, v, a, b, gk)]  # [B, H, T, *]
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    h0 = initial_state.float() if initial_state is not None else q.new_zeros(N, H, K, V, dtype=torch.float32)
    if cu_seqlens is None:
        o, ht = _sequences_torch(*xs, h0, chunk_size)
        return o.transpose(1, 2).to(v.dtype), (ht if output_final_state else None)
    spans = sequence_spans(cu_seqlens, 1, T)
    pieces, rows = [], []
    finals = list(h0.unbind(0))
    for group in _length_groups(spans, chunk_size):
        L = max(spans[i][2] - spans[i][1] for i in group)
        # [N_group, H, L, *], each sequence's rows first and zeros after them
        padded = [torch.stack([torch.nn.functional.pad(x[0, :, spans[i][1]:spans[i][2]],
                                                       (0, 0, 0, L - spans[i][2] + spans[i][1])) for i in group])
                  for x in xs]
        og, hg = _sequences_torch(*padded, torch.stack([finals[i] for i in group]), chunk_size)
        for j, i in enumerate(group):
            bos, eos = spans[i][1], spans[i][2]
            pieces.append(og[j, :, :eos - bos])
            rows.append(torch.arange(bos, eos, device=q.device))
            finals[i] = hg[j]
    o = q.new_zeros(H, T, V, dtype=torch.float32)
    if pieces:  # one scatter of every sequence's rows (all rows are some sequence's)
        o = o.index_copy(1, torch.cat(rows), torch.cat(pieces, 1))
    o = o[None].transpose(1, 2).to(v.dtype)
    return o, (torch.stack(finals) if output_final_state else None)


def _dplr_triton(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens, function):
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    return function.apply(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens)


def _dplr_torch(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens, function):
    return _chunk_dplr_torch(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens)


_dplr = dispatch(_dplr_triton, _dplr_torch)


def dplr_family(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens, function):
    """Shared body of the chunk and fused_recurrent ops after the checks: the backend (the Triton path runs
    `function`, the chunk or the fused recurrent autograd function; the PyTorch path is the chunked form)."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _dplr(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens, function)


@normalize_inputs
def chunk_dplr_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    safe_gate: bool = False,
    chunk_size: int | None = None,
    disable_recompute: bool = False,
    cp_context: FLACPContext | None = None,
    lower_bound: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The DPLR delta rule (`S_t = diag(exp(gk_t)) S_{t-1} + b_t^T (a_t S_{t-1}) + k_t^T v_t`, `o_t = scale q_t S_t`;
    in the peer's value-first words S_t = S_{t-1} (D_t + a_t b_t^T) + v_t k_t^T), chunk-parallel; differentiable.

    Args:
        q, k, a, b: [B, T, H, K]; v: [B, T, H, V]
        gk: [B, T, H, K] log decays (<= 0)
        scale: defaults to K ** -0.5
        initial_state: [N, H, K, V] float32 (N = B, or the number of sequences under cu_seqlens)
        cu_seqlens: [N + 1] int, packed sequences, B must be 1; cu_seqlens_cpu: the same on the host (optional)
        safe_gate, chunk_size, disable_recompute, lower_bound: the peer's tuning options; accepted, and the results
            do not depend on them (chunks are 16 tokens; the decays are formed so that any gate is safe)
        cp_context: this rank's piece of a sequence split across ranks (fla.ops.cp.build_cp_context); the inputs
            are then this rank's tokens, and cu_seqlens / initial_state / output_final_state are not taken
    Returns:
        o: [B, T, H, V]; final_state: [N, H, K, V] float32 or None
    """
    if "head_first" in kwargs:
        raise ValueError("head_first was removed: pass [B, T, H, ...] tensors (x.transpose(1, 2) a head-first one)")
    if kwargs:
        raise ValueError(f"unexpected arguments {sorted(kwargs)} for chunk_dplr_delta_rule")
    if cp_context is not None:
        check_cp_call(cp_context, initial_state, output_final_state, cu_seqlens)
        cu_seqlens = cp_context.cu_seqlens
    if lower_bound is not None and lower_bound >= 0:
        raise ValueError(f"lower_bound must be negative (gk is a log decay < 0), got {lower_bound}")
    check_dplr_inputs(q, k, v, a, b, gk, scale, initial_state, cu_seqlens)
    if cp_context is not None:
        # the state update is linear in the state: K extra value columns of zeros from the identity carry the
        # piece's transition M (fla/ops/cp/chunk.py), as for the other delta rules
        def run(v, h0):
            return dplr_family(q, k, v, a, b, gk, scale, h0, True, cu_seqlens, ChunkDPLRDeltaRuleFunction)
        return chunk_cp(run, q, v, None, 1.0, cp_context, diagonal=False), None
    o, ht = dplr_family(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens,
                        ChunkDPLRDeltaRuleFunction)
    return o, (ht if output_final_state else None)
