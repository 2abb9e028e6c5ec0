"""Every fused recurrent kernel in float16 under strong decay with scale 1, forward and every gradient, against its
float32 reference on the same (float16-rounded) inputs.

This is where a backward that rebuilds a gradient from a stored float16 output shows: the gate gradient is a running
sum whose terms nearly cancel when the state decays fast, so a rounded term puts it percent-level off while every
other gradient still looks fine (simple_gla and gated_delta_rule dg were 0.6-3.5% off; now ~2e-4 like the rest).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.ops.delta_rule import fused_recurrent_delta_rule
from fla.ops.delta_rule.naive import naive_recurrent_delta_rule
from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
from fla.ops.gla import fused_recurrent_gla
from fla.ops.gla.naive import naive_recurrent_gla
from fla.ops.linear_attn import fused_recurrent_linear_attn
from fla.ops.linear_attn.naive import naive_recurrent_linear_attn
from fla.ops.retention import fused_recurrent_retention
from fla.ops.retention.naive import naive_recurrent_retention
from fla.ops.simple_gla import fused_recurrent_simple_gla, naive_recurrent_simple_gla
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed

B, T, H, D = 1, 64, 2, 32
LENGTHS = (1, 30, 33)  # varlen: a length-1 sequence, lengths that are not powers of two


def strong_decay(*shape):
    return F.logsigmoid(torch.randn(*shape)) / 0.1  # mean ~ -8: the state forgets almost everything each step


def make(op: str, varlen: bool):
    """(fused op, reference, inputs: name -> float16 tensor, keyword arguments)."""
    Bx, Tx = (1, sum(LENGTHS)) if varlen else (B, T)
    q, k, v = (torch.randn(Bx, Tx, H, D) for _ in range(3))
    x = dict(q=q, k=k, v=v)
    if op == "simple_gla":
        x["g"] = strong_decay(Bx, Tx, H)
        fns = fused_recurrent_simple_gla, naive_recurrent_simple_gla
    elif op == "gla":
        x["gk"] = strong_decay(Bx, Tx, H, D) / 4
        x["gv"] = strong_decay(Bx, Tx, H, D) / 4
        fns = fused_recurrent_gla, naive_recurrent_gla
    elif op == "retention":
        fns = fused_recurrent_retention, naive_recurrent_retention
    elif op == "linear_attn":
        fns = fused_recurrent_linear_attn, naive_recurrent_linear_attn
    else:  # the delta rules: unit-norm keys, as their layers feed them
        x["k"] = F.normalize(k, dim=-1)
        if op == "gated_delta_rule":
            x["g"] = strong_decay(Bx, Tx, H)
            fns = fused_recurrent_gated_delta_rule, naive_recurrent_gated_delta_rule
        else:
            fns = fused_recurrent_delta_rule, naive_recurrent_delta_rule
        x["beta"] = torch.rand(Bx, Tx, H)
    x = {name: t.half() for name, t in x.items()}
    kw = dict(scale=1.0, output_final_state=True)
    if varlen:
        kw["cu_seqlens"] = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
        kw["initial_state"] = torch.randn(len(LENGTHS), H, D, D)
    return fns, x, kw


def run(fn, x: dict, kw: dict, do: torch.Tensor, dht: torch.Tensor, dtype: torch.dtype):
    leaves = {n: t.to(dtype).requires_grad_() for n, t in x.items()}
    h0 = kw.get("initial_state")
    if h0 is not None:
        h0 = h0.clone().requires_grad_()
    o, ht = fn(**leaves, **{**kw, "initial_state": h0})
    loss = (o.float() * do).sum() + (ht * dht).sum()
    inputs = list(leaves.values()) + ([h0] if h0 is not None else [])
    grads = torch.autograd.grad(loss, inputs)
    names = ["d" + n for n in leaves] + (["dh0"] if h0 is not None else [])
    return {"o": o, "ht": ht, **dict(zip(names, grads))}


OPS = ["simple_gla", "gla", "retention", "linear_attn", "delta_rule", "gated_delta_rule"]


@pytest.mark.parametrize("varlen", [False, True], ids=["fixed", "varlen"])
@pytest.mark.parametrize("op", OPS)
def test_float16_strong_decay_scale_1_matches_float32_reference(op, varlen):
    seed("half-strong", op, varlen)
    (fused, naive), x, kw = make(op, varlen)
    o_shape = x["v"].shape
    do = torch.randn(o_shape)
    N = len(LENGTHS) if varlen else B
    dht = torch.randn(N, H, D, D)
    with use_backend("triton"), poisoned_empty():
        got = run(fused, x, kw, do, dht, torch.float16)
    want = run(naive, x, kw, do, dht, torch.float32)
    for name, ref in want.items():
        assert_close(name, got[name].float(), ref.float(), 2e-3)
