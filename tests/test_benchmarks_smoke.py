"""benchmarks/check_bf16.py and benchmarks/gpu_session.py on CPU: the checker passes right ops and fails wrong ones
(interpreter, tiny sizes), the session's plan and its RESULTS.md rows (from CSVs in each script's format: the GPU
columns, SDPA flash and the peer, exist only on a GPU)."""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_check_bf16_passes_the_ops(tmp_path):
    check = load("check_bf16")
    out = tmp_path / "check.csv"
    assert check.main(["--tiny", "--ops", "l2_norm", "rotary", "--csv", str(out)]) == 0
    rows = read(out)
    # rotary: fixed and varlen; l2_norm fixed only; float16 and float32
    assert {(r["op"], r["layout"], r["dtype"]) for r in rows} == {
        (op, layout, d) for d in ("float16", "float32") for op, layout in
        (("l2_norm", "fixed"), ("rotary", "fixed"), ("rotary", "varlen"))}
    assert {r["tensor"] for r in rows if r["op"] == "rotary"} == {"q_rot", "k_rot", "dq", "dk"}
    assert all(r["status"] == "pass" and float(r["rel_err"]) <= float(r["bound"]) for r in rows)


def _broken(check, how: str):
    """The l2_norm family with its op made wrong in one way."""
    spec = check.FAMILIES["l2_norm"]

    def build(c):
        fam = spec.build(c)
        right = fam.ops["l2_norm"]
        if how == "scaled":
            fam.ops["l2_norm"] = lambda x, e: {"y": right(x, e)["y"] * 1.05}
        elif how == "unwritten":  # one element never written: the poisoned allocation shows it
            def op(x, e):
                y = right(x, e)["y"]
                out = torch.empty_like(y)
                out.view(-1)[1:] = y.view(-1)[1:]
                return {"y": out}
            fam.ops["l2_norm"] = op
        else:
            fam.ops["l2_norm"] = lambda x, e: {"y": right(x, e)["y"].float()}
        return fam
    return dataclasses.replace(spec, build=build)


@pytest.mark.parametrize("how,tensor,note", [("scaled", "y", ""), ("unwritten", "y", "non-finite"),
                                             ("float32 output", "y", "dtype")])
def test_check_bf16_fails_a_wrong_op(tmp_path, monkeypatch, how, tensor, note):
    check = load("check_bf16")
    monkeypatch.setitem(check.FAMILIES, "l2_norm", _broken(check, how))
    out = tmp_path / "check.csv"
    assert check.main(["--tiny", "--ops", "l2_norm", "--dtypes", "float16", "--csv", str(out)]) == 1
    row = next(r for r in read(out) if r["tensor"] == tensor)
    assert row["status"] == "FAIL" and note in row["note"]


def test_check_bf16_time_limit_writes_not_run(tmp_path):
    check = load("check_bf16")
    out = tmp_path / "check.csv"
    assert check.main(["--tiny", "--ops", "l2_norm", "rms_norm", "--time-limit", "0", "--csv", str(out)]) == 0
    rows = read(out)
    assert len(rows) == 4 and all(r["status"] == "not run" for r in rows)


