"""fla.modules.activations against plain float64 PyTorch references: every function forward and gradient, both paths,
float32 and float16, odd sizes, row-strided inputs (one half of a chunk) and outputs poisoned with NaN."""
import pytest
import torch
import torch.nn.functional as F

import fla.modules.activations as A
from fla.modules.activations import _is_inner_contiguous
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed


def powglu_gate_ref(x, power):
    pos = x.clamp_min(1e-30)
    return torch.where(x > 0, pos ** (power / (pos.sqrt() + 1)) * torch.sigmoid(x), F.silu(x))


UNARY = {  # name -> (our call, the reference)
    "sigmoid": (A.sigmoid, torch.sigmoid),
    "logsigmoid": (lambda x: A.logsigmoid(x, 0.5), lambda x: F.logsigmoid(x) / 0.5),
    "swish": (A.swish, F.silu),
    "elu_p1": (A.elu_p1, lambda x: F.elu(x) + 1),
    "sqrelu": (A.sqrelu, lambda x: F.relu(x) ** 2),
    "fast_gelu_impl": (A.fast_gelu_impl, lambda x: F.gelu(x, approximate="tanh")),
}
GLU = {
    "swiglu": (A.swiglu, lambda x, y: F.silu(x) * y),
    "sigmoidglu": (A.sigmoidglu, lambda x, y: torch.sigmoid(x) * y),
    "powglu": (lambda x, y: A.powglu(x, y, 2.5), lambda x, y: powglu_gate_ref(x, 2.5) * y),
}
GLU_LINEAR = {
    "swiglu_linear": (A.swiglu_linear, lambda x, y: F.silu(x) * y),
    "sigmoidglu_linear": (A.sigmoidglu_linear, lambda x, y: torch.sigmoid(x) * y),
    "powglu_linear": (lambda x, y, w, b: A.powglu_linear(x, y, w, b, 4.0), lambda x, y: powglu_gate_ref(x, 4.0) * y),
}
BOUND = {torch.float32: 1e-5, torch.float16: 2e-3}


def inputs(n, dtype, strided, shape=(3, 37, 29)):
    """n tensors of `shape` with x's tails (|x| up to ~12, exact zeros); strided ones are halves of one buffer."""
    if strided:
        xs = torch.randn(*shape[:-1], 2 * shape[-1]).chunk(2, -1)[:n]
    else:
        xs = [torch.randn(shape) for _ in range(n)]
    xs = [t.clone() if i else t * 4 for i, t in enumerate(xs)]
    xs[0].view(-1)[:3] = torch.tensor([0.0, 12.0, -12.0])
    out = [t.to(dtype) for t in xs]
    if strided:  # keep the strided layout after the cast
        buf = torch.empty(*shape[:-1], 2 * shape[-1], dtype=dtype)
        out = [buf[..., i * shape[-1]:(i + 1) * shape[-1]].copy_(t) for i, t in enumerate(out)]
        assert not out[0].is_contiguous() and _is_inner_contiguous(out[0])
    return [t.requires_grad_() for t in out]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", list(UNARY))
