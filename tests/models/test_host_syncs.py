"""A packed (varlen) training step of a whole model reads no device value when the caller passes cu_seqlens_cpu, and
at most one (the boundaries, once for every layer) without it: the model builds the varlen index once per forward
and every layer's ops, forward and backward, reuse it (see tests/ops/test_host_syncs.py for the ops alone and
tests/host_trace.py for how syncs are seen). Kernel launches are skipped: only the host code runs."""
from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import fla.models  # noqa: F401  (registers the model types)
from fla.ops.utils.dispatch import use_backend
from tests import host_trace as ht

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "models")
BOUNDS = [0, 1, 70, 134, 200]


@pytest.mark.parametrize("name", ["gla_hybrid", "gated_deltanet"])
@pytest.mark.parametrize("with_cpu_copy", [True, False])
def test_packed_training_step_syncs_at_most_once(name, with_cpu_copy):
    with open(os.path.join(CONFIGS, f"{name}_debug.json")) as f:
        config = AutoConfig.for_model(**json.load(f))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    for p in model.parameters():
        ht.on_device(p)
    ids = ht.on_device(torch.randint(0, config.vocab_size, (1, BOUNDS[-1])))
    cu = ht.on_device(torch.tensor(BOUNDS, dtype=torch.int32))
    kw = {"cu_seqlens_cpu": torch.tensor(BOUNDS, dtype=torch.int32)} if with_cpu_copy else {}
    with use_backend("triton"), ht.count_launches(skip=True), ht.HostTrace() as trace:
        model(input_ids=ids, labels=ids, cu_seqlens=cu, **kw).loss.backward()
    assert trace.launches >= config.num_hidden_layers, "the kernels were not seen: is the trace looking?"
    allowed = 0 if with_cpu_copy else 1
    assert len(trace.syncs) <= allowed, f"{name}: device->host syncs {trace.syncs} (at most {allowed})"


def test_cpu_copy_without_cu_seqlens_is_refused():
    with open(os.path.join(CONFIGS, "gla_debug.json")) as f:
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**json.load(f)))
    with pytest.raises(ValueError, match="cu_seqlens_cpu was given without cu_seqlens"):
        model(input_ids=torch.zeros(1, 4, dtype=torch.long), cu_seqlens_cpu=torch.tensor([0, 4]))
