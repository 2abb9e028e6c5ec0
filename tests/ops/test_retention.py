"""fla/ops/retention: chunk and fused recurrent (Triton interpreted and torch paths) against RetNet's token-by-token
recurrence, forward and every gradient; input checks."""
from __future__ import annotations

import pytest
import torch

from fla.ops.retention import (chunk_retention, fused_recurrent_retention, naive_recurrent_retention,
                               retention_log_decays)
from tests.helpers import assert_close, seed
from tests.ops.test_simple_gla import PATHS, check_against_reference, forward_backward, run_path


def make_inputs(B, T, H, K, V, use_h0, cu):
    N = B if cu is None else len(cu) - 1
    inputs = dict(
        q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V),
        initial_state=torch.randn(N, H, K, V) if use_h0 else None, output_final_state=True,
        cu_seqlens=torch.tensor(cu, dtype=torch.int64) if cu is not None else None,
    )
    names = ["q", "k", "v"] + (["initial_state"] if use_h0 else [])
    return inputs, names, torch.randn(B, T, H, V), torch.randn(N, H, K, V)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("B,T,H,K,V,use_h0,cu", [
    (2, 70, 2, 32, 24, True, None),
    (1, 90, 1, 16, 16, False, [0, 1, 66, 90]),
])
def test_retention_matches_naive(path, B, T, H, K, V, use_h0, cu):
    seed(B, T, H, K, V, use_h0, cu)
    inputs, names, do, dht = make_inputs(B, T, H, K, V, use_h0, cu)
    got = forward_backward(lambda **a: run_path(path, chunk_retention, fused_recurrent_retention, **a),
                           inputs, names, do, dht)
    want = forward_backward(naive_recurrent_retention, inputs, names, do, dht)
    check_against_reference(got, want, 1e-4)


def test_retention_decays():
    """RetNet's gammas: 1 - 2^-5, 1 - 2^-6, ... as natural-log decays."""
    want = torch.tensor([1 - 2 ** -5, 1 - 2 ** -6, 1 - 2 ** -7, 1 - 2 ** -8], dtype=torch.float64).log()
    assert_close("g_gamma", retention_log_decays(4), want, 1e-7)


@pytest.mark.parametrize("fn", [chunk_retention, fused_recurrent_retention], ids=["chunk", "recurrent"])
@pytest.mark.parametrize("change,match", [
    (dict(q=torch.randn(2, 8, 32)), "q must have 4 dims"),
    (dict(q="not a tensor"), "q must be a torch.Tensor"),
    (dict(v=torch.randn(2, 8, 2, 16).half()), "v must have dtype"),
    (dict(k=torch.randn(2, 8, 2, 16, device="meta")), "k is on meta"),
    (dict(cu_seqlens=torch.tensor([0, 3, 8])), "batch size must be 1"),
    (dict(initial_state=torch.randn(2, 2, 16, 17)), "initial_state must have shape"),
])
def test_rejects_bad_inputs(fn, change, match):
    good = dict(q=torch.randn(2, 8, 2, 16), k=torch.randn(2, 8, 2, 16), v=torch.randn(2, 8, 2, 16))
    with pytest.raises(ValueError, match=match):
        fn(**{**good, **change})