def test_unary_matches_reference(name, dtype, backend):
    seed(name, dtype, backend)
    fn, ref = UNARY[name]
    x, = inputs(1, dtype, strided=dtype == torch.float16)
    dy = torch.randn(x.shape, dtype=dtype)
    with use_backend(backend), poisoned_empty():
        y = fn(x)
        dx, = torch.autograd.grad(y, x, dy)
    assert y.dtype == dx.dtype == dtype and y.shape == x.shape
    y_ref = ref(x.double())
    dx_ref, = torch.autograd.grad(y_ref, x, dy.double())
    assert_close("y", y, y_ref, BOUND[dtype])
    assert_close("dx", dx, dx_ref, BOUND[dtype])


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", list(GLU))
def test_glu_matches_reference(name, dtype, backend):
    seed(name, dtype, backend)
    fn, ref = GLU[name]
    x, y = inputs(2, dtype, strided=dtype == torch.float32)
    dz = torch.randn(x.shape, dtype=dtype)
    with use_backend(backend), poisoned_empty():
        z = fn(x, y)
        dx, dy = torch.autograd.grad(z, (x, y), dz)
    assert z.dtype == dtype and z.is_contiguous()
    z_ref = ref(x.double(), y.double())
    dx_ref, dy_ref = torch.autograd.grad(z_ref, (x, y), dz.double())
    assert_close("z", z, z_ref, BOUND[dtype])
    assert_close("dx", dx, dx_ref, BOUND[dtype])
    assert_close("dy", dy, dy_ref, BOUND[dtype])


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("name, bias, strided", [("swiglu_linear", True, True), ("sigmoidglu_linear", False, False),
                                                 ("powglu_linear", True, False)])
