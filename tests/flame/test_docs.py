"""Every shell block marked runnable in README.md and docs/*.md works as written.

The marker is the fence's info string `bash runnable` (GitHub still highlights it as bash). The blocks run as one
reader following README.md and then docs/*.md in one clone would run them: in order, in one scratch folder holding
a link to the repository's `configs/` (so `configs/debug.toml` resolves as from the repository root, and `exp/`
lands in the scratch folder), one bash script per file (`set -e`: any failing command fails the test). Tiny
settings are inserted right after every `-m flame.train`, so they override the job file while the options the docs
give themselves still win. Cost: ~55 s of CPU in all (seven processes; the README's debug run is the largest)."""
import glob
import os
import re
import subprocess

from tests.flame.test_train import ROOT, env

MARKER = re.compile(r"^```bash runnable[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
TINY = ("--training.seq_len 32 --training.batch_size 2 --validation.steps 1 --validation.freq 1000 "
        "--metrics.log_freq 1000 --checkpoint.interval 1000")
DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def runnable_blocks(path: str) -> list[str]:
    with open(path) as f:
        return MARKER.findall(f.read())


def tiny(script: str) -> str:
    return re.sub(r"-m flame\.train(?=\s)", f"-m flame.train {TINY}", script)


def test_the_marker_finds_blocks():
    found = {os.path.relpath(p, ROOT): len(runnable_blocks(p)) for p in DOCS}
    assert found.get("README.md", 0) >= 1 and found.get(os.path.join("docs", "training.md"), 0) >= 2, found
    assert tiny("python -m flame.train --job.config_file x.toml --training.steps 5") == \
        f"python -m flame.train {TINY} --job.config_file x.toml --training.steps 5"


def test_runnable_blocks_work_as_written(tmp_path):
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
    outputs = {}
    for path in DOCS:
        blocks = runnable_blocks(path)
        if not blocks:
            continue
        doc = os.path.relpath(path, ROOT)
        script = "set -e\n" + "\n".join(tiny(block) for block in blocks)
        proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env(), capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{doc}:\n{script}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n" \
                                     f"{proc.stderr[-4000:]}"
        outputs[doc] = proc.stdout
    assert "[flame] done: steps 1-100 of 100" in outputs["README.md"], outputs["README.md"][-3000:]
    training = outputs[os.path.join("docs", "training.md")]
    assert "already at step 100 of 100" in training and "[flame] done: steps 101-150 of 150" in training, \
        training[-3000:]
    assert os.path.isfile(tmp_path / "exp" / "debug" / "hf" / "config.json")
