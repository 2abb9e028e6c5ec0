"""The peer's Triton-Ascend backend of the gated delta rule (its gate, WY-representation and intra-chunk forward
kernels for Ascend NPUs) as a peer backend object. fla runs on CUDA and CPU only and ships none of these kernels:
the class exists at the peer's path, is never available, its verifiers reject every call (with the reason), and
its implementations raise NotImplementedError naming it (see `fla.ops.utils.backends`)."""
from __future__ import annotations

from fla.ops.utils.backends import BaseBackend

_REASON = "fla does not ship the Triton-Ascend kernels (Ascend NPUs are not a supported device)"
_USE_INSTEAD = "fla.ops.gated_delta_rule.chunk_gated_delta_rule on a CUDA or CPU tensor"


class TritonAscendGDNBackend(BaseBackend):
    """The peer's Ascend NPU backend of the gated delta rule's kernels (never used by fla)."""

    backend_type = "triton_ascend"
    package_name = None
    env_var = None
    priority = 0
    label = "the Triton-Ascend backend (Ascend NPU kernels)"

    def gdn_gate_fwd_verifier(self, *args, **kwargs):
        return False, _REASON

    def gdn_gate_fwd(self, *args, **kwargs):
        self.not_shipped("gdn_gate_fwd", "fla.ops.gated_delta_rule.gate.fused_gdn_gate")

    def gdn_gate_chunk_cumsum_verifier(self, *args, **kwargs):
        return False, _REASON

    def gdn_gate_chunk_cumsum(self, *args, **kwargs):
        self.not_shipped("gdn_gate_chunk_cumsum", _USE_INSTEAD)

    def gdn_gate_bwd_verifier(self, *args, **kwargs):
        return False, _REASON

    def gdn_gate_bwd(self, *args, **kwargs):
        self.not_shipped("gdn_gate_bwd", "fla.ops.gated_delta_rule.gate.fused_gdn_gate (differentiable)")

    def recompute_w_u_fwd_verifier(self, *args, **kwargs):
        return False, _REASON

    def recompute_w_u_fwd(self, *args, **kwargs):
        self.not_shipped("recompute_w_u_fwd", _USE_INSTEAD)

    def prepare_wy_repr_bwd_verifier(self, *args, **kwargs):
        return False, _REASON

    def prepare_wy_repr_bwd(self, *args, **kwargs):
        self.not_shipped("prepare_wy_repr_bwd", _USE_INSTEAD)

    def chunk_gated_delta_rule_fwd_intra_verifier(self, *args, **kwargs):
        return False, _REASON

    def chunk_gated_delta_rule_fwd_intra(self, *args, **kwargs):
        self.not_shipped("chunk_gated_delta_rule_fwd_intra", _USE_INSTEAD)
