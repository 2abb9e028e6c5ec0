"""What the device offers, for the block-size choices that depend on it."""
from __future__ import annotations

import functools

import torch

# The largest dynamic shared memory one thread block may opt into, in bytes, per GPU generation (CUDA's
# cudaDevAttrMaxSharedMemoryPerBlockOptin: RTX 4090 (sm_89) 99 KiB, A100 (sm_80) 163 KiB, H100 (sm_90) 227 KiB);
# any other name asks for 100 KiB.
SHARED_MEMORY_BYTES = {"ada": 101376, "ampere": 166912, "hopper": 232448}
DEFAULT_SHARED_MEMORY_BYTES = 102400


@functools.lru_cache(maxsize=None)
def check_shared_mem(arch: str = "none", tensor_idx: int = 0) -> bool:
    """Whether CUDA device `tensor_idx` lets one block use at least the shared memory of `arch` ("ada", "ampere",
    "hopper"; any other name: 100 KiB), i.e. whether the large tiles tuned for that generation fit. The signature
    and meaning of the peer library's (fla-core 0.6.0) function of that name.

    Without a CUDA device (a CPU, also under TRITON_INTERPRET=1, whose interpreter has no shared memory limit) or
    for an index that is not a device it answers False: nothing is assumed about a GPU that is not there, so a
    caller picks its smallest tiles. Cached per (arch, index), as device properties do not change."""
    if not torch.cuda.is_available() or not 0 <= tensor_idx < torch.cuda.device_count():
        return False
    props = torch.cuda.get_device_properties(tensor_idx)
    available = getattr(props, "shared_memory_per_block_optin", 0)
    return available >= SHARED_MEMORY_BYTES.get(str(arch).lower(), DEFAULT_SHARED_MEMORY_BYTES)
