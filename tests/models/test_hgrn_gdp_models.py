"""The gated_deltaproduct, hgrn and hgrn2 models beyond the shared per-family tests of test_models.py (which cover
Auto classes, packed documents, cached decoding and generation, padding, save / load, gradients): the trainer's
meta-device build with HGRN's lower-bound table (HGRN-2 shares its code), the bounds' way into the layers, and a
tiny HGRN overfitting one packed batch (Gated DeltaProduct runs the gated delta rule, whose model overfits in
test_models; HGRN-2 runs GLA's kernels likewise)."""
from __future__ import annotations

import pytest
import torch

from fla.models.hgrn.modeling_hgrn import layer_lower_bounds
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, seed
from tests.models.test_models import VOCAB, make_model


@pytest.mark.parametrize("family", ["hgrn", "gated_deltaproduct"])
def test_reset_parameters_after_meta_build(family):
    """meta build, to_empty(), reset_parameters(): the lower bounds come back as zeros (the peer's init; the generic
    init skips parameters on the model class itself), every parameter as in a normally built model reset under the
    same seed."""
    reference = make_model(family)
    with torch.device("meta"):
        model = type(reference)(reference.config)
    model.to_empty(device="cpu")
    if family != "gated_deltaproduct":
        model.model.lower_bounds.data.fill_(float("nan"))
    torch.manual_seed(7)
    model.reset_parameters()
    torch.manual_seed(7)
    reference.reset_parameters()
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.isfinite(p).all(), name
        assert torch.equal(p, q), f"{name} differs from a normally built model reset under the same seed"
    if family != "gated_deltaproduct":
        assert model.model.lower_bounds.abs().max() == 0
    x = torch.randint(1, VOCAB, (1, 10))
    with use_backend("torch"):
        assert_close("logits", model.eval()(x, use_cache=False).logits, reference(x, use_cache=False).logits, 0)


def test_lower_bounds_reach_the_layers():
    """A trained-looking table changes the forward (layers past the first see their bound) and gets a gradient."""
    model = make_model("hgrn").train()
    seed("hgrn-bounds-model")
    x = torch.randint(1, VOCAB, (2, 16))
    with use_backend("torch"):
        base = model(x).logits
        with torch.no_grad():
            model.model.lower_bounds.copy_(torch.randn_like(model.model.lower_bounds))
        out = model(x, labels=x)
        out.loss.backward()
    assert (out.logits - base).abs().max() > 1e-4
    grad = model.model.lower_bounds.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert layer_lower_bounds(model.model.lower_bounds)[0].abs().max() == 0


def test_hgrn_overfits_one_packed_batch():
    model = make_model("hgrn").train()
    seed("hgrn", "train")
    x = torch.randint(1, VOCAB, (1, 48))
    cu_seqlens = torch.tensor([0, 20, 21, 48], dtype=torch.int32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    with use_backend("torch"):
        for _ in range(30):
            loss = model(x, labels=x, cu_seqlens=cu_seqlens).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
