"""Our naive references compute what the peer library's (fla-core 0.6.0) compute for the same call: every public
naive function of our families at the peer's import path, called with the peer's positional order on the same
float32 inputs (head-first where the peer's is, per-sequence [H, K, V] initial states and explicit scales as the
peer's own tests pass them), here and in a separate process that imports the peer as `fla`.

    python tests/compat/check_naive_against_peer.py [--peer /tmp/peer]

prints one row per call (the largest relative error ||ours - peer|| / ||peer|| over its outputs) and exits 1 if one
is above 1e-5 or fails on one side only. `tests/compat/test_naive_against_peer.py` runs it when the peer is there.
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIM = os.path.join(ROOT, "benchmarks", "peer_shim")
TOLERANCE = 1e-5

# Run inside the peer's process: load the calls, make each, save what came back (or the error's type and text).
CHILD = r"""
import importlib, sys, warnings
import torch
warnings.filterwarnings("ignore")
calls = torch.load(sys.argv[1], weights_only=False)
results = []
for path, args, kwargs in calls:
    module, name = path.rsplit(".", 1)
    try:
        results.append(("ok", getattr(importlib.import_module(module), name)(*args, **kwargs)))
    except Exception as e:
        results.append(("error", f"{type(e).__name__}: {e}"))
torch.save(results, sys.argv[2])
"""


def calls() -> list[tuple[str, tuple, dict]]:
    """(peer import path, positional args, keyword args), fresh float32 inputs from one seed."""
    g = torch.Generator().manual_seed(19)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    B, T, H, K, V = 2, 37, 2, 16, 8
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    kn = F.normalize(k, dim=-1)
    gate = F.logsigmoid(r(B, T, H))
    gk = F.logsigmoid(r(B, T, H, K))
    beta = torch.rand(B, T, H, generator=g)
    h0 = r(B, H, K, V)
    hf = lambda x: x.transpose(1, 2).contiguous()  # noqa: E731 - [B, T, H, D] -> the peer's head-first [B, H, T, D]
    out = []
    # attn: GQA (HQ = 4 on H = 2), a gate, a window, a sink, not causal
    qa = r(B, T, 4, K)
    sink = r(4)
    ga = F.logsigmoid(r(B, T, 4))
    out += [
        ("fla.ops.attn.naive.naive_parallel_attn", (qa, k, v), {}),
        ("fla.ops.attn.naive.naive_parallel_attn", (qa, k, v, 0.3, 9), dict(g=ga, sink_bias=sink)),
        ("fla.ops.attn.naive.naive_parallel_attn", (qa, k, v, None, None, False), {}),
    ]
    cu = torch.tensor([0, 1, 15, 15, 40], dtype=torch.int64)  # a length-1 and an empty sequence
    qd, kd, vd, gd = r(1, 4, 4, K), r(1, 40, H, K), r(1, 40, H, V), F.logsigmoid(r(1, 40, 4))
    out += [
        ("fla.ops.attn.naive.naive_attn_decoding", (qd, kd, vd), dict(cu_seqlens=cu)),
        ("fla.ops.attn.naive.naive_attn_decoding", (qd, kd, vd, gd, 0.5, cu, True), dict(window_size=7,
                                                                                         sink_bias=sink)),
        ("fla.ops.attn.naive.naive_attn_decoding", (qd, kd, vd, None, None, cu), dict(window_size=0)),
    ]
    # delta rule (head-first): recurrence with a state and a per-channel beta; the chunk and parallel forms
    T2 = 64
    q2, k2, v2, b2 = hf(r(B, T2, H, K)), hf(F.normalize(r(B, T2, H, K), dim=-1)), hf(r(B, T2, H, V)), \
        torch.rand(B, H, T2, generator=g)
    out += [
        ("fla.ops.delta_rule.naive.delta_rule_recurrence", (hf(q), hf(kn), hf(v), hf(beta), h0), {}),
        ("fla.ops.delta_rule.naive.delta_rule_recurrence", (hf(q), hf(kn), hf(v), torch.rand(B, H, T, V, generator=g)),
         dict(output_final_state=False)),
        ("fla.ops.delta_rule.naive.delta_rule_chunkwise", (q2, k2, v2, b2), {}),
        ("fla.ops.delta_rule.naive.delta_rule_chunkwise", (q2, k2, v2, b2, 16), {}),
        ("fla.ops.delta_rule.naive.delta_rule_parallel", (q2, k2, v2, b2, 32, 16), {}),
        ("fla.ops.delta_rule.naive.delta_rule_parallel", (q2, k2, v2, b2, 64, 32), {}),
    ]
    # gated delta rule: both references, beta-first and g-first orders, a state and a scale
    out += [
        ("fla.ops.gated_delta_rule.naive.naive_recurrent_gated_delta_rule", (q, kn, v, beta, gate, 0.4, h0, True), {}),
        ("fla.ops.gated_delta_rule.naive.naive_recurrent_gated_delta_rule", (q, kn, v, beta, gate), {}),
        ("fla.ops.gated_delta_rule.naive.naive_recurrent_gated_delta_rule",  # one [H, K, V] state, the peer's varlen
         (q[:1, 3:20], kn[:1, 3:20], v[:1, 3:20], beta[:1, 3:20], gate[:1, 3:20], None, h0[1], True), {}),
        ("fla.ops.gated_delta_rule.naive.naive_chunk_gated_delta_rule",
         (q[:1, 3:20], kn[:1, 3:20], v[:1, 3:20], gate[:1, 3:20], beta[:1, 3:20], 16, None, h0[1], True), {}),
        ("fla.ops.gated_delta_rule.naive.naive_chunk_gated_delta_rule", (q, kn, v, gate, beta, 16, 0.4, h0, True), {}),
        ("fla.ops.gated_delta_rule.naive.naive_chunk_gated_delta_rule", (q, kn, v, gate, beta), {}),
        ("fla.ops.gated_delta_rule.gate.naive_gdn_gate", (r(B, T, H), r(H), r(H)), {}),
        ("fla.ops.gated_delta_rule.gate.naive_gdn_gate", (r(B, T, H), r(H)), dict(output_dtype=torch.float16)),
    ]
    # kda: a decay per key channel, grouped values (HV = 2 H), a state and a scale; the chunk form on whole chunks
    HV = 2 * H
    gv, vv, bv, h0v = F.logsigmoid(r(B, T, HV, K)), r(B, T, HV, V), torch.rand(B, T, HV, generator=g), r(B, HV, K, V)
    q4, k4, v4, g4, b4 = r(B, 64, H, K), F.normalize(r(B, 64, H, K), dim=-1), r(B, 64, HV, V), \
        F.logsigmoid(r(B, 64, HV, K)), torch.rand(B, 64, HV, generator=g)
    out += [
        ("fla.ops.kda.naive.naive_recurrent_kda", (q, kn, vv, gv, bv, 0.4, h0v, True), {}),
        ("fla.ops.kda.naive.naive_recurrent_kda", (q, kn, v, gk, beta), {}),
        ("fla.ops.kda.naive.naive_chunk_kda", (q4, k4, v4, g4, b4, 0.4, h0v, True, 16), {}),
        ("fla.ops.kda.naive.naive_chunk_kda", (q4, k4, v4, g4, b4), {}),
        ("fla.ops.kda.gate.naive_kda_gate", (r(B, T, H, K), r(H), r(H * K)), {}),
        ("fla.ops.kda.gate.naive_kda_gate", (r(B, T, H, K), r(H)), dict(output_dtype=torch.float16)),
    ]
    # gla, simple gla: a batched state, and a per-sequence [H, K, V] state as the peer's varlen tests pass it
    out += [
        ("fla.ops.gla.naive.naive_recurrent_gla", (q, k, v, gk, h0, True), {}),
        ("fla.ops.gla.naive.naive_recurrent_gla", (q[:1, :20], k[:1, :20], v[:1, :20], gk[:1, :20], h0[1]), {}),
        ("fla.ops.gla.naive.ceildiv", (37, 16), {}),
        ("fla.ops.simple_gla.naive.naive_recurrent_simple_gla", (q, k, v, gate, 0.3, h0), {}),
        ("fla.ops.simple_gla.naive.naive_recurrent_simple_gla", (q[:1, 5:30], k[:1, 5:30], v[:1, 5:30],
                                                                 gate[:1, 5:30], 0.3, h0[0], False), {}),
        ("fla.ops.simple_gla.naive.naive_chunk_simple_gla", (q, k, v, gate, h0, True, 16, 0.3), {}),
        ("fla.ops.simple_gla.naive.naive_chunk_simple_gla", (q, k, v, gate), {}),
        ("fla.ops.simple_gla.naive.naive_parallel_simple_gla", (q, k, v, gate), {}),
        ("fla.ops.simple_gla.naive.naive_parallel_simple_gla", (q, k, v, gate, 0.3), {}),
    ]
    # linear attention (the chunk form takes T a multiple of its 64) and retention (head-first)
    qp, kp = q.sigmoid(), k.sigmoid()
    q6, k6, v6 = r(B, 64, H, K).sigmoid(), r(B, 64, H, K).sigmoid(), r(B, 64, H, V)
    out += [
        ("fla.ops.linear_attn.naive.naive_recurrent_linear_attn", (qp, kp, v, 0.5, h0, True), {}),
        ("fla.ops.linear_attn.naive.naive_recurrent_linear_attn", (qp, kp, v), dict(normalize=True)),
        ("fla.ops.linear_attn.naive.naive_recurrent_linear_attn", (qp[:1], kp[:1], v[:1], None, h0[0], True), {}),
        ("fla.ops.linear_attn.naive.naive_recurrent_linear_attn",  # the peer's (S, z) state with normalize: outputs
         (qp, kp, v, None, (h0, r(B, 1, H, K).abs())), dict(normalize=True)),
        ("fla.ops.linear_attn.naive.naive_chunk_linear_attn", (q6, k6, v6), {}),
        ("fla.ops.linear_attn.naive.naive_chunk_linear_attn", (q6, k6, v6, 0.5, True), {}),
        ("fla.ops.retention.naive.naive_retention", (hf(q), hf(k), hf(v)), {}),
    ]
    # gated deltaproduct: n Householder rows per token in k, v, beta (the peer's layout); hgrn (x, g: [B, T, D])
    n, cu1 = 3, torch.tensor([0, 1, 15, 15, 37], dtype=torch.int64)
    kh, vh, bh = F.normalize(r(B, T * n, H, K), dim=-1), r(B, T * n, H, V), torch.rand(B, T * n, H, generator=g)
    xh, gh, hh = r(B, T, 24), F.logsigmoid(r(B, T, 24)), r(B, 24)
    out += [
        ("fla.ops.gated_delta_product.naive.naive_recurrent_gated_delta_product",
         (q, kh, vh, gate, bh, 0.4, None, h0, True, n), {}),
        ("fla.ops.gated_delta_product.naive.naive_recurrent_gated_delta_product",
         (q[:1], kh[:1], vh[:1], None, bh[:1], 0.3), dict(cu_seqlens=cu1, initial_state=r(4, H, K, V),
                                                            num_householder=n)),
        ("fla.ops.hgrn.naive.naive_recurrent_hgrn", (xh, gh, hh, True), {}),
        ("fla.ops.hgrn.naive.naive_recurrent_hgrn", (xh, gh), {}),
        ("fla.ops.hgrn.naive.naive_chunk_hgrn", (r(B, 64, 24), F.logsigmoid(r(B, 64, 24)), hh, True), {}),
    ]
    # dplr (head-first, the peer's layout), with RWKV-7's low-rank terms: a batched state; the chunkwise form on
    # whole chunks, with and without a state
    kk = F.normalize(r(B, T, H, K), dim=-1)
    a7, b7 = hf(-kk), hf(kk * torch.rand(B, T, H, K, generator=g))
    k8 = F.normalize(r(B, 64, H, K), dim=-1)
    q8, v8, a8, b8, g8 = hf(r(B, 64, H, K)), hf(r(B, 64, H, V)), hf(-k8), hf(k8 * 0.7), hf(F.logsigmoid(r(B, 64, H, K)))
    out += [
        ("fla.ops.generalized_delta_rule.dplr.naive.dplr_recurrence", (hf(q), hf(kn), hf(v), a7, b7, hf(gk), h0), {}),
        ("fla.ops.generalized_delta_rule.dplr.naive.dplr_recurrence", (hf(q), hf(kn), hf(v), a7, b7, hf(gk)),
         dict(output_final_state=False)),
        ("fla.ops.generalized_delta_rule.dplr.naive.dplr_chunkwise", (q8, q8, v8, a8, b8, g8, h0), {}),
        ("fla.ops.generalized_delta_rule.dplr.naive.dplr_chunkwise", (q8, q8, v8, a8, b8, g8, None, True, 16), {}),
    ]
    # the modules' plain PyTorch functions (added later): the long convolution with a filter of T + 1 taps (longer
    # ones differ on purpose: the peer's wrap around onto future inputs) and the BitLinear quantizers
    u, mask = r(B, 5, T), (torch.rand(B, 5, generator=g) > 0.3).float()
    out += [
        ("fla.modules.long_conv.fft_conv", (u, r(5, T + 1), mask, True, r(5, 20)), {}),
        ("fla.modules.long_conv.fft_conv", (u, r(1, 5, 9), None), dict(gelu=False)),
        ("fla.modules.fused_bitlinear.activation_quant", (3 * r(B, T, 24),), {}),
        ("fla.modules.fused_bitlinear.weight_quant", (r(24, 40),), {}),
    ]
    return out


def run_ours(todo):
    results = []
    for path, args, kwargs in todo:
        module, name = path.rsplit(".", 1)
        try:
            results.append(("ok", getattr(importlib.import_module(module), name)(*args, **kwargs)))
        except Exception as e:  # noqa: BLE001 - reported next to the peer's outcome
            results.append(("error", f"{type(e).__name__}: {e}"))
    return results


def run_peer(todo, peer: str):
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "calls.pt"), os.path.join(tmp, "results.pt")
        torch.save(todo, src)
        env = dict(os.environ, PYTHONPATH=f"{peer}{os.pathsep}{SHIM}", TRITON_INTERPRET="0")
        subprocess.run([sys.executable, "-c", CHILD, src, dst], env=env, cwd=tmp, check=True)
        return torch.load(dst, weights_only=False)


def flat(x) -> list:
    if isinstance(x, (tuple, list)):
        return [y for item in x for y in flat(item)]
    return [x]


def compare(mine, theirs) -> tuple[float | None, str]:
    """(largest relative error, what differs) of one call's outcomes; None when they cannot be compared."""
    if mine[0] != "ok" or theirs[0] != "ok":
        if mine[0] == theirs[0] == "error":
            return 0.0, f"both refuse (peer: {theirs[1][:60]})"
        return None, f"ours: {str(mine[1])[:80]} | peer: {str(theirs[1])[:80]}"
    a, b = flat(mine[1]), flat(theirs[1])
    if len(a) != len(b) or [x is None for x in a] != [y is None for y in b]:
        return None, f"outputs differ in number or in None: {len(a)} vs {len(b)}"
    worst = 0.0
    for x, y in zip(a, b):
        if x is None:
            continue
        if not isinstance(x, torch.Tensor):
            worst = max(worst, 0.0 if x == y else float("inf"))
            continue
        if x.shape != y.shape or x.dtype != y.dtype:
            return None, f"shape/dtype {list(x.shape)} {x.dtype} vs {list(y.shape)} {y.dtype}"
        x, y = x.double(), y.double()
        worst = max(worst, float((x - y).norm() / y.norm().clamp_min(1e-30)))
    return worst, ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", default=os.environ.get("FLA_PEER_PATH", "/tmp/peer"),
                        help="folder holding the peer's package `fla` (pip install --target)")
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    todo = calls()
    mine, theirs = run_ours(todo), run_peer(todo, args.peer)
    failures = 0
    for (path, _, kwargs), m, t in zip(todo, mine, theirs):
        err, note = compare(m, t)
        bad = err is None or err > TOLERANCE
        failures += bad
        shown = "-" if err is None else f"{err:.1e}"
        print(f"{'FAIL' if bad else 'ok  '} {shown:>8}  {path.split('.ops.')[-1]}{' ' + note if note else ''}")
    print(f"{len(todo) - failures} of {len(todo)} calls agree with the peer (relative error <= {TOLERANCE})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
