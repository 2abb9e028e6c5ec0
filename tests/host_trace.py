"""What the host does around an op's kernels, measured without a GPU: launches, PyTorch ops, device->host syncs.

On a GPU an op's host side is a floor under its time: each kernel launch costs ~5 us, each PyTorch op ~5-10 us of
dispatch, and each device->host sync (`.item()`, `.tolist()`, `int(t)`, `bool(t)`, a copy to the host, an op whose
output size depends on values, e.g. `repeat_interleave(tensor_repeats)` or `nonzero`) stalls the host until the GPU
has drained. None of that needs a GPU to be seen, only a way to tell "device" tensors from host ones on a CPU box:

- the inputs are registered with `on_device`, and every tensor an aten op computes from a registered one is
  registered too (a TorchDispatchMode marks the outputs; it sees the backward as well, which `__torch_function__`
  does not), as is a tensor made by a factory op given an explicit `device=` (on a GPU that is where it would live) or
  moved with `.to(device)`; tensors built on the host from host values (`cu_seqlens_cpu`, Python ints) stay
  unmarked. A value read from a marked tensor is a sync; one read from an unmarked tensor is host work.
- the same mode counts every aten op outside kernel launches and flags the syncs among them, with the line of the
  caller, so a test can say where a sync comes from; `Tensor.tolist` / `.numpy` (which read CPU storage without an
  aten op) are wrapped while a trace is active.
- kernel launches are counted at `JITFunction.run` (compiled Triton) or the interpreter's `run`; ops inside a launch
  (the interpreter's own copies) are not counted. `count_launches(skip=True)` turns launches into no-ops (outputs
  stay garbage) so the GPU host path of an op runs on a CPU box in milliseconds: no compile, no interpreter.

A proxy, said next to every figure it gives: it counts, it does not time; a host-to-device copy of a host-built index
is not counted as a sync (it is not one when the source is pinned or small and async), and an op that reads back a
tensor it moved to the device itself would be missed.
"""
from __future__ import annotations

import contextlib
import os
import traceback
import weakref
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_active: list["HostTrace"] = []

# aten ops whose result needs values read back on the host (a stall on a GPU) when an input lives on the device
_SYNC_OPS = {"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "_unique", "_unique2",
             "unique_dim", "unique_consecutive", "argwhere", "_assert_async"}


_marked: dict[int, weakref.ref] = {}  # id -> the tensor standing for a device tensor


def is_on_device(t: object) -> bool:
    if not isinstance(t, torch.Tensor):
        return False
    ref = _marked.get(id(t))
    return ref is not None and ref() is t


def on_device(t: torch.Tensor | None) -> torch.Tensor | None:
    """Register `t` as standing for a GPU tensor (returns it)."""
    if t is not None and not is_on_device(t):
        key = id(t)
        _marked[key] = weakref.ref(t, lambda _, key=key: _marked.pop(key, None))
    return t


