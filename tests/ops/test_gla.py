"""fla/ops/gla: chunk_gla and fused_recurrent_gla (Triton, interpreted on CPU, and the torch twins) against the
token-by-token float32 reference, with every gradient (q, k, v, gates, initial state, final-state gradient)."""
import pytest
import torch
import torch.nn.functional as F

from fla.ops.gla import chunk_gla, fused_recurrent_gla, naive_recurrent_gla
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, device, poisoned_empty, seed


def log_decays(shape, kind, dtype=torch.float32):
    g = F.logsigmoid(torch.randn(shape))
    if kind == "strong":
        g[..., ::4] = -5 + 0.1 * torch.randn_like(g[..., ::4])  # some channels forget almost at once
    return g.to(dtype)


def make_inputs(B, T, H, K, V, N, decay, use_state, gates=("g",), dtype=torch.float32):
    q, k = torch.randn(B, T, H, K).to(dtype), torch.randn(B, T, H, K).to(dtype)
    v = torch.randn(B, T, H, V).to(dtype)
    gate = {"g": log_decays((B, T, H, K), decay, dtype), "gk": log_decays((B, T, H, K), decay, dtype),
            "gv": log_decays((B, T, H, V), decay, dtype)}
    h0 = torch.randn(N, H, K, V) if use_state else None
    do, dht = torch.randn(B, T, H, V).to(dtype), torch.randn(N, H, K, V) if use_state else None
    # on a GPU machine (no interpreter) the same tests run the compiled kernels
    on = lambda x: x.to(device()) if x is not None else None  # noqa: E731
    return on(q), on(k), on(v), {name: on(gate[name]) for name in gates}, on(h0), on(do), on(dht)


def run(fn, q, k, v, gates, h0, do, dht, **kwargs):
    """Output, final state and the gradients of <o, do> + <final_state, dht> w.r.t. every input given."""
    inputs = {"q": q, "k": k, "v": v, **gates}
    if h0 is not None:
        inputs["h0"] = h0
    inputs = {name: x.detach().clone().requires_grad_() for name, x in inputs.items()}
    o, ht = fn(inputs["q"], inputs["k"], inputs["v"], **{n: inputs[n] for n in gates},
               initial_state=inputs.get("h0"), output_final_state=dht is not None, **kwargs)
    loss = (o.float() * do.float()).sum() + ((ht * dht).sum() if dht is not None else 0)
    grads = torch.autograd.grad(loss, list(inputs.values()))
    return o, ht, {"d" + name: grad for name, grad in zip(inputs, grads)}


def compare(got, want, rel):
    (o, ht, grads), (o_ref, ht_ref, grads_ref) = got, want
    assert_close("o", o.float(), o_ref.float(), rel)
    if ht_ref is not None:
        assert_close("ht", ht, ht_ref, rel)
    for name in grads_ref:
        assert_close(name, grads[name].float(), grads_ref[name].float(), rel)


