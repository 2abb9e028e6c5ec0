"""The gated delta rule where the peer library (fla-core 0.6.0) takes what fla used to refuse: q/k in another dtype
than v (fused recurrent), value dims above 256 (chunk and fused recurrent; the plain delta rule shares the kernels),
and the backend objects at `fla.ops.gated_delta_rule.backends` (never used by fla's dispatch). Against the
token-by-token float32 reference: output, final state and every gradient, fixed and varlen, NaN-poisoned outputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule
from fla.ops.gated_delta_rule import (chunk_gated_delta_rule, fused_recurrent_gated_delta_rule,
                                      naive_recurrent_gated_delta_rule)
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed
from tests.ops.test_gated_delta_rule import NAMES, run

OPS = {"chunk": chunk_gated_delta_rule, "recurrent": fused_recurrent_gated_delta_rule}


def inputs(B, T, H, HV, K, V, N, use_h0, qk_dtype, v_dtype):
    """q, k in qk_dtype; v and beta in v_dtype (as the peer's test_fused_recurrent has them); g, h0 float32."""
    q = torch.randn(B, T, H, K).to(qk_dtype)
    k = F.normalize(torch.randn(B, T, H, K), dim=-1).to(qk_dtype)
    v = torch.randn(B, T, HV, V).to(v_dtype)
    g = F.logsigmoid(torch.randn(B, T, HV))
    beta = torch.rand(B, T, HV).sigmoid().to(v_dtype)
    h0 = torch.randn(N, HV, K, V) if use_h0 else None
    return [x.requires_grad_() if x is not None else None for x in (q, k, v, g, beta, h0)]


def check(fn, xs, cu, final_state, rel, backend):
    B, T = xs[0].shape[:2]
    HV, V = xs[2].shape[2:]
    N = len(cu) - 1 if cu is not None else B
    cu_seqlens = torch.tensor(cu, dtype=torch.int32) if cu is not None else None
    do, dht = torch.randn(B, T, HV, V), torch.randn(N, HV, xs[0].shape[-1], V)
    with use_backend(backend), poisoned_empty():
        got = run(fn, xs, do, dht, final_state, False, cu_seqlens)
    ref = [x.detach().float().requires_grad_() if x is not None else None for x in xs]
    want = run(naive_recurrent_gated_delta_rule, ref, do, dht, final_state, False, cu_seqlens)
    dtypes = [xs[2].dtype, torch.float32] + [x.dtype if x is not None else None for x in xs]
    for name, a, b, dtype in zip(NAMES, got, want, dtypes):
        if b is None:
            assert a is None, f"{name}: expected None"
            continue
        # o in v's dtype (the peer's), the final state float32, each gradient in its input's dtype
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}, expected {dtype}"
        assert_close(name, a.float(), b, rel)


MIXED = [
    # backend, B, T, H, HV, K, V, cu_seqlens, h0, final_state, q/k dtype, v dtype
    ("triton", 2, 19, 1, 2, 16, 24, None, True, True, "float32", "float16"),
    ("triton", 1, 21, 2, 2, 20, 16, [0, 1, 8, 21], False, True, "float16", "float32"),
    ("triton", 1, 13, 1, 1, 16, 16, [0, 5, 13], True, False, "float32", "bfloat16"),
    ("torch", 1, 21, 1, 2, 16, 24, [0, 1, 8, 21], True, True, "float32", "float16"),
]


@pytest.mark.parametrize("backend,B,T,H,HV,K,V,cu,use_h0,final_state,qk_dtype,v_dtype", MIXED)
def test_recurrent_mixed_dtypes_match_naive(backend, B, T, H, HV, K, V, cu, use_h0, final_state, qk_dtype, v_dtype):
    """The peer's fused recurrent op reads q, k, v in any float dtypes each: fla's does too (float32 inside)."""
    seed("mixed", backend, B, T, H, HV, K, V, cu, use_h0, final_state, qk_dtype, v_dtype)
    N = len(cu) - 1 if cu is not None else B
    xs = inputs(B, T, H, HV, K, V, N, use_h0, getattr(torch, qk_dtype), getattr(torch, v_dtype))
    # the rounding of o (and dv, dbeta) to v's dtype and of dq, dk to q's is the only error left
    half = {qk_dtype, v_dtype} - {"float32"}
    check(fused_recurrent_gated_delta_rule, xs, cu, final_state, 1e-2 if "bfloat16" in half else 2e-3, backend)


