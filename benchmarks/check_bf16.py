"""bf16 and float16 correctness of every public op against its float32 reference: what only a GPU can show.

    python benchmarks/check_bf16.py                                 # GPU: compiled, autotuned kernels, bf16 + fp16
    python benchmarks/check_bf16.py --ops chunk_gla rms_norm --dtypes bfloat16 --out DIR
    python benchmarks/check_bf16.py --tiny                          # CPU: Triton interpreter, float16 + float32

Why a GPU: the CPU tests run the kernels in the Triton interpreter, where a bf16 `tl.dot` is garbage (so bf16 is never
checked there), every kernel runs one fixed config (autotuning needs a GPU), and nothing races. Here every kernel is
compiled and autotuned as users get it, and each op runs twice (the first call autotunes, the second uses the cached
config); both are compared, and `rerun` says how far apart they are (a moving error is a race).

Every case is an op, a dtype, a layout and a variant:
- layouts: `fixed` ([B, T], T not a multiple of 64) and `varlen` (cu_seqlens with lengths 1, 63, 64, 129, 300, 483;
  tiny: 1, 66, 13);
- variants: `plain` and `h0` (an initial state) for the recurrent families; `plain` and `gated` for parallel_attn;
  `plain` and `cache` for ShortConvolution.
Inputs are fresh random numbers per case (seeded from its name and `--seed`), rounded to bf16 so that the same values
are exact in bf16 and float16 and one float32 reference serves both. The reference is the family's naive recurrence
(`fla/ops/<family>/naive.py`) or the module's formula, in float32 with TF32 off, on the same inputs. Output
allocations are poisoned with NaN while the op runs (forward and backward), so an unwritten element fails.
Compared: every output (o, final state, ...) and the gradient of every input, as ||got - ref|| / ||ref||.

Bounds (values / gate gradients dg, dbeta):
- bf16 1e-2 / 2e-2. bf16 keeps 8 significant bits: storing a result alone costs ~1e-3 RMS relative error, and bf16
  dot operands land between 1e-3 and 1e-2 (device METHOD.md). The CPU tests' bf16 bounds (tests/ops/test_gla.py
  `test_chunk_half_precision`, tests/ops/test_attn.py `REL`) are 2e-2 for every tensor; values are held to 1e-2
  here, where a state kept in bf16 across chunks or a bf16 accumulator shows. Gate gradients are sums of terms that
  cancel (q.dq - k.dk, reverse cumsums over a chunk): they keep the tests' 2e-2 (fla-core's own tests: ~0.02).
- float16 5e-3 / 1e-2: 3 more bits than bf16; the tests' float16 bounds (test_gla / test_simple_gla 5e-3,
  test_gated_delta_rule 1e-2 for every tensor; measured there ~3-6e-4).
- float32 1e-3 / 5e-3 on a GPU (float32 dots may run as TF32, ~3e-4), 1e-4 / 1e-3 in the interpreter (the tests).
A bug (wrong index, race, unwritten tile) is O(1), far above all of these.

Prints one line per case and a summary table, writes every tensor's error to DIR/check_bf16.csv (rows appended as
cases finish, so a killed run keeps what it did; `--out DIR`, default benchmarks/results/), plots each op's worst
error as a fraction of its bound to DIR/check_bf16.png, and exits 1 if any case failed. `--time-limit S` stops
starting new cases after S seconds; those are written as `not run` (the run is then incomplete, not failed).
"""
from __future__ import annotations

import argparse
import csv
import importlib
import itertools
import math
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

NAME = "check_bf16"
GATE_GRADS = {"dg", "dbeta"}
# (device type, dtype) -> (bound for values, bound for gate gradients); see the module docstring
BOUNDS = {
    ("cuda", torch.bfloat16): (1e-2, 2e-2),
    ("cuda", torch.float16): (5e-3, 1e-2),
    ("cuda", torch.float32): (1e-3, 5e-3),
    ("cpu", torch.bfloat16): (1e-2, 2e-2),
    ("cpu", torch.float16): (5e-3, 1e-2),
    ("cpu", torch.float32): (1e-4, 1e-3),
}
SAME = "same"  # an output's expected dtype: the dtype under test
FIELDS = ["op", "dtype", "layout", "variant", "tensor", "rel_err", "bound", "status", "rerun", "seconds", "note"]


@dataclass(frozen=True)
class Sizes:
    B: int
    T: int                   # fixed layout: [B, T]
    H: int
    K: int
    V: int
    lengths: tuple[int, ...]  # varlen layout: [1, sum(lengths)]
    hidden: int              # modules: rows of `hidden` features
    vocab: int


