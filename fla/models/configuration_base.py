"""The configuration fields every `fla.models` family shares; a family's config adds its mixer's fields.

Field names, meanings and defaults are those of the peer library's models (flash-linear-attention 0.6.0), so that a
`config.json` it saved builds the same model here. A peer field either means here what it means there or is refused
with an error naming it; fields its model never reads (`peer_ignored`) are accepted and warned about when set. Our
own fields that the peer lacks (`peer_unknown`) are kept in the config; saving one at a value the peer cannot express
warns, since that checkpoint would load there with other outputs.
"""
from __future__ import annotations

import warnings
from typing import Any

from transformers import PretrainedConfig

PEER = "flash-linear-attention 0.6.0"
MLP_ACTIVATIONS = ("swish", "silu")  # the GatedMLP is SwiGLU (the peer's other choice, "powlu", is not here)
ATTN_KEYS = ("layers", "num_heads", "num_kv_heads", "qkv_bias", "window_size", "rope_theta", "qk_norm")


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; use one of {', '.join(map(repr, choices))}")


def parse_attn(attn: Any, num_hidden_layers: int) -> dict | list | None:
    """A hybrid's softmax-attention layers: one spec `{"layers": [...], "num_heads": H, ...}` or a list of them (each
    for its own layers), validated, with the defaults filled in (num_kv_heads = num_heads, qkv_bias False,
    window_size None, rope_theta 1e4, qk_norm False); the form (dict or list) is kept, as the peer keeps it."""
    if attn is None:
        return None
    if not isinstance(attn, (dict, list, tuple)):
        raise ValueError(f"attn must be None, a dict or a list of dicts (got {type(attn).__name__})")
    specs, owner = [], {}
    for i, spec in enumerate([attn] if isinstance(attn, dict) else attn):
        where = "attn" if isinstance(attn, dict) else f"attn[{i}]"
        if not isinstance(spec, dict) or "layers" not in spec or "num_heads" not in spec:
            raise ValueError(f"{where} must be a dict with at least 'layers' (indices of softmax-attention layers) "
                             f"and 'num_heads' (got {spec!r})")
        unknown = sorted(set(spec) - set(ATTN_KEYS))
        if unknown:  # the peer keeps and ignores them too
            warnings.warn(f"{where} keys {unknown} have no effect; the keys read are {list(ATTN_KEYS)}", UserWarning,
                          stacklevel=4)
        spec = {"num_kv_heads": None, "qkv_bias": False, "window_size": None, "rope_theta": 10000.0, **spec}
        spec["layers"] = list(spec["layers"])
        spec["num_kv_heads"] = spec["num_kv_heads"] or spec["num_heads"]
        for layer in spec["layers"]:
            if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < num_hidden_layers:
                raise ValueError(f"{where}['layers'] has {layer!r}, not a layer index in [0, {num_hidden_layers})")
            if layer in owner:
                raise ValueError(f"{where}['layers'] repeats layer {layer}, already given by attn[{owner[layer]}]"
                                 if owner[layer] != i else f"{where}['layers'] lists layer {layer} twice")
            owner[layer] = i
        specs.append(spec)
    return specs[0] if isinstance(attn, dict) else specs