WIDE = [
    # op, backend, B, T, HV, K, V, cu_seqlens, h0, final_state: V = 320 > 256 (more than one value tile everywhere)
    ("chunk", "triton", 1, 70, 1, 16, 320, None, True, True),
    ("chunk", "triton", 1, 70, 1, 16, 320, [0, 1, 50, 70], False, True),
    ("chunk", "torch", 1, 80, 2, 16, 320, [0, 1, 66, 80], True, True),
    ("recurrent", "triton", 2, 9, 1, 16, 320, None, False, False),
    ("recurrent", "triton", 1, 12, 2, 16, 320, [0, 1, 12], True, True),
    ("recurrent", "torch", 1, 12, 1, 16, 320, [0, 1, 12], True, True),
]


@pytest.mark.parametrize("op,backend,B,T,HV,K,V,cu,use_h0,final_state", WIDE)
def test_value_dim_above_256_matches_naive(op, backend, B, T, HV, K, V, cu, use_h0, final_state):
    seed("wide", op, backend, B, T, HV, K, V, cu, use_h0, final_state)
    N = len(cu) - 1 if cu is not None else B
    xs = inputs(B, T, 1, HV, K, V, N, use_h0, torch.float32, torch.float32)
    check(OPS[op], xs, cu, final_state, 1e-4, backend)


@pytest.mark.parametrize("op", ["chunk", "recurrent"])
def test_delta_rule_value_dim_above_256(op):
    """The plain delta rule shares the checks and kernels: V = 300 runs there too (the gated reference, g = 0)."""
    seed("wide-delta", op)
    B, T, H, K, V = 1, 70 if op == "chunk" else 9, 1, 16, 300
    q, k = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1)
    v, beta = torch.randn(B, T, H, V), torch.rand(B, T, H)
    xs = [x.requires_grad_() for x in (q, k, v, beta)]
    fn = chunk_delta_rule if op == "chunk" else fused_recurrent_delta_rule
    with use_backend("triton"), poisoned_empty():
        o, _ = fn(*xs)
    want, _ = naive_recurrent_gated_delta_rule(*[x.detach() for x in (q, k, v, beta)], None)
    assert_close("o", o, want, 1e-4)


def test_refusals_name_the_limit():
    """Where the peer refuses too: chunk with q/k and v in different dtypes (its kernels cannot multiply them),
    and key dims above 256 (its chunked state pass asserts K <= 256; fla holds K in one block on both paths)."""
    B, T, H = 1, 8, 1
    q, k, v = torch.randn(B, T, H, 16), torch.randn(B, T, H, 16), torch.randn(B, T, H, 16)
    g, beta = torch.zeros(B, T, H), torch.rand(B, T, H)
    with pytest.raises(ValueError, match="fused_recurrent_gated_delta_rule, which takes them in different dtypes"):
        chunk_gated_delta_rule(q, k, v.half(), g, beta)
    with pytest.raises(ValueError, match="must have dtype"):
        fused_recurrent_gated_delta_rule(q, k, v.double(), g, beta=beta)
    with pytest.raises(ValueError, match="v must have dtype"):
        fused_recurrent_delta_rule(q, k, v.half(), beta)  # the peer's delta rule puts o in q's dtype: not mixed here
    wide_k = torch.randn(B, T, H, 257)
    for fn in (chunk_gated_delta_rule, lambda *a: fused_recurrent_gated_delta_rule(*a[:4], beta=a[4])):
        with pytest.raises(ValueError, match=r"q head dim must be in \[1, 256\] \(got 257\)"):
            fn(wide_k, wide_k, v, g, beta)


# ---------------------------------------------------------------------------------------------------------------
# fla.ops.gated_delta_rule.backends


def _verifier_inputs(dtype=torch.bfloat16, K=128, V=128, requires_grad=False):
    q, k = (torch.empty(1, 64, 4, K, dtype=dtype).requires_grad_(requires_grad) for _ in range(2))
    v = torch.empty(1, 64, 4, V, dtype=dtype).requires_grad_(requires_grad)
    return dict(q=q, k=k, v=v, g=torch.empty(1, 64, 4), beta=torch.empty(1, 64, 4))


