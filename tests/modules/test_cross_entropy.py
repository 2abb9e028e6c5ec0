"""Fused cross entropy and fused linear cross entropy against PyTorch's cross_entropy (float64), both paths."""
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fla.modules import FusedCrossEntropyLoss, FusedLinearCrossEntropyLoss
from fla.modules.fused_linear_cross_entropy import fused_linear_cross_entropy
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed


def targets(N, V, num_ignored):
    t = torch.randint(0, V, (N,))
    t[torch.randperm(N)[:num_ignored]] = -100
    return t


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize(
    "N, V, smoothing, reduction",
    [(24, 5000, 0.0, "mean"), (24, 5000, 0.1, "sum"), (17, 300, 0.2, "none"), (33, 129, 0.0, "sum")],
)
def test_cross_entropy_matches_torch(backend, N, V, smoothing, reduction):
    seed(backend, N, V, smoothing, reduction)
    logits = (2 * torch.randn(N, V)).requires_grad_()
    target = targets(N, V, 5)
    with use_backend(backend), poisoned_empty():
        loss = FusedCrossEntropyLoss(label_smoothing=smoothing, reduction=reduction)(logits, target)
        dloss = torch.randn_like(loss)
        (dlogits,) = torch.autograd.grad(loss, logits, dloss)
    ref = F.cross_entropy(logits.double(), target, label_smoothing=smoothing, reduction=reduction)
    (dref,) = torch.autograd.grad(ref, logits, dloss.double())
    assert_close("loss", loss, ref, 1e-6)
    assert_close("dlogits", dlogits, dref, 1e-6)
    assert dlogits[target == -100].abs().max() == 0


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cross_entropy_half_logits(backend):
    seed(backend)
    logits = torch.randn(16, 1000, dtype=torch.float16, requires_grad=True)
    target = targets(16, 1000, 2)
    with use_backend(backend):
        loss = FusedCrossEntropyLoss()(logits, target)
        loss.backward()
    assert logits.grad.dtype == torch.float16
    ref = F.cross_entropy(logits.double(), target)
    (dref,) = torch.autograd.grad(ref, logits)
    assert_close("loss", loss, ref, 1e-5)
    assert_close("dlogits", logits.grad, dref, 2e-3)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize(
    "N, D, V, chunk_size, smoothing, reduction, has_bias",
    [
        (50, 32, 300, 16, 0.0, "mean", False),  # 50 is not a multiple of the chunk
        (50, 32, 300, 16, 0.1, "sum", True),
        (37, 48, 130, None, 0.1, "mean", True),
        (20, 16, 64, 7, 0.0, "sum", False),
    ],
)
def test_linear_cross_entropy_matches_lm_head(backend, N, D, V, chunk_size, smoothing, reduction, has_bias):
    seed(backend, N, D, V, chunk_size, smoothing, reduction, has_bias)
    hidden = torch.randn(N, D, requires_grad=True)
    weight = (torch.randn(V, D) / D**0.5).requires_grad_()
    bias = torch.randn(V, requires_grad=True) if has_bias else None
    target = targets(N, V, 6)
    inputs = [t for t in (hidden, weight, bias) if t is not None]
    loss_fn = FusedLinearCrossEntropyLoss(label_smoothing=smoothing, reduction=reduction, chunk_size=chunk_size)
    with use_backend(backend), poisoned_empty():
        loss = loss_fn(hidden, target, weight, bias)
        grads = torch.autograd.grad(2.5 * loss, inputs)
    logits = F.linear(hidden.double(), weight.double(), None if bias is None else bias.double())
    ref = F.cross_entropy(logits, target, label_smoothing=smoothing, reduction=reduction)
    grads_ref = torch.autograd.grad(2.5 * ref, inputs)
    assert_close("loss", loss, ref, 1e-6)
    for name, got, want in zip(["dhidden", "dweight", "dbias"], grads, grads_ref):
        assert_close(name, got, want, 1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_linear_cross_entropy_batched_input_and_num_chunks(backend):
    seed(backend)
    hidden = torch.randn(2, 13, 16, requires_grad=True)
    weight = torch.randn(100, 16, requires_grad=True)
    target = targets(26, 100, 3).view(2, 13)
    with use_backend(backend):
        loss = fused_linear_cross_entropy(hidden, target, weight, num_chunks=3)
        loss.backward()
    ref = F.cross_entropy(F.linear(hidden.double(), weight.double()).flatten(0, 1), target.flatten())
    dh, dw = torch.autograd.grad(ref, (hidden, weight))
    assert_close("loss", loss, ref, 1e-6)
    assert_close("dhidden", hidden.grad, dh, 1e-5)
    assert_close("dweight", weight.grad, dw, 1e-5)


def test_losses_reject_bad_inputs():
    h, w, t = torch.randn(4, 8), torch.randn(10, 8), torch.randint(0, 10, (4,))
    with pytest.raises(ValueError, match="reduction must be one of"):
        FusedLinearCrossEntropyLoss(reduction="none")
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        FusedCrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="weight must be \\[V, D\\] with D = 8"):
        fused_linear_cross_entropy(h, t, torch.randn(10, 6))
    with pytest.raises(ValueError, match="one class index per row: 4"):
        fused_linear_cross_entropy(h, t[:3], w)
    with pytest.raises(ValueError, match="target must be an int64 or int32"):
        FusedCrossEntropyLoss()(torch.randn(4, 10), t.float())
    with pytest.raises(ValueError, match="logits must be a floating-point \\[N, V\\]"):
        FusedCrossEntropyLoss()(torch.randn(2, 4, 10), t)
    with pytest.raises(ValueError, match="chunk_size or num_chunks, not both"):
        fused_linear_cross_entropy(h, t, w, chunk_size=2, num_chunks=2)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_linear_cross_entropy_half(backend):
    seed(backend)
    hidden = torch.randn(40, 32, dtype=torch.float16, requires_grad=True)
    weight = (torch.randn(200, 32) / 32**0.5).half().requires_grad_()
    target = targets(40, 200, 4)
    with use_backend(backend):
        loss = fused_linear_cross_entropy(hidden, target, weight, chunk_size=16)
        loss.backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.float16
    ref = F.cross_entropy(F.linear(hidden.double(), weight.double()), target)
    dh, dw = torch.autograd.grad(ref, (hidden, weight))
    assert_close("loss", loss, ref, 1e-3)
    assert_close("dhidden", hidden.grad, dh, 5e-3)
    assert_close("dweight", weight.grad, dw, 5e-3)


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensors created inside the block that are alive at once (`inputs`' storages don't count:
    the interpreter re-wraps them)."""

    def __init__(self, *inputs):
        super().__init__()
        self.alive, self.current, self.peak = {}, 0, 0
        self.inputs = {t.untyped_storage().data_ptr() for t in inputs}

    def _free(self, ptr):
        self.alive[ptr][0] -= 1
        if self.alive[ptr][0] == 0:
            self.current -= self.alive.pop(ptr)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.inputs:
                ptr = t.untyped_storage().data_ptr()
                if ptr not in self.alive:
                    self.alive[ptr] = [0, t.untyped_storage().nbytes()]
                    self.current += self.alive[ptr][1]
                    self.peak = max(self.peak, self.current)
                self.alive[ptr][0] += 1
                weakref.finalize(t, self._free, ptr)
        return out


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_linear_cross_entropy_never_holds_full_logits(backend):
    seed(backend)
    N, D, V = 128, 16, 4000
    hidden, weight = torch.randn(N, D, requires_grad=True), torch.randn(V, D, requires_grad=True)
    target = targets(N, V, 10)
    full_logits = N * V * 4
    with use_backend(backend), LiveBytes(hidden, weight, target) as fused:
        fused_linear_cross_entropy(hidden, target, weight, chunk_size=8).backward()
    with LiveBytes(hidden, weight, target) as unfused:
        F.cross_entropy(F.linear(hidden, weight), target).backward()
    print(f"peak bytes: fused {fused.peak}, unfused {unfused.peak}, full logits {full_logits}")
    assert unfused.peak >= full_logits  # the tally sees the logits when they exist
    assert fused.peak < full_logits / 2


def test_cross_entropy_kernel_keeps_one_gradient_buffer():
    """Triton path: the only [N, V] tensor made is the gradient buffer (logits dtype), scaled in place by backward."""
    seed("one buffer")
    N, V = 64, 3000
    logits = torch.randn(N, V, dtype=torch.float16, requires_grad=True)
    target = targets(N, V, 3)
    with use_backend("triton"), LiveBytes(logits, target) as tally:
        FusedCrossEntropyLoss()(logits, target).backward()
    print(f"peak bytes {tally.peak}, one half-precision [N, V] buffer {N * V * 2}")
    assert N * V * 2 <= tally.peak < N * V * 2 * 1.25


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("scale,cap,z", [(1.0, None, 1e-3), (0.5, 3.0, 0.0), (2.0, 5.0, 1e-2)])
def test_peer_logit_options_match_pytorch(backend, scale, cap, z):
    """logit_scale, logit_softcapping and the z-loss (lse_square_scale), as the peer library defines them, against
    PyTorch autograd of the same formula; return_z_loss gives the z part alone."""
    seed("ce-options", backend, scale, cap, z)
    N, V = 37, 300
    logits = (torch.randn(N, V) * 4).requires_grad_()
    target = torch.randint(0, V, (N,))
    target[::5] = -100
    x = logits.detach().clone().requires_grad_()
    y = x * scale
    if cap is not None:
        y = cap * torch.tanh(y / cap)
    lse = torch.logsumexp(y, -1)
    valid = target != -100
    want = F.cross_entropy(y, target, label_smoothing=0.1) + z * (lse[valid] ** 2).mean()
    want.backward()
    with use_backend(backend), poisoned_empty():
        loss, z_loss = FusedCrossEntropyLoss(label_smoothing=0.1, logit_scale=scale, lse_square_scale=z,
                                             logit_softcapping=cap, return_z_loss=True)(logits, target)
        loss.backward()
    assert_close("loss", loss, want, 1e-5)
    assert_close("z_loss", z_loss, z * (lse[valid] ** 2).mean(), 1e-5)
    assert_close("dlogits", logits.grad, x.grad, 1e-5)


def test_peer_logit_options_refused_when_wrong():
    with pytest.raises(ValueError, match="process_group"):
        FusedCrossEntropyLoss(process_group=object())
    with pytest.raises(ValueError, match="logit_scale"):
        FusedCrossEntropyLoss(logit_scale=0.0)
    with pytest.raises(ValueError, match="logit_softcapping"):
        FusedCrossEntropyLoss(logit_softcapping=-1.0)


def test_inplace_backward_writes_the_gradient_into_the_logits():
    seed("ce-inplace")
    logits = torch.randn(8, 50)
    target = torch.randint(0, 50, (8,))
    ref = logits.clone().requires_grad_()
    F.cross_entropy(ref, target).backward()
    leaf = logits.clone().requires_grad_()
    with use_backend("torch"):
        FusedCrossEntropyLoss(inplace_backward=True)(leaf, target).backward()
    assert_close("grad", leaf.grad, ref.grad, 1e-6)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_linear_cross_entropy_logit_scale_and_softcap(backend):
    seed("flce-options", backend)
    N, D, V = 40, 16, 96
    h, w = torch.randn(N, D, requires_grad=True), torch.randn(V, D, requires_grad=True)
    target = torch.randint(0, V, (N,))
    h_ref, w_ref = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y = h_ref @ w_ref.t() * 0.5
    F.cross_entropy(20.0 * torch.tanh(y / 20.0), target).backward()
    with use_backend(backend), poisoned_empty():
        loss = FusedLinearCrossEntropyLoss(-100, 0.0, 0.5, 20.0, 3)(h, target, w)  # the peer's positional order
        loss.backward()
    want = F.cross_entropy(20.0 * torch.tanh(h.detach() @ w.detach().t() * 0.5 / 20.0), target)
    assert_close("loss", loss, want, 1e-5)
    assert_close("dh", h.grad, h_ref.grad, 1e-5)
    assert_close("dw", w.grad, w_ref.grad, 1e-5)


def l2warp_reference(loss, logits, factor):
    """The peer's L2Warp on full logits [N, V]: the loss unchanged, each row's max logit gets factor / N * max."""
    peak, where = logits.detach().max(-1, keepdim=True)
    extra = torch.zeros_like(logits).scatter_(-1, where, peak * factor / logits.shape[0])
    return loss + (logits * extra).sum() - (logits * extra).sum().detach()


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_linear_cross_entropy_l2warp_and_half_accumulation(backend):
    seed("flce-l2warp", backend)
    N, D, V = 37, 16, 80
    h, w, b = torch.randn(N, D), torch.randn(V, D) / 4, torch.randn(V)
    target = targets(N, V, 5)
    leaves = [t.clone().requires_grad_() for t in (h, w, b)]
    logits = F.linear(*[t.double() for t in leaves])
    ref = l2warp_reference(F.cross_entropy(logits, target, reduction="sum"), logits, 0.3)
    want = torch.autograd.grad(1.5 * ref, leaves)
    mine = [t.clone().requires_grad_() for t in (h, w, b)]
    with use_backend(backend), poisoned_empty():
        loss = FusedLinearCrossEntropyLoss(-100, 0.0, 1.0, None, 3, "sum", True, 0.3)(mine[0], target, mine[1], mine[2])
        got = torch.autograd.grad(1.5 * loss, mine)
    assert_close("loss", loss, ref, 1e-6)  # L2Warp changes gradients only
    for name, g, r in zip(("dh", "dw", "db"), got, want):
        assert_close(name, g, r, 1e-5)
    # accumulate_grad_in_fp32=False: weight gradients summed in float16, close to the float32 sums
    half = [t.half().clone().requires_grad_() for t in (h, w, b)]
    with use_backend(backend):
        loss = fused_linear_cross_entropy(half[0], target, half[1], half[2], chunk_size=8,
                                          accumulate_grad_in_fp32=False)
        dw, db = torch.autograd.grad(loss, half[1:])
    logits = F.linear(*[t.double() for t in half])
    dw_ref, db_ref = torch.autograd.grad(F.cross_entropy(logits, target), half[1:])
    assert dw.dtype == db.dtype == torch.float16
    assert_close("dw fp16", dw, dw_ref, 5e-3)
    assert_close("db fp16", db, db_ref, 5e-3)


def test_linear_cross_entropy_peer_functional_form_and_refusals():
    from fla.modules.fused_linear_cross_entropy import fused_linear_cross_entropy_loss
    seed("flce-peer-form")
    h, w, target = torch.randn(30, 8), torch.randn(50, 8), torch.randint(0, 50, (30,))
    with use_backend("torch"):
        got = fused_linear_cross_entropy_loss(h, target, w, None, -100, 0.0, 0.5)
    assert_close("loss", got, F.cross_entropy(0.5 * h @ w.t(), target), 1e-6)
    with pytest.raises(ValueError, match="process_group"):
        FusedLinearCrossEntropyLoss(process_group=object())
    with pytest.raises(ValueError, match="process_group"):
        fused_linear_cross_entropy(h, target, w, process_group=object())
    with pytest.raises(ValueError, match="l2_penalty_factor"):
        FusedLinearCrossEntropyLoss(use_l2warp=True, l2_penalty_factor=-1.0)
