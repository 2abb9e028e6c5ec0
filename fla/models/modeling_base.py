"""The decoder backbone every `fla.models` family shares.

    embeddings -> [block: x + mixer(RMSNorm(x)); x + GatedMLP(RMSNorm(x))] * L -> RMSNorm -> LM head

A family supplies its config class and `build_mixer(config, layer_idx)`; layers listed in `config.attn` use softmax
`Attention` instead (hybrids). Module names are a contract with the trainer (`model.model.embeddings`,
`model.model.layers` (nn.ModuleList of blocks), `model.model.norm`, `model.lm_head`) and, below them, the peer
library's parameter names, so that its checkpoints load as they are and ours load there.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from transformers import GenerationMixin, PreTrainedModel

from fla.layers import Attention
from fla.models.cache import FLACache
from fla.models.configuration_base import FLAConfig
from fla.models.outputs import FLACausalLMOutput, FLAModelOutput, model_output, resolve_cache
from fla.modules import FusedCrossEntropyLoss, FusedLinearCrossEntropyLoss, GatedMLP, RMSNorm
from fla.ops.utils.checks import check_cu_seqlens_cpu
from fla.ops.utils.index import varlen_index

_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


def build_attention(config: FLAConfig, layer_idx: int, attn: dict) -> Attention:
    """Softmax attention with the options of the spec `attn` (a hybrid's, or the Transformer's own); a qk_norm uses
    RMSNorm's eps 1e-5, not norm_eps, as the peer library does."""
    return Attention(
        hidden_size=config.hidden_size,
        num_heads=attn["num_heads"],
        num_kv_heads=attn.get("num_kv_heads"),
        qkv_bias=attn.get("qkv_bias", False),
        qk_norm=attn.get("qk_norm", False),
        window_size=attn.get("window_size"),
        rope_theta=attn.get("rope_theta", 10000.0),
        max_position_embeddings=config.max_position_embeddings,
        layer_idx=layer_idx,
    )


class FLABlock(nn.Module):
    """Pre-norm block: x + mixer(RMSNorm(x)), then x + GatedMLP(RMSNorm(x)) (the residual add fused into the norm).
    `forward(hidden_states, attention_mask, past_key_values, use_cache, cu_seqlens) -> hidden_states`; the cache is
    updated in place."""

    def __init__(self, config: FLAConfig, mixer: nn.Module):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = mixer
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = GatedMLP(config.hidden_size, intermediate_size=config.mlp_intermediate_size,
                            hidden_act=config.hidden_act, fuse_swiglu=config.fuse_swiglu)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: FLACache | None = None,
        use_cache: bool = False,
        cu_seqlens: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.attn_norm(hidden_states)
        hidden_states, _, _ = self.attn(
            hidden_states, attention_mask=attention_mask, past_key_values=past_key_values, use_cache=use_cache,
            cu_seqlens=cu_seqlens, **kwargs,
        )
        hidden_states, residual = self.mlp_norm(hidden_states, residual, True)
        return residual + self.mlp(hidden_states)


class FLAPreTrainedModel(PreTrainedModel):
    config_class = FLAConfig
    base_model_prefix = "model"
    _no_split_modules = ["FLABlock"]
    supports_gradient_checkpointing = False
    _supports_cache_class = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Linear and embedding weights ~ N(0, initializer_range), biases 0; every other module with its own
        `reset_parameters` (norms, convolutions, gate parameters, rotary tables) resets itself."""
        std = self.config.initializer_range
        if isinstance(module, PreTrainedModel):
            return  # the model itself and the backbone inside the LM: their children are visited one by one
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-initialize every parameter and recompute non-persistent buffers, deterministically under
        `torch.manual_seed` (module order is fixed). For the trainer's meta-device build: `to_empty()` then this."""
        self.tie_weights()  # to_empty() unties shared weights; tie first so a shared weight is drawn once
        seen: set[int] = set()
        for module in self.modules():
            own = [id(p) for p in module.parameters(recurse=False)]
            if module is self or (own and all(i in seen for i in own)):
                continue
            self._init_weights(module)
            seen.update(own)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not create a DynamicCache: the model creates its FLACache on the first forward.
        return False


