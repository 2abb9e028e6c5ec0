"""metrics.jsonl after a resume: each step once, the superseded records kept aside."""
import json

from flame.metrics import MetricsLogger


def test_resume_sets_aside_the_records_it_repeats(tmp_path):
    lines = [json.dumps({"step": s, "loss": float(s)}) + "\n" for s in (5, 10, 15, 20)]
    (tmp_path / "metrics.jsonl").write_text("".join(lines) + '{"step": 2')  # torn last line from a kill
    MetricsLogger(str(tmp_path), total_steps=30, start_step=10)
    kept = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in kept[:2]] == [5, 10] and kept[2] == '{"step": 2'
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.discarded.jsonl").read_text().splitlines()] == [15, 20]
