"""fla.modules.token_shift: x_{t-1} - x_t per sequence against a token-by-token loop, fixed-length and packed (odd
lengths, a length-1 and an empty sequence), with and without a cache, forward and both gradients. Under context
parallelism: tests/ops/test_context_parallel.py ("token_shift")."""
from __future__ import annotations

import pytest
import torch

from fla.modules.token_shift import token_shift
from tests.helpers import assert_close, seed


def naive_token_shift(x, bounds, cache):
    """One token at a time: the previous token of the sequence, its cache row before its first, else zero."""
    delta, last = torch.zeros_like(x), []
    for i, (bos, eos) in enumerate(zip(bounds[:-1], bounds[1:])):
        prev = cache[i] if cache is not None else torch.zeros_like(x[0, 0])
        for t in range(bos, eos):
            delta[0, t] = prev - x[0, t]
            prev = x[0, t]
        last.append(prev)
    return delta, torch.stack(last)


@pytest.mark.parametrize("bounds", [[0, 9], [0, 5, 6, 6, 19, 20]])
@pytest.mark.parametrize("with_cache", [False, True])
def test_token_shift_matches_naive(bounds, with_cache):
    seed("token_shift", len(bounds), with_cache)
    D, N = 7, len(bounds) - 1
    x = torch.randn(1, bounds[-1], D, requires_grad=True)
    cache = torch.randn(N, D, requires_grad=True) if with_cache else None
    cu = torch.tensor(bounds, dtype=torch.int32) if N > 1 else None
    delta, last = token_shift(x, cu, cache, output_cache=True)
    want, want_last = naive_token_shift(x, bounds, cache)
    w, wl = torch.randn_like(want), torch.randn_like(want_last)
    inputs = [x] + ([cache] if with_cache else [])
    got_grads = torch.autograd.grad((delta * w).sum() + (last * wl).sum(), inputs)
    want_grads = torch.autograd.grad((want * w).sum() + (want_last * wl).sum(), inputs)
    assert_close("delta", delta, want, 1e-6)
    assert_close("cache_out", last, want_last, 1e-6)
    for name, g, r in zip(("dx", "dcache"), got_grads, want_grads):
        assert_close(name, g, r, 1e-6)
    assert torch.equal(token_shift(x, cu, cache), delta)  # without output_cache: the delta alone


def test_token_shift_rejects_bad_input():
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"\[1, T, D\]"):
        token_shift(x, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="cache must be"):
        token_shift(x, cache=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="FLACPContext"):
        token_shift(x, cp_context=object())
