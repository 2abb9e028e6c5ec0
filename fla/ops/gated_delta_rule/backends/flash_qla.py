"""FlashQLA (the flash_qla package's fused TileLang forward and backward of the chunked gated delta rule, Hopper
and Blackwell) as a peer backend object. fla does not ship it and never dispatches to it (see
`fla.ops.utils.backends`): `chunk_gated_delta_rule` always runs fla's own kernels. What is kept is the peer's
contract: `FlashQLABackend().chunk_gated_delta_rule_verifier(...)` says whether the peer would hand a call to
FlashQLA, and why not; the GPU generation it reads is this module's `IS_NVIDIA_HOPPER`, `IS_NVIDIA_SM100` and
`IS_NVIDIA_SM120` (looked up at every call, so tests can set them)."""
from __future__ import annotations

import sys

import torch

from fla.ops.utils.backends import BaseBackend

# The GPU generation flags, computed on first use (asking for the capability initializes CUDA, which an import
# should not do). SM100 is any 10.x (B200/GB200, B300); SM120 exactly 12.0 (12.1 is another target).
_GENERATIONS = {
    "IS_NVIDIA_HOPPER": lambda cap, name: cap[0] == 9 or "NVIDIA H" in name,
    "IS_NVIDIA_SM100": lambda cap, name: cap[0] == 10,
    "IS_NVIDIA_SM120": lambda cap, name: cap == (12, 0),
}


def __getattr__(name: str):
    if name not in _GENERATIONS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = False
    if torch.cuda.is_available() and torch.version.cuda is not None:
        value = _GENERATIONS[name](torch.cuda.get_device_capability(), torch.cuda.get_device_name(0))
    globals()[name] = value
    return value


def _flag(name: str) -> bool:
    return bool(getattr(sys.modules[__name__], name))


def _grad_will_flow(*tensors) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


class FlashQLABackend(BaseBackend):
    """The peer's FlashQLA backend of `chunk_gated_delta_rule` (never used by fla: `is_available()` is False and
    `chunk_gated_delta_rule` raises). Its switch in the peer is FLA_FLASH_QLA (on by default)."""

    backend_type = "flash_qla"
    package_name = "flash_qla"
    env_var = "FLA_FLASH_QLA"
    default_enable = True
    priority = 3
    label = "FlashQLA (the flash_qla package's TileLang kernels)"

    def chunk_gated_delta_rule_verifier(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        g: torch.Tensor,
        beta: torch.Tensor,
        scale: float | None = None,
        initial_state: torch.Tensor | None = None,
        output_final_state: bool = False,
        use_qk_l2norm_in_kernel: bool = False,
        use_beta_sigmoid_in_kernel: bool = False,
        allow_neg_eigval: bool = False,
        state_v_first: bool = False,
        cu_seqlens: torch.Tensor | None = None,
        cu_seqlens_cpu: torch.Tensor | None = None,
        cp_context=None,
        **kwargs,
    ) -> tuple[bool, str | None]:
        """(True, None) when the peer would run this `chunk_gated_delta_rule` call with FlashQLA, else
        (False, why). Arguments as `chunk_gated_delta_rule`'s."""
        hopper, sm100, sm120 = (_flag(n) for n in ("IS_NVIDIA_HOPPER", "IS_NVIDIA_SM100", "IS_NVIDIA_SM120"))
        if not (hopper or sm100 or sm120):
            return False, "needs an NVIDIA GPU of SM90, SM100/SM103 or SM120"
        if sm120 and _grad_will_flow(q, k, v, g, beta, initial_state):
            return False, "on SM120 it has the forward pass only, and an input here requires grad"
        if q.dtype not in (torch.float16, torch.bfloat16):
            return False, f"takes float16 or bfloat16 inputs only (q is {q.dtype})"
        if not q.dtype == k.dtype == v.dtype:
            return False, f"needs q, k and v in one dtype (got {q.dtype}, {k.dtype}, {v.dtype})"
        if sm120 and q.dtype == torch.float16:
            return False, "its SM120 forward does not build for float16 (bfloat16 only there)"
        if q.shape[-1] != 128:
            return False, f"only head dim K=128 (got K={q.shape[-1]})"
        if v.shape[-1] != 128:
            return False, f"only value dim V=128 (got V={v.shape[-1]})"
        if kwargs.get("use_gate_in_kernel"):
            return False, "use_gate_in_kernel is not supported by it"
        if use_beta_sigmoid_in_kernel:
            return False, "use_beta_sigmoid_in_kernel is not supported by it"
        if allow_neg_eigval:
            return False, "allow_neg_eigval is not supported by it"
        if "transpose_state_layout" in kwargs:
            return False, "the deprecated transpose_state_layout keyword is not supported by it (use state_v_first)"
        if cp_context is not None:
            return False, "context parallel across devices (cp_context) is not supported by it"
        return True, None

    def chunk_gated_delta_rule(self, *args, **kwargs):
        """Not shipped: raises NotImplementedError."""
        self.not_shipped("chunk_gated_delta_rule", "fla.ops.gated_delta_rule.chunk_gated_delta_rule")
