"""`parallel_attn` under context parallelism on its Triton path (the query-offset kernels, interpreted on a CPU):
2 gloo ranks, packed documents (one crossing the rank boundary, a length-1 one) with a gate and an attention sink,
and fixed-length rows with a window; outputs and every gradient equal the single-rank op's (its SDPA path).

tests/ops/test_context_parallel.py covers every CP op on 4 ranks and sub-groups on the PyTorch path; this one only
checks that the Triton route (keys gathered in the input dtype, cut to what the piece's queries can see, dk/dv/dg of
the earlier ranks' keys handed back through the all-gather's backward) gives the same answer.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from tests.cp_helpers import run_on_ranks

T = 64
GLOBAL_CU = [0, 5, 6, 40, 41, 64]  # 6-40 crosses the boundary at 32 (rank 1's first query 26 keys into it)
REL = 2e-5


def _check(rank, world, failures):
    from fla.ops.attn.parallel import parallel_attn
    from fla.ops.cp import build_cp_context
    from fla.ops.utils.dispatch import get_backend, use_backend
    from tests.helpers import rel_err, seed
    assert get_backend(torch.zeros(1)) == "triton", "the workers must run the interpreted Triton path"
    L = T // world
    piece = slice(rank * L, (rank + 1) * L)
    for mode, B, window, gated in (("varlen", 1, None, True), ("fixed", 2, 21, False)):
        seed("cp attn triton", mode)  # the same inputs on every rank
        x = dict(q=torch.randn(B, T, 4, 16), k=torch.randn(B, T, 2, 16), v=torch.randn(B, T, 2, 24))
        if gated:
            x["g"] = F.logsigmoid(torch.randn(B, T, 4))
        x["sink_bias"] = torch.randn(4)
        w = torch.randn(B, T, 4, 24)
        cu = torch.tensor(GLOBAL_CU, dtype=torch.int32) if mode == "varlen" else None

        def call(t, **where):
            return parallel_attn(t["q"], t["k"], t["v"], t.get("g"), window_size=window,
                                 sink_bias=t["sink_bias"], **where)

        full = {n: t.clone().requires_grad_() for n, t in x.items()}
        with use_backend("torch"):
            ref = call(full, cu_seqlens=cu)
        ref_grads = torch.autograd.grad((ref * w).sum(), list(full.values()))
        ctx = build_cp_context(cu, None)
        local = {n: (t[:, piece] if n != "sink_bias" else t).clone().requires_grad_() for n, t in x.items()}
        got = call(local, cp_context=ctx)
        got_grads = list(torch.autograd.grad((got * w[:, piece]).sum(), list(local.values())))
        dist.all_reduce(got_grads[-1])  # each rank holds its queries' share of the sink's gradient
        checks = [("o", got, ref[:, piece])]
        checks += [(f"d{n}", a, b if n == "sink_bias" else b[:, piece])
                   for n, a, b in zip(x, got_grads, ref_grads)]
        for what, a, b in checks:
            err = rel_err(a, b)
            if not (err <= REL) or not torch.isfinite(a).all():
                failures.append(f"{mode} rank {rank}: {what} rel err {err:.2e}")


def test_parallel_attn_cp_triton_path_matches_single_rank(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the spawned workers import triton with it
    monkeypatch.delenv("FLA_BACKEND", raising=False)
    run_on_ranks(_check, 2)
