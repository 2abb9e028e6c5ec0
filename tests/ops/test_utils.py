"""Input checks, the varlen index and the device dispatch (fla/ops/utils)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fla.ops.utils.checks import check_cu_seqlens, check_initial_state, check_tensor
from fla.ops.utils.dispatch import get_backend, use_backend
from fla.ops.utils.index import prepare_chunk_indices, prepare_chunk_offsets, prepare_token_indices


def test_chunk_index_covers_every_chunk_once():
    cu = torch.tensor([0, 1, 17, 17, 50, 64])
    idx = prepare_chunk_indices(cu, 16).tolist()
    assert idx == [[0, 0], [1, 0], [3, 0], [3, 1], [3, 2], [4, 0]]
    assert prepare_chunk_offsets(cu, 16).tolist() == [0, 1, 2, 2, 5, 6]
    tok = prepare_token_indices(cu)
    assert tok.shape == (64, 2) and tok[17].tolist() == [3, 0] and tok[49].tolist() == [3, 32]


@pytest.mark.parametrize("cu,msg", [
    (torch.tensor([0.0, 3.0]), "int32 or int64"),
    (torch.tensor([[0, 3]]), "1-D"),
    (torch.tensor([1, 3]), "start at 0"),
    (torch.tensor([0, 3, 2, 4]), "non-decreasing"),
    (torch.tensor([0, 3, 5]), "end at the number of tokens .got 5, expected 6."),
    ([0, 6], "torch.Tensor"),
])
def test_rejects_bad_cu_seqlens(cu, msg):
    with pytest.raises(ValueError, match=msg):
        check_cu_seqlens(cu, batch_size=1, num_tokens=6)


def test_rejects_batched_cu_seqlens():
    with pytest.raises(ValueError, match="batch size must be 1"):
        check_cu_seqlens(torch.tensor([0, 3, 6]), batch_size=2, num_tokens=6)


def test_rejects_bad_tensors():
    q = torch.randn(2, 8, 2, 4)
    with pytest.raises(ValueError, match=r"q must have 4 dims"):
        check_tensor("q", q[0], "[B, T, H, K]", (None, None, None, None))
    with pytest.raises(ValueError, match=r"k must have shape \[B, T, H, K\] = \[2, 8, 2, 4\]"):
        check_tensor("k", torch.randn(2, 8, 3, 4), "[B, T, H, K]", (2, 8, 2, 4))
    with pytest.raises(ValueError, match="v must have dtype float32, float16, bfloat16 .got int64."):
        check_tensor("v", q.long(), "[B, T, H, V]")
    with pytest.raises(ValueError, match="is on meta but the other inputs are on cpu"):
        check_tensor("g", q.to("meta"), "[B, T, H]", device=q.device)
    with pytest.raises(ValueError, match=r"not contiguous.*transpose\(1, 2\)"):
        check_tensor("q", q.transpose(1, 2), "[B, T, H, K]")
    with pytest.raises(ValueError, match="initial_state must have dtype float32"):
        check_initial_state(torch.zeros(2, 2, 4, 4, dtype=torch.float16), 2, (2, 4, 4), "[N, H, K, V]", q.device)
    with pytest.raises(ValueError, match=r"initial_state must have shape \[N, H, K, V\] = \[3, 2, 4, 4\]"):
        check_initial_state(torch.zeros(2, 2, 4, 4), 3, (2, 4, 4), "[N, H, K, V]", q.device)


def test_backend_switch():
    x = torch.zeros(1)
    assert get_backend(x) == "triton"  # conftest runs the suite under TRITON_INTERPRET=1
    with use_backend("torch"):
        assert get_backend(x) == "torch"
    assert get_backend(x) == "triton"
    with pytest.raises(ValueError, match="backend must be one of"):
        with use_backend("cuda"):
            pass


def test_bare_cpu_uses_torch_twins():
    """Without the interpreter a Triton launch on CPU fails ("0 active drivers"): the dispatch must pick the twins."""
    code = textwrap.dedent("""
        import torch
        from fla.ops.utils.dispatch import get_backend
        from fla.ops.utils.chunk_h import chunk_fwd_h
        k, v = torch.randn(1, 20, 2, 8), torch.randn(1, 20, 2, 8)
        assert get_backend(k) == "torch"
        h, ht = chunk_fwd_h(k, v, output_final_state=True, chunk_size=16)
        assert torch.allclose(ht, torch.einsum("bthk,bthv->bhkv", k, v), atol=1e-5)
        print("ok")
    """)
    env = {key: val for key, val in os.environ.items() if key not in ("TRITON_INTERPRET", "FLA_BACKEND")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
