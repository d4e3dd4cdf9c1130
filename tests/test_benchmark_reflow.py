"""benchmarks/reflow.py in its quick form: the four runs train end to end as ordinary runs, the table comes out with
every row and a finite straightness for both flows (the quick numbers themselves mean nothing)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reflow_benchmark_quick(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reflow.py"), "--quick", "--work",
                           str(tmp_path / "work"), "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [(row["name"], row["sampler"], row["nfe"]) for row in r["rows"]] == [
        ("1-RF", "flow_heun", 20), *[("1-RF", "flow_euler", k) for k in (1, 2, 4, 8)],
        *[("2-RF", "flow_euler", k) for k in (1, 2, 4, 8)], ("2-RF + distill", "flow_euler", 1),
        ("1-RF + distill", "flow_euler", 1)]
    for row in r["rows"]:
        assert all(math.isfinite(row[k]) for k in ("fid", "floor", "precision", "recall")), row
    assert set(r["straightness"]) == {"1-RF", "2-RF"}
    assert all(math.isfinite(v) and v >= 0 for v in r["straightness"].values())
    assert "## Reflow on images (rectified flow, issue 15)" in proc.stdout