def _caller() -> str:
    """The innermost frame outside torch and this file: where the op was asked for."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename
        if "torch" + os.sep in path or path == __file__ or "triton" + os.sep in path:
            continue
        return f"{os.path.relpath(path, ROOT) if path.startswith(ROOT) else path}:{frame.lineno}"
    return "?"


@dataclass
class HostTrace(TorchDispatchMode):
    """Counts `launches`, `ops` (aten ops outside launches) and `syncs` (what, where) while active."""

    launches: int = 0
    ops: int = 0
    syncs: list[tuple[str, str]] = field(default_factory=list)
    paused: bool = False

    def __post_init__(self):
        super().__init__()

    def sync(self, what: str) -> None:
        self.syncs.append((what, _caller()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        device_input = any(is_on_device(t) for t in inputs)
        name = func._schema.name.split("::")[-1]
        if not self.paused:
            self.ops += 1
            if device_input and (name in _SYNC_OPS or _value_dependent(name, args, kwargs)):
                self.sync(name)
        out = func(*args, **kwargs)
        to_host = name == "_to_copy" and _device_kwarg(kwargs) == "host" and device_input
        if (device_input and not to_host) or (not inputs and _device_kwarg(kwargs)) or (
                name == "_to_copy" and _device_kwarg(kwargs) and not device_input):
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    on_device(t)
        return out

    def __enter__(self):
        _active.append(self)
        if len(_active) == 1:
            _wrap_host_reads()
        return super().__enter__()

    def __exit__(self, *exc):
        _active.remove(self)
        if not _active:
            _unwrap_host_reads()
        return super().__exit__(*exc)

    def summary(self) -> dict:
        return {"launches": self.launches, "ops": self.ops, "syncs": len(self.syncs)}


def _device_kwarg(kwargs) -> str | None:
    """"host" for an explicit device=cpu, "device" for any other explicit device (here: where it would live on a
    GPU; the bench's tensors are all on the CPU, so an explicit device means "the GPU" unless it is a copy of a
    device tensor), None without one."""
    device = kwargs.get("device")
    if device is None:
        return None
    return "host" if torch.device(device).type == "cpu" else "device"


def _value_dependent(name: str, args, kwargs) -> bool:
    """An op whose output shape depends on device values, or a copy of a device tensor to the host."""
    if name == "repeat_interleave":
        return kwargs.get("output_size") is None and any(is_on_device(a) for a in args)
    if name == "index":  # boolean-mask indexing goes through nonzero
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()))
    if name == "_to_copy":
        return _device_kwarg(kwargs) == "host"
    return False


_HOST_READS = ("tolist", "numpy")
_original_reads: dict[str, object] = {}


def _wrap_host_reads() -> None:
    for name in _HOST_READS:
        original = getattr(torch.Tensor, name)
        _original_reads[name] = original

        def read(self, *args, _original=original, _name=name, **kwargs):
            if _active and not _active[-1].paused and is_on_device(self):
                _active[-1].sync(_name)
            return _original(self, *args, **kwargs)

        setattr(torch.Tensor, name, read)


def _unwrap_host_reads() -> None:
    for name, original in _original_reads.items():
        setattr(torch.Tensor, name, original)
    _original_reads.clear()


@contextlib.contextmanager
def count_launches(skip: bool = False) -> Iterator[None]:
    """Count every Triton launch into the active HostTrace (ops inside a launch are not counted); with `skip`, a
    launch does nothing at all (the compiled-path host code runs, the kernels do not)."""
    import triton.runtime.jit as jit

    targets = [(jit.JITFunction, "run")]
    try:
        from triton.runtime.interpreter import InterpretedFunction
        targets.append((InterpretedFunction, "run"))
    except ImportError:  # pragma: no cover - depends on the installed triton
        pass
    originals = [(cls, name, getattr(cls, name)) for cls, name in targets]

    def wrap(original):
        def run(self, *args, **kwargs):
            trace = _active[-1] if _active else None
            if trace is None or trace.paused:
                return None if skip else original(self, *args, **kwargs)
            if kwargs.get("warmup"):
                return None if skip else original(self, *args, **kwargs)
            trace.launches += 1
            if skip:
                return None
            trace.paused = True
            try:
                return original(self, *args, **kwargs)
            finally:
                trace.paused = False
        return run

    for cls, name, original in originals:
        setattr(cls, name, wrap(original))
    try:
        yield
    finally:
        for cls, name, original in originals:
            setattr(cls, name, original)


class StandInDriver:
    """Enough of a CUDA driver for host code that asks for a target, a device or a benchmarker (no GPU here)."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", 90, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda

    def get_benchmarker(self):
        def bench(fn, quantiles=None, **kwargs):
            return [1.0] * len(quantiles) if quantiles else 1.0
        return bench


def install_stand_in_driver() -> bool:
    """Point triton at `StandInDriver` (no GPU, no interpreter); False when this triton lacks `set_active`."""
    from triton.runtime.driver import driver
    if not hasattr(driver, "set_active"):
        return False
    driver.set_active(StandInDriver())
    return True


def stand_in_torch_cuda() -> None:
    """Answer the device queries a library makes at import or launch (name, capability, properties, current
    device) as an H100 would, so that its host code runs here; no tensor ever goes to CUDA."""
    import types

    props = types.SimpleNamespace(name="NVIDIA H100 (stand-in)", major=9, minor=0, multi_processor_count=132,
                                  shared_memory_per_block=49152, shared_memory_per_block_optin=232448,
                                  total_memory=80 * 2**30)
    cuda = torch.cuda
    cuda.get_device_name = lambda *a, **k: props.name
    cuda.get_device_capability = lambda *a, **k: (9, 0)
    cuda.get_device_properties = lambda *a, **k: props
    cuda.current_device = lambda: 0
    cuda.device_count = lambda: 1
    cuda.device = lambda *a, **k: contextlib.nullcontext()