class FLAConfig(PretrainedConfig):
    """Fields of the shared decoder backbone (the peer's names and defaults).

    Args:
        vocab_size, hidden_size, num_hidden_layers: the usual
        hidden_ratio / intermediate_size: MLP width; intermediate_size defaults to 2/3 * hidden_ratio * hidden_size
            rounded up to a multiple of 256 (SwiGLU with the parameter count of a hidden_ratio x MLP)
        hidden_act: MLP activation ("swish"; the MLP is SwiGLU)
        norm_eps: RMSNorm epsilon
        initializer_range: std of the normal init of every linear and embedding weight
        tie_word_embeddings: share the LM head with the input embeddings
        fuse_cross_entropy: FusedCrossEntropyLoss on the logits (else torch's cross entropy)
        fuse_linear_cross_entropy: loss straight from hidden states and head weight, never materializing the logits
            (the forward returns logits=None when labels are given). The peer refuses both fuse flags True; here the
            linear one takes precedence and fuse_cross_entropy is stored False, which is what it means then
        use_l2warp: the peer's L2-warp (a gradient-only push down of each position's largest logit, 1e-4 / tokens)
            on the loss; needs the logits (fuse_linear_cross_entropy=False)
        fuse_norm: a kernel choice of the peer with no effect on the math; it names the output norm of GLA / RetNet
            (see those layers)
        fuse_swiglu: the MLP's SwiGLU product fused into its down projection (GatedMLP's fuse_swiglu: the product is
            recomputed in backward instead of kept); the same math either way
        attnres_block_size: the peer's attention residuals; only None (off) is supported
        attn: hybrid models: {"layers": [indices], "num_heads": H, "num_kv_heads": H_kv, "window_size": W or None,
            "qkv_bias": False, "rope_theta": 10000.0} (or a list of such specs, each for its own layers); these
            layers use softmax attention instead of the mixer. "qk_norm" is ours (the peer ignores it)
        max_position_embeddings: informational (rotary needs no table)
    """

    keys_to_ignore_at_inference = ["past_key_values"]
    # (no annotations: transformers 5 makes annotated config attributes dataclass fields)
    # our fields that the peer's config lacks -> the value its model uses in their place
    peer_unknown = {}
    # fields that neither the peer's model nor ours reads -> their default (another value draws a warning): the
    # peer's, or a shared field a family has no use for (fuse_swiglu without a SwiGLU MLP)
    peer_ignored = {}

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 2048,
        num_hidden_layers: int = 24,
        hidden_ratio: float | None = 4,
        intermediate_size: int | None = None,
        hidden_act: str = "swish",
        norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        max_position_embeddings: int = 2048,
        attn: dict[str, Any] | list[dict[str, Any]] | None = None,
        fuse_norm: bool = True,
        fuse_swiglu: bool = True,
        fuse_cross_entropy: bool = True,
        fuse_linear_cross_entropy: bool = False,
        use_l2warp: bool = False,
        attnres_block_size: int | None = None,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        check_choice("hidden_act", hidden_act, MLP_ACTIVATIONS)
        if attnres_block_size is not None:
            raise ValueError(f"attnres_block_size={attnres_block_size!r}: the peer's attention residuals are not "
                             "implemented in fla; use None")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.norm_eps = norm_eps
        self.initializer_range = initializer_range
        self.max_position_embeddings = max_position_embeddings
        self.attn = parse_attn(attn, num_hidden_layers)
        self.fuse_norm = fuse_norm
        self.fuse_swiglu = fuse_swiglu
        self.fuse_cross_entropy = fuse_cross_entropy and not fuse_linear_cross_entropy
        self.fuse_linear_cross_entropy = fuse_linear_cross_entropy
        self.use_l2warp = use_l2warp
        self.attnres_block_size = attnres_block_size
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        for name, default in self.peer_ignored.items():
            if getattr(self, name, default) != default:
                warnings.warn(f"{type(self).__name__}: {name}={getattr(self, name)!r} has no effect (the model of "
                              f"{PEER} does not read it either)", UserWarning, stacklevel=3)

    @property
    def mlp_intermediate_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        size = int(self.hidden_size * (4 if self.hidden_ratio is None else self.hidden_ratio) * 2 / 3)
        return 256 * ((size + 255) // 256)

    def attn_spec(self, layer_idx: int) -> dict | None:
        """The softmax-attention spec of layer `layer_idx` in a hybrid, or None (the family's mixer)."""
        if self.attn is None:
            return None
        return next((s for s in ([self.attn] if isinstance(self.attn, dict) else self.attn)
                     if layer_idx in s["layers"]), None)

    def peer_mismatches(self) -> list[str]:
        """Our settings the peer cannot express: a checkpoint with them loads there with other outputs."""
        out = [f"{name}={getattr(self, name)!r} (it uses {peer!r})" for name, peer in self.peer_unknown.items()
               if getattr(self, name, peer) != peer]
        specs = [] if self.attn is None else [self.attn] if isinstance(self.attn, dict) else self.attn
        if any(spec.get("qk_norm") for spec in specs):
            out.append("attn qk_norm=True (its hybrid attention has no qk_norm)")
        return out

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        mismatches = self.peer_mismatches()
        if mismatches:
            warnings.warn(f"{PEER} does not read {', '.join(mismatches)}: this checkpoint loads there, but with "
                          "other outputs", UserWarning, stacklevel=2)
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)


class OutputGateMixin:
    """For the configs of the mixers with a gated output norm (GLA, RetNet), before FLAConfig in their bases:
    `gate_fn` None means the peer's choice, the model's `hidden_act`; any other value is ours alone, which the peer
    cannot read (warned at save). A mixin, not an FLAConfig subclass: transformers 5 turns every config subclass into
    a dataclass, and an intermediate one without its own __init__ loses the backbone's fields."""

    @property
    def output_gate_fn(self) -> str:
        return self.hidden_act if self.gate_fn is None else self.gate_fn

    def peer_mismatches(self) -> list[str]:
        out = super().peer_mismatches()
        if self.output_gate_fn != self.hidden_act:
            out.append(f"gate_fn={self.gate_fn!r} (its output gate uses hidden_act={self.hidden_act!r})")
        return out