def test_glu_linear_matches_reference(name, bias, strided, backend):
    seed(name, bias, strided, backend)
    fn, ref = GLU_LINEAR[name]
    x, y = inputs(2, torch.float32, strided)
    w = torch.randn(11, x.shape[-1], requires_grad=True)
    b = torch.randn(11, requires_grad=True) if bias else None
    params = [x, y, w] + ([b] if bias else [])
    dout = torch.randn(*x.shape[:-1], 11)
    with use_backend(backend), poisoned_empty():
        out = fn(x, y, w, b)
        grads = torch.autograd.grad(out, params, dout)
        w_only = torch.autograd.grad(fn(x.detach(), y.detach(), w, b), w, dout)[0]  # the branch without dx, dy
    out_ref = F.linear(ref(x.double(), y.double()), w.double(), None if b is None else b.double())
    grads_ref = torch.autograd.grad(out_ref, params, dout.double())
    assert_close("out", out, out_ref, 1e-5)
    for pname, got, want in zip("x y w b".split(), grads, grads_ref):
        assert_close("d" + pname, got, want, 1e-5)
    assert_close("dw only", w_only, grads_ref[2], 1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_peer_launchers_and_helpers(backend):
    """The peer's `<name>_fwd` / `_bwd` / `_fwdbwd` launchers and closed-form helpers give the same as autograd."""
    seed("launchers", backend)
    x, y = inputs(2, torch.float32, strided=False, shape=(5, 19))
    g, bias = torch.randn(5, 19), torch.randn(19, requires_grad=True)
    with use_backend(backend), poisoned_empty():
        got = {
            "sigmoid": (A.sigmoid_fwd(x), A.sigmoid_bwd(x, g)),
            "logsigmoid": (A.logsigmoid_fwd(x, 0.5), A.logsigmoid_bwd(x, g, 0.5)),
            "swish": (A.swish_fwd(x), A.swish_bwd(x, g)),
            "elu_p1": (A.elu_p1_fwd(x), A.elu_p1_bwd(x, g)),
            "sqrelu": (A.sqrelu_fwd(x), A.sqrelu_bwd(g, x)),
            "fast_gelu_impl": (A.gelu_fwd(x), A.gelu_bwd(g, x)),
        }
        glu = {"swiglu": (A.swiglu_fwd(x, y), A.swiglu_fwdbwd(x, y, g, use_weight=True)),
               "sigmoidglu": (A.sigmoidglu_fwd(x, y), A.sigmoidglu_fwdbwd(x, y, g, use_weight=True)),
               "powglu": (A.powglu_fwd(x, y, 2.5), A.powglu_fwdbwd(x, y, g, 2.5, use_weight=True))}
        assert len(A.swiglu_fwdbwd(x, y, g)) == 2
        bg = A.bias_gelu_impl(x, bias)
        dbg = torch.autograd.grad(bg, (x, bias), g)
        bg_helper, dbg_helper = A.bias_gelu(x, bias), A.bias_gelu_bwd(g, x, bias)
    for name, (fwd, bwd) in got.items():
        ref = UNARY[name][1](x.double())
        assert_close(name, fwd, ref, 1e-5)
        assert_close(name + "'", bwd, torch.autograd.grad(ref, x, g.double())[0], 1e-5)
    for name, (fwd, (dx, dy, z)) in glu.items():
        ref = GLU[name][1](x.double(), y.double())
        dx_ref, dy_ref = torch.autograd.grad(ref, (x, y), g.double())
        for label, a, b in (("z", fwd, ref), ("z bwd", z, ref), ("dx", dx, dx_ref), ("dy", dy, dy_ref)):
            assert_close(f"{name} {label}", a, b, 1e-5)
    ref = F.gelu(x.double() + bias.double(), approximate="tanh")
    for label, a, b in zip(("bias_gelu", "d input", "d bias"), (bg, *dbg), (ref, *torch.autograd.grad(ref, (x, bias),
                                                                                              g.double()))):
        assert_close(label, a, b, 1e-5)
    assert_close("bias_gelu()", bg_helper, ref, 1e-5)
    for a, b in zip(dbg_helper, dbg):
        assert_close("bias_gelu_bwd", a, b, 1e-5)
    assert torch.equal(A.relu_bwd(g, x), torch.where(x >= 0, g, 0.0))


def test_act2fn_is_the_peers_table():
    assert sorted(A.ACT2FN) == ["bias_gelu", "gelu", "logsigmoid", "relu", "sigmoid", "silu", "sqrelu", "swish"]
    assert A.ACT2FN["silu"] is A.swish and A.ACT2FN["gelu"] is A.fast_gelu_impl and A.ACT2FN["relu"] is F.relu


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_scalars_empty_and_non_row_layouts(backend):
    seed("layouts", backend)
    t = torch.randn(6, 8, 10)
    with use_backend(backend):
        assert torch.allclose(A.sigmoid(torch.tensor(0.3)), torch.sigmoid(torch.tensor(0.3)))
        assert A.swish(torch.empty(0, 7)).shape == (0, 7)
        for view in (t.transpose(1, 2), t[::2], t[..., ::3], t[:, :1]):  # copied first, or read in place
            assert_close("view", A.swiglu(view, view), F.silu(view.double()) * view.double(), 1e-6)


def test_is_inner_contiguous():
    t = torch.randn(5, 10, 40)
    assert _is_inner_contiguous(torch.randn(())) and _is_inner_contiguous(torch.randn(10))
    assert _is_inner_contiguous(t) and _is_inner_contiguous(t.chunk(2, -1)[0]) and _is_inner_contiguous(t[3:])
    assert _is_inner_contiguous(torch.randn(3, 1, 4).transpose(0, 1))  # a size-1 dim's stride never matters
    assert not _is_inner_contiguous(t.transpose(-1, -2)) and not _is_inner_contiguous(t[::2])
    assert not _is_inner_contiguous(t[:, 3:7])  # rows 40 apart within a block of 4, 400 between blocks
    assert not _is_inner_contiguous(t[..., ::2]) and not _is_inner_contiguous(torch.randn(10)[::2])


def test_bad_inputs():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="same shape and dtype"):
        A.swiglu(x, torch.randn(4, 9))
    with pytest.raises(ValueError, match="same shape and dtype"):
        A.powglu(x, x.half())
    with pytest.raises(ValueError, match="floating-point"):
        A.sigmoid(torch.arange(4))
    with pytest.raises(ValueError, match="temperature must be a nonzero number"):
        A.logsigmoid(x, 0)
    with pytest.raises(ValueError, match=r"weight \[out_features, 8\]"):
        A.swiglu_linear(x, x, torch.randn(3, 7), None)
    with pytest.raises(ValueError, match=r"bias \[3\] or None"):
        A.powglu_linear(x, x, torch.randn(3, 8), torch.randn(4))
