"""Input checks shared by every public op. Each raises `ValueError` naming the argument, what was wrong and the fix.

The kernels index with explicit strides of the `[B, T, H, K]` layout, so a tensor that is not contiguous would give
silently wrong numbers: the blocks refuse it (`check_tensor`), and the public ops copy it first (`normalize_inputs`,
as the peer library does), so a head-first `[B, H, T, K]` tensor transposed into place just works there.
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable, Sequence

import torch

from fla.ops.utils.index import varlen_bounds, varlen_index

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def _shape_str(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def check_tensor(
    name: str,
    x: object,
    layout: str,
    shape: Sequence[int | None] | None = None,
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
    device: torch.device | None = None,
    contiguous: bool = True,
) -> torch.Tensor:
    """Check one input: a tensor of rank/shape `shape` (None = any size) in `layout` (e.g. "[B, T, H, K]"),
    one of `dtypes`, on `device`, contiguous. Returns it."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {layout} (got {type(x).__name__})")
    if shape is not None:
        if x.dim() != len(shape):
            raise ValueError(
                f"{name} must have {len(shape)} dims {layout} (got shape {list(x.shape)}); "
                "the layout is batch, time, heads, features"
            )
        for got, want in zip(x.shape, shape):
            if want is not None and got != want:
                raise ValueError(f"{name} must have shape {layout} = {_shape_str(shape)} (got {list(x.shape)})")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} must have dtype {names} (got {str(x.dtype).replace('torch.', '')}); cast it first")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device} but the other inputs are on {device}; move it with .to({str(device)!r})")
    if contiguous and not x.is_contiguous():
        raise ValueError(
            f"{name} is not contiguous (shape {list(x.shape)}, strides {list(x.stride())}); the kernels need the "
            f"{layout} layout in memory: call .contiguous() on it (a head-first tensor needs .transpose(1, 2) first)"
        )
    return x


def normalize_inputs(op: Callable) -> Callable:
    """Decorate a public op to take its inputs as the peer library does, once, before any check:
    - a tensor that is not contiguous is copied into its layout;
    - an initial_state in float16/bfloat16 is cast to float32 (autograd returns its gradient in its own dtype);
    - `state_v_first=True` (if the op has it): initial and final states are [N, H, V, K] instead of [N, H, K, V];
      they are transposed here, and the op itself always sees [N, H, K, V] (and state_v_first=False);
    - `cu_seqlens_cpu` (if the op has it): a host copy of cu_seqlens, checked for its length; the results do not
      depend on it;
    - the keywords the peer's op takes through its **kwargs (PEER_KEYWORDS, by op name): `chunk_size` (checked to be
      a power of 2, as the peer does, then not used: our kernels' own chunk size gives the same results),
      `transpose_state_layout` (the deprecated name of `state_v_first`: a DeprecationWarning, as in the peer), and
      `head_first` (removed in the peer, which raises DeprecationWarning: so do we). Other ops refuse them as any
      unknown keyword.
    What is still wrong after that (shape, other dtypes, device) is refused by the checks as before."""
    import inspect

    signature = inspect.signature(op)
    names = list(signature.parameters)
    # the options that need the whole call bound: where they sit when passed positionally (binding costs ~10 us,
    # so a call without them does not pay it)
    optional = {n: names.index(n) for n in ("state_v_first", "cu_seqlens_cpu") if n in names}

    def fix(name: str, x):
        if not isinstance(x, torch.Tensor):
            return x
        if name == "initial_state" and x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x if x.is_contiguous() else x.contiguous()

    extra = PEER_KEYWORDS.get(op.__name__, ())

    @functools.wraps(op)
    def wrapper(*args, **kwargs):
        if extra and any(n in kwargs for n in extra):
            kwargs = peer_keywords(op.__name__, extra, kwargs)
        if any(n in kwargs or len(args) > i for n, i in optional.items()):
            bound = signature.bind(*args, **kwargs)
            values = bound.arguments
            cpu = values.get("cu_seqlens_cpu")
            if cpu is not None:
                check_cu_seqlens_cpu(cpu, values.get("cu_seqlens"))
                varlen_index(values["cu_seqlens"], cpu)  # every later lookup of this cu_seqlens reads no device value
            if values.get("state_v_first"):
                if isinstance(values.get("initial_state"), torch.Tensor):
                    values["initial_state"] = values["initial_state"].transpose(-1, -2)
                values["state_v_first"] = False
                o, final_state = op(**{n: fix(n, v) for n, v in values.items()})
                return o, _TransposedState.apply(final_state) if final_state is not None else None
            return op(**{n: fix(n, v) for n, v in values.items()})
        args = tuple(fix(names[i], a) if i < len(names) else a for i, a in enumerate(args))
        return op(*args, **{k: fix(k, v) for k, v in kwargs.items()})

    return wrapper


class _TransposedState(torch.autograd.Function):
    """A final state returned as [N, H, V, K]: a contiguous copy, whose gradient goes back contiguous too (a plain
    transpose would hand the op's backward a strided final-state gradient, which its kernels read as contiguous)."""

    @staticmethod
    def forward(ctx, state):
        return state.transpose(-1, -2).contiguous()

    @staticmethod
    def backward(ctx, grad):
        return grad.transpose(-1, -2).contiguous()