def naive_gk(q, k, v, g=None, gk=None, gv=None, **kwargs):
    return naive_recurrent_gla(q, k, v, g if g is not None else gk, gv=gv, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# the reference itself
# ----------------------------------------------------------------------------------------------------------------

def test_naive_without_decay_is_causal_linear_attention():
    seed("naive-ungated")
    q, k, v = torch.randn(2, 9, 2, 5), torch.randn(2, 9, 2, 5), torch.randn(2, 9, 2, 3)
    o, _ = naive_recurrent_gla(q, k, v, gk=torch.zeros(2, 9, 2, 5), scale=0.5)
    scores = torch.einsum("bthk,bshk->bhts", q, k).tril()
    assert_close("o", o, 0.5 * torch.einsum("bhts,bshv->bthv", scores, v), 1e-6)


def test_naive_reverse_is_forward_on_flipped_sequence():
    seed("naive-reverse")
    q, k, v = torch.randn(1, 7, 1, 4), torch.randn(1, 7, 1, 4), torch.randn(1, 7, 1, 6)
    gk, gv = F.logsigmoid(torch.randn(1, 7, 1, 4)), F.logsigmoid(torch.randn(1, 7, 1, 6))
    o, ht = naive_recurrent_gla(q, k, v, gk, gv=gv, reverse=True, output_final_state=True)
    o_f, ht_f = naive_recurrent_gla(*(x.flip(1) for x in (q, k, v, gk)), gv=gv.flip(1), output_final_state=True)
    assert_close("o", o, o_f.flip(1), 1e-6)
    assert_close("ht", ht, ht_f, 1e-6)


# ----------------------------------------------------------------------------------------------------------------
# chunk_gla
# ----------------------------------------------------------------------------------------------------------------

CHUNK_CASES = [
    # (B, T, cu_seqlens, H, K, V, decay)
    (2, 70, None, 1, 48, 40, "logsigmoid"),
    (1, 150, [0, 1, 37, 101, 150], 1, 32, 24, "strong"),
]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("use_state", [False, True])
@pytest.mark.parametrize("B,T,cu,H,K,V,decay", CHUNK_CASES)
def test_chunk_matches_naive(B, T, cu, H, K, V, decay, use_state, backend):
    seed(B, T, cu, H, K, V, decay, use_state)
    cu_seqlens = torch.tensor(cu, dtype=torch.int64, device=device()) if cu is not None else None
    N = B if cu is None else len(cu) - 1
    q, k, v, gates, h0, do, dht = make_inputs(B, T, H, K, V, N, decay, use_state)
    want = run(naive_gk, q, k, v, gates, h0, do, dht, cu_seqlens=cu_seqlens)
    with use_backend(backend), poisoned_empty():
        got = run(chunk_gla, q, k, v, gates, h0, do, dht, cu_seqlens=cu_seqlens)
    compare(got, want, 1e-4)


def test_chunk_varlen_matches_each_sequence_alone():
    seed("varlen-alone")
    cu = [0, 1, 40, 110]
    T, H, K, V = cu[-1], 1, 16, 24
    q, k, v, gates, h0, do, dht = make_inputs(1, T, H, K, V, len(cu) - 1, "strong", True)
    with poisoned_empty():
        o, ht, grads = run(chunk_gla, q, k, v, gates, h0, do, dht,
                                 cu_seqlens=torch.tensor(cu, dtype=torch.int32, device=device()))
        for i, (bos, eos) in enumerate(zip(cu[:-1], cu[1:])):
            part = [x[:, bos:eos] for x in (q, k, v)]
            o_i, ht_i, grads_i = run(chunk_gla, *part, {"g": gates["g"][:, bos:eos]}, h0[i:i + 1],
                                     do[:, bos:eos], dht[i:i + 1])
            assert_close(f"o[{i}]", o[:, bos:eos], o_i, 1e-6)
            assert_close(f"ht[{i}]", ht[i:i + 1], ht_i, 1e-6)
            for name in ("dq", "dk", "dv", "dg"):
                assert_close(f"{name}[{i}]", grads[name][:, bos:eos], grads_i[name], 1e-6)
            assert_close(f"dh0[{i}]", grads["dh0"][i:i + 1], grads_i["dh0"], 1e-6)


@pytest.mark.parametrize("dtype,backend", [
    (torch.float16, "triton"),
    (torch.bfloat16, "torch"),
    # the interpreter computes bf16 dots wrongly: bf16 kernels are checked where they compile
    pytest.param(torch.bfloat16, "triton", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU only")),
])
def test_chunk_half_precision(dtype, backend):
    seed("chunk-half", dtype, backend)
    B, T, H, K, V = 1, 70, 1, 32, 32
    q, k, v, gates, h0, do, dht = make_inputs(B, T, H, K, V, B, "logsigmoid", True, dtype=dtype)
    with use_backend(backend), poisoned_empty():
        o, ht, grads = run(chunk_gla, q, k, v, gates, h0, do, dht)
    want = run(naive_gk, *(x.float() for x in (q, k, v)), {"g": gates["g"].float()}, h0, do.float(), dht)
    assert o.dtype == dtype and grads["dq"].dtype == dtype and grads["dg"].dtype == dtype
    compare((o, ht, grads), want, 5e-3 if dtype == torch.float16 else 2e-2)


# ----------------------------------------------------------------------------------------------------------------
# fused_recurrent_gla
# ----------------------------------------------------------------------------------------------------------------

RECURRENT_CASES = [
    # (B, T, cu_seqlens, H, K, V, gates, decay, reverse, use_state)
    (2, 24, None, 1, 48, 40, ("gk",), "strong", False, True),
    (1, 40, [0, 1, 17, 40], 2, 16, 24, ("gk", "gv"), "logsigmoid", False, True),
    (1, 30, [0, 13, 14, 30], 1, 32, 20, ("gk", "gv"), "strong", True, True),
    (2, 20, None, 1, 16, 16, ("gv",), "logsigmoid", True, False),
    (1, 12, None, 1, 128, 40, ("gk", "gv"), "logsigmoid", False, True),  # two value blocks: partial sums of dq, dk, dgk
]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("B,T,cu,H,K,V,gates,decay,reverse,use_state", RECURRENT_CASES)
def test_fused_recurrent_matches_naive(B, T, cu, H, K, V, gates, decay, reverse, use_state, backend):
    seed(B, T, cu, H, K, V, gates, decay, reverse, use_state)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32, device=device()) if cu is not None else None
    N = B if cu is None else len(cu) - 1
    q, k, v, gate_inputs, h0, do, dht = make_inputs(B, T, H, K, V, N, decay, use_state, gates)
    want = run(naive_recurrent_gla, q, k, v, gate_inputs, h0, do, dht, reverse=reverse, cu_seqlens=cu_seqlens)
    with use_backend(backend), poisoned_empty():
        got = run(fused_recurrent_gla, q, k, v, gate_inputs, h0, do, dht, reverse=reverse, cu_seqlens=cu_seqlens)
    compare(got, want, 1e-5)


def test_fused_recurrent_accepts_g_as_gk_and_matches_chunk():
    seed("g-alias")
    q, k, v, gates, h0, _, _ = make_inputs(1, 20, 1, 16, 16, 1, "logsigmoid", True)
    o_g, ht_g = fused_recurrent_gla(q, k, v, g=gates["g"], initial_state=h0, output_final_state=True)
    o_gk, ht_gk = fused_recurrent_gla(q, k, v, gk=gates["g"], initial_state=h0, output_final_state=True)
    o_c, ht_c = chunk_gla(q, k, v, gates["g"], initial_state=h0, output_final_state=True)
    assert torch.equal(o_g, o_gk) and torch.equal(ht_g, ht_gk)
    assert_close("o", o_g, o_c, 1e-5)
    assert_close("ht", ht_g, ht_c, 1e-5)


# ----------------------------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------------------------

def _good(B=1, T=8, H=2, K=16, V=8):
    return dict(q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V),
                g=-torch.rand(B, T, H, K))


