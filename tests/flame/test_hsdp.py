"""HSDP (`parallelism.data_parallel_replicate_degree`): 2 replicas of a 1-rank shard train the same losses as FSDP
over the same 2 ranks (real torchrun, gloo), and a bad degree is one clear error."""
import math
import shutil

import pytest

from tests.flame.test_train import COMMON, MODEL, launch, records


def test_hsdp_two_replicas_match_fsdp_over_two_ranks(tmp_path):
    model = str(tmp_path / "model.json")
    shutil.copy(MODEL, model)
    common = COMMON + ["--model.config", model, "--training.steps", "4"]
    losses = {}
    for name, extra in (("fsdp", []), ("hsdp", ["--parallelism.data_parallel_replicate_degree", "2"])):
        dump = str(tmp_path / name)
        run = launch(common + ["--job.dump_folder", dump] + extra, 2)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        losses[name] = {step: r["loss"] for step, r in records(dump).items()}
    assert sorted(losses["hsdp"]) == sorted(losses["fsdp"]) == [1, 2, 3, 4]
    for step, loss in losses["fsdp"].items():
        if math.isfinite(loss):  # step 3 is the injected NaN step in both
            assert abs(losses["hsdp"][step] - loss) <= 1e-5 * abs(loss), (step, losses)


def test_bad_replicate_degree_is_one_clear_error():
    from flame.config import ConfigError
    from flame.distributed import World, build_fsdp_mesh
    world = World(rank=0, world_size=4, local_rank=0, device=None, mesh=None)
    with pytest.raises(ConfigError, match="positive divisor"):
        build_fsdp_mesh(world, 3)
    with pytest.raises(ConfigError, match="must be 2"):
        build_fsdp_mesh(world, 2, 4)
    assert build_fsdp_mesh(world, 1) is None  # plain FSDP: the world's own mesh