# T = 1040 is not a multiple of 64 but is of 16 (the int-argument specialization of bench_ops' T = 1024, so kernels
# compiled here are reused there); H = 16, K = V = 128 are bench_ops' sizes for the same reason.
GPU_SIZES = Sizes(B=2, T=1040, H=16, K=128, V=128, lengths=(1, 63, 64, 129, 300, 483), hidden=2048, vocab=32000)
TINY_SIZES = Sizes(B=2, T=70, H=2, K=32, V=32, lengths=(1, 66, 13), hidden=100, vocab=1000)


@dataclass
class Family:
    """One reference and the ops that must match it, on one set of inputs."""
    inputs: dict[str, torch.Tensor]            # float32, bf16-representable
    grad_names: list[str]                      # inputs whose gradient is checked
    reference: Callable[[dict, dict], dict]    # (inputs, extra) -> outputs
    ops: dict[str, Callable[[dict, dict], dict]]
    cotangents: dict[str, torch.Tensor]        # output -> the gradient flowing into it (float32)
    out_dtypes: dict[str, object]              # output -> SAME, a dtype, or None (not checked)
    extra: dict = field(default_factory=dict)  # non-float arguments: cu_seqlens, targets
    keep_fp32: frozenset = frozenset()         # inputs passed in float32 whatever the dtype (states)


@dataclass
class Ctx:
    s: Sizes
    layout: str
    variant: str
    device: str
    gen: torch.Generator
    B: int
    T: int
    N: int                                     # sequences: B, or len(lengths)
    cu_seqlens: torch.Tensor | None

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen)

    def positions(self) -> torch.Tensor:
        """[B or 1, T] position of every token inside its sequence."""
        if self.cu_seqlens is None:
            return torch.arange(self.T)[None]
        return torch.cat([torch.arange(n) for n in self.s.lengths])[None]


def _load_test_helpers():
    """tests/helpers.py by file path (its NaN poisoning is the tests' own; a second copy would drift)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "helpers.py")
    spec = importlib.util.spec_from_file_location("fla_test_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


poisoned_empty = _load_test_helpers().poisoned_empty


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float64 (the absolute difference when want is zero)."""
    got, want = got.detach().double(), want.detach().double()
    denom, diff = want.norm().item(), (got - want).norm().item()
    return diff if denom == 0 else diff / denom


# ---------------------------------------------------------------------------------------------------------------
# families: inputs, reference, ops
# ---------------------------------------------------------------------------------------------------------------

def _recurrent(fn: Callable, gates: dict[str, str], **fixed) -> Callable[[dict, dict], dict]:
    """An op of the shared signature (q, k, v, <gates>, initial_state, output_final_state, cu_seqlens) as
    f(inputs, extra) -> {o, ht}; `gates` maps the op's argument names to input names."""
    def call(x: dict, e: dict) -> dict:
        o, ht = fn(x["q"], x["k"], x["v"], **{arg: x[name] for arg, name in gates.items()},
                   initial_state=x.get("h0"), output_final_state=True, cu_seqlens=e["cu_seqlens"], **fixed)
        return {"o": o, "ht": ht}
    return call


def _parallel(fn: Callable, gates: dict[str, str], **fixed) -> Callable[[dict, dict], dict]:
    """A stateless op (q, k, v, <gates>, cu_seqlens) -> o or (o, extra) as f(inputs, extra) -> {o}."""
    def call(x: dict, e: dict) -> dict:
        out = fn(x["q"], x["k"], x["v"], **{arg: x[name] for arg, name in gates.items()},
                 cu_seqlens=e["cu_seqlens"], **fixed)
        return {"o": out[0] if isinstance(out, tuple) else out}
    return call


def _state_family(c: Ctx, gates: dict[str, torch.Tensor], reference: Callable, ops: dict) -> Family:
    s = c.s
    inputs = {"q": c.randn(c.B, c.T, s.H, s.K), "k": c.randn(c.B, c.T, s.H, s.K), "v": c.randn(c.B, c.T, s.H, s.V),
              **gates}
    if c.variant == "h0":
        inputs["h0"] = c.randn(c.N, s.H, s.K, s.V)
    return Family(inputs=inputs, grad_names=list(inputs), reference=reference, ops=ops,
                  cotangents={"o": c.randn(c.B, c.T, s.H, s.V), "ht": c.randn(c.N, s.H, s.K, s.V)},
                  out_dtypes={"o": SAME, "ht": torch.float32}, keep_fp32=frozenset({"h0"}))