BAD_INPUTS = [
    # (what, change to the good arguments, message)
    ("q rank", lambda a: a.update(q=a["q"][0]), "q must have 4 dims"),
    ("k shape", lambda a: a.update(k=a["k"][:, :4]), "k must have shape"),
    ("v dtype", lambda a: a.update(v=a["v"].double()), "v must have dtype"),
    ("v length", lambda a: a.update(v=a["v"][:, :5]), "v must have shape"),
    ("g shape", lambda a: a.update(g=a["g"][..., :4]), "g must have shape"),
    ("g dtype", lambda a: a.update(g=a["g"].long()), "g must have dtype"),
    ("k device", lambda a: a.update(k=a["k"].to("meta")), "k is on meta"),
    ("K too large", lambda a: a.update(**{n: torch.randn(1, 8, 2, 300) for n in "qkg"}), "head dim"),
    ("scale tensor", lambda a: a.update(scale=torch.tensor(0.5)), "scale must be"),
    ("cu_seqlens dtype", lambda a: a.update(cu_seqlens=torch.tensor([0., 8.])), "cu_seqlens must have dtype"),
    ("cu_seqlens end", lambda a: a.update(cu_seqlens=torch.tensor([0, 3, 7])), "must end at the number of tokens"),
    ("cu_seqlens order", lambda a: a.update(cu_seqlens=torch.tensor([0, 5, 3, 8])), "non-decreasing"),
    ("cu_seqlens start", lambda a: a.update(cu_seqlens=torch.tensor([1, 8])), "must start at 0"),
    ("cu_seqlens device", lambda a: a.update(cu_seqlens=torch.tensor([0, 8], device="meta")), "cu_seqlens is on"),
    ("cu_seqlens batch", lambda a: a.update(**{n: x.expand(2, *x.shape[1:]).contiguous() for n, x in a.items()},
                                            cu_seqlens=torch.tensor([0, 8])), "batch size must be 1"),
    ("initial_state shape", lambda a: a.update(initial_state=torch.zeros(1, 2, 8, 16)), "initial_state must have"),
    ("initial_state count", lambda a: a.update(initial_state=torch.zeros(2, 2, 16, 8)), "initial_state must have"),
    ("initial_state dtype", lambda a: a.update(initial_state=torch.zeros(1, 2, 16, 8, dtype=torch.float64)),
     "initial_state must have dtype"),
]


@pytest.mark.parametrize("op", ["chunk", "fused_recurrent"])
@pytest.mark.parametrize("what,change,message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_rejects_bad_inputs(what, change, message, op):
    args = _good()
    change(args)
    fn = chunk_gla if op == "chunk" else fused_recurrent_gla
    if op == "fused_recurrent":
        args["gk"] = args.pop("g")
        message = message.replace("g must", "gk must")
    with pytest.raises(ValueError, match=message):
        fn(**args)


def test_fused_recurrent_rejects_g_and_gk_together():
    args = _good()
    with pytest.raises(ValueError, match="not both"):
        fused_recurrent_gla(args["q"], args["k"], args["v"], gk=args["g"], g=args["g"])


def test_fused_recurrent_rejects_bad_gv():
    args = _good()
    with pytest.raises(ValueError, match="gv must have shape"):
        fused_recurrent_gla(args["q"], args["k"], args["v"], gk=args["g"], gv=args["g"])


def test_naive_positional_order_and_one_state_for_every_sequence():
    """The peer's reference order (q, k, v, gk, initial_state, output_final_state) and a [H, K, V] state shared by
    every sequence."""
    seed("gla-naive-3d")
    B, T, H, K, V = 2, 7, 2, 8, 4
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    gk = F.logsigmoid(torch.randn(B, T, H, K))
    h0 = torch.randn(H, K, V)
    o, ht = naive_recurrent_gla(q, k, v, gk, h0, True)
    want_o, want_ht = naive_recurrent_gla(q, k, v, gk, initial_state=h0.expand(B, H, K, V).clone(),
                                          output_final_state=True)
    assert_close("o", o, want_o, 0)
    assert_close("ht", ht, want_ht, 0)
