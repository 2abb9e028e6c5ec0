"""fla/ops/linear_attn: chunk and fused recurrent (Triton interpreted and torch paths) against the token-by-token
recurrence, with and without the normalizer, forward and every gradient; input checks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.ops.linear_attn import chunk_linear_attn, fused_recurrent_linear_attn, naive_recurrent_linear_attn
from tests.helpers import seed
from tests.ops.test_simple_gla import PATHS, check_against_reference, forward_backward, run_path


def make_inputs(B, T, H, K, V, use_h0, normalize, cu):
    N = B if cu is None else len(cu) - 1
    Vs = V + 1 if normalize else V
    q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
    h0 = torch.randn(N, H, K, Vs) if use_h0 else None
    if normalize:
        # Positive features (elu + 1) and a positive carried normalizer keep q . z away from 0, as in practice.
        q, k = F.elu(q) + 1, F.elu(k) + 1
        if h0 is not None:
            h0[..., V] = h0[..., V].abs() + 1
    inputs = dict(q=q, k=k, v=torch.randn(B, T, H, V), initial_state=h0, output_final_state=True,
                  normalize=normalize, cu_seqlens=torch.tensor(cu, dtype=torch.int32) if cu is not None else None)
    names = ["q", "k", "v"] + (["initial_state"] if use_h0 else [])
    return inputs, names, torch.randn(B, T, H, V), torch.randn(N, H, K, Vs)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("B,T,H,K,V,use_h0,normalize,cu", [
    (2, 70, 2, 32, 24, True, False, None),
    (1, 90, 1, 16, 16, True, True, [0, 1, 66, 90]),
    (2, 65, 1, 16, 20, False, True, None),
])
def test_linear_attn_matches_naive(path, B, T, H, K, V, use_h0, normalize, cu):
    seed(path, B, T, H, K, V, use_h0, normalize, cu)
    inputs, names, do, dht = make_inputs(B, T, H, K, V, use_h0, normalize, cu)
    got = forward_backward(lambda **a: run_path(path, chunk_linear_attn, fused_recurrent_linear_attn, **a),
                           inputs, names, do, dht)
    want = forward_backward(naive_recurrent_linear_attn, inputs, names, do, dht)
    if normalize:
        assert got[1].shape[-1] == V + 1
    check_against_reference(got, want, 1e-4)


@pytest.mark.parametrize("fn", [chunk_linear_attn, fused_recurrent_linear_attn], ids=["chunk", "recurrent"])
@pytest.mark.parametrize("change,match", [
    (dict(normalize=True, initial_state=torch.randn(2, 2, 16, 16)), r"\[N, H, K, V \+ 1\]"),
    (dict(normalize=False, initial_state=torch.randn(2, 2, 16, 17)), "initial_state must have shape"),
    (dict(k=torch.randn(2, 8, 2, 15)), "k must have shape"),
    (dict(q=torch.randn(2, 8, 2, 16).double()), "q must have dtype"),
    (dict(cu_seqlens=torch.tensor([0, 3, 8]).float()), "cu_seqlens must have dtype"),
])
def test_rejects_bad_inputs(fn, change, match):
    good = dict(q=torch.randn(2, 8, 2, 16), k=torch.randn(2, 8, 2, 16), v=torch.randn(2, 8, 2, 16))
    with pytest.raises(ValueError, match=match):
        fn(**{**good, **change})