def test_flash_qla_verifier_answers_as_the_peer(monkeypatch):
    from fla.ops.gated_delta_rule.backends import FlashQLABackend, flash_qla

    be = FlashQLABackend()
    for name in ("IS_NVIDIA_HOPPER", "IS_NVIDIA_SM100", "IS_NVIDIA_SM120"):
        monkeypatch.setattr(flash_qla, name, False)
    ok, why = be.chunk_gated_delta_rule_verifier(**_verifier_inputs())
    assert not ok and "SM90, SM100/SM103 or SM120" in why
    monkeypatch.setattr(flash_qla, "IS_NVIDIA_HOPPER", True)
    assert be.verify("chunk_gated_delta_rule", **_verifier_inputs()) == (True, None)
    rejected = [
        (_verifier_inputs(K=64), {}, "K=128"), (_verifier_inputs(V=64), {}, "V=128"),
        (_verifier_inputs(torch.float32), {}, "float16 or bfloat16"),
        (dict(_verifier_inputs(), v=torch.empty(1, 64, 4, 128, dtype=torch.float16)), {}, "one dtype"),
        (_verifier_inputs(), dict(use_gate_in_kernel=True), "use_gate_in_kernel"),
        (_verifier_inputs(), dict(use_beta_sigmoid_in_kernel=True), "use_beta_sigmoid_in_kernel"),
        (_verifier_inputs(), dict(allow_neg_eigval=True), "allow_neg_eigval"),
        (_verifier_inputs(), dict(transpose_state_layout=True), "transpose_state_layout"),
        (_verifier_inputs(), dict(cp_context=object()), "context parallel"),
    ]
    for tensors, options, reason in rejected:
        ok, why = be.chunk_gated_delta_rule_verifier(**tensors, **options)
        assert not ok and reason in why, (options, why)
    # SM120: forward only (no grad may flow), bfloat16 only
    monkeypatch.setattr(flash_qla, "IS_NVIDIA_HOPPER", False)
    monkeypatch.setattr(flash_qla, "IS_NVIDIA_SM120", True)
    assert be.chunk_gated_delta_rule_verifier(**_verifier_inputs()) == (True, None)
    ok, why = be.chunk_gated_delta_rule_verifier(**_verifier_inputs(requires_grad=True))
    assert not ok and "forward pass only" in why
    with torch.no_grad():
        assert be.chunk_gated_delta_rule_verifier(**_verifier_inputs(requires_grad=True)) == (True, None)
    ok, why = be.chunk_gated_delta_rule_verifier(**_verifier_inputs(torch.float16))
    assert not ok and "float16" in why


def test_backends_are_never_dispatched_and_raise_by_name(monkeypatch):
    """Whatever the environment says, no backend is available to fla, chunk_gated_delta_rule runs fla's own path,
    and calling a backend's implementation names what is missing instead of running something else."""
    from fla.ops.gated_delta_rule.backends import FlashQLABackend, TritonAscendGDNBackend

    monkeypatch.setenv("FLA_FLASH_QLA", "1")
    assert (FlashQLABackend.backend_type, FlashQLABackend.env_var, FlashQLABackend.priority) == \
        ("flash_qla", "FLA_FLASH_QLA", 3)
    assert TritonAscendGDNBackend.backend_type == "triton_ascend" and TritonAscendGDNBackend.priority == 0
    for cls in (FlashQLABackend, TritonAscendGDNBackend):
        assert not cls.is_available() and not cls.can_use()
    assert FlashQLABackend().is_enabled()
    monkeypatch.setenv("FLA_FLASH_QLA", "0")
    assert not FlashQLABackend().is_enabled()
    with pytest.raises(NotImplementedError, match="FlashQLA .* is not shipped with fla"):
        FlashQLABackend().chunk_gated_delta_rule(**_verifier_inputs())
    ascend = TritonAscendGDNBackend()
    for name in ("gdn_gate_fwd", "gdn_gate_chunk_cumsum", "gdn_gate_bwd", "recompute_w_u_fwd", "prepare_wy_repr_bwd",
                 "chunk_gated_delta_rule_fwd_intra"):
        ok, why = ascend.verify(name)
        assert not ok and "Triton-Ascend" in why
        with pytest.raises(NotImplementedError, match="Triton-Ascend"):
            ascend.get_implementation(name)()