# op name -> the keywords its peer counterpart (fla-core 0.6.0) reads from **kwargs
_CHUNK = ("chunk_size", "head_first")
PEER_KEYWORDS = {
    "chunk_simple_gla": _CHUNK, "chunk_retention": _CHUNK, "chunk_delta_rule": _CHUNK,
    "chunk_gated_delta_rule": _CHUNK + ("transpose_state_layout",),
    "fused_recurrent_simple_gla": ("transpose_state_layout",), "fused_recurrent_retention": ("transpose_state_layout",),
    "fused_recurrent_gla": ("transpose_state_layout",), "fused_recurrent_gated_delta_rule": ("transpose_state_layout",),
}


def peer_keywords(name: str, known: Sequence[str], kwargs: dict) -> dict:
    """The call's keywords with the peer-only ones (see normalize_inputs) applied and removed."""
    kwargs = dict(kwargs)
    if "head_first" in known and "head_first" in kwargs:
        raise DeprecationWarning(f"{name}: head_first has been removed; inputs must be in [B, T, H, ...] format "
                                 "(transpose a head-first tensor with .transpose(1, 2))")
    if "chunk_size" in known and "chunk_size" in kwargs:
        size = kwargs.pop("chunk_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1 or size & (size - 1)):
            raise ValueError(f"{name}: chunk_size must be a power of 2 (got {size!r}); it changes no result here")
    if "transpose_state_layout" in known and "transpose_state_layout" in kwargs:
        if kwargs.get("state_v_first"):
            raise ValueError(f"{name}: pass state_v_first, not both it and the deprecated transpose_state_layout")
        warnings.warn("`transpose_state_layout` is deprecated and renamed to `state_v_first`.", DeprecationWarning,
                      stacklevel=3)
        kwargs["state_v_first"] = kwargs.pop("transpose_state_layout")
    return kwargs


def check_cu_seqlens_cpu(cu_seqlens_cpu: object, cu_seqlens: object) -> None:
    """A host copy of cu_seqlens: a CPU integer tensor of the same length (its values are not compared, which would
    cost the device sync it exists to spare)."""
    if cu_seqlens is None:
        raise ValueError("cu_seqlens_cpu was given without cu_seqlens: pass both (the same boundaries, on the host "
                         "and on the device) or neither")
    if (not isinstance(cu_seqlens_cpu, torch.Tensor) or cu_seqlens_cpu.device.type != "cpu"
            or cu_seqlens_cpu.dtype not in INDEX_DTYPES or cu_seqlens_cpu.shape != getattr(cu_seqlens, "shape", None)):
        raise ValueError("cu_seqlens_cpu must be a CPU int32/int64 tensor with the shape of cu_seqlens (a host copy "
                         "of the same boundaries)")


def check_cu_seqlens(cu_seqlens: object, batch_size: int, num_tokens: int) -> int:
    """Check packed-sequence boundaries `[N + 1]`; returns N."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise ValueError(f"cu_seqlens must be a 1-D integer torch.Tensor (got {type(cu_seqlens).__name__})")
    if cu_seqlens.dtype not in INDEX_DTYPES:
        raise ValueError(f"cu_seqlens must have dtype int32 or int64 (got {str(cu_seqlens.dtype).replace('torch.', '')})")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with N + 1 >= 2 entries (got shape {list(cu_seqlens.shape)})")
    if batch_size != 1:
        raise ValueError(
            f"with cu_seqlens the batch size must be 1 (got {batch_size}): pack the sequences along the time axis, "
            "e.g. x.view(1, -1, *x.shape[2:]), and put every boundary in cu_seqlens"
        )
    bounds = varlen_bounds(cu_seqlens)  # the host copy every block of the op will use (one read, or none)
    if bounds[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0 (got {bounds[0]})")
    if any(b < a for a, b in zip(bounds[:-1], bounds[1:])):
        raise ValueError(f"cu_seqlens must be non-decreasing (got {bounds})")
    if bounds[-1] != num_tokens:
        raise ValueError(f"cu_seqlens must end at the number of tokens (got {bounds[-1]}, expected {num_tokens})")
    return len(bounds) - 1


def check_initial_state(initial_state: object, num_states: int, shape: Sequence[int], layout: str, device) -> None:
    """`initial_state` must be float32 `[N, *shape]` where N is the batch size, or the number of sequences under
    cu_seqlens."""
    if initial_state is None:
        return
    full = (num_states, *shape)
    check_tensor("initial_state", initial_state, layout, full, (torch.float32,), device, contiguous=False)


def broadcast_initial_state(initial_state: torch.Tensor | None, num_states: int) -> torch.Tensor | None:
    """[H, K, V] -> [N, H, K, V], the same state for every sequence (as the peer library's references take it); any
    other shape passes through unchanged."""
    if initial_state is not None and initial_state.dim() == 3:
        return initial_state.unsqueeze(0).expand(num_states, *initial_state.shape)
    return initial_state


def check_scale(scale: object) -> None:
    if scale is not None and not isinstance(scale, (int, float)):
        raise ValueError(f"scale must be a Python float or None (got {type(scale).__name__})")


def check_head_dim(name: str, size: int, max_size: int | None = 256) -> None:
    """Feature sizes need not be powers of two (kernels mask the padding), but one block must hold them.
    `max_size=None`: any size (the kernels tile that dim across programs or loop over it)."""
    if size < 1:
        raise ValueError(f"{name} head dim must be at least 1 (got {size})")
    if max_size is not None and size > max_size:
        raise ValueError(f"{name} head dim must be in [1, {max_size}] (got {size}); split the heads further")
