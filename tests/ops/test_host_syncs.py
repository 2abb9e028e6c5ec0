"""Varlen ops never stall the host: given `cu_seqlens_cpu` a chunked op reads no device value in forward and
backward; without it, at most one read (the boundaries, once per cu_seqlens tensor); and the index of a cu_seqlens
is built once and shared by every block and every later call (fla/ops/utils/index.py).

Syncs are seen with tests/host_trace.py (tensors standing for device tensors are tracked through every aten op,
backward included). Launches are skipped here (only the host code matters; the kernels' results are tested in each
family's file), so each case costs milliseconds; one case runs the kernels to show that the host-built index gives
the results the device-built one did.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.ops.attn import parallel_attn
from fla.ops.delta_rule import chunk_delta_rule
from fla.ops.gated_delta_rule import chunk_gated_delta_rule
from fla.ops.gla import chunk_gla
from fla.ops.linear_attn import chunk_linear_attn
from fla.ops.retention import chunk_retention
from fla.ops.simple_gla import chunk_simple_gla, parallel_simple_gla
from fla.ops.utils.dispatch import use_backend
from fla.ops.utils.index import varlen_index
from tests import host_trace as ht
from tests.helpers import assert_close, seed

LENGTHS = (1, 70, 64, 45)  # a length-1 sequence, lengths that are not multiples of the chunk
H, D = 2, 32

OPS = {
    "chunk_simple_gla": lambda x, **kw: chunk_simple_gla(x["q"], x["k"], x["v"], g=x["g"], **kw),
    "chunk_gla": lambda x, **kw: chunk_gla(x["q"], x["k"], x["v"], x["gk"], **kw),
    "chunk_retention": lambda x, **kw: chunk_retention(x["q"], x["k"], x["v"], **kw),
    "chunk_linear_attn": lambda x, **kw: chunk_linear_attn(x["q"], x["k"], x["v"], normalize=False, **kw),
    "chunk_delta_rule": lambda x, **kw: chunk_delta_rule(x["q"], x["k"], x["v"], x["beta"],
                                                         use_qk_l2norm_in_kernel=True, **kw),
    "chunk_gated_delta_rule": lambda x, **kw: chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"],
                                                                     use_qk_l2norm_in_kernel=True, **kw),
    "parallel_simple_gla": lambda x, **kw: parallel_simple_gla(x["q"], x["k"], x["v"], g=x["g"], **kw),
    "parallel_attn": lambda x, **kw: parallel_attn(x["q"], x["k"], x["v"], **kw),
}


def inputs(mark: bool) -> dict:
    T = sum(LENGTHS)

    def leaf(t):
        t = t.requires_grad_()
        return ht.on_device(t) if mark else t

    return dict(q=leaf(torch.randn(1, T, H, D)), k=leaf(F.normalize(torch.randn(1, T, H, D), dim=-1)),
                v=leaf(torch.randn(1, T, H, D)), g=leaf(F.logsigmoid(torch.randn(1, T, H))),
                gk=leaf(F.logsigmoid(torch.randn(1, T, H, D)) / 8), beta=leaf(torch.rand(1, T, H)))


def boundaries() -> list[int]:
    out = [0]
    for n in LENGTHS:
        out.append(out[-1] + n)
    return out


def forward_backward(name: str, x: dict, **kw):
    out = OPS[name](x, **kw)
    o = out[0] if isinstance(out, tuple) else out
    torch.autograd.backward(o, ht.on_device(torch.ones_like(o)))
    return o


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("with_cpu_copy", [True, False])
def test_varlen_op_syncs_at_most_once(name, with_cpu_copy):
    seed(name, with_cpu_copy)
    x = inputs(mark=True)
    cu = ht.on_device(torch.tensor(boundaries(), dtype=torch.int32))
    kw = {"cu_seqlens": cu}
    if with_cpu_copy:
        kw["cu_seqlens_cpu"] = torch.tensor(boundaries(), dtype=torch.int32)
    with use_backend("triton"), ht.count_launches(skip=True):
        with ht.HostTrace() as first:
            forward_backward(name, x, **kw)
        with ht.HostTrace() as again:  # the next layer: same cu_seqlens tensor
            forward_backward(name, x, **kw)
    assert first.launches > 0, "no kernel launch was seen: the trace is not looking at the op"
    allowed = 0 if with_cpu_copy else 1
    assert len(first.syncs) <= allowed, f"{name}: device->host syncs {first.syncs} (at most {allowed})"
    assert again.syncs == [], f"{name}: a second call with the same cu_seqlens synced again: {again.syncs}"


def test_trace_sees_a_sync():
    """The check above can fail: a read of a device value, forward or backward, is seen with its line."""

    class ReadsInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, cu):
            ctx.save_for_backward(cu)
            return x * 2

        @staticmethod
        def backward(ctx, g):
            (cu,) = ctx.saved_tensors
            lens = cu[1:] - cu[:-1]
            int(lens.max())
            torch.repeat_interleave(torch.arange(len(lens)), lens)
            return g * 2, None

    x = ht.on_device(torch.randn(4, requires_grad=True))
    cu = ht.on_device(torch.tensor([0, 1, 4]))
    with ht.HostTrace() as trace:
        cu.tolist()
        ReadsInBackward.apply(x, cu).sum().backward()
    assert [s for s, _ in trace.syncs] == ["tolist", "_local_scalar_dense", "repeat_interleave"]
    assert all("test_host_syncs.py" in where for _, where in trace.syncs)
    with ht.HostTrace() as trace:
        torch.tensor([0, 1, 4]).tolist()  # a host tensor: no sync
    assert trace.syncs == []


def test_index_is_built_once_per_cu_seqlens():
    cu = torch.tensor(boundaries(), dtype=torch.int32)
    index = varlen_index(cu, cu.clone())
    assert varlen_index(cu) is index
    assert index.chunk_indices(64) is index.chunk_indices(64)
    assert varlen_index(cu.clone()) is not index  # another tensor (same values): another batch
    cu[1] = 2  # written in place: the memo must not serve the old boundaries
    assert varlen_index(cu).bounds[1] == 2


def test_host_copy_gives_the_same_results():
    """The index built from cu_seqlens_cpu drives the kernels exactly as the one built from cu_seqlens did."""
    seed("host copy")
    x = inputs(mark=False)
    results = []
    for with_cpu_copy in (False, True):
        cu = torch.tensor(boundaries(), dtype=torch.int32)
        kw = {"cu_seqlens": cu, "output_final_state": True}
        if with_cpu_copy:
            kw["cu_seqlens_cpu"] = cu.clone()
        leaves = {n: t.detach().clone().requires_grad_() for n, t in x.items()}
        o, ht_final = chunk_gated_delta_rule(leaves["q"], leaves["k"], leaves["v"], leaves["g"], leaves["beta"], **kw)
        (o.sum() + ht_final.sum()).backward()
        results.append([o, ht_final] + [leaves[n].grad for n in ("q", "k", "v", "g", "beta")])
    for name, got, want in zip(("o", "ht", "dq", "dk", "dv", "dg", "dbeta"), results[1], results[0]):
        assert_close(name, got, want, 1e-6)


def test_memo_is_not_baked_into_a_compiled_graph():
    """Under torch.compile (flame compiles each block) the memo is read eagerly: a traced identity lookup would
    serve the first batch's index to every later one."""
    from fla.ops.utils.index import num_chunks, prepare_chunk_indices

    def f(x, cu):
        idx = prepare_chunk_indices(cu, 4)
        return x[: len(idx)] + idx.sum(), num_chunks(0, cu, 4)

    compiled = torch.compile(f, backend="eager", dynamic=False)
    x = torch.arange(100.0)
    for bounds in ([0, 5, 12], [0, 1, 12], [0, 9, 12], [0, 5, 12]):
        cu = torch.tensor(bounds, dtype=torch.int32)
        (got, n_got), (want, n_want) = compiled(x, cu), f(x, cu)
        assert torch.equal(got, want) and n_got == n_want, bounds