def family_simple_gla(c: Ctx) -> Family:
    from fla.ops.simple_gla import (chunk_simple_gla, fused_recurrent_simple_gla, naive_recurrent_simple_gla,
                                    parallel_simple_gla)
    g = {"g": "g"}
    # log decays around log(sigmoid(2)): slow, as in tests/ops/test_simple_gla.py
    return _state_family(c, {"g": F.logsigmoid(c.randn(c.B, c.T, c.s.H) + 2)},
                         _recurrent(naive_recurrent_simple_gla, g),
                         {"chunk_simple_gla": _recurrent(chunk_simple_gla, g),
                          "fused_recurrent_simple_gla": _recurrent(fused_recurrent_simple_gla, g),
                          "parallel_simple_gla": _parallel(parallel_simple_gla, g)})


def family_gla(c: Ctx) -> Family:
    from fla.ops.gla import chunk_gla, fused_recurrent_gla, naive_recurrent_gla
    # per-channel log decays logsigmoid(randn) (mean ~ -0.8): chunk-local sums down to ~ -50, as in tests/ops/test_gla
    return _state_family(c, {"g": F.logsigmoid(c.randn(c.B, c.T, c.s.H, c.s.K))},
                         _recurrent(naive_recurrent_gla, {"gk": "g"}),
                         {"chunk_gla": _recurrent(chunk_gla, {"g": "g"}),
                          "fused_recurrent_gla": _recurrent(fused_recurrent_gla, {"gk": "g"})})


def family_retention(c: Ctx) -> Family:
    from fla.ops.retention import (chunk_retention, fused_recurrent_retention, naive_recurrent_retention,
                                   parallel_retention)
    return _state_family(c, {}, _recurrent(naive_recurrent_retention, {}),
                         {"chunk_retention": _recurrent(chunk_retention, {}),
                          "fused_recurrent_retention": _recurrent(fused_recurrent_retention, {}),
                          "parallel_retention": _parallel(parallel_retention, {})})


def family_linear_attn(c: Ctx) -> Family:
    from fla.ops.linear_attn import chunk_linear_attn, fused_recurrent_linear_attn, naive_recurrent_linear_attn
    # normalize=False (the layers' default use; the ops' defaults differ, so it is given explicitly)
    return _state_family(c, {}, _recurrent(naive_recurrent_linear_attn, {}, normalize=False),
                         {"chunk_linear_attn": _recurrent(chunk_linear_attn, {}, normalize=False),
                          "fused_recurrent_linear_attn": _recurrent(fused_recurrent_linear_attn, {},
                                                                    normalize=False)})


def family_delta_rule(c: Ctx) -> Family:
    from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule, naive_recurrent_delta_rule
    b = {"beta": "beta"}
    # raw keys, normalized in the kernel (as the layers and bench_ops call it)
    return _state_family(c, {"beta": c.randn(c.B, c.T, c.s.H).sigmoid()},
                         _recurrent(naive_recurrent_delta_rule, b, use_qk_l2norm_in_kernel=True),
                         {"chunk_delta_rule": _recurrent(chunk_delta_rule, b, use_qk_l2norm_in_kernel=True),
                          "fused_recurrent_delta_rule": _recurrent(fused_recurrent_delta_rule, b,
                                                                   use_qk_l2norm_in_kernel=True)})


def family_gated_delta_rule(c: Ctx) -> Family:
    from fla.ops.gated_delta_rule import (chunk_gated_delta_rule, fused_recurrent_gated_delta_rule,
                                          naive_recurrent_gated_delta_rule)
    gb = {"g": "g", "beta": "beta"}
    l2 = dict(use_qk_l2norm_in_kernel=True)
    return _state_family(c, {"g": F.logsigmoid(c.randn(c.B, c.T, c.s.H)), "beta": c.randn(c.B, c.T, c.s.H).sigmoid()},
                         _recurrent(naive_recurrent_gated_delta_rule, gb, **l2),
                         {"chunk_gated_delta_rule": _recurrent(chunk_gated_delta_rule, gb, **l2),
                          "fused_recurrent_gated_delta_rule": _recurrent(fused_recurrent_gated_delta_rule, gb, **l2)})


