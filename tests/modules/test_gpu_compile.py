"""Every fla.modules kernel compiles for a real GPU target, also on a CPU-only box (see gpu_compile_check.py)."""
import os
import subprocess
import sys

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the other tests compile the kernels for real")
def test_module_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-m", "tests.modules.gpu_compile_check"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    print(proc.stdout)
    for kernel in ("rms_norm_bwd_kernel", "cross_entropy_fwd_bwd_kernel", "short_conv_bwd_kernel",
                   "short_conv_step_kernel", "rotary_kernel", "swiglu_bwd_kernel"):
        assert kernel in proc.stdout
