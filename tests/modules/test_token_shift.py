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


@pytest.mark.parametrize("bounds", [[0, 9], [0, 5, 6, 6, 19, 20]])
@pytest.mark.parametrize("with_cache, output_cache", [(False, False), (True, True), (False, True)])
def test_token_shift_function_matches_naive(bounds, with_cache, output_cache):
    """TokenShift.apply (the peer's autograd form): (delta, cache_out or None), gradients to x and the cache."""
    from fla.modules import TokenShift
    seed("TokenShift", len(bounds), with_cache, output_cache)
    D, N = 6, len(bounds) - 1
    x = torch.randn(1, bounds[-1], D, requires_grad=True)
    cache = torch.randn(N, D, requires_grad=True) if with_cache else None
    cu = torch.tensor(bounds, dtype=torch.int32) if N > 1 else None
    delta, last = TokenShift.apply(x, cu, cache, output_cache, None)
    want, want_last = naive_token_shift(x, bounds, cache)
    assert_close("delta", delta, want, 1e-6)
    inputs = [x] + ([cache] if with_cache else [])
    w, wl = torch.randn_like(want), torch.randn_like(want_last)
    loss = (delta * w).sum()
    want_loss = (want * w).sum()
    if output_cache:
        assert_close("cache_out", last, want_last, 1e-6)
        loss, want_loss = loss + (last * wl).sum(), want_loss + (want_last * wl).sum()
    else:
        assert last is None
    for name, g, r in zip(("dx", "dcache"), torch.autograd.grad(loss, inputs), torch.autograd.grad(want_loss, inputs)):
        assert_close(name, g, r, 1e-6)


def test_token_shift_ref_and_cp_form():
    """token_shift_ref (the peer's reference: no cache) is the loop; token_shift_cp refuses a non-context; the peer's
    launchers raise naming what to use."""
    from fla.modules.token_shift import token_shift_fwd, token_shift_ref
    from fla.modules.token_shift_cp import TokenShiftCPFunction, token_shift_cp
    seed("token_shift_ref")
    bounds = [0, 4, 5, 11]
    x = torch.randn(1, 11, 5)
    assert_close("ref", token_shift_ref(x, torch.tensor(bounds)), naive_token_shift(x, bounds, None)[0], 0)
    assert_close("ref fixed", token_shift_ref(x), naive_token_shift(x, [0, 11], None)[0], 0)
    with pytest.raises(ValueError, match="FLACPContext"):
        token_shift_cp(x, None)
    for call in (lambda: token_shift_fwd(x), lambda: TokenShiftCPFunction.apply(x, None, None, None)):
        with pytest.raises(NotImplementedError, match="internal kernel of the peer library"):
            call()
