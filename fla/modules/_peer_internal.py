"""The error for the peer library's internal launchers that some of its import paths also expose (its forward and
backward kernels' wrappers, its tensor-parallel styles): they have no counterpart in fla's API, so code importing
them gets this clear error naming what to use instead, not an ImportError or a silently different function."""
from __future__ import annotations

from typing import NoReturn


def peer_internal(name: str, instead: str) -> NoReturn:
    raise NotImplementedError(
        f"{name} is an internal kernel of the peer library (flash-linear-attention), not part of fla's API: use "
        f"{instead}")


_CE = "fused_cross_entropy / cross_entropy_loss / FusedCrossEntropyLoss from fla.modules.fused_cross_entropy"


def cross_entropy_fwd(logits, target, label_smoothing=0.0, logit_scale=1.0, lse_square_scale=0.0,
                      logit_softcapping=None, ignore_index=-100, process_group=None):
    """Not provided: the peer's forward launcher (also its fused_cross_entropy_forward)."""
    peer_internal("cross_entropy_fwd", _CE)


def cross_entropy_bwd(logits, target, lse, dloss, label_smoothing=0.0, logit_scale=1.0, lse_square_scale=0.0,
                      logit_softcapping=None, ignore_index=-100, total_classes=None, class_start_idx=0,
                      inplace_backward=False):
    """Not provided: the peer's backward launcher (our forward writes the gradient; autograd scales it)."""
    peer_internal("cross_entropy_bwd", _CE)


def cross_entropy_reduce(loss, z_loss, lse, target, lse_square_scale, ignore_index, process_group):
    """Not provided: the peer's tensor-parallel reduction."""
    peer_internal("cross_entropy_reduce", _CE)


def logsumexp_fwd(x, scale=None, softcapping=None, dtype=None):
    """Not provided: the peer's log-sum-exp launcher."""
    peer_internal("logsumexp_fwd", "torch.logsumexp")


class FusedCrossEntropyFunction:
    """The peer's internal autograd function (also CrossEntropyLossFunction): not provided."""

    @staticmethod
    def apply(*args, **kwargs):
        peer_internal("FusedCrossEntropyFunction", _CE)


class LinearLossParallel:
    """The peer's tensor-parallel style for its linear losses: not provided."""

    def __init__(self, *, sequence_dim: int = 1, use_local_output: bool = False):
        peer_internal("LinearLossParallel", "FusedLinearCrossEntropyLoss on gathered hidden states")


def autograd_form(name: str, fn):
    """A class whose `apply` is `fn`: the peer's `XFunction.apply(...)` call form of one of our functions (which
    are differentiable themselves)."""
    return type(name, (), {"apply": staticmethod(fn), "__doc__": f"{name}.apply(...) is {fn.__module__}."
                           f"{fn.__name__}(...)", "__module__": fn.__module__})