def family_attn(c: Ctx) -> Family:
    from fla.ops.attn import naive_attn, parallel_attn
    s = c.s
    HKV = max(1, s.H // 4)  # grouped-query attention: 4 query heads per key/value head
    inputs = {"q": c.randn(c.B, c.T, s.H, s.K), "k": c.randn(c.B, c.T, HKV, s.K), "v": c.randn(c.B, c.T, HKV, s.V)}
    gates = {}
    if c.variant == "gated":  # Forgetting Attention's log forget gate, as in tests/ops/test_attn.py
        inputs["g"] = F.logsigmoid(c.randn(c.B, c.T, s.H) + 2)
        gates = {"g": "g"}
    return Family(inputs=inputs, grad_names=list(inputs), reference=_parallel(naive_attn, gates),
                  ops={"parallel_attn": _parallel(parallel_attn, gates)},
                  cotangents={"o": c.randn(c.B, c.T, s.H, s.V)}, out_dtypes={"o": SAME})


def family_rms_norm(c: Ctx) -> Family:
    from fla.modules import rms_norm
    M, D = c.B * c.T, c.s.hidden

    def ours(x, e):
        y, r = rms_norm(x["x"], x["weight"], residual=x["residual"], eps=1e-5, prenorm=True)
        return {"y": y, "r": r}

    def ref(x, e):
        r = x["x"] + x["residual"]
        return {"y": r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + 1e-5) * x["weight"], "r": r}

    inputs = {"x": c.randn(M, D), "residual": c.randn(M, D), "weight": 1 + 0.1 * c.randn(D)}
    return Family(inputs=inputs, grad_names=list(inputs), reference=ref, ops={"rms_norm": ours},
                  cotangents={"y": c.randn(M, D), "r": c.randn(M, D)}, out_dtypes={"y": SAME, "r": SAME})


def family_rms_norm_gated(c: Ctx) -> Family:
    from fla.modules import rms_norm_gated
    M, D = c.B * c.T, c.s.hidden

    def ref(x, e):
        y = x["x"] * torch.rsqrt(x["x"].pow(2).mean(-1, keepdim=True) + 1e-5) * x["weight"]
        return {"y": y * F.silu(x["gate"])}

    inputs = {"x": c.randn(M, D), "gate": c.randn(M, D), "weight": 1 + 0.1 * c.randn(D)}
    return Family(inputs=inputs, grad_names=list(inputs), reference=ref,
                  ops={"rms_norm_gated": lambda x, e: {"y": rms_norm_gated(x["x"], x["gate"], x["weight"], eps=1e-5,
                                                                           activation="swish")}},
                  cotangents={"y": c.randn(M, D)}, out_dtypes={"y": SAME})


def family_l2_norm(c: Ctx) -> Family:
    from fla.modules import l2_norm
    shape = (c.B, c.T, c.s.H, c.s.K)
    return Family(inputs={"x": 3 * c.randn(*shape)}, grad_names=["x"],
                  reference=lambda x, e: {"y": x["x"] * torch.rsqrt(x["x"].pow(2).sum(-1, keepdim=True) + 1e-6)},
                  ops={"l2_norm": lambda x, e: {"y": l2_norm(x["x"], 1e-6)}},
                  cotangents={"y": c.randn(*shape)}, out_dtypes={"y": SAME})


