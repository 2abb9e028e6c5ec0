"""Context parallelism in flame (`parallelism.context_parallel_degree`), real torchrun with gloo: a run whose every
sample is split across 2 ranks (packed documents crossing the split; activation checkpointing on) trains the same
losses and validation as one process on the same data, and its checkpoint resumes in one process without CP (the
FSDP mesh is all ranks either way) with the losses of the run that never used CP; fixed-length rows
(`training.varlen = false`, slow) train the losses, token counts and validation of one process too; HSDP x CP
(slow) trains those of FSDP. Bad settings are clear errors."""
import json
import math
import os
import shutil

import pytest

from tests.flame.test_train import COMMON, ROOT, launch, launch_together, records

GLA = os.path.join(ROOT, "configs", "models", "gla_debug.json")


def _losses(dump: str) -> dict[int, float]:
    return {step: r["loss"] for step, r in records(dump).items()}


def _validation(dump: str) -> list[tuple[int, float, float]]:
    with open(os.path.join(dump, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [(r["step"], r["val_loss"], r["val_bits_per_byte"]) for r in rows if "val_loss" in r]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 2e-5 * abs(b) if math.isfinite(b) else not math.isfinite(a)


def test_cp2_trains_the_losses_of_one_process_and_resumes_without_cp(tmp_path):
    # packed documents (varlen), 4 steps of 2 microbatches with a NaN step; GLA: short convolutions, chunked op
    local = str(tmp_path / "gla.json")
    shutil.copy(GLA, local)
    # one row per microbatch: the split falls inside a row (a document crosses it), not at a row's end
    common = COMMON + ["--model.config", local, "--training.batch_size", "1", "--training.steps", "4",
                       "--validation.enable", "--validation.steps", "2"]
    dumps = {cp: str(tmp_path / f"cp{cp}") for cp in (1, 2)}
    # the CP run recomputes every block in the backward (activation checkpointing): its collectives run again there
    ac = {1: [], 2: ["--activation_checkpoint.mode", "full"]}
    runs = launch_together([(common + ["--job.dump_folder", dumps[cp], "--parallelism.context_parallel_degree",
                                       str(cp)] + ac[cp], cp) for cp in (1, 2)])
    for run in runs:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    want, got = _losses(dumps[1]), _losses(dumps[2])
    assert sorted(want) == sorted(got) == [1, 2, 3, 4]
    assert all(_close(got[s], want[s]) for s in want), (got, want)
    assert not math.isfinite(want[3])  # the injected NaN step
    # each rank of the CP run held half of every sample: the tokens of all ranks add up to the one process's
    assert [r["tokens"] for r in records(dumps[2]).values()] == [r["tokens"] for r in records(dumps[1]).values()]
    (vs, vl, vb), = _validation(dumps[2])
    (ws, wl, wb), = _validation(dumps[1])
    assert vs == ws == 4 and _close(vl, wl) and _close(vb, wb), (_validation(dumps[2]), _validation(dumps[1]))
    assert "[data]" in runs[1].stdout

    # the CP=2 run's step-2 checkpoint, resumed in one process without CP: steps 3-4 as in the run without CP
    resumed = str(tmp_path / "resumed")
    shutil.copytree(dumps[2], resumed)
    run = launch(common + ["--job.dump_folder", resumed, "--checkpoint.load_step", "2"], 1)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "saved on 2 ranks, now 1" in run.stdout, run.stdout[-3000:]
    got = _losses(resumed)
    assert sorted(got) == [1, 2, 3, 4] and all(_close(got[s], want[s]) for s in want), (got, want)


def test_bad_context_parallel_settings_are_clear_errors():
    from flame.config import ConfigError, load_config
    from flame.distributed import World, build_context_parallel, build_fsdp_mesh
    with pytest.raises(ConfigError, match="multiple of it"):
        load_config(["--training.seq_len", "63", "--parallelism.context_parallel_degree", "2"])
    with pytest.raises(ConfigError, match=">= 1"):
        load_config(["--parallelism.context_parallel_degree", "0"])
    world = World(rank=0, world_size=4, local_rank=0, device=None, mesh=None)
    with pytest.raises(ConfigError, match="positive divisor of the 3 ranks"):
        build_context_parallel(World(rank=0, world_size=3, local_rank=0, device=None, mesh=None), 2)
    with pytest.raises(ConfigError, match="ranks = replicate x shard x cp"):  # HSDP x CP must divide the ranks
        build_fsdp_mesh(world, 2, -1, 4)
    with pytest.raises(ConfigError, match="must be 1 .or -1."):  # shards count data-parallel ranks only
        build_fsdp_mesh(world, 2, 2, 2)
    assert build_fsdp_mesh(world, 1, 2, 2) is None  # FSDP over all ranks: the world's own mesh
    from flame.distributed import ContextParallel, check_model_for_cp
    from flame.models import build_model, load_model_config
    from fla.layers import GatedLinearAttention

    class NoCPAttention(GatedLinearAttention):  # every shipped layer has a CP path; a future one may not
        supports_cp = False

    gla = build_model(load_model_config(GLA))
    check_model_for_cp(gla, ContextParallel(degree=2))  # GLA has it
    gla.model.layers[0].attn.__class__ = NoCPAttention
    with pytest.raises(ConfigError, match=r"layers without context parallelism \(NoCPAttention\)"):
        check_model_for_cp(gla, ContextParallel(degree=2))
    rwkv7 = build_model(load_model_config(os.path.join(ROOT, "configs", "models", "rwkv7_debug.json")))
    check_model_for_cp(rwkv7, ContextParallel(degree=2))  # RWKV-7 has it too (token shift halo, DPLR state)


@pytest.mark.slow
def test_cp2_fixed_length_rows_train_the_losses_of_one_process(tmp_path):
    """`training.varlen = false`: rows [2, 64] without cu_seqlens, each split along T across 2 ranks (the context
    of fixed rows, the labels' shift across the split, the token counts and validation of a CP group), against one
    process on the same data. 2 steps of 2 microbatches, no checkpoint; its 4 processes (torchrun, 2 ranks, the
    reference) cost ~40 s of CPU on 2 cores, mostly imports: over the default run's budget, hence slow."""
    local = str(tmp_path / "gla.json")
    shutil.copy(GLA, local)
    common = COMMON + ["--model.config", local, "--training.varlen", "false", "--training.batch_size", "2",
                       "--training.steps", "2", "--validation.enable", "--validation.steps", "1",
                       "--checkpoint.enable", "false"]
    dumps = {cp: str(tmp_path / f"fixed_cp{cp}") for cp in (1, 2)}
    runs = launch_together([(common + ["--job.dump_folder", dumps[cp], "--parallelism.context_parallel_degree",
                                       str(cp)], cp) for cp in (1, 2)])
    for run in runs:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    want, got = _losses(dumps[1]), _losses(dumps[2])
    assert sorted(want) == sorted(got) == [1, 2] and all(_close(got[s], want[s]) for s in want), (got, want)
    assert [r["tokens"] for r in records(dumps[2]).values()] == [r["tokens"] for r in records(dumps[1]).values()]
    (vs, vl, vb), = _validation(dumps[2])
    (ws, wl, wb), = _validation(dumps[1])
    assert vs == ws == 2 and _close(vl, wl) and _close(vb, wb), (_validation(dumps[2]), _validation(dumps[1]))


@pytest.mark.slow
def test_hsdp_with_cp_trains_the_losses_of_fsdp(tmp_path):
    """2 replicas x (1 shard x 2 CP ranks) on 4 ranks against plain FSDP on 2 ranks without CP: the same 2 data-parallel
    ranks read the same data, so the losses and the validation agree. 6 processes: ~70 s on 2 cores (slow)."""
    local = str(tmp_path / "gla.json")
    shutil.copy(GLA, local)
    common = COMMON + ["--model.config", local, "--training.batch_size", "1", "--training.steps", "4",
                       "--validation.enable", "--validation.steps", "2"]
    fsdp, hsdp = str(tmp_path / "fsdp"), str(tmp_path / "hsdp_cp")
    runs = launch_together([(common + ["--job.dump_folder", fsdp], 2),
                            (common + ["--job.dump_folder", hsdp, "--parallelism.context_parallel_degree", "2",
                                       "--parallelism.data_parallel_replicate_degree", "2"], 4)])
    for run in runs:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    want, got = _losses(fsdp), _losses(hsdp)
    assert sorted(got) == sorted(want) == [1, 2, 3, 4] and all(_close(got[s], want[s]) for s in want), (got, want)
    (_, vl, vb), = _validation(hsdp)
    (_, wl, wb), = _validation(fsdp)
    assert _close(vl, wl) and _close(vb, wb)
