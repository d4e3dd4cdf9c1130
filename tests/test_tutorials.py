"""Every tutorial page under docs/tutorials/ runs, in a quick form: its ```bash blocks are executed in a scratch
directory with training cut to a few steps and sampling to a few images, and every figure the page shows is
written. So the docs cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs" / "tutorials").glob("*.md")) + sorted(
    p for p in (ROOT / "docs" / "course").glob("*.md") if p.name != "README.md")  # the course's index runs nothing


#: Commands whose cost is their model evaluations per image: at most QUICK_NFE in the quick form.
NFE_COMMANDS, QUICK_NFE = ("edit", "inpaint", "restore", "invert", "p2p"), 4


def quick(script: str) -> str:
    """The page's commands at a smoke-test budget: 2 training steps, at most 10 samples, 4 model evaluations per image
    for the editing commands, at most 5 optimisation steps (--steps: score distillation), figures into ./figures."""
    script = re.sub(r"train\.steps=\d+", "train.steps=2", script)
    script = re.sub(r"--n (\d+)", lambda m: f"--n {min(int(m.group(1)), 10)}", script)
    script = re.sub(r"--nfe \d+", f"--nfe {QUICK_NFE}", script)
    script = re.sub(r"--steps (\d+)", lambda m: f"--steps {min(int(m.group(1)), 5)}", script)  # score distillation
    script = re.sub(rf"^(denoisekit (?:{'|'.join(NFE_COMMANDS)}) (?:(?!--nfe)[^\n])*)$", rf"\1 --nfe {QUICK_NFE}",
                    script, flags=re.M)
    return script.replace("docs/tutorials/", "figures/").replace("docs/course/", "figures/")


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[f"{p.parent.name}/{p.stem}" for p in PAGES])
def test_tutorial_runs(page, tmp_path):
    text = page.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert blocks, f"{page.name} has no ```bash block to run"
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")  # a page may draw a figure from recorded results
    (tmp_path / "figures").mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    for block in blocks:
        proc = subprocess.run(["bash", "-e", "-c", quick(block)], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        assert proc.returncode == 0, f"{page.name}:\n{quick(block)}\n{proc.stdout[-3000:]}"
    for figure in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text):
        assert (page.parent / figure).is_file(), \
            f"{page.name} shows {figure}, which is not in {page.parent.relative_to(ROOT)}/"
        assert (tmp_path / "figures" / Path(figure).name).is_file(), f"the quick run did not write {figure}"