def _targets(c: Ctx, M: int) -> torch.Tensor:
    target = torch.randint(0, c.s.vocab, (M,), generator=c.gen)
    target[torch.randperm(M, generator=c.gen)[:M // 20]] = -100  # some ignored positions (padding)
    return target.to(c.device)


def family_cross_entropy(c: Ctx) -> Family:
    from fla.modules.fused_cross_entropy import fused_cross_entropy
    M = c.B * c.T
    return Family(inputs={"logits": 2 * c.randn(M, c.s.vocab)}, grad_names=["logits"],
                  reference=lambda x, e: {"loss": F.cross_entropy(x["logits"], e["target"])},
                  ops={"cross_entropy": lambda x, e: {"loss": fused_cross_entropy(x["logits"], e["target"])}},
                  cotangents={"loss": c.randn(())}, out_dtypes={"loss": None}, extra={"target": _targets(c, M)})


def family_linear_cross_entropy(c: Ctx) -> Family:
    from fla.modules.fused_linear_cross_entropy import fused_linear_cross_entropy
    M, D = c.B * c.T, c.s.hidden
    return Family(inputs={"hidden": c.randn(M, D), "weight": c.randn(c.s.vocab, D) / D ** 0.5},
                  grad_names=["hidden", "weight"],
                  reference=lambda x, e: {"loss": F.cross_entropy(F.linear(x["hidden"], x["weight"]), e["target"])},
                  ops={"linear_cross_entropy": lambda x, e: {
                      "loss": fused_linear_cross_entropy(x["hidden"], e["target"], x["weight"])}},
                  cotangents={"loss": c.randn(())}, out_dtypes={"loss": None}, extra={"target": _targets(c, M)})


def family_short_conv(c: Ctx) -> Family:
    from fla.modules import ShortConvolution
    D, W = c.s.hidden, 4
    conv = ShortConvolution(D, kernel_size=W, bias=True, activation="silu", device=c.device)
    lengths = [c.T] * c.B if c.cu_seqlens is None else list(c.s.lengths)

    def ours(x, e):
        # the module with the inputs as its parameters, so that their gradients are checked
        y, final = torch.func.functional_call(conv, {"weight": x["weight"], "bias": x["bias"]}, (x["x"],),
                                              {"cache": x.get("cache"), "output_final_state": True,
                                               "cu_seqlens": e["cu_seqlens"]})
        return {"y": y, "final": final}

    def ref(x, e):
        """Shift and add per sequence: y_t = silu(b + sum_i w_i x_{t - W + 1 + i}), the cache [N, D, W] (newest
        last) standing before each sequence; final = the last W inputs."""
        w = x["weight"][:, 0]
        ys, finals, bos = [], [], 0
        for n, L in enumerate(lengths):
            b, t0 = (n, 0) if c.cu_seqlens is None else (0, bos)
            prefix = x["cache"][n].T if "cache" in x else x["x"].new_zeros(W, D)
            xs = torch.cat([prefix, x["x"][b, t0:t0 + L]])
            ys.append(F.silu(x["bias"] + sum(w[:, i] * xs[1 + i:1 + i + L] for i in range(W))))
            finals.append(xs[-W:].T)
            bos += L
        y = torch.stack(ys) if c.cu_seqlens is None else torch.cat(ys)[None]
        return {"y": y, "final": torch.stack(finals)}

    inputs = {"x": c.randn(c.B, c.T, D), "weight": c.randn(D, 1, W) / 2, "bias": 0.1 * c.randn(D)}
    if c.variant == "cache":
        inputs["cache"] = c.randn(c.N, D, W)
    return Family(inputs=inputs, grad_names=["x", "weight", "bias"], reference=ref, ops={"short_conv": ours},
                  cotangents={"y": c.randn(c.B, c.T, D)}, out_dtypes={"y": SAME, "final": SAME})


def family_rotary(c: Ctx) -> Family:
    from fla.modules import RotaryEmbedding
    s = c.s
    HKV = max(1, s.H // 4)
    rope = RotaryEmbedding(s.K, device=c.device)
    positions = c.positions().to(c.device)

    def ref(x, e):
        R = s.K // 2
        inv_freq = 1.0 / 10000.0 ** (torch.arange(0, s.K, 2, dtype=torch.float64, device=c.device) / s.K)
        angles = positions.double()[..., None] * inv_freq  # [B or 1, T, R]
        cos, sin = angles.cos().float()[:, :, None], angles.sin().float()[:, :, None]

        def rotate(t):
            t1, t2 = t[..., :R], t[..., R:]
            return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin], -1)
        return {"q_rot": rotate(x["q"]), "k_rot": rotate(x["k"])}

    def ours(x, e):
        q, k = rope(x["q"], x["k"], cu_seqlens=e["cu_seqlens"])
        return {"q_rot": q, "k_rot": k}

    inputs = {"q": c.randn(c.B, c.T, s.H, s.K), "k": c.randn(c.B, c.T, HKV, s.K)}
    return Family(inputs=inputs, grad_names=["q", "k"], reference=ref, ops={"rotary": ours},
                  cotangents={"q_rot": c.randn(c.B, c.T, s.H, s.K), "k_rot": c.randn(c.B, c.T, HKV, s.K)},
                  out_dtypes={"q_rot": SAME, "k_rot": SAME})


@dataclass(frozen=True)
class Spec:
    build: Callable[[Ctx], Family]
    ops: tuple[str, ...]
    layouts: tuple[str, ...] = ("fixed", "varlen")
    variants: tuple[str, ...] = ("plain",)
    plain_only: frozenset = frozenset()  # ops that take no state: first variant only


FAMILIES: dict[str, Spec] = {
    "simple_gla": Spec(family_simple_gla, ("chunk_simple_gla", "fused_recurrent_simple_gla", "parallel_simple_gla"),
                       variants=("plain", "h0"), plain_only=frozenset({"parallel_simple_gla"})),
    "gla": Spec(family_gla, ("chunk_gla", "fused_recurrent_gla"), variants=("plain", "h0")),
    "retention": Spec(family_retention, ("chunk_retention", "fused_recurrent_retention", "parallel_retention"),
                      variants=("plain", "h0"), plain_only=frozenset({"parallel_retention"})),
    "linear_attn": Spec(family_linear_attn, ("chunk_linear_attn", "fused_recurrent_linear_attn"),
                        variants=("plain", "h0")),
    "delta_rule": Spec(family_delta_rule, ("chunk_delta_rule", "fused_recurrent_delta_rule"),
                       variants=("plain", "h0")),
    "gated_delta_rule": Spec(family_gated_delta_rule, ("chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule"),
                             variants=("plain", "h0")),
    "attn": Spec(family_attn, ("parallel_attn",), variants=("plain", "gated")),
    "rms_norm": Spec(family_rms_norm, ("rms_norm",), layouts=("fixed",)),
    "rms_norm_gated": Spec(family_rms_norm_gated, ("rms_norm_gated",), layouts=("fixed",)),
    "l2_norm": Spec(family_l2_norm, ("l2_norm",), layouts=("fixed",)),
    "cross_entropy": Spec(family_cross_entropy, ("cross_entropy",), layouts=("fixed",)),
    "linear_cross_entropy": Spec(family_linear_cross_entropy, ("linear_cross_entropy",), layouts=("fixed",)),
    "short_conv": Spec(family_short_conv, ("short_conv",), variants=("plain", "cache")),
    "rotary": Spec(family_rotary, ("rotary",)),
}
ALL_OPS = [op for spec in FAMILIES.values() for op in spec.ops]
# the order cases run in, so that a time limit cuts the least important last: what bench_ops runs (fixed, plain) first,
# then varlen with a state (both new flags at once), then the other two
ORDER = [("fixed", 0), ("varlen", 1), ("varlen", 0), ("fixed", 1)]


@dataclass(frozen=True)
class Case:
    family: str
    op: str
    dtype: torch.dtype
    layout: str
    variant: str

    def label(self) -> str:
        return f"{str(self.dtype)[6:]:9s} {self.layout:6s} {self.variant:6s} {self.op}"


def cases(ops: list[str], dtypes: list[torch.dtype], layouts: list[str]) -> list[Case]:
    out = []
    for dtype in dtypes:
        for layout, index in ORDER:
            if layout not in layouts:
                continue
            for name, spec in FAMILIES.items():
                if layout not in spec.layouts or index >= len(spec.variants):
                    continue
                for op in spec.ops:
                    if op in ops and not (index > 0 and op in spec.plain_only):
                        out.append(Case(name, op, dtype, layout, spec.variants[index]))
    return out


# ---------------------------------------------------------------------------------------------------------------
# running and comparing
# ---------------------------------------------------------------------------------------------------------------

def build(family: str, layout: str, variant: str, s: Sizes, device: str, seed: int) -> Family:
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}|{family}|{layout}|{variant}".encode()))
    if layout == "fixed":
        B, T, N, cu = s.B, s.T, s.B, None
    else:
        B, T, N = 1, sum(s.lengths), len(s.lengths)
        cu = torch.tensor([0, *itertools.accumulate(s.lengths)], dtype=torch.int32, device=device)
    fam = FAMILIES[family].build(Ctx(s, layout, variant, device, gen, B, T, N, cu))
    fam.extra.setdefault("cu_seqlens", cu)
    # values exact in bf16, and so in float16 too (8 significant bits; only |x| < 6e-5 lands in float16's subnormals,
    # off by < 3e-8): one float32 reference serves both dtypes
    fam.inputs = {n: (x if n in fam.keep_fp32 else x.to(torch.bfloat16).float()).to(device)
                  for n, x in fam.inputs.items()}
    fam.cotangents = {n: x.to(device) for n, x in fam.cotangents.items()}
    return fam


