"""RotaryEmbedding against a float64 complex-number reference: both layouts, partial dims, offsets, varlen."""
import pytest
import torch

from fla.modules import RotaryEmbedding
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed


def reference(x, positions, dim, base, interleaved):
    """x [B, T, H, D], positions [B or 1, T]: rotate the first `dim` features as complex numbers, float64."""
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    rotation = torch.polar(torch.ones(1, dtype=torch.float64), positions.double()[..., None] * inv_freq)[:, :, None]
    rot, rest = x.double()[..., :dim], x.double()[..., dim:]
    if interleaved:
        z = torch.view_as_complex(rot.unflatten(-1, (dim // 2, 2)).contiguous())
        y = torch.view_as_real(z * rotation).flatten(-2)
    else:
        z = torch.complex(rot[..., :dim // 2], rot[..., dim // 2:]) * rotation
        y = torch.cat([z.real, z.imag], -1)
    return torch.cat([y, rest], -1)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize(
    "B, T, H, HK, D, dim, interleaved, offset",
    [
        (2, 45, 3, 1, 32, 32, False, 0),
        (2, 45, 2, 2, 40, 16, True, 7),
        (3, 20, 2, 1, 24, 24, True, "per-row"),
        (2, 33, 2, 2, 64, 48, False, "per-row"),
    ],
)
def test_rotary_matches_reference(backend, B, T, H, HK, D, dim, interleaved, offset):
    seed(backend, B, T, H, HK, D, dim, interleaved, offset)
    rope = RotaryEmbedding(dim, base=500.0, interleaved=interleaved)
    q, k = torch.randn(B, T, H, D, requires_grad=True), torch.randn(B, T, HK, D, requires_grad=True)
    if offset == "per-row":
        offset = torch.randint(-3, 40, (B,))
        positions = torch.arange(T)[None] + offset[:, None]
    else:
        positions = torch.arange(T)[None] + offset
    dq, dk = torch.randn_like(q), torch.randn_like(k)
    with use_backend(backend), poisoned_empty():
        q_rot, k_rot = rope(q, k, seqlen_offset=offset)
        grads = torch.autograd.grad((q_rot * dq).sum() + (k_rot * dk).sum(), [q, k])
    q_ref, k_ref = reference(q, positions, dim, 500.0, interleaved), reference(k, positions, dim, 500.0, interleaved)
    grads_ref = torch.autograd.grad((q_ref * dq.double()).sum() + (k_ref * dk.double()).sum(), [q, k])
    assert_close("q", q_rot, q_ref, 1e-6)
    assert_close("k", k_rot, k_ref, 1e-6)
    assert_close("dq", grads[0], grads_ref[0], 1e-6)
    assert_close("dk", grads[1], grads_ref[1], 1e-6)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("lens, offsets", [([17, 1, 40, 9], None), ([5, 30, 1], [3, 0, 11])])
def test_varlen_matches_per_document(backend, lens, offsets):
    seed(backend, lens, offsets)
    rope = RotaryEmbedding(16)
    cu_seqlens = torch.tensor([0] + lens).cumsum(0)
    q, k = torch.randn(1, sum(lens), 2, 16), torch.randn(1, sum(lens), 1, 16)
    with use_backend(backend), poisoned_empty():
        q_rot, k_rot = rope(q, k, seqlen_offset=torch.tensor(offsets) if offsets else 0, cu_seqlens=cu_seqlens)
        parts = [
            rope(q[:, bos:eos], k[:, bos:eos], seqlen_offset=offsets[n] if offsets else 0)
            for n, (bos, eos) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()))
        ]
    assert_close("q", q_rot, torch.cat([p[0] for p in parts], 1), 0)
    assert_close("k", k_rot, torch.cat([p[1] for p in parts], 1), 0)


def test_rotary_half_precision():
    seed("half")
    rope = RotaryEmbedding(32)
    q = torch.randn(2, 10, 2, 32, dtype=torch.float16)
    q_rot, _ = rope(q, q, seqlen_offset=100)
    assert q_rot.dtype == torch.float16
    assert_close("q", q_rot, reference(q, torch.arange(10)[None] + 100, 32, 10000.0, False), 1e-3)


def test_inv_freq_is_recomputed_after_meta_build():
    with torch.device("meta"):
        rope = RotaryEmbedding(16, base=1000.0)
    rope.to_empty(device="cpu")
    rope.reset_parameters()
    assert_close("inv_freq", rope.inv_freq, RotaryEmbedding(16, base=1000.0).inv_freq, 0)
    assert "inv_freq" not in rope.state_dict()


def test_rotary_rejects_bad_inputs():
    rope = RotaryEmbedding(16)
    q = torch.randn(2, 5, 2, 16)
    with pytest.raises(ValueError, match="q must be \\[B, T, H, D\\] with D >= rotary dim 16"):
        rope(torch.randn(2, 5, 2, 8), q)
    with pytest.raises(ValueError, match="seqlen_offset must be an int or an int tensor \\[N\\] = \\[2\\]"):
        rope(q, q, seqlen_offset=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="q and k must share"):
        rope(q, q[:, :3])
    with pytest.raises(ValueError, match="positive even"):
        RotaryEmbedding(15)


def test_peer_arguments_that_change_the_math_are_refused():
    with pytest.raises(ValueError, match="scale_base"):
        RotaryEmbedding(16, 10000.0, 512.0)
    with pytest.raises(ValueError, match="pos_idx_in_fp32"):
        RotaryEmbedding(16, pos_idx_in_fp32=False)
    assert RotaryEmbedding(16, 10000.0, None, True).interleaved  # the peer's positional order


@pytest.mark.parametrize("interleaved", [False, True])
def test_peer_reference_and_tables(interleaved):
    """rotary_embedding_ref(x, module._cos_cached[...], module._sin_cached[...]) reproduces the module, as the peer
    library's tests read it; with per-row offsets the tables cover max_seqlen positions."""
    from fla.modules.rotary import rotary_embedding_ref

    seed("rotary-ref", interleaved)
    B, T, H, D = 2, 11, 2, 16
    rope = RotaryEmbedding(12, interleaved=interleaved)
    q, k = torch.randn(B, T, H, D), torch.randn(B, T, H, D)
    with use_backend("torch"):
        q_rot, k_rot = rope(q, k)
        assert rope._cos_cached.shape == (T, 6)
        assert_close("q", q_rot, rotary_embedding_ref(q, rope._cos_cached, rope._sin_cached, interleaved), 1e-6)
        assert_close("k", k_rot, rotary_embedding_ref(k, rope._cos_cached, rope._sin_cached, interleaved), 1e-6)
        offsets = torch.tensor([3, 0])
        q_off, _ = rope(q, k, seqlen_offset=offsets, max_seqlen=T + 3)
        cos, sin = rope._cos_cached, rope._sin_cached
        assert cos.shape == (T + 3, 6)
        for b, o in enumerate(offsets.tolist()):
            want = rotary_embedding_ref(q[b:b + 1], cos[o:o + T], sin[o:o + T], interleaved)
            assert_close(f"row{b}", q_off[b:b + 1], want, 1e-6)


@pytest.mark.parametrize("interleaved, offset, varlen", [(False, 0, False), (True, "per-seq", False),
                                                         (False, "per-seq", True), (True, 3, True)])
def test_rotary_embedding_from_tables_matches_reference(interleaved, offset, varlen):
    """The peer's table form rotary_embedding(x, cos, sin, ...): cos/sin [TR, R] read at each token's position."""
    from fla.modules.rotary import rotary_embedding
    seed("tables", interleaved, offset, varlen)
    D, dim, base, H = 40, 32, 500.0, 2
    cu = torch.tensor([0, 17, 18, 50]) if varlen else None
    B, T = (1, 50) if varlen else (2, 29)
    N = 3 if varlen else B
    offsets = torch.randint(0, 20, (N,)) if offset == "per-seq" else offset
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.arange(80, dtype=torch.float64)[:, None] * inv_freq
    cos, sin = angles.cos().float(), angles.sin().float()
    x = torch.randn(B, T, H, D, requires_grad=True)
    y = rotary_embedding(x, cos, sin, interleaved, False, offsets, cu)
    if varlen:
        starts = torch.repeat_interleave(cu[:-1], cu.diff())
        doc = torch.repeat_interleave(torch.arange(N), cu.diff())
        positions = (torch.arange(T) - starts + (offsets[doc] if torch.is_tensor(offsets) else offsets))[None]
    else:
        positions = torch.arange(T)[None] + (offsets[:, None] if torch.is_tensor(offsets) else offsets)
    want = reference(x, positions, dim, base, interleaved)
    assert_close("y", y, want, 1e-5)
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    (dx_ref,) = torch.autograd.grad(want, x, dy.double())
    assert_close("dx", dx, dx_ref, 1e-5)
    z = x.detach().clone()
    assert rotary_embedding(z, cos, sin, interleaved, True, offsets, cu) is z and torch.equal(z, y.detach())
    with pytest.raises(ValueError, match="tables have 10 rows"):
        rotary_embedding(x, cos[:10], sin[:10], interleaved, False, offsets, cu)
