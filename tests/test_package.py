"""Packaging promises: `import fla` needs only torch, triton and einops; fla never imports flame."""
import os
import subprocess
import sys
import textwrap

TRAIN_ONLY = ["transformers", "datasets", "torchtitan", "torchdata", "tokenizers", "tensorboard", "flame"]


def test_import_fla_without_train_dependencies():
    code = textwrap.dedent(f"""
        import sys
        for name in {TRAIN_ONLY!r}:
            sys.modules[name] = None  # any import of these now raises ImportError
        import torch
        import fla
        from fla.ops.utils.dispatch import use_backend
        q = k = v = torch.randn(1, 8, 2, 16)
        with use_backend("torch"):
            o, _ = fla.chunk_gla(q, k, v, torch.nn.functional.logsigmoid(torch.randn(1, 8, 2, 16)))
        assert o.shape == (1, 8, 2, 16) and torch.isfinite(o).all()
        assert "fla.models" not in sys.modules
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-4000:]


def test_import_fla_registers_models():
    import transformers

    import fla  # noqa: F401

    config = transformers.AutoConfig.for_model("gla", hidden_size=32, num_hidden_layers=1, num_heads=2, vocab_size=64)
    assert type(transformers.AutoModelForCausalLM.from_config(config)).__name__ == "GLAForCausalLM"
