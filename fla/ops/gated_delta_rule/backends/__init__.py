"""The peer library's backends of the gated delta rule, at its import path (`FlashQLABackend`,
`TritonAscendGDNBackend`). fla ships neither implementation and never dispatches to them: every op of
`fla.ops.gated_delta_rule` runs fla's own kernels (`fla.ops.utils.dispatch`). The classes keep the peer's
attributes and verifiers (whether the peer would take a call, and why not); calling an implementation raises
NotImplementedError naming the backend. See `fla.ops.utils.backends`."""
from fla.ops.gated_delta_rule.backends.flash_qla import FlashQLABackend
from fla.ops.gated_delta_rule.backends.triton_ascend import TritonAscendGDNBackend

__all__ = ["FlashQLABackend", "TritonAscendGDNBackend"]