def forward_backward(fn: Callable, fam: Family, dtype: torch.dtype, only: set[str] | None = None) -> dict:
    """Outputs of fn and the gradients of sum(out * cotangent) w.r.t. fam.grad_names, detached."""
    leaves = {n: x.detach().to(torch.float32 if n in fam.keep_fp32 else dtype).requires_grad_(n in fam.grad_names)
              for n, x in fam.inputs.items()}
    outs = {n: o for n, o in fn(leaves, fam.extra).items() if o is not None and (only is None or n in only)}
    terms = [(o.float() * fam.cotangents[n]).sum() for n, o in outs.items() if n in fam.cotangents and o.requires_grad]
    grads = torch.autograd.grad(sum(terms), [leaves[n] for n in fam.grad_names])
    result = {n: o.detach() for n, o in outs.items()}
    result.update({"d" + n: g for n, g in zip(fam.grad_names, grads)})
    return result


def compare(got: dict, want: dict, dtype: torch.dtype, out_dtypes: dict, bounds: tuple[float, float]) -> list[dict]:
    rows = []
    for name, a in got.items():
        bound = bounds[1] if name in GATE_GRADS else bounds[0]
        row = dict(tensor=name, bound=bound, rel_err=float("nan"), status="pass", note="")
        expected = out_dtypes.get(name)
        expected = dtype if expected == SAME else expected
        if name not in want or a.shape != want[name].shape:
            row.update(status="FAIL", note=f"shape {list(a.shape)} vs reference "
                                           f"{list(want[name].shape) if name in want else 'missing'}")
        elif not torch.isfinite(a).all():
            row.update(status="FAIL", note="non-finite values (an unwritten or overflowed element)")
        else:
            row["rel_err"] = rel_err(a, want[name])
            if expected is not None and a.dtype != expected:
                row.update(status="FAIL", note=f"dtype {a.dtype}, expected {expected}")
            elif not row["rel_err"] <= bound:
                row["status"] = "FAIL"
        rows.append(row)
    return rows