class FLAModel(FLAPreTrainedModel):
    """The backbone without the head: forward(...) -> FLAModelOutput (a BaseModelOutputWithPast)."""

    # a family whose block is not mixer + MLP (Mamba-2: mixer only) names its own, same forward signature
    block_class: type[nn.Module] = FLABlock

    @staticmethod
    def build_mixer(config: FLAConfig, layer_idx: int) -> nn.Module:
        """Each family overrides this: (config, layer_idx) -> its token mixer."""
        raise NotImplementedError("a family's model class must define build_mixer(config, layer_idx)")

    def layer_inputs(self) -> list[dict] | None:
        """Extra keyword inputs for each block's mixer, computed once per forward from the model's own parameters
        (HGRN's forget-gate lower bounds), or None. Softmax-attention layers of a hybrid ignore them."""
        return None

    def __init__(self, config: FLAConfig):
        super().__init__(config)
        # padding_idx: the pad token's embedding gets no gradient, as in the peer library
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        specs = [config.attn_spec(i) for i in range(config.num_hidden_layers)]
        self.layers = nn.ModuleList([
            self.block_class(config, self.build_mixer(config, i) if spec is None else build_attention(config, i, spec))
            for i, spec in enumerate(specs)
        ])
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def cp_unsupported_layers(self) -> list[str]:
        """Class names of the layers that cannot run under context parallelism (empty: the model can)."""
        blocks = [unwrap_block(layer) for layer in self.layers]
        return sorted({type(getattr(block, "attn", block)).__name__ for block in blocks
                       if not (isinstance(block, FLABlock) or getattr(block, "passes_cp_context", False))
                       or not getattr(block.attn, "supports_cp", False)})

    def check_cp(self, cp_context, cu_seqlens, attention_mask, cache) -> None:
        """Refuse what context parallelism cannot run, before any layer (and any collective) runs: a layer whose
        class does not set `supports_cp` (it would silently ignore the context), a block other than FLABlock (or
        one that sets `passes_cp_context`), cu_seqlens (the context holds this piece's), a padding mask or a cache."""
        from fla.ops.cp import FLACPContext
        if not isinstance(cp_context, FLACPContext):
            raise ValueError(f"cp_context must be an fla.ops.cp.FLACPContext (got {type(cp_context).__name__})")
        unsupported = self.cp_unsupported_layers()
        if unsupported:
            raise ValueError(f"context parallelism (cp_context) is not supported by {', '.join(unsupported)} in "
                             f"{type(self).__name__} yet: run this model without it (context_parallel_degree = 1)")
        padded = attention_mask is not None and not bool(attention_mask.all())
        if cu_seqlens is not None or cache is not None or padded:
            raise ValueError("with cp_context pass neither cu_seqlens, a cache nor padding: build the context from "
                             "the global cu_seqlens (fla.ops.cp.build_cp_context) and pass this rank's tokens")

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: FLACache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cu_seqlens: torch.Tensor | None = None,
        past_key_values: FLACache | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cu_seqlens_cpu: torch.Tensor | None = None,
        cp_context=None,
        **kwargs,
    ) -> FLAModelOutput | tuple:
        """`cache` is the generation cache (`past_key_values`, its name before transformers 5.24, works too; a
        legacy tuple of per-layer state dicts is converted). position_ids is accepted for API compatibility only:
        rotary positions follow from cu_seqlens (restart at every document), the attention mask (padding is not a
        position) and the cache (tokens already seen). No attention weights are returned (output_attentions is
        ignored, as in the peer library). return_dict=False gives the tuple (last_hidden_state, cache,
        hidden_states) without its None entries.

        cp_context: context parallelism (`fla.ops.cp.build_cp_context` from the global cu_seqlens, or None for
        [B, T] rows split along T): the input is this rank's piece of the sequence, every layer runs on it with
        the context (state, convolution halo and keys from the other ranks; rotary positions continue from them);
        pass no cu_seqlens, mask or cache then. A layer without CP support raises ValueError."""
        cache = resolve_cache(cache, past_key_values)
        if cp_context is not None:
            self.check_cp(cp_context, cu_seqlens, attention_mask, cache)
            use_cache = False
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if use_cache is None:  # cache only for inference on unpacked input
            use_cache = self.config.use_cache and not self.training and cu_seqlens is None
        if isinstance(cache, (tuple, list)):  # the columns seen so far: from the mask, when there is one
            seen = attention_mask.shape[-1] - (input_ids if inputs_embeds is None else inputs_embeds).shape[1] \
                if attention_mask is not None and attention_mask.dim() == 2 else 0
            cache = FLACache.from_legacy_cache(cache, seen_tokens=seen)
        if cache is not None and not isinstance(cache, FLACache):
            raise ValueError(
                f"the cache must be an fla.models.FLACache (got {type(cache).__name__}): linear-"
                "attention layers keep a recurrent state, not keys and values; pass None and the model creates one"
            )
        if use_cache and cache is None:
            cache = FLACache(self.config.num_hidden_layers)
        if cu_seqlens is not None and use_cache:
            raise ValueError(
                "cu_seqlens (packed training input) cannot be combined with use_cache; pass use_cache=False"
            )
        if cu_seqlens_cpu is not None:
            check_cu_seqlens_cpu(cu_seqlens_cpu, cu_seqlens)
        if cu_seqlens is not None:
            # the varlen index every layer's ops (forward and backward) share, built once here; from the host copy
            # when the caller has one (flame does), so the whole step reads no device value
            varlen_index(cu_seqlens, cu_seqlens_cpu)
        if attention_mask is not None and attention_mask.dim() == 2 and bool(attention_mask.all()):
            attention_mask = None  # nothing padded: spare every layer its own check (a host sync each)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        hidden_states = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        all_hidden_states = [] if output_hidden_states else None
        extra = self.layer_inputs()
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            hidden_states = layer(
                hidden_states, attention_mask=attention_mask, past_key_values=cache if use_cache else None,
                use_cache=use_cache, cu_seqlens=cu_seqlens, **(extra[i] if extra else {}),
                **({} if cp_context is None else {"cp_context": cp_context}),
            )
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)
        all_hidden_states = tuple(all_hidden_states) if output_hidden_states else None
        cache = cache if use_cache else None
        if not (self.config.return_dict if return_dict is None else return_dict):
            return tuple(v for v in (hidden_states, cache, all_hidden_states) if v is not None)
        return model_output(FLAModelOutput, cache, last_hidden_state=hidden_states, hidden_states=all_hidden_states)


