"""Context parallelism through whole models: a packed forward + backward of `FLAForCausalLM(..., cp_context=)` on 2
gloo ranks (each holding half the tokens) equals the single-rank model: logits, loss (the ranks' shares summed) and
every parameter's gradient (summed over the ranks), for packed documents (one crossing the rank boundary, a length-1
one, one ending exactly at it) and for fixed-length rows. A layer without CP support (a test-local one: every
shipped layer has it) raises a clear error.

One spawn of 2 processes runs every case; the ops run their PyTorch path (the CP layer composes the op's own
autograd function, the same on every backend). Failures are collected and raised after the last collective."""
from __future__ import annotations

import torch
import torch.distributed as dist

from tests.cp_helpers import run_on_ranks

T = 48
GLOBAL_CU = [0, 5, 6, 24, 25, 40, 48]  # 6-24 ends at the boundary of 2 ranks; 25-40 and 40-48 on rank 1
CROSSING_CU = [0, 3, 30, 48]  # 3-30 crosses the boundary (rotary positions, state and halo from rank 0)
FAMILIES = ["transformer", "gla", "retnet", "delta_net", "gated_deltanet", "linear_attn", "kda", "gla_hybrid",
            "kda_hybrid", "forgetting_transformer", "hgrn", "hgrn2",
            "mamba2", "gated_deltaproduct", "rwkv7"]
REL = 1e-5
# RWKV-7's DPLR op is float32-noisier (its WY solve; tests/ops/test_dplr.py checks at 1e-4): the same documents run
# as two single-rank calls, without CP, already move its gradients by up to 3e-4 from the one-call reference (its
# logits and loss stay within REL)
GRAD_REL_BY_FAMILY = {"rwkv7": 2e-3}


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _check_family(family, ctx_by_cu, failures):
    from tests.models.test_models import make_model
    model = make_model(family, fuse_linear_cross_entropy=False, fuse_cross_entropy=False).train()
    if family == "rwkv7":  # its init zeroes the LoRA inputs and the channel mix's value: step off those zeros, or
        torch.manual_seed(3)  # the channel mix's token shift (and its halo) would never reach the loss
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-2 * torch.randn_like(p))
    params = [p for p in model.parameters() if p.requires_grad]
    rank, world = dist.get_rank(), dist.get_world_size()
    L = T // world
    piece = slice(rank * L, (rank + 1) * L)
    torch.manual_seed(7)
    for mode, cu_list in (("varlen", GLOBAL_CU), ("crossing", CROSSING_CU), ("fixed", None)):
        B = 1 if cu_list is not None else 2
        ids = torch.randint(1, 64, (B, T))
        cu = torch.tensor(cu_list, dtype=torch.int32) if cu_list is not None else None
        ref = model(ids, labels=ids, cu_seqlens=cu, use_cache=False)
        n_targets = int((shift(ids, cu) != -100).sum())
        ref_loss = ref.loss
        ref_grads = torch.autograd.grad(ref_loss, params)
        ctx = ctx_by_cu[mode]
        local = ids[:, piece].contiguous()
        out = model(local, labels=local, cp_context=ctx, num_items_in_batch=n_targets)
        grads = torch.autograd.grad(out.loss, params, allow_unused=True)
        loss = out.loss.detach().clone()
        dist.all_reduce(loss)
        checks = [("logits", out.logits, ref.logits[:, piece]), ("loss", loss, ref_loss.detach())]
        for i, (g, rg) in enumerate(zip(grads, ref_grads)):
            g = torch.zeros_like(rg) if g is None else g.clone()
            dist.all_reduce(g)
            checks.append((f"grad {i}", g, rg))
        for what, a, b in checks:
            err = _rel(a, b)
            if not err <= (GRAD_REL_BY_FAMILY.get(family, REL) if what.startswith("grad") else REL):
                failures.append(f"{family} {mode} rank {rank}: {what} rel err {err:.2e}")


def shift(ids, cu):
    from fla.models.modeling_base import shift_labels
    return shift_labels(ids, cu)


def _check_refusals(ctx, failures):
    from fla.layers import GatedLinearAttention
    from tests.models.test_models import make_model

    class NoCPAttention(GatedLinearAttention):  # a layer whose ops would ignore the context
        supports_cp = False

    model = make_model("gla").train()
    model.model.layers[1].attn.__class__ = NoCPAttention
    ids = torch.randint(1, 64, (1, T // 2))
    try:
        model(ids, labels=ids, cp_context=ctx)
        failures.append("a layer without supports_cp under cp_context did not raise")
    except ValueError as e:
        if "not supported by NoCPAttention" not in str(e):
            failures.append(f"NoCPAttention: unclear error {e}")
    try:  # the layer on its own (outside a model) refuses too: it would otherwise ignore the context
        model.model.layers[1].attn(torch.randn(1, T // 2, 32), cp_context=ctx)
        failures.append("NoCPAttention under cp_context did not raise")
    except ValueError as e:
        if "does not support context parallelism" not in str(e):
            failures.append(f"NoCPAttention alone: unclear error {e}")
    model = make_model("gla").train()
    try:
        model(ids, labels=ids, cp_context=ctx, cu_seqlens=torch.tensor([0, T // 2]))
        failures.append("cu_seqlens with cp_context did not raise")
    except ValueError as e:
        if "cu_seqlens" not in str(e):
            failures.append(f"cu_seqlens with cp_context: unclear error {e}")


def _check(rank, world, failures):
    from fla.ops.cp import build_cp_context
    from fla.ops.utils.dispatch import use_backend
    with use_backend("torch"):
        contexts = {"varlen": build_cp_context(torch.tensor(GLOBAL_CU), None),
                    "crossing": build_cp_context(torch.tensor(CROSSING_CU), None),
                    "fixed": build_cp_context(None, None)}
        for family in FAMILIES:
            _check_family(family, contexts, failures)
        _check_refusals(contexts["varlen"], failures)


def test_models_under_context_parallelism_match_single_rank():
    run_on_ranks(_check, 2)
