"""The benchmark scripts on CPU: one CLI (`--tiny`, `--out DIR`, `--csv` only as a deprecated alias), CSV + PNG
through benchmarks/report.py (and the CSV alone, with one line, without matplotlib), bench_ops' ops skipped with a
note when absent or failing, peer_ops without and with a (stand-in) peer; check_bf16 passes right ops and fails
wrong ones (interpreter, tiny sizes); gpu_session's plan and its RESULTS.md rows (from CSVs in each script's format:
the GPU columns, SDPA flash and the peer, exist only on a GPU)."""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))  # the scripts import report.py from their folder
import report  # noqa: E402


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
    assert check.main(["--tiny", "--ops", "l2_norm", "rotary", "--out", str(tmp_path)]) == 0
    out = tmp_path / "check_bf16.csv"
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
    out = tmp_path / "check.csv"  # the deprecated --csv FILE still works
    assert check.main(["--tiny", "--ops", "l2_norm", "--dtypes", "float16", "--csv", str(out)]) == 1
    row = next(r for r in read(out) if r["tensor"] == tensor)
    assert row["status"] == "FAIL" and note in row["note"]


def test_check_bf16_time_limit_writes_not_run(tmp_path):
    check = load("check_bf16")
    assert check.main(["--tiny", "--ops", "l2_norm", "rms_norm", "--time-limit", "0", "--out", str(tmp_path)]) == 0
    rows = read(tmp_path / "check_bf16.csv")
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
    path.parent.mkdir(parents=True, exist_ok=True)
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
    _write(tmp_path / session.STEP_CSV["check_bf16"], [
        dict(check, tensor="o", rel_err="3e-3", bound="1e-2", status="pass"),
        dict(check, tensor="dg", rel_err="9e-3", bound="2e-2", status="pass"),
        dict(check, op="parallel_attn", tensor="o", rel_err="5e-2", bound="1e-2", status="FAIL")])
    op = dict(B="64", H="16", K="128", V="128", dtype="bfloat16", device="cuda", fwd_tflops="1", fwdbwd_tflops="1")
    ours = [dict(op, op=name, T=str(T), B=str(65536 // T), fwd_ms="1.0", fwdbwd_ms=str(ms))
            for name, ms in (("chunk_gla", 3.0), ("parallel_attn", 4.0), ("sdpa", 5.0)) for T in (1024, 4096)]
    _write(tmp_path / session.STEP_CSV["ops_ours"], ours)
    _write(tmp_path / session.STEP_CSV["ops_peer"], [dict(r, fwdbwd_ms="4.0") for r in ours if r["op"] == "chunk_gla"])
    attn = [dict(D="128", T=str(T), B="1", method=m, fwd_ms="1", fwdbwd_ms=str(ms), fwd_tflops="", fwdbwd_tflops="")
            for T, a, g in ((1024, 1.0, 2.0), (2048, 2.0, 1.5), (4096, 4.0, 2.5))
            for m, ms in (("parallel_attn", a), ("sdpa_flash", a * 1.1), ("chunk_gla", g))]
    _write(tmp_path / session.STEP_CSV["attn"], attn)
    _write(tmp_path / session.STEP_CSV["modules"], [dict(module="linear_cross_entropy", device="cuda", path="triton",
                                           dtype="bfloat16", tokens="16384", hidden="2048", vocab="32000",
                                           ours_ms="2", ref_ms="3", speedup="1.5", ours_mb="300", ref_mb="1500",
                                           mem_ratio="0.2")])
    _write(tmp_path / session.STEP_CSV["train_gla"], [dict(model="gla_340M", nproc="1", batch_size="8", seq_len="4096",
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


# --- one CLI, one output helper --------------------------------------------------------------------------------------

SCRIPTS = ["bench_ops", "peer_ops", "bench_attn", "bench_modules", "bench_model", "bench_generation", "bench_data",
           "bench_train", "bench_host", "bench_cp", "check_bf16", "gpu_session"]


def test_every_script_takes_tiny_and_out_and_is_in_the_readme(capsys, monkeypatch):
    on_disk = {p.stem for p in BENCH.glob("*.py")} - {"report"}
    assert on_disk == set(SCRIPTS), "a new script: add it to SCRIPTS and to benchmarks/README.md"
    readme = (BENCH / "README.md").read_text()
    # what two scripts change at import (bench_host drops TRITON_INTERPRET, bench_data sets TOKENIZERS_PARALLELISM):
    # put back at once (a kernel decorated without TRITON_INTERPRET would not run interpreted), and after the test
    saved = {k: os.environ.get(k) for k in ("TRITON_INTERPRET", "TOKENIZERS_PARALLELISM")}
    for name in SCRIPTS:
        assert f"`{name}.py`" in readme, f"{name}.py is not listed in benchmarks/README.md"
        module = load(name)
        for key, value in saved.items():
            monkeypatch.setenv(key, value) if value is not None else monkeypatch.delenv(key, raising=False)
        with pytest.raises(SystemExit) as e:
            module.main(["--help"])
        assert e.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "--tiny" in text and "--out DIR" in text, f"{name}.py --help: {text[:300]}"
        if "--csv" in text:
            assert "--csv FILE deprecated" in text, f"{name}.py: --csv is only a deprecated alias"


@pytest.mark.parametrize("argv,expected,note", [
    (["--out", "{d}"], "{d}/x.csv", None),
    (["--out", "{d}/old.csv"], "{d}/old.csv", "--out FILE.csv is deprecated"),
    (["--csv", "{d}/older.csv"], "{d}/older.csv", "--csv is deprecated"),
])
def test_output_paths_and_deprecated_aliases(tmp_path, capsys, argv, expected, note):
    import argparse

    parser = argparse.ArgumentParser()
    report.add_output_args(parser, "x")
    args = parser.parse_args([a.format(d=tmp_path / "sub") for a in argv])
    csv_path, png_path = report.output_paths(args, "x")
    assert csv_path == Path(expected.format(d=tmp_path / "sub")) and png_path == csv_path.with_suffix(".png")
    assert csv_path.parent.is_dir()
    out = capsys.readouterr().out
    assert (note in out) if note else out == ""
    assert report.RESULTS == BENCH / "results"
    assert parser.parse_args([]).out == str(BENCH / "results")


ROWS = [dict(op=op, T=T, fwd_ms=float(T) * k, fwdbwd_ms=None if op == "b" and T == 128 else 3.0 * T * k, note="")
        for op, k in (("a", 1.0), ("b", 2.0)) for T in (64, 128)]


def test_report_plots_when_matplotlib_is_there(tmp_path):
    pytest.importorskip("matplotlib")
    for kind, split in (("line", None), ("bar", "T")):
        png = tmp_path / f"{kind}.png"
        spec = report.Plot(x="T" if kind == "line" else "op", panels=[("ms", ["fwd_ms", "fwdbwd_ms"])],
                           series=("op",) if kind == "line" else (), kind=kind, split=split, logx=kind == "line",
                           hline=(100.0, "goal"))
        assert report.draw(ROWS, spec, png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_matplotlib_writes_the_csv_and_says_so_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    paths = (tmp_path / "x.csv", tmp_path / "x.png")
    report.save(ROWS, paths, report.Plot(x="T", panels=[("ms", ["fwd_ms"])], series=("op",)))
    assert [r["fwdbwd_ms"] for r in read(paths[0])] == ["192.0", "384.0", "384.0", ""]
    assert not paths[1].exists()
    out = capsys.readouterr().out.splitlines()
    assert out.count(report.MISSING_MATPLOTLIB) == 1 and "pip install" in report.MISSING_MATPLOTLIB


def test_print_table_one_style(capsys):
    report.print_table([dict(op="chunk_gla", T=16384, ms=1.23456, tokens=123456.7, none=None)], title="t")
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["", "t"] and lines[2:] == ["| op        |      T |    ms |  tokens | none |",
                         "|-----------|-------:|------:|--------:|-----:|",
                         "| chunk_gla | 16,384 | 1.235 | 123,457 |    - |"]


# --- bench_ops and peer_ops --------------------------------------------------------------------------------------

NEW_OPS = ["chunk_kda", "fused_recurrent_kda", "chunk_dplr_delta_rule", "chunk_rwkv7", "chunk_gated_delta_product",
           "chunk_hgrn"]


def test_bench_ops_tiny_every_new_op_runs_or_says_why(tmp_path, capsys):
    ops = load("bench_ops")
    assert set(NEW_OPS) <= set(ops.OPS)
    rows = ops.main(["--tiny", "--ops", "chunk_simple_gla", *NEW_OPS, "sdpa", "--T", "64", "--tokens", "64",
                     "--reps", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    measured = {r["op"] for r in rows}
    for name in ["chunk_simple_gla", *NEW_OPS, "sdpa"]:
        assert name in measured or f"skip {name}: " in out, f"{name}: neither measured nor skipped with a note"
    assert {"chunk_simple_gla", "sdpa"} <= measured
    written = read(tmp_path / "bench_ops.csv")
    assert {r["op"] for r in written} == measured and all(float(r["fwd_ms"]) > 0 for r in written)
    assert (tmp_path / "bench_ops.png").exists() == (importlib.util.find_spec("matplotlib") is not None)
    assert "forward+backward: ms (TFLOP/s)" in out


def test_bench_ops_skips_an_op_that_fails_and_goes_on(tmp_path, capsys, monkeypatch):
    ops = load("bench_ops")

    def refuse(f, x):
        raise AssertionError("FakeFunction does not support float32. Please use bfloat16.")

    monkeypatch.setitem(ops.OPS, "chunk_simple_gla", ops.Op("fla.ops.simple_gla", "chunk_simple_gla", refuse))
    rows = ops.main(["--tiny", "--ops", "chunk_simple_gla", "sdpa", "--T", "32", "64", "--tokens", "64", "--reps",
                     "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    # said once, not once per length
    assert out.count("skip chunk_simple_gla: AssertionError: FakeFunction does not support float32") == 1
    assert [(r["op"], r["T"]) for r in rows] == [("sdpa", 32), ("sdpa", 64)]


FAKE_PEER = '''
import torch

def chunk_delta_rule(q, k, v, beta, **kwargs):
    assert q.dtype != torch.float32, "ChunkDeltaRuleFunction does not support float32. Please use bfloat16."
'''


def test_peer_ops_needs_a_peer_and_says_how(capsys):
    peer = load("peer_ops")
    with pytest.raises(SystemExit) as e:
        peer.main(["--tiny"])
    assert e.value.code == 2
    assert "--peer-path DIR" in capsys.readouterr().err


def test_peer_ops_tiny_runs_what_the_peer_can_and_says_what_it_cannot(tmp_path):
    root = tmp_path / "peer"
    (root / "fla" / "ops" / "delta_rule").mkdir(parents=True)
    (root / "fla" / "__init__.py").write_text("")
    (root / "fla" / "ops" / "__init__.py").write_text("")
    (root / "fla" / "ops" / "delta_rule" / "__init__.py").write_text(FAKE_PEER)
    out = subprocess.run([sys.executable, str(BENCH / "peer_ops.py"), "--peer-path", str(root), "--tiny", "--ops",
                          "chunk_delta_rule", "chunk_kda", "sdpa", "--T", "64", "--tokens", "64", "--out",
                          str(tmp_path / "res")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"peer fla: {root / 'fla' / '__init__.py'}" in out.stdout
    assert "skip chunk_delta_rule: AssertionError: ChunkDeltaRuleFunction does not support float32" in out.stdout
    assert "skip chunk_kda: not in this fla" in out.stdout
    rows = read(tmp_path / "res" / "peer_ops.csv")
    assert [r["op"] for r in rows] == ["sdpa"]


def test_peer_ops_compare_writes_ratios(tmp_path, capsys):
    peer = load("peer_ops")
    fields = dict(B="1", H="2", K="32", V="32", dtype="float32", device="cpu", fwd_tflops="", fwdbwd_tflops="", note="")
    _write(tmp_path / "ours.csv", [dict(fields, op="chunk_gla", T="64", fwd_ms="1", fwdbwd_ms="3"),
                                   dict(fields, op="fused_recurrent_kda", T="64", fwd_ms="2", fwdbwd_ms="")])
    _write(tmp_path / "theirs.csv", [dict(fields, op="chunk_gla", T="64", fwd_ms="2", fwdbwd_ms="4"),
                                     dict(fields, op="fused_recurrent_kda", T="64", fwd_ms="4", fwdbwd_ms="")])
    assert peer.main(["--compare", str(tmp_path / "ours.csv"), str(tmp_path / "theirs.csv"), "--out",
                      str(tmp_path)]) == 0
    rows = read(tmp_path / "peer_compare.csv")
    assert [(r["op"], r["fwd_ratio"], r["fwdbwd_ratio"]) for r in rows] == [
        ("chunk_gla", "0.5", "0.75"), ("fused_recurrent_kda", "0.5", "")]
    assert "chunk_gla" in capsys.readouterr().out


# --- the other scripts' --tiny -------------------------------------------------------------------------------------

def test_bench_data_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # restored after: the script sets it at import
    data = load("bench_data")
    rows = data.main(["--tiny", "--seconds", "0.05", "--out", str(tmp_path)])
    assert [r["case"] for r in rows] == ["bare tokenizer (encode_batch_fast)", "loader, random access",
                                         "loader, streaming"]
    assert all(r["tokens_per_s"] > 0 for r in rows) and len(read(tmp_path / "bench_data.csv")) == 3


# --- bench_cp: bytes per rank for every CP op; the speed mode's CPU run (gloo), its OOM rows, its torchrun merge ----

CP_OPS = ["simple_gla", "gla", "retention", "linear_attn", "hgrn", "delta_rule", "gated_delta_rule", "kda",
          "gated_delta_product", "dplr_delta_rule", "rwkv7", "short_conv", "token_shift", "parallel_attn"]


def test_bench_cp_tiny_bytes_of_every_cp_op_on_two_gloo_ranks(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH / "bench_cp.py"), "--tiny", "--worlds", "2", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    sent = {(r["op"], int(r["T"])): int(r["fwd_bytes_per_rank"]) for r in read(tmp_path / "bench_cp.csv")}
    assert sorted({op for op, _ in sent}) == sorted(CP_OPS)
    H, K, V, f32 = 2, 16, 16, 4
    for op in CP_OPS[:-1]:  # a fixed summary (or halo) whatever T
        assert sent[op, 64] == sent[op, 256], op
    assert sent["gla", 64] == H * K * (V + 1) * f32 and sent["hgrn", 64] == 2 * H * K * f32
    for op in ("delta_rule", "gated_delta_rule", "kda", "gated_delta_product", "dplr_delta_rule", "rwkv7"):
        assert sent[op, 64] == H * K * (V + K) * f32, op
    assert sent["short_conv", 64] == 3 * H * K * f32 and sent["token_shift", 64] == H * K * f32
    assert sent["parallel_attn", 256] > 3 * sent["parallel_attn", 64]  # K, V and the gate: O(T)

def test_bench_cp_speed_tiny_on_two_gloo_ranks(tmp_path):
    # the same code path as the GPU table (spawned ranks, cp_context, timed forward + backward), on 2 CPU ranks
    out = subprocess.run([sys.executable, str(BENCH / "bench_cp.py"), "--speed", "--tiny", "--worlds", "2",
                          "--lengths", "64", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = read(tmp_path / "bench_cp_speed.csv")
    assert [(r["model"], r["world"], r["T"], r["tokens_per_rank"], r["status"]) for r in rows] == [
        ("gated_deltanet", "2", "64", "32", "ok")]
    assert float(rows[0]["tokens_per_s"]) > 0 and float(rows[0]["step_ms"]) > 0
    assert rows[0]["peak_mem_gib"] == "" and rows[0]["note"] == "CPU wall time: not meaningful"
    table = (tmp_path / "bench_cp_speed.md").read_text()
    title, header = table.splitlines()[:2]
    assert "CPU wall times: not meaningful" in title
    assert [c.strip() for c in header.strip("| ").split("|")][:7] == [
        "model", "CP", "T", "tokens_per_rank", "status", "tokens/s", "peak GiB (max rank)"]


def test_bench_cp_speed_reports_oom_and_merges_torchrun_degrees(tmp_path, monkeypatch, capsys):
    cp = load("bench_cp")
    earlier = dict(model="gated_deltanet", world="2", T="64", tokens_per_rank="32", status="ok", step_ms="5.0",
                   tokens_per_s="12800.0", peak_mem_gib="1.5", peak_mem_gib_per_rank="1.50/1.40", device="gpu",
                   dtype="bfloat16", note="")
    _write(tmp_path / "bench_cp_speed.csv", [earlier, dict(earlier, world="1", tokens_per_rank="64")])
    step = cp._step_ms

    def short_of_memory(model, ids, ctx, n_targets, device):
        if ids.shape[1] >= 128:
            raise torch.OutOfMemoryError("CUDA out of memory (a test's)")
        return step(model, ids, ctx, n_targets, device)

    monkeypatch.setattr(cp, "_step_ms", short_of_memory)
    for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0").items():  # as torchrun --nproc_per_node 1
        monkeypatch.setenv(key, value)
    rows = cp.main(["--speed", "--tiny", "--lengths", "64,128,256", "--out", str(tmp_path)])
    assert [(r["T"], r["status"]) for r in rows] == [(64, "ok"), (128, "OOM"), (256, "not run")]
    assert rows[1]["note"] == "out of memory on rank 0" and rows[2]["note"] == "OOM or error at T = 128"
    saved = read(tmp_path / "bench_cp_speed.csv")  # CP 1's rows replaced, CP 2's kept
    assert [(r["world"], r["T"], r["status"], r["device"]) for r in saved] == [
        ("1", "64", "ok", "cpu"), ("1", "128", "OOM", "cpu"), ("1", "256", "not run", "cpu"),
        ("2", "64", "ok", "gpu")]
    table = (tmp_path / "bench_cp_speed.md").read_text()
    oom = next(line for line in table.splitlines() if "| OOM " in line)
    assert oom.count("OOM") >= 3  # status, tokens/s and peak memory all say it
    assert "12,800" in table
    # a point no rank reported (its group died): 'failed', never a missing row
    part = tmp_path / "part.jsonl"
    part.write_text('{"model": "m", "world": 2, "T": 64, "status": "ok"}\n')
    cfg = dict(model="m", lengths=[64, 128], device_name="cpu", dtype="float32")
    assert [r["status"] for r in cp._read_part(str(part), cfg, 2)] == ["ok", "failed"]


def test_bench_cp_speed_without_enough_gpus_says_so(tmp_path, monkeypatch):
    cp = load("bench_cp")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a one-GPU box asked for CP 2
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(cp, "_spawn_speed", lambda *a: pytest.fail("no group may start"))
    rows = cp.main(["--speed", "--worlds", "2", "--lengths", "8k", "--out", str(tmp_path)])
    assert [(r["world"], r["T"], r["status"], r["note"]) for r in rows] == [
        (2, 8192, "not run", "needs 2 GPUs, 1 visible")]
    assert "needs 2 GPUs, 1 visible" in (tmp_path / "bench_cp_speed.md").read_text()
