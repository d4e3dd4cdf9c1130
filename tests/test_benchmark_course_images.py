"""benchmarks/course_images.py in a smoke form: every preset of configs/course/ trains two steps, each assignment
row is sampled as its assignment grades it and scored against the floor, and the table comes out with every row
(the numbers themselves mean nothing at this budget)."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_course_images_benchmark_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "course_images.py"), "--steps", "2", "--n", "12",
                           "--n-ref", "40", "--runs", str(tmp_path / "runs"), "--no-write"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and line.split(" | ")[1].startswith("`")]
    assert [row.split(" | ")[1] for row in rows] == ["`ddpm`", "`ddim-cfg`", "`ddim-cfg`", "`ddim-cfg`", "`ddim-cfg`",
                                                     "`flow-cfg`", "`flow-cfg`", "`ddim-cfg-v`", "`ddim-cfg-v`",
                                                     "`latent`", "`latent`"]
    for row in rows:
        fid, floor = (float(v) for v in row.split(" | ")[4:6])
        assert math.isfinite(fid) and math.isfinite(floor) and floor >= 0
    assert "## The course's image settings" in proc.stdout and not re.search(r"\bnan\b", proc.stdout.lower())
    assert (tmp_path / "runs" / "rows.json").is_file()  # measured rows kept: a rerun samples only what is missing
