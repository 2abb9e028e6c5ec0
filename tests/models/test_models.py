"""fla.models: every family (and a hybrid) on tiny configs. Most cases force the torch backend (the point is the model
logic: packing, caching, padding, HF plumbing); `test_interpreted_kernels_*` run the Triton kernels (interpreter on
CPU) through whole models."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fla.models  # noqa: F401  (registers the families)
from fla.models import FLACache
from fla.ops.utils.dispatch import use_backend
from tests import helpers
from tests.helpers import assert_close, seed

VOCAB = 64
FAMILIES = {
    "transformer": dict(num_heads=2, num_kv_heads=1),
    "gla": dict(num_heads=2, use_short_conv=True),
    "retnet": dict(num_heads=2),
    "linear_attn": dict(num_heads=2),
    "delta_net": dict(num_heads=2, use_gate=True),
    "gated_deltanet": dict(num_heads=2, head_dim=16, expand_v=1.0),
    "gated_deltaproduct": dict(num_heads=2, head_dim=16, expand_v=1.0, num_householder=2, use_forget_gate=True,
                               allow_neg_eigval=True),
    "hgrn": dict(expand_ratio=1, use_short_conv=True),
    "hgrn2": dict(expand_ratio=8, use_short_conv=True),
    "gla_hybrid": dict(num_heads=2, attn={"layers": [1], "num_heads": 2, "num_kv_heads": 1, "window_size": 24}),
    "kda": dict(num_heads=2, head_dim=16),
    "kda_hybrid": dict(num_heads=2, head_dim=16, attn={"layers": [0], "num_heads": 2, "num_kv_heads": 2}),
    "rwkv7": dict(head_dim=16, decay_low_rank_dim=8, gate_low_rank_dim=8, a_low_rank_dim=8, v_low_rank_dim=8),
    "mamba2": dict(head_dim=8, state_size=16, n_groups=2),
    "forgetting_transformer": dict(num_heads=2, num_kv_heads=1, qk_norm=True, use_output_gate=True),
}


def make_model(family: str, tie: bool = False, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type = family.removesuffix("_hybrid")
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, hidden_ratio=2, eos_token_id=None,
                  bos_token_id=None, pad_token_id=0, tie_word_embeddings=tie, **FAMILIES[family])
    kwargs.update(overrides)
    config = AutoConfig.for_model(model_type, **kwargs)
    seed(family, "init")
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(autouse=True)
def torch_backend(request):
    if "interpreted" in request.node.name:
        yield
    else:
        with use_backend("torch"):
            yield


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_classes_by_model_type(family, tmp_path):
    from transformers import AutoConfig, AutoModel

    model = make_model(family)
    model.config.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is type(model.config)
    backbone = AutoModel.from_config(config)
    assert type(backbone) is type(model.model)
    # the trainer's contract
    assert isinstance(model.model.layers, torch.nn.ModuleList) and len(model.model.layers) == 2
    assert model.model.embeddings.weight.shape == (VOCAB, 32) and model.lm_head.weight.shape == (VOCAB, 32)
    assert model.model.norm is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_documents_match_separate_runs(family):
    model = make_model(family)
    lens = [7, 1, 20, 13]
    seed(family, "packed")
    docs = [torch.randint(1, VOCAB, (1, n)) for n in lens]
    cu_seqlens = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    packed = torch.cat(docs, 1)
    out = model(packed, labels=packed, cu_seqlens=cu_seqlens, use_cache=False)
    logits = model(packed, cu_seqlens=cu_seqlens, use_cache=False).logits
    want_logits, losses = [], []
    for doc in docs:
        want_logits.append(model(doc, use_cache=False).logits)
        if doc.shape[1] > 1:
            losses.append(model(doc, labels=doc, use_cache=False).loss * (doc.shape[1] - 1))
    assert_close("logits", logits, torch.cat(want_logits, 1), 1e-5)
    # the packed loss is the mean over every document's own next-token predictions (none across a boundary)
    assert_close("loss", out.loss, sum(losses) / (sum(lens) - len(lens)), 1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prefill", [1, 11])
def test_cached_decoding_matches_full_forward(family, prefill):
    model = make_model(family)
    seed(family, prefill, "decode")
    x = torch.randint(1, VOCAB, (2, 30))
    full = model(x, use_cache=False).logits
    out = model(x[:, :prefill], use_cache=True)
    cache, logits = out.past_key_values, [out.logits]
    assert isinstance(cache, FLACache) and cache.get_seq_length() == prefill
    for t in range(prefill, x.shape[1]):
        out = model(x[:, t:t + 1], past_key_values=cache, use_cache=True)
        logits.append(out.logits)
    assert cache.get_seq_length() == x.shape[1]
    assert_close("logits", torch.cat(logits, 1), full, 1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_matches_argmax_of_full_forwards(family):
    model = make_model(family)
    seed(family, "greedy")
    prompt = torch.randint(1, VOCAB, (2, 6))
    got = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    seq = prompt
    for _ in range(8):
        next_token = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, next_token], 1)
    assert torch.equal(got, seq)


@pytest.mark.parametrize("family", ["gla_hybrid", "gated_deltanet", "retnet", "mamba2", "forgetting_transformer"])
def test_beam_search_with_cache_matches_without(family):
    """Beam search reorders the cache (FLACache.reorder_cache) between steps; without a cache it recomputes."""
    model = make_model(family)
    seed(family, "beam")
    prompt = torch.randint(1, VOCAB, (2, 6))
    kwargs = dict(max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=0)
    with_cache = model.generate(prompt, use_cache=True, **kwargs)
    assert torch.equal(with_cache, model.generate(prompt, use_cache=False, **kwargs))


@pytest.fixture
def transformers_log():
    with helpers.transformers_log() as buffer:
        yield buffer


def test_cache_under_both_names_without_deprecation_notices(transformers_log):
    """transformers >= 5.24 passes the cache as `cache=` (and warns on `past_key_values`), older ones as
    `past_key_values=`: the model takes either, its outputs answer to both, and generate prints no notice."""
    model = make_model("gla_hybrid")
    seed("names")
    x = torch.randint(1, VOCAB, (2, 14))
    full = model(x, use_cache=False).logits
    out = model(x[:, :5], use_cache=True)
    assert isinstance(out.cache, FLACache) and out.past_key_values is out.cache
    logits = [out.logits]
    for t in range(5, 14):  # alternate the two names on one cache
        name = "cache" if t % 2 else "past_key_values"
        out = model(x[:, t:t + 1], **{name: out.cache}, use_cache=True)
        logits.append(out.logits)
    assert_close("logits", torch.cat(logits, 1), full, 1e-5)
    with pytest.raises(ValueError, match="not both"):
        model(x, cache=FLACache(2), past_key_values=FLACache(2), use_cache=True)
    model.generate(x[:, :6], max_new_tokens=4, do_sample=False, pad_token_id=0)
    model.generate(x[:, :6], max_new_tokens=4, num_beams=2, do_sample=False, pad_token_id=0)
    assert "deprecated" not in transformers_log.getvalue(), transformers_log.getvalue()


@pytest.mark.parametrize("family", ["gla", "gated_deltanet", "transformer"])
def test_sampling_generate_is_reproducible(family):
    model = make_model(family)
    prompt = torch.randint(1, VOCAB, (2, 5))
    torch.manual_seed(1)
    a = model.generate(prompt, max_new_tokens=6, do_sample=True, top_k=20, pad_token_id=0)
    torch.manual_seed(1)
    b = model.generate(prompt, max_new_tokens=6, do_sample=True, top_k=20, pad_token_id=0)
    assert a.shape == (2, 11) and torch.equal(a, b) and torch.equal(a[:, :5], prompt)
    assert int(a.min()) >= 0 and int(a.max()) < VOCAB


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_matches_unpadded_runs(family):
    model = make_model(family)
    seed(family, "pad")
    lens = [9, 4, 6]
    T = max(lens)
    rows = [torch.randint(1, VOCAB, (1, n)) for n in lens]
    input_ids = torch.stack([F.pad(r[0], (T - r.shape[1], 0)) for r in rows])
    mask = torch.stack([F.pad(torch.ones(r.shape[1], dtype=torch.long), (T - r.shape[1], 0)) for r in rows])
    logits = model(input_ids, attention_mask=mask, use_cache=False).logits
    for i, r in enumerate(rows):
        want = model(r, use_cache=False).logits
        assert_close(f"row{i}", logits[i:i + 1, T - r.shape[1]:], want, 1e-5)
    got = model.generate(input_ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    for i, r in enumerate(rows):
        want = model.generate(r, max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert torch.equal(got[i, T - r.shape[1]:], want[0]), f"row {i}: {got[i].tolist()} vs {want[0].tolist()}"


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = make_model(family, tie=family == "gla")
    x = torch.randint(1, VOCAB, (2, 12))
    want = model(x, use_cache=False).logits
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert_close("logits", loaded(x, use_cache=False).logits, want, 0)
    if model.config.tie_word_embeddings:
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embeddings.weight.data_ptr()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_parameter_gets_a_gradient(family):
    model = make_model(family).train()
    seed(family, "grad")
    if family == "rwkv7":  # its init zeroes the LoRA input weights and the channel-mix value: their neighbours'
        with torch.no_grad():  # first gradient is exactly 0, so step off those zeros
            for p in model.parameters():
                p.add_(1e-2 * torch.randn_like(p))
    x = torch.randint(1, VOCAB, (2, 24))
    model(x, labels=x).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not missing, f"no (finite, nonzero) gradient for {missing}"


@pytest.mark.parametrize("family", ["transformer", "gla_hybrid", "gated_deltanet", "retnet", "mamba2", "kda", "rwkv7"])
@pytest.mark.parametrize("tie", [False, True])
def test_reset_parameters_after_meta_build(family, tie):
    """The trainer builds on meta, then to_empty(), then reset_parameters(): finite, seeded, tied, and the same
    forward as a model built normally and re-initialized under the same seed."""
    reference = make_model(family, tie=tie)
    with torch.device("meta"):
        model = type(reference)(reference.config)
    model.to_empty(device="cpu")
    torch.manual_seed(7)
    model.reset_parameters()
    torch.manual_seed(7)
    reference.reset_parameters()
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.isfinite(p).all(), name
        assert torch.equal(p, q), f"{name} differs from a normally built model reset under the same seed"
    for name, b in model.named_buffers():
        assert torch.isfinite(b).all(), name
    if tie:
        assert model.lm_head.weight is model.model.embeddings.weight
    x = torch.randint(1, VOCAB, (1, 10))
    assert_close("logits", model.eval()(x, use_cache=False).logits, reference(x, use_cache=False).logits, 0)


@pytest.mark.parametrize("fuse_linear", [True, False])
@pytest.mark.parametrize("fuse", [True, False])
def test_loss_is_mean_over_scored_tokens(fuse_linear, fuse):
    model = make_model("gla", fuse_linear_cross_entropy=fuse_linear, fuse_cross_entropy=fuse)
    x = torch.randint(1, VOCAB, (2, 10))
    labels = x.clone()
    labels[0, 4:7] = -100
    out = model(x, labels=labels, use_cache=False)
    assert (out.logits is None) == fuse_linear
    logits = model(x, use_cache=False).logits
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)
    want = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert_close("loss", out.loss, want, 1e-5)


def test_logits_to_keep_and_hidden_states():
    model = make_model("gated_deltanet")
    x = torch.randint(1, VOCAB, (2, 10))
    out = model(x, use_cache=False, output_hidden_states=True)
    assert_close("last", model(x, use_cache=False, logits_to_keep=1).logits, out.logits[:, -1:], 1e-6)
    assert len(out.hidden_states) == 3  # the embeddings, the first block's output, the final norm of the last
    assert_close("head", model.lm_head(out.hidden_states[-1]), out.logits, 1e-6)


def test_flops_per_token_formula():
    model = make_model("transformer", num_kv_heads=2)
    D, L, V, I = 32, 2, VOCAB, model.config.mlp_intermediate_size
    per_layer = 4 * D * D + 3 * D * I
    seq_len = 100
    want = 6 * (L * per_layer + V * D) + 12 * L * 2 * 16 * seq_len
    assert model.flops_per_token(seq_len) == want
    gla = make_model("gla")
    assert gla.flops_per_token(100) == gla.flops_per_token(1000)  # linear attention: no seq_len term


def test_rejects_a_dynamic_cache_and_cu_seqlens_with_cache():
    from transformers import DynamicCache

    model = make_model("gla")
    x = torch.randint(1, VOCAB, (1, 8))
    with pytest.raises(ValueError, match="FLACache"):
        model(x, past_key_values=DynamicCache(), use_cache=True)
    with pytest.raises(ValueError, match="cu_seqlens"):
        model(x, cu_seqlens=torch.tensor([0, 3, 8], dtype=torch.int32), use_cache=True)
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.randint(1, VOCAB, (2, 8)), attention_mask=torch.ones(2, 1, 8, 8), use_cache=False)


@pytest.mark.parametrize("family", ["gla", "gated_deltanet", "gla_hybrid"])
def test_interpreted_kernels_packed_and_decoding(family):
    """The Triton kernels (interpreted on CPU) inside whole models: packed documents vs separate runs, and cached
    decoding (fused recurrent kernels, conv step) vs the chunked full forward."""
    model = make_model(family)
    lens = [5, 1, 40]
    docs = [torch.randint(1, VOCAB, (1, n)) for n in lens]
    cu_seqlens = torch.tensor([0, 5, 6, 46], dtype=torch.int32)
    packed = torch.cat(docs, 1)
    model.train()  # chunk kernels
    logits = model(packed, cu_seqlens=cu_seqlens, use_cache=False).logits
    want = torch.cat([model(d, use_cache=False).logits for d in docs], 1)
    assert_close("packed", logits, want, 1e-4)
    model.eval()
    x = docs[2][:, :20]
    out = model(x[:, :12], use_cache=True)
    steps = [out.logits]
    for t in range(12, 20):
        out = model(x[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
        steps.append(out.logits)
    assert_close("decode", torch.cat(steps, 1), want[:, 6:26], 1e-4)


@pytest.mark.parametrize("family", ["gla_hybrid", "gated_deltanet", "retnet", "mamba2", "forgetting_transformer"])
def test_training_overfits_one_packed_batch(family):
    """End to end: packed documents, the fused linear cross entropy and AdamW drive the loss well down."""
    model = make_model(family).train()
    seed(family, "train")
    x = torch.randint(1, VOCAB, (1, 48))
    cu_seqlens = torch.tensor([0, 20, 21, 48], dtype=torch.int32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model(x, labels=x, cu_seqlens=cu_seqlens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_the_peers_cache_api():
    """The peer library's cache interface: `fla.models.utils.Cache`, `cache[i]` as a dict of the layer's states
    (writable), len / iteration, and the legacy tuple form, which a forward accepts in place of a cache."""
    from fla.models.utils import Cache

    model = make_model("gla_hybrid")
    x = torch.randint(1, VOCAB, (2, 9))
    full = model(x, use_cache=False).logits
    cache = model(x[:, :6], use_cache=True).past_key_values
    assert Cache is FLACache and isinstance(cache, Cache) and len(cache) == 2
    assert set(cache[0]) == {"recurrent_state", "attn_state", "conv_state", "ffn_state"}
    assert cache[0]["recurrent_state"].shape == (2, 2, 16, 8)  # GLA: [B, H, V, K], as the peer stores it
    assert cache[1]["attn_state"][0].shape == (2, 6, 16)  # [B, S, H_kv * D]
    with pytest.raises(KeyError):
        cache[2]
    legacy = cache.to_legacy_cache()
    assert isinstance(legacy, tuple) and all(isinstance(s, dict) for s in legacy)
    again = FLACache.from_legacy_cache(legacy)
    assert again.get_seq_length() == 6  # from the attention layer's keys
    out = model(x[:, 6:], past_key_values=legacy, attention_mask=torch.ones_like(x), use_cache=True)
    assert_close("legacy", out.logits, full[:, 6:], 1e-5)
    saved = again[0]["recurrent_state"]
    again[0]["recurrent_state"] = torch.zeros_like(saved)
    assert again.layers[0].recurrent_state.abs().sum() == 0


def test_tuple_outputs_and_logit_selection():
    model = make_model("gated_deltanet")
    x = torch.randint(1, VOCAB, (2, 10))
    out = model(x, use_cache=True)
    logits, cache = model(x, use_cache=True, return_dict=False)
    assert torch.equal(logits, out.logits) and isinstance(cache, FLACache)
    (hidden,) = model.model(x, use_cache=False, return_dict=False)
    assert hidden.shape == (2, 10, 32)
    loss, logits = model(x, labels=x, return_dict=False, use_cache=False)[:2]
    assert loss.dim() == 0 and logits.shape == (2, 10, VOCAB)
    assert torch.equal(model(x, num_logits_to_keep=3, use_cache=False).logits, out.logits[:, -3:])
    index = torch.tensor([0, 4])
    assert torch.equal(model(x, logits_to_keep=index, use_cache=False).logits, out.logits[:, index])


def test_loss_over_num_items_in_batch_and_l2_warp():
    """num_items_in_batch: the summed loss over that count (gradient accumulation); use_l2warp: the same loss, and
    the peer's gradient push of 1e-4 / tokens on each position's largest logit."""
    model = make_model("gla", fuse_linear_cross_entropy=False)
    x = torch.randint(1, VOCAB, (2, 10))
    mean = model(x, labels=x, use_cache=False).loss
    assert_close("sum", model(x, labels=x, num_items_in_batch=9, use_cache=False).loss, mean * 18 / 9, 1e-6)
    warped = make_model("gla", fuse_linear_cross_entropy=False, use_l2warp=True)
    logits = warped(x, use_cache=False).logits.detach().requires_grad_()
    plain = logits.detach().clone().requires_grad_()
    from fla.models.modeling_base import l2_warp
    l2_warp(logits.logsumexp(-1).mean(), logits).backward()
    plain.logsumexp(-1).mean().backward()
    top = logits.detach().argmax(-1, keepdim=True)
    push = torch.zeros_like(plain.grad).scatter_(-1, top, logits.detach().gather(-1, top) * 1e-4 / 20)
    assert_close("grad", logits.grad, plain.grad + push, 1e-6)
    assert_close("loss", warped(x, labels=x, use_cache=False).loss, mean, 1e-6)  # same weights: same loss
    with pytest.raises(ValueError, match="use_l2warp"):
        make_model("gla", fuse_linear_cross_entropy=True, use_l2warp=True)(x, labels=x, use_cache=False)


def test_fuse_swiglu_reaches_the_mlp_and_warns_where_there_is_none():
    """config.fuse_swiglu picks the MLP's kernel (same logits either way); a family without a SwiGLU MLP (Mamba-2:
    none, RWKV-7: its channel mix) warns that the field does nothing instead of keeping it silently."""
    fused, unfused = make_model("gla"), make_model("gla", fuse_swiglu=False)
    assert [b.mlp.fuse_swiglu for b in fused.model.layers] == [True, True]
    assert [b.mlp.fuse_swiglu for b in unfused.model.layers] == [False, False]
    seed("fuse_swiglu", "input")
    x = torch.randint(1, VOCAB, (2, 9))
    assert_close("logits", unfused(x).logits, fused(x).logits, 1e-5)
    for family in ("mamba2", "rwkv7"):
        with pytest.warns(UserWarning, match="fuse_swiglu=False has no effect"):
            make_model(family, fuse_swiglu=False)