def cuda_alive() -> bool:
    """False once a kernel has broken the CUDA context (illegal address, ...): every later call would fail too."""
    try:
        torch.cuda.synchronize()
        return True
    except RuntimeError:
        return False


def run_case(case: Case, fam: Family, ref_cache: dict, device: str) -> list[dict]:
    bounds = BOUNDS[(device, case.dtype)]
    runs = []
    for _ in range(2 if device == "cuda" else 1):  # the interpreter has one config and no races: once is enough
        with poisoned_empty():
            runs.append(forward_backward(fam.ops[case.op], fam, case.dtype))
        if device == "cuda":
            torch.cuda.synchronize()  # so that an asynchronous kernel error is charged to this case
    names = frozenset(n for n in runs[0] if not n.startswith("d"))
    key = (case.family, case.layout, case.variant, names)
    if key not in ref_cache:  # one reference per input set and output set, shared by ops and dtypes
        ref_cache[key] = forward_backward(fam.reference, fam, torch.float32, only=set(names))
    want = ref_cache[key]
    rows = compare(runs[0], want, case.dtype, fam.out_dtypes, bounds)
    if len(runs) > 1:
        second = {r["tensor"]: r for r in compare(runs[1], want, case.dtype, fam.out_dtypes, bounds)}
        for row in rows:
            again = second[row["tensor"]]
            row["rerun"] = rel_err(runs[1][row["tensor"]], runs[0][row["tensor"]])
            if again["status"] != "pass" or not again["rel_err"] <= row["rel_err"]:  # keep the worse of the two
                row.update(rel_err=again["rel_err"], status=again["status"], note=again["note"] or row["note"])
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """One row per (op, dtype) from the CSV rows: cases by status, and the worst rel_err / bound."""
    out: dict[tuple, dict] = {}
    seen: dict[tuple, str] = {}
    for r in rows:
        line = out.setdefault((r["op"], r["dtype"]), dict(op=r["op"], dtype=r["dtype"], cases=0, passed=0, failed=0,
                                                          not_run=0, worst_over_bound=None, worst=""))
        case = (r["op"], r["dtype"], r["layout"], r["variant"])
        status = {"pass": "passed", "FAIL": "failed", "error": "failed", "not run": "not_run"}[r["status"]]
        if case not in seen:
            line["cases"] += 1
            line[status] += 1
            seen[case] = status
        elif status == "failed" and seen[case] == "passed":  # one failing tensor fails its case
            line["passed"] -= 1
            line["failed"] += 1
            seen[case] = status
        try:
            ratio = float(r["rel_err"]) / float(r["bound"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            continue
        if math.isfinite(ratio) and (line["worst_over_bound"] is None or ratio > line["worst_over_bound"]):
            line["worst_over_bound"], line["worst"] = ratio, f"{r['tensor']} {r['layout']} {r['variant']}"
    return list(out.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="+", default=ALL_OPS, choices=ALL_OPS, metavar="OP",
                        help=f"ops to check (default all: {', '.join(ALL_OPS)})")
    parser.add_argument("--dtypes", nargs="+", choices=["bfloat16", "float16", "float32"],
                        help="default: bfloat16 float16 on a GPU, float16 float32 on CPU")
    parser.add_argument("--layouts", nargs="+", default=["fixed", "varlen"], choices=["fixed", "varlen"])
    report.add_output_args(parser, NAME, "CPU, Triton interpreter, tiny sizes, float16 and float32 (the default "
                                         "without a GPU)")
    parser.add_argument("--seed", type=int, default=0, help="changes every case's inputs")
    parser.add_argument("--time-limit", type=float, default=None, metavar="S",
                        help="start no case after S seconds (the rest are written as `not run`)")
    args = parser.parse_args(argv)
    begin = time.time()
    csv_path, png_path = report.output_paths(args, NAME)

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if device == "cpu":
        # set before fla (and so triton.jit) is imported: the kernels run interpreted on CPU tensors
        os.environ["TRITON_INTERPRET"] = "1"
        torch.set_num_threads(min(2, torch.get_num_threads()))
    elif os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("TRITON_INTERPRET is set: unset it to check the compiled kernels on the GPU (or pass --tiny)")
    dtypes = [getattr(torch, d) for d in (args.dtypes or (["bfloat16", "float16"] if device == "cuda"
                                                          else ["float16", "float32"]))]
    if device == "cpu" and torch.bfloat16 in dtypes:
        print("warning: bf16 tl.dot is wrong in the Triton interpreter; a bf16 failure here says nothing about a GPU")
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 references in full float32
    torch.backends.cudnn.allow_tf32 = False
    importlib.import_module("fla")
    import triton

    s = GPU_SIZES if device == "cuda" else TINY_SIZES
    where = f"{torch.cuda.get_device_name()} (compiled, autotuned)" if device == "cuda" else "cpu (Triton interpreter)"
    print(f"{where}; torch {torch.__version__}, triton {triton.__version__}, "
          f"fla from {os.path.dirname(sys.modules['fla'].__file__)}")
    print(f"sizes: fixed B={s.B} T={s.T}, varlen lengths {list(s.lengths)}, H={s.H} K={s.K} V={s.V}, "
          f"hidden {s.hidden}, vocab {s.vocab}")
    print("bounds (values / gate gradients dg, dbeta): " + ", ".join(
        f"{str(d)[6:]} {BOUNDS[(device, d)][0]:.0e} / {BOUNDS[(device, d)][1]:.0e}" for d in dtypes))

    todo = cases(args.ops, dtypes, args.layouts)
    families: dict[tuple, Family] = {}
    ref_cache: dict = {}
    counts = dict.fromkeys(["pass", "FAIL", "error", "not run"], 0)
    worst: dict[tuple, tuple[float, str]] = {}  # (dtype, "values" | "gates") -> (error, case)
    stop_reason = None
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for case in todo:
            base = dict(op=case.op, dtype=str(case.dtype)[6:], layout=case.layout, variant=case.variant)
            if stop_reason is None and args.time_limit is not None and time.time() - begin > args.time_limit:
                stop_reason = f"time limit {args.time_limit:.0f} s"
            if stop_reason is not None:
                counts["not run"] += 1
                writer.writerow(dict(base, tensor="-", status="not run", note=stop_reason))
                continue
            start = time.time()
            try:
                key = (case.family, case.layout, case.variant)
                if key not in families:
                    families[key] = build(case.family, case.layout, case.variant, s, device, args.seed)
                rows = run_case(case, families[key], ref_cache, device)
            except Exception as e:  # an op that raises is a failed case; the others still run
                message = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
                counts["error"] += 1
                writer.writerow(dict(base, tensor="-", status="error", seconds=round(time.time() - start, 2),
                                     note=message))
                print(f"{case.label():58s} ERROR {message}", flush=True)
                if device == "cuda" and not cuda_alive():
                    stop_reason = f"CUDA context lost after {case.op}"
                continue
            seconds = time.time() - start
            status = "pass" if all(r["status"] == "pass" for r in rows) else "FAIL"
            counts[status] += 1
            for r in rows:
                writer.writerow(dict(base, **r, seconds=round(seconds, 2)))
                kind = "gates" if r["tensor"] in GATE_GRADS else "values"
                k = (str(case.dtype)[6:], kind)
                if math.isfinite(r["rel_err"]) and r["rel_err"] > worst.get(k, (-1.0, ""))[0]:
                    worst[k] = (r["rel_err"], f"{r['tensor']} of {case.op} {case.layout} {case.variant}")
            f.flush()
            cells = " ".join(f"{r['tensor']} {r['rel_err']:.1e}{'!' if r['status'] != 'pass' else ''}" for r in rows)
            notes = "; ".join(f"{r['tensor']}: {r['note']}" for r in rows if r["note"])
            print(f"{case.label():58s} {status:4s}  {cells}  ({seconds:.1f} s){'  ' + notes if notes else ''}",
                  flush=True)

    total = len(todo)
    print(f"\n{total} cases: {counts['pass']} pass, {counts['FAIL']} fail, {counts['error']} error, "
          f"{counts['not run']} not run{f' ({stop_reason})' if stop_reason else ''}; {time.time() - begin:.0f} s")
    for (d, kind), (err, where_) in sorted(worst.items()):
        print(f"  worst {d} {kind}: {err:.2e} ({where_})")
    summary = summarize(report.read_csv(csv_path))
    report.print_table(summary, title="per op and dtype: cases, and the worst error as a fraction of its bound")
    print(f"wrote {csv_path}")
    if summary:
        report.draw(summary, report.Plot(x="op", series=("dtype",), kind="bar", logy=True,
                                         title=f"{where}: worst error / bound (fails above 1)",
                                         panels=[("worst rel. error / bound", ["worst_over_bound"])],
                                         hline=(1.0, "bound")), png_path)
    verdict = "FAIL" if counts["FAIL"] or counts["error"] else ("INCOMPLETE" if counts["not run"] else "PASS")
    print(f"RESULT: {verdict}")
    return 1 if verdict == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())
