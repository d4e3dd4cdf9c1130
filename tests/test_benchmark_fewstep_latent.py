"""benchmarks/fewstep_latent.py in its quick form: the autoencoder, the latent teacher and every student train end to
end as ordinary latent runs, the table comes out with every method's rows at 1 and 2 NFE and finite metrics, and both
figures are written (the quick numbers themselves mean nothing)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fewstep_latent_benchmark_quick(tmp_path):
    out, work = tmp_path / "result.json", tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fewstep_latent.py"), "--quick", "--work",
                           str(work), "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    got = [(row["name"], row["nfe"]) for row in r["rows"]]
    assert got == [*[("teacher, DPM-Solver++(2M) karras", k) for k in (1, 2, 20)],
                   *[("teacher, DDIM karras", k) for k in (1, 2)], ("teacher, learned solver (tuned at 5 NFE)", 5),
                   ("progressive distillation", 2), ("progressive distillation", 1),
                   *[(name, k) for name in ("consistency distillation", "consistency training (iCT)",
                                            "MeanFlow (from scratch, no teacher)") for k in (1, 2)],
                   ("MeanFlow's u(z, t, t) as a flow, flow Heun", 20)]
    for row in r["rows"]:
        assert all(math.isfinite(row[k]) for k in ("fid", "precision", "recall", "sample_cpu_s")), row
    assert set(r["meta"]["cpu"]) == {"teacher", "progressive (4 rounds)", "learned solver (5 NFE)",
                                     "consistency distillation", "consistency training (iCT)", "MeanFlow (from scratch)"}
    # every student is a latent run of the teacher's autoencoder, sampled to 64x64 images
    for run in ("pd/nfe-1", "cd", "ict", "meanflow"):
        cfg = (work / run / "config.yaml").read_text()
        assert str(work / "ae-f4") in cfg, run
    assert (work / "fewstep_latent.png").is_file() and (work / "fewstep_latent_samples.png").is_file()
    assert "## Few-step students in latent space (64x64 shapes, issue 15)" in proc.stdout


def test_fewstep_figure_from_records(tmp_path):
    """benchmarks/fewstep_plot.py draws one panel per results file; a file that is not one says so in one line."""
    good = tmp_path / "r.json"
    good.write_text(json.dumps({"title": "t", "floor": 0.2, "rows": [
        {"name": "teacher", "nfe": k, "fid": 1 / k} for k in (1, 2, 20)] + [{"name": "student", "nfe": 1, "fid": 0.5}]}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    script = str(ROOT / "benchmarks" / "fewstep_plot.py")
    proc = subprocess.run([sys.executable, script, str(good), str(good), "--out", str(tmp_path / "f.png")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from PIL import Image

    assert Image.open(tmp_path / "f.png").size[0] > 1.5 * Image.open(tmp_path / "f.png").size[1]  # two panels
    proc = subprocess.run([sys.executable, script, str(bad), "--out", str(tmp_path / "g.png")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and not (tmp_path / "g.png").exists()
    assert proc.stderr.strip().splitlines() == [f"{bad}: not a few-step results file (needs title, floor and rows of "
                                                "name, nfe, fid)"]


def test_fewstep_latent_section_matches_its_record():
    """RESULTS.md's latent section is what the generator renders from the committed record
    (``--from-json``): the prose's numbers cannot drift from the measured rows."""
    record = ROOT / "benchmarks" / "fewstep_latent.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fewstep_latent.py"), "--from-json", str(record)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout.strip()
    assert text.startswith("## Few-step students in latent space") and "How to read this." in text
    assert text in (ROOT / "benchmarks" / "RESULTS.md").read_text()
