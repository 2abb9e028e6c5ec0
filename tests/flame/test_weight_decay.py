"""Weight decay groups (flame.param_groups): the rule on real models, a step that shows which weights decay, and a
checkpoint saved with one decayed group (flame's layout before optimizer.weight_decay_exclude) resumed into the
two groups: moments carried over exactly, the configured weight decay applied, the losses continuing."""
import os
import shutil

import pytest
import torch

from tests.flame.test_train import ROOT, records

GDN = os.path.join(ROOT, "configs", "models", "gated_deltanet_debug.json")
MAMBA2 = os.path.join(ROOT, "configs", "models", "mamba2_debug.json")


def build(path, args=()):
    from flame.config import load_config
    from flame.models import build_model, load_model_config, materialize
    from flame.schedule import build_optimizers
    config = load_config(["--optimizer.lr", "1e-2", "--optimizer.weight_decay", "0.5",
                          "--lr_scheduler.warmup_steps", "0", *args])
    model = materialize(build_model(load_model_config(path)), torch.device("cpu"), 0)
    optimizers, schedulers = build_optimizers(model, config, torch.device("cpu"))
    return model, optimizers, schedulers


def decay_of(optimizers) -> dict[str, float]:
    return {name: group["weight_decay"] for optim in optimizers for group in optim.param_groups
            for name in group["param_names"]}


@pytest.mark.parametrize("path, marked", [(GDN, {"A_log", "dt_bias"}), (MAMBA2, {"A_log", "dt_bias", "D"})],
                         ids=["gated_deltanet", "mamba2"])
def test_the_rule_on_real_models(path, marked):
    from flame.models import apply_activation_checkpointing
    from flame.param_groups import weight_decay_groups
    model, optimizers, _ = build(path)
    decay = decay_of(optimizers)
    assert len(decay) == len(list(model.parameters()))  # every trainable parameter in exactly one group
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        want = 0.0 if leaf in marked or sum(n > 1 for n in param.shape) < 2 else 0.5
        assert decay[name] == want, (name, tuple(param.shape), decay[name])
    assert {n.rsplit(".", 1)[-1] for n, wd in decay.items() if wd == 0 and n.endswith(tuple(marked))} == marked
    assert decay["model.embeddings.weight"] == 0.5 and decay["lm_head.weight"] == 0.5
    assert decay["model.norm.weight"] == 0.0

    _, optimizers, _ = build(path, ["--optimizer.weight_decay_exclude", "marked,embedding"])
    decay = decay_of(optimizers)
    assert decay["model.embeddings.weight"] == 0.0 and decay["model.norm.weight"] == 0.5
    assert all(wd == 0.0 for n, wd in decay.items() if n.endswith(tuple(marked)))
    _, optimizers, _ = build(path, ["--optimizer.weight_decay_exclude", ""])  # the layout before the option
    assert [len(g["params"]) for g in optimizers.optimizers[0].param_groups] == [len(decay)]
    assert set(decay_of(optimizers).values()) == {0.5}

    # wrapped blocks (activation checkpointing renames the parameters): the marks are still found
    apply_activation_checkpointing(model, "full")
    groups = weight_decay_groups(model, ["marked"])
    assert groups.excluded["marked"] and all("_checkpoint_wrapped_module" in n and n.endswith(tuple(marked))
                                             for n in groups.excluded["marked"])


