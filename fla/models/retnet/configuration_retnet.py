"""Configuration of the RetNet (multi-scale retention) family (model_type "retnet")."""
from __future__ import annotations

from fla.models.configuration_base import FLAConfig


class RetNetConfig(FLAConfig):
    """The mixer's fields; the shared backbone fields (sizes, vocab, norms, losses, hybrid `attn`) are in FLAConfig."""

    model_type = "retnet"

    def __init__(
        self,
        expand_k: float = 1.0,
        expand_v: float = 2.0,
        num_heads: int = 8,
        use_output_gate: bool = True,
        gate_fn: str = "swish",
        rope_theta: float = 10000.0,
        **kwargs,
    ):
        self.expand_k = expand_k
        self.expand_v = expand_v
        self.num_heads = num_heads
        self.use_output_gate = use_output_gate
        self.gate_fn = gate_fn
        self.rope_theta = rope_theta
        super().__init__(**kwargs)