def test_gpu_session_dry_run_plans_every_step_within_the_budget(tmp_path):
    peer = tmp_path / "peer"
    (peer / "fla").mkdir(parents=True)
    (peer / "fla" / "__init__.py").touch()
    cmd = [sys.executable, str(BENCH / "gpu_session.py"), "--dry-run", "--budget", "480"]
    with_peer = subprocess.run(cmd + ["--peer-path", str(peer)], capture_output=True, text=True, timeout=60)
    assert with_peer.returncode == 0, with_peer.stderr
    session = load("gpu_session")
    for name in session.PLAN:
        assert f"  {name} " in with_peer.stdout
    assert f"--peer-path {peer}" in with_peer.stdout and "skip: no --peer-path" not in with_peer.stdout
    every = session.deadlines([Namespace(name=n, skip=None) for n in session.PLAN], 480)
    assert every["host"] == pytest.approx(480 - session.RESERVE_S)
    assert every["check_bf16"] == pytest.approx(session.PLAN["env"] + session.PLAN["check_bf16"])
    alone = session.deadlines([Namespace(name=n, skip=None if n in ("env", "check_bf16") else "x")
                               for n in session.PLAN], 480)
    # a step run alone (with env) gets the whole budget
    assert alone["check_bf16"] == alone["host"] == pytest.approx(480 - session.RESERVE_S)
    without = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert "ops_peer           skip: no --peer-path" in without.stdout
    bad = subprocess.run(cmd + ["--peer-path", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "holds no fla/__init__.py" in bad.stderr


def _write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_gpu_session_rows_from_gpu_shaped_csvs(tmp_path):
    session = load("gpu_session")
    args = Namespace(tiny=False, peer_path=Path("/tmp/peer"), steps=None, budget=480.0)
    steps = session.build_steps(args, tmp_path)
    for s in steps:
        s.status = "ok"
    by = {s.name: s for s in steps}
    by["train_transformer"].status = "timed out after 60 s"
    by["host"].status, by["host"].skip = "skipped", "benchmarks/bench_host.py not present"
    check = dict(op="chunk_gla", dtype="bfloat16", layout="fixed", variant="plain", rerun="0", seconds="1", note="")
    _write(tmp_path / "check_bf16.csv", [
        dict(check, tensor="o", rel_err="3e-3", bound="1e-2", status="pass"),
        dict(check, tensor="dg", rel_err="9e-3", bound="2e-2", status="pass"),
        dict(check, op="parallel_attn", tensor="o", rel_err="5e-2", bound="1e-2", status="FAIL")])
    op = dict(B="64", H="16", K="128", V="128", dtype="bfloat16", device="cuda", fwd_tflops="1", fwdbwd_tflops="1")
    ours = [dict(op, op=name, T=str(T), B=str(65536 // T), fwd_ms="1.0", fwdbwd_ms=str(ms))
            for name, ms in (("chunk_gla", 3.0), ("parallel_attn", 4.0), ("sdpa", 5.0)) for T in (1024, 4096)]
    _write(tmp_path / "ops_ours.csv", ours)
    _write(tmp_path / "ops_peer.csv", [dict(r, fwdbwd_ms="4.0") for r in ours if r["op"] == "chunk_gla"])
    attn = [dict(D="128", T=str(T), B="1", method=m, fwd_ms="1", fwdbwd_ms=str(ms), fwd_tflops="", fwdbwd_tflops="")
            for T, a, g in ((1024, 1.0, 2.0), (2048, 2.0, 1.5), (4096, 4.0, 2.5))
            for m, ms in (("parallel_attn", a), ("sdpa_flash", a * 1.1), ("chunk_gla", g))]
    _write(tmp_path / "attn.csv", attn)
    _write(tmp_path / "modules.csv", [dict(module="linear_cross_entropy", device="cuda", path="triton",
                                           dtype="bfloat16", tokens="16384", hidden="2048", vocab="32000",
                                           ours_ms="2", ref_ms="3", speedup="1.5", ours_mb="300", ref_mb="1500",
                                           mem_ratio="0.2")])
    _write(tmp_path / "train_gla.csv", [dict(model="gla_340M", nproc="1", batch_size="8", seq_len="4096",
                                             compile="True", steps="20", tokens_per_s_per_device="110000.0",
                                             mfu_percent="40.1", peak_memory_gib="30.2", final_loss="6.1",
                                             wall_s="80.0")])
    info = dict(device="NVIDIA H200", torch="2.11.0", triton="3.6.0", peer="0.6.0")
    block = session.results_block(steps, tmp_path, info, args, 400.0)
    lines = block.splitlines()
    assert lines[0].startswith("## GPU session: NVIDIA H200, ") and "fla-core 0.6.0" in lines[2]
    row = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ")}
    assert "1 of 2 cases pass, 1 fail, 0 error, 0 not run" in block and "failing: parallel_attn bfloat16" in block
    assert "worst bfloat16: values 5.0e-02" in block and "gate grads 9.0e-03 (dg chunk_gla" in block
    gla = next(v for k, v in row.items() if k.startswith("chunk_gla fwd+bwd, ours / fla-core"))
    assert "1k 3.00 / 4.00 ms = 0.75x" in gla and "meets the goal, <= 0.8x at every length; worst 0.75x" in gla
    assert "4k 4.00 / 5.00 ms = 0.80x" in next(v for k, v in row.items() if k.startswith("parallel_attn vs PyTorch"))
    assert "0.91x" in block and "meets the goal, <= 1 at every length" in block
    assert "chunk_gla from T >= 2048 (meets the <= 2k goal)" in block
    assert "300 MB vs 1500 MB = 0.200x (meets" in block
    assert "110,000 tokens/s per device" in block and "meets the >= 104k goal" in block
    assert "unmeasured: timed out after 60 s" in row["flame.train tokens/s, transformer_340M (bench_train.py)"]
    assert "unmeasured: benchmarks/bench_host.py not present" in block
