"""fla/ops/simple_gla: chunk (Triton interpreted and torch twin) and fused recurrent (Triton and torch) against the
token-by-token reference, forward and every gradient; varlen against per-sequence runs; input checks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla, naive_recurrent_simple_gla
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed

PATHS = ["chunk-triton", "chunk-torch", "recurrent-triton", "recurrent-torch"]


def run_path(path, fn_chunk, fn_recurrent, *args, **kwargs):
    """Call the op by path ("chunk-triton", ...) inside poisoned_empty, so unwritten outputs show as NaN."""
    kind, backend = path.split("-")
    fn = fn_chunk if kind == "chunk" else fn_recurrent
    with use_backend(backend), poisoned_empty():
        return fn(*args, **kwargs)


def forward_backward(fn, inputs: dict, grad_names, do, dht):
    """Run fn(**inputs) -> (o, ht), backprop sum(o * do) + sum(ht * dht); returns o, ht and the named gradients."""
    leaves = {n: inputs[n].detach().clone().requires_grad_() for n in grad_names}
    o, ht = fn(**{**inputs, **leaves})
    loss = (o.float() * do).sum() + ((ht * dht).sum() if dht is not None else 0)
    grads = torch.autograd.grad(loss, [leaves[n] for n in grad_names])
    return o, ht, dict(zip(grad_names, grads))


def check_against_reference(got, want, rel):
    o, ht, grads = got
    o_ref, ht_ref, grads_ref = want
    assert_close("o", o, o_ref, rel)
    if ht_ref is not None:
        assert_close("ht", ht, ht_ref, rel)
    for name in grads_ref:
        assert grads[name].dtype == grads_ref[name].dtype, name
        assert_close("d" + name, grads[name], grads_ref[name], rel)


def make_inputs(B, T, H, K, V, gate, use_h0, cu, dtype=torch.float32):
    N = B if cu is None else len(cu) - 1
    inputs = dict(
        q=torch.randn(B, T, H, K, dtype=dtype), k=torch.randn(B, T, H, K, dtype=dtype),
        v=torch.randn(B, T, H, V, dtype=dtype),
        g=F.logsigmoid(torch.randn(B, T, H) + 2).to(dtype) if gate == "g" else None,
        g_gamma=torch.log(1 - 2.0 ** (-5.0 - torch.arange(H))) if gate == "g_gamma" else None,
        initial_state=torch.randn(N, H, K, V) if use_h0 else None,
        output_final_state=True,
        cu_seqlens=torch.tensor(cu, dtype=torch.int32) if cu is not None else None,
    )
    grad_names = ["q", "k", "v"] + (["g"] if gate == "g" else []) + (["initial_state"] if use_h0 else [])
    return inputs, grad_names, torch.randn(B, T, H, V), torch.randn(N, H, K, V)


CASES = [
    # B, T, H, K, V, gate, initial state, cu_seqlens
    (2, 70, 2, 32, 48, "g", True, None),
    (2, 66, 1, 40, 32, "g_gamma", False, None),
    (1, 140, 1, 32, 32, "g", True, [0, 1, 70, 75, 140]),
    (1, 80, 1, 16, 24, None, True, [0, 13, 80]),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("B,T,H,K,V,gate,use_h0,cu", CASES)
def test_simple_gla_matches_naive(path, B, T, H, K, V, gate, use_h0, cu):
    seed(B, T, H, K, V, gate, use_h0, cu)
    inputs, names, do, dht = make_inputs(B, T, H, K, V, gate, use_h0, cu)
    got = forward_backward(lambda **a: run_path(path, chunk_simple_gla, fused_recurrent_simple_gla, **a),
                           inputs, names, do, dht)
    want = forward_backward(naive_recurrent_simple_gla, inputs, names, do, dht)
    check_against_reference(got, want, 1e-4)


@pytest.mark.parametrize("path", ["recurrent-triton", "recurrent-torch"])
@pytest.mark.parametrize("gate", ["g", "g_gamma"])
def test_fused_recurrent_reverse_matches_naive(path, gate):
    seed("reverse", path, gate)
    inputs, names, do, dht = make_inputs(1, 30, 2, 16, 32, gate, True, [0, 12, 13, 30])
    got = forward_backward(lambda **a: run_path(path, None, fused_recurrent_simple_gla, reverse=True, **a),
                           inputs, names, do, dht)
    want = forward_backward(lambda **a: naive_recurrent_simple_gla(reverse=True, **a), inputs, names, do, dht)
    check_against_reference(got, want, 1e-4)


@pytest.mark.parametrize("path", ["chunk-triton", "recurrent-triton"])
def test_varlen_matches_per_sequence(path):
    """Packed sequences give what each sequence gives alone (outputs, final states, gradients)."""
    seed("varlen", path)
    cu = [0, 1, 66, 90]
    inputs, names, do, dht = make_inputs(1, 90, 1, 16, 16, "g", True, cu)
    packed = forward_backward(lambda **a: run_path(path, chunk_simple_gla, fused_recurrent_simple_gla, **a),
                              inputs, names, do, dht)
    for i, (bos, eos) in enumerate(zip(cu[:-1], cu[1:])):
        alone_inputs = {n: (x[:, bos:eos] if n in ("q", "k", "v", "g") else x) for n, x in inputs.items()}
        alone_inputs.update(initial_state=inputs["initial_state"][i:i + 1], cu_seqlens=None)
        alone = forward_backward(lambda **a: run_path(path, chunk_simple_gla, fused_recurrent_simple_gla, **a),
                                 alone_inputs, names, do[:, bos:eos], dht[i:i + 1])
        assert_close("o", packed[0][:, bos:eos], alone[0], 1e-5)
        assert_close("ht", packed[1][i:i + 1], alone[1], 1e-5)
        for n in ("q", "k", "v", "g"):
            assert_close("d" + n, packed[2][n][:, bos:eos], alone[2][n], 1e-5)
        assert_close("dh0", packed[2]["initial_state"][i:i + 1], alone[2]["initial_state"], 1e-5)


@pytest.mark.parametrize("path", ["chunk-triton", "recurrent-triton"])
def test_float16(path):
    seed("fp16", path)
    inputs, names, do, dht = make_inputs(2, 72, 1, 32, 32, "g", True, None, torch.float16)
    got = forward_backward(lambda **a: run_path(path, chunk_simple_gla, fused_recurrent_simple_gla, **a),
                           inputs, names, do, dht)
    assert got[0].dtype == torch.float16 and got[1].dtype == torch.float32
    # Reference in float32 from the same (rounded) inputs.
    ref_inputs = {n: (x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x)
                  for n, x in inputs.items()}
    o, ht, grads = forward_backward(naive_recurrent_simple_gla, ref_inputs, names, do, dht)
    want = (o.half(), ht, {n: g.to(inputs[n].dtype) for n, g in grads.items()})
    check_against_reference(got, want, 5e-3)


def test_no_final_state_and_g_gamma_has_no_gradient():
    seed("nofinal")
    q, k, v = torch.randn(1, 20, 2, 16), torch.randn(1, 20, 2, 16), torch.randn(1, 20, 2, 16)
    g_gamma = torch.full((2,), -0.1, requires_grad=True)
    with use_backend("torch"):
        o, ht = chunk_simple_gla(q, k, v, g_gamma=g_gamma)
        o2, ht2 = fused_recurrent_simple_gla(q, k, v, g_gamma=g_gamma)
    assert ht is None and ht2 is None
    assert_close("o", o, o2, 1e-5)
    assert not o.requires_grad


def _bad_inputs():
    """(name, change to the good inputs, message the ValueError must match)."""
    B, T, H, K, V = 2, 8, 2, 16, 16
    float_cu = torch.tensor([0.0, 8.0])
    return [
        ("q rank", dict(q=torch.randn(B, T, H * K)), "q must have 4 dims"),
        ("k shape", dict(k=torch.randn(B, T, H, K + 1)), "k must have shape"),
        ("v batch", dict(v=torch.randn(B + 1, T, H, V)), "v must have shape"),
        ("k dtype", dict(k=torch.randn(B, T, H, K, dtype=torch.float64)), "k must have dtype"),
        ("q dtype", dict(q=torch.randn(B, T, H, K).int(), k=torch.randn(B, T, H, K).int(),
                         v=torch.randn(B, T, H, V).int()), "q must have dtype"),
        ("v dtype", dict(v=torch.randn(B, T, H, V).half()), "v must have dtype"),
        ("device", dict(k=torch.randn(B, T, H, K, device="meta")), "k is on meta"),
        ("head dim", dict(q=torch.randn(B, T, H, 300), k=torch.randn(B, T, H, 300)), "head dim"),
        ("g shape", dict(g=torch.randn(B, T, H, K)), "g must have"),
        ("g device", dict(g=torch.randn(B, T, H, device="meta")), "g is on meta"),
        ("g and g_gamma", dict(g=torch.randn(B, T, H), g_gamma=torch.randn(H)), "not both"),
        ("g_gamma shape", dict(g_gamma=torch.randn(H + 1)), "g_gamma must have shape"),
        ("scale", dict(scale=torch.tensor(0.5)), "scale must be"),
        ("cu float", dict(q=torch.randn(1, T, H, K), k=torch.randn(1, T, H, K), v=torch.randn(1, T, H, V),
                          cu_seqlens=float_cu), "cu_seqlens must have dtype"),
        ("cu start", dict(q=torch.randn(1, T, H, K), k=torch.randn(1, T, H, K), v=torch.randn(1, T, H, V),
                          cu_seqlens=torch.tensor([1, 8])), "must start at 0"),
        ("cu decreasing", dict(q=torch.randn(1, T, H, K), k=torch.randn(1, T, H, K), v=torch.randn(1, T, H, V),
                               cu_seqlens=torch.tensor([0, 5, 3, 8])), "non-decreasing"),
        ("cu end", dict(q=torch.randn(1, T, H, K), k=torch.randn(1, T, H, K), v=torch.randn(1, T, H, V),
                        cu_seqlens=torch.tensor([0, 5, 7])), "must end at the number of tokens"),
        ("cu batch", dict(cu_seqlens=torch.tensor([0, 5, 8])), "batch size must be 1"),
        ("h0 shape", dict(initial_state=torch.randn(B + 1, H, K, V)), "initial_state must have shape"),
        ("h0 dtype", dict(initial_state=torch.randn(B, H, K, V).double()), "initial_state must have dtype"),
        ("h0 under varlen", dict(q=torch.randn(1, T, H, K), k=torch.randn(1, T, H, K), v=torch.randn(1, T, H, V),
                                 cu_seqlens=torch.tensor([0, 5, 8]), initial_state=torch.randn(1, H, K, V)),
         "initial_state must have shape"),
    ]


@pytest.mark.parametrize("fn", [chunk_simple_gla, fused_recurrent_simple_gla], ids=["chunk", "recurrent"])
@pytest.mark.parametrize("case,change,match", _bad_inputs(), ids=[c[0] for c in _bad_inputs()])
def test_rejects_bad_inputs(fn, case, change, match):
    B, T, H, K, V = 2, 8, 2, 16, 16
    good = dict(q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V))
    with pytest.raises(ValueError, match=match):
        fn(**{**good, **change})


def test_naive_takes_one_state_for_every_sequence_and_returns_the_final_state_by_default():
    """The peer's reference signature: a [H, K, V] initial state is every sequence's (not head 0's for all heads),
    and output_final_state defaults to True."""
    seed("naive-3d-state")
    B, T, H, K, V = 3, 9, 2, 8, 4
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    g = F.logsigmoid(torch.randn(B, T, H))
    h0 = torch.randn(H, K, V)
    o, ht = naive_recurrent_simple_gla(q, k, v, g, 0.5, h0)
    want_o, want_ht = naive_recurrent_simple_gla(q, k, v, g, 0.5, h0.expand(B, H, K, V).clone())
    assert ht is not None
    assert_close("o", o, want_o, 0)
    assert_close("ht", ht, want_ht, 0)