def test_per_channel_gains_stored_with_unit_dims_count_as_1d():
    """RWKV-7 keeps its token-shift mixes as [1, 1, D]: per-channel gains, undecayed as in RWKV's own trainer."""
    from fla.layers import RWKV7Attention
    from flame.param_groups import weight_decay_groups
    groups = weight_decay_groups(RWKV7Attention(hidden_size=32, head_dim=16, layer_idx=0), ["1d"])
    undecayed = {n for n in groups.excluded["1d"]}
    assert {"x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "k_k", "k_a"} <= undecayed
    assert "r_proj.weight" in groups.decay and "r_k" in groups.decay  # a [H, head_dim] matrix stays decayed


def test_a_step_decays_the_matrices_and_leaves_a_log_dt_bias_and_norms_alone():
    """Zero gradients on fresh Adam moments: the Adam update is exactly 0, so what changes is the decay alone,
    p <- p * (1 - lr * weight_decay) on the decayed group and nothing on the excluded one."""
    model, optimizers, _ = build(GDN)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizers.step()
    shrink = 1 - 1e-2 * 0.5
    excluded = 0
    for name, param in model.named_parameters():
        if name.endswith(("A_log", "dt_bias")) or param.ndim < 2:
            assert torch.equal(param, before[name]), name
            excluded += 1
        else:
            torch.testing.assert_close(param, before[name] * shrink, rtol=1e-6, atol=0)
            assert not torch.equal(param, before[name]), name
    assert excluded == 11  # 2 layers x (A_log, dt_bias, o_norm, attn_norm, mlp_norm) + the final norm


def test_a_checkpoint_of_one_decayed_group_resumes_into_the_two_groups(tmp_path, capsys):
    from fla.ops.utils.dispatch import use_backend
    from flame.train import main
    common = ["--model.config", GDN, "--training.steps", "3", "--training.seq_len", "32", "--training.batch_size",
              "1", "--checkpoint.interval", "2", "--metrics.log_freq", "1", "--lr_scheduler.warmup_steps", "0",
              "--lr_scheduler.schedule", "constant", "--optimizer.lr", "3e-3", "--optimizer.weight_decay", "1.0",
              "--job.print_config", "false"]
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    with use_backend("torch"):
        # the layout before this option: one group, every parameter decayed
        assert main(common + ["--job.dump_folder", old, "--optimizer.weight_decay_exclude", ""]) == 0
        assert "i.e. on every parameter (optimizer.weight_decay_exclude = [])" in capsys.readouterr().out
        shutil.copytree(old, new)
        assert main(common + ["--job.dump_folder", new, "--checkpoint.load_step", "2"]) == 0
    out = capsys.readouterr().out
    assert "[optimizer] weight_decay as configured, not as saved: 11 parameter tensors (attn_norm.weight, " \
           "attn.A_log, attn.dt_bias, attn.o_norm.weight, mlp_norm.weight, +1 more) had 1 in the checkpoint, now 0 " \
           "(optimizer.weight_decay_exclude); their Adam moments are carried over as saved" in out, out[-3000:]
    assert "  optimizer   AdamW, weight decay 1 on 1,609,728 parameters (28 tensors); none on 776 parameters " \
           "(11 tensors): marked _no_weight_decay: 4 (attn.A_log, attn.dt_bias); 1-D: 7 " in out, out[-3000:]
    assert "  optimizer.weight_decay_exclude: [] -> ['marked', '1d']" in out
    # step 3 starts from the weights saved at step 2: the same loss and gradient as the old layout's own step 3
    a, b = records(old), records(new)
    assert repr(b[3]["loss"]) == repr(a[3]["loss"]) and repr(b[3]["grad_norm"]) == repr(a[3]["grad_norm"])

    step2 = _load(os.path.join(old, "checkpoint", "step-2"), tmp_path / "s2")
    old3 = _load(os.path.join(old, "checkpoint", "step-3"), tmp_path / "o3")
    new3 = _load(os.path.join(new, "checkpoint", "step-3"), tmp_path / "n3")
    opt_old, opt_new = old3["optimizer"], new3["optimizer"]
    lr, wd = 3e-3, 1.0
    for name, w2 in step2["model"].items():
        excluded = name.endswith(("A_log", "dt_bias")) or w2.ndim < 2
        assert opt_old[f"param_groups.{name}.weight_decay"] == wd
        assert opt_new[f"param_groups.{name}.weight_decay"] == (0.0 if excluded else wd), name
        for moment in ("exp_avg", "exp_avg_sq", "step"):  # carried over by name, then the same gradient
            assert torch.equal(opt_new[f"state.{name}.{moment}"], opt_old[f"state.{name}.{moment}"]), (name, moment)
        if excluded:  # the old layout took lr * wd * w off on top of the same Adam update
            torch.testing.assert_close(new3["model"][name] - old3["model"][name], lr * wd * w2, rtol=1e-3,
                                       atol=1e-9)
        else:
            assert torch.equal(new3["model"][name], old3["model"][name]), name
    # nothing saved is lost: the old run's folder is as it was, the copy kept its step-3 aside
    assert sorted(os.listdir(os.path.join(old, "checkpoint"))) == ["step-2", "step-3"]
    assert any(d.startswith("step-3.rewound-") for d in os.listdir(os.path.join(new, "checkpoint")))


def _load(step_dir, where):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    os.makedirs(where, exist_ok=True)
    out = os.path.join(str(where), "state.pt")
    dcp_to_torch_save(step_dir, out)
    return torch.load(out, weights_only=False)