class FLAForCausalLM(FLAPreTrainedModel, GenerationMixin):
    """Backbone + LM head. forward(...) -> FLACausalLMOutput (a CausalLMOutputWithPast; see `forward`)."""

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"} if _TRANSFORMERS_5 else ["lm_head.weight"]
    base_model_class: type[FLAModel] = FLAModel

    def __init__(self, config: FLAConfig):
        super().__init__(config)
        self.model = self.base_model_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: FLACache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        cu_seqlens: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: FLACache | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        num_logits_to_keep: int | None = None,
        cu_seqlens_cpu: torch.Tensor | None = None,
        cp_context=None,
        **kwargs,
    ) -> FLACausalLMOutput | tuple:
        """Args:
            input_ids: [B, T] (packed documents: [1, T_total] with cu_seqlens [N + 1])
            attention_mask: [B, T_past + T] 0/1 padding mask (left padding in generation), optional
            cache: the FLACache of earlier steps (with use_cache); `past_key_values` is the same argument under its
                name before transformers 5.24
            labels: [B, T], usually input_ids: token t is scored on predicting labels[t + 1] (shifted here, with
                -100 at the end and at every document's last token under cu_seqlens, so no loss crosses a boundary);
                -100 is ignored; loss = mean over the scored tokens, or their sum / num_items_in_batch when given
                (transformers' Trainer passes it under gradient accumulation)
            logits_to_keep: an int n: logits for the last n positions only (0 or None = all); a tensor: the
                positions to keep (an index along T); with labels, every position's logits are returned (as in the
                peer library). `num_logits_to_keep` is its old name
            return_dict: False gives the tuple (loss, logits, cache, hidden_states) without its None entries
            cu_seqlens_cpu: the same boundaries as cu_seqlens on the host (optional): then the varlen index is
                built without reading the device, and a packed step does no device->host sync in any layer
            cp_context: context parallelism (see FLAModel.forward): input_ids and labels are this rank's piece of
                the global ones; the last target of the piece is the next rank's first label (one all-gather of a
                label per row), so the targets are the global ones. The loss is this rank's share: pass
                num_items_in_batch = the global target count, and the sum over the ranks is the global loss
        Returns:
            loss (with labels); logits [B, T or n, V] (None when labels are given and
            config.fuse_linear_cross_entropy, which never materializes them); the cache (with use_cache), as
            `.cache` and as `.past_key_values`
        """
        if num_logits_to_keep is not None:
            if logits_to_keep:
                raise ValueError("pass logits_to_keep or its old name num_logits_to_keep, not both")
            logits_to_keep = num_logits_to_keep
        if use_cache is None and labels is not None:
            use_cache = False  # scoring, not generating
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=resolve_cache(cache, past_key_values), inputs_embeds=inputs_embeds, use_cache=use_cache,
            cu_seqlens=cu_seqlens, output_hidden_states=output_hidden_states, return_dict=True,
            cu_seqlens_cpu=cu_seqlens_cpu, **({} if cp_context is None else {"cp_context": cp_context}),
        )
        hidden_states = outputs.last_hidden_state
        loss = logits = None
        if labels is None or not self.config.fuse_linear_cross_entropy:
            logits = self.lm_head(hidden_states if labels is not None else keep_positions(hidden_states,
                                                                                           logits_to_keep))
        if labels is not None:
            targets = shift_labels(labels, cu_seqlens) if cp_context is None else shift_labels_cp(labels, cp_context)
            loss = self.compute_loss(hidden_states, logits, targets, num_items_in_batch)
        if not (self.config.return_dict if return_dict is None else return_dict):
            return tuple(v for v in (loss, logits, outputs.cache, outputs.hidden_states) if v is not None)
        return model_output(FLACausalLMOutput, outputs.cache, loss=loss, logits=logits,
                            hidden_states=outputs.hidden_states)

    def compute_loss(self, hidden_states: torch.Tensor, logits: torch.Tensor | None, targets: torch.Tensor,
             num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
        """Cross entropy of the next-token `targets` [B, T] (-100 ignored): from the hidden states [B, T, D] and the
        head weight when config.fuse_linear_cross_entropy (logits is None then), else from the logits [B, T, V]."""
        reduction = "mean" if num_items_in_batch is None else "sum"
        if self.config.fuse_linear_cross_entropy:
            if self.config.use_l2warp:
                raise ValueError("use_l2warp=True needs the logits, which fuse_linear_cross_entropy=True never "
                                 "materializes: set fuse_linear_cross_entropy=False to train with it")
            loss = FusedLinearCrossEntropyLoss(reduction=reduction)(
                hidden_states.flatten(0, 1), targets.flatten(), self.lm_head.weight, self.lm_head.bias
            )
        else:
            loss_fn = FusedCrossEntropyLoss if self.config.fuse_cross_entropy else nn.CrossEntropyLoss
            loss = loss_fn(reduction=reduction)(logits.flatten(0, 1), targets.flatten())
            if self.config.use_l2warp:
                loss = l2_warp(loss, logits)
        if num_items_in_batch is not None:
            loss = loss / (num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch)
                           else num_items_in_batch)
        return loss


    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3 x forward) at sequence length `seq_len`:

            6 * (weights of every nn.Linear / convolution in the blocks + the LM head's V * D)
            + 3 * sum over layers of the mixer's own matmul FLOPs per token (`mixer.flops_per_token(seq_len)`):
                softmax attention: 4 * H * D_head * min(seq_len, window)  (so 12 * H * D_head * seq_len in training,
                    the torchtitan convention, without the causal half)
                chunked linear attention: 2 * C * (K + V) + 4 * K * V per head (C = chunk size), more for the delta
                    rule's WY form (see fla.layers.utils.recurrent_flops_per_token); independent of seq_len

        Embedding lookups, norms, activations and biases are not counted."""
        matmul_params = 0
        for module in self.model.layers.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                matmul_params += module.weight.numel()
        head = self.config.vocab_size * self.config.hidden_size
        mixer_flops = sum(layer.attn.flops_per_token(seq_len) for layer in self.model.layers)
        return float(6 * (matmul_params + head) + 3 * mixer_flops)


def unwrap_block(module: nn.Module) -> nn.Module:
    """The block inside the trainer's wrappers (activation checkpointing, torch.compile)."""
    while True:
        inner = getattr(module, "_checkpoint_wrapped_module", None) or getattr(module, "_orig_mod", None)
        if inner is None:
            return module
        module = inner


def keep_positions(x: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """x [B, T, ...] at the positions the caller wants logits for: the last n (an int; 0 = all) or an index tensor."""
    if isinstance(logits_to_keep, torch.Tensor):
        return x[:, logits_to_keep]
    return x[:, -int(logits_to_keep):] if logits_to_keep else x


class L2Warp(torch.autograd.Function):
    """The peer library's L2-warp: the loss unchanged, and into the gradient of each position's largest logit
    1e-4 / (B * T) times that logit (so that logits cannot grow without bound in low precision)."""

    @staticmethod
    def forward(ctx, loss: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        top, index = logits.max(dim=-1, keepdim=True)
        ctx.save_for_backward(top * (1e-4 / (logits.shape[0] * logits.shape[1])), index)
        ctx.shape = logits.shape
        return loss

    @staticmethod
    def backward(ctx, dloss: torch.Tensor):
        push, index = ctx.saved_tensors
        dlogits = push.new_zeros(ctx.shape).scatter_(-1, index, push * dloss)
        return dloss, dlogits


def l2_warp(loss: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """`loss` with the L2-warp gradient on `logits` [B, T, V] (see `L2Warp`)."""
    return L2Warp.apply(loss, logits)


def shift_labels(
    labels: torch.Tensor, cu_seqlens: torch.Tensor | None = None, ignore_index: int = -100
) -> torch.Tensor:
    """[B, T] labels -> [B, T] next-token targets: targets[:, t] = labels[:, t + 1], the last column ignore_index;
    under cu_seqlens every document's last token is ignored too (the next document is not predictable from it)."""
    targets = F.pad(labels[:, 1:], (0, 1), value=ignore_index)
    if cu_seqlens is not None:
        targets = targets.clone()
        targets[:, cu_seqlens[1:].long() - 1] = ignore_index
    return targets


def shift_labels_cp(labels: torch.Tensor, cp_context, ignore_index: int = -100) -> torch.Tensor:
    """`shift_labels` of the global labels, on this rank's piece [B, T_local] of them (cp_context: its
    FLACPContext): the piece's last target is the next rank's first label (ignore_index on the last rank), and
    every global document's last token is ignored (the global boundaries are in the context)."""
    import torch.distributed as dist
    B, T = labels.shape
    rank, world = cp_context.rank, cp_context.world_size
    firsts = [torch.empty_like(labels[:, :1]) for _ in range(world)]
    dist.all_gather(firsts, labels[:, :1].contiguous(), group=cp_context.group)
    after = firsts[rank + 1] if rank + 1 < world else torch.full_like(labels[:, :1], ignore_index)
    targets = torch.cat([labels[:, 1:], after], 1)
    if cp_context.is_varlen:
        ends = cp_context.cu_seqlens_global_cpu.long()[1:] - 1 - rank * T  # every document's last token, local
        ends = ends[(ends >= 0) & (ends < T)]
        if len(ends):
            targets[:, ends.to(targets.device)] = ignore_index
    return targets


def register(config_class: type[FLAConfig], model_class: type[FLAModel], lm_class: type[FLAForCausalLM]) -> None:
    """Make AutoConfig / AutoModel / AutoModelForCausalLM find a family by its model_type."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, model_class, exist_ok=True)
    AutoModelForCausalLM.register(config_class, lm_class, exist_ok=True)
