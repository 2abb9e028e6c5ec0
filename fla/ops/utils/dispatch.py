"""Where an op runs, decided in one place.

Three paths, same API and same results:
- "triton" on CUDA tensors: compiled kernels, autotuned.
- "triton" under `TRITON_INTERPRET=1` on CPU tensors: the same kernels interpreted, one fixed config (autotuning
  needs a GPU benchmarker, which the interpreter lacks).
- "torch" on CPU without the interpreter: each block's plain PyTorch twin (chunked, not token-by-token).

`FLA_BACKEND=torch|triton` in the environment or `with use_backend("torch"):` forces a path (tests, benchmarks).
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, Iterator, Literal, Sequence

import torch
import triton

Backend = Literal["triton", "torch"]
_BACKENDS = ("triton", "torch")
# A plain module-level stack, not a ContextVar: torch.compile traces a global list but breaks the graph at every
# ContextVar.get, i.e. at every op call. The switch is process-wide (tests, benchmarks), not per thread.
_forced: list[str] = []


def is_interpreter() -> bool:
    """True when Triton kernels run in the interpreter (set before `import fla`: triton reads it at decoration)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _requested() -> str | None:
    name = (_forced[-1] if _forced else None) or os.environ.get("FLA_BACKEND") or None
    if name is not None and name not in _BACKENDS:
        raise ValueError(f"FLA_BACKEND must be one of {_BACKENDS} (got {name!r}); unset it to choose automatically")
    return name


def get_backend(x: torch.Tensor) -> Backend:
    """The path for an op whose main input is `x`."""
    name = _requested()
    if name == "torch":
        return "torch"
    if x.is_cuda or is_interpreter():
        return "triton"
    if name == "triton":
        raise RuntimeError(
            "the triton backend was forced but the input is on the CPU and TRITON_INTERPRET is not set; "
            "set TRITON_INTERPRET=1 before importing fla, move the input to a GPU, or use the torch backend"
        )
    return "torch"


@contextlib.contextmanager
def use_backend(name: Backend) -> Iterator[None]:
    """Force a path inside the block: `with use_backend("torch"): ...`."""
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS} (got {name!r})")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def dispatch(triton_impl: Callable, torch_impl: Callable) -> Callable:
    """Wrap a block launcher: call `triton_impl` or `torch_impl` (same signature) by the backend of the first
    tensor argument."""

    @functools.wraps(triton_impl)
    def launcher(*args, **kwargs):
        x = next(a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor))
        impl = triton_impl if get_backend(x) == "triton" else torch_impl
        return impl(*args, **kwargs)

    launcher.triton_impl = triton_impl
    launcher.torch_impl = torch_impl
    return launcher


def autotune(configs: Sequence[triton.Config], key: Sequence[str], **kwargs) -> Callable:
    """`triton.autotune`, but with the first config only under the interpreter (no benchmarker there)."""
    if is_interpreter():
        configs = list(configs)[:1]
    return triton.autotune(configs=list(configs), key=list(key), **kwargs)


def tensor_core_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype `tl.dot` operands should have: the interpreter computes bf16 dots wrongly, so upcast there."""
    if is_interpreter() and dtype == torch.bfloat16:
        return torch.float32
    return dtype
