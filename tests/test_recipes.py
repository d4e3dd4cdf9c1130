"""What the engine promises every recipe, checked for each one (tests/recipe_cases/): a run stopped halfway
and resumed equals the run that never stopped, bit for bit, and 2 processes equal 1. Run as a script
(``python tests/test_recipes.py worker CASE WORKDIR OUT``) it is one process of the 2-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_cases import all_cases, final_tensors  # noqa: E402

from denoisekit.engine import Engine  # noqa: E402

CASES = all_cases()


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_recipe_has_a_case():
    from denoisekit.train.recipes import RECIPES

    assert set(RECIPES) <= set(CASES), f"recipes without a case in tests/recipe_cases: {set(RECIPES) - set(CASES)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_resume_continues_bit_exactly(name, tmp_path):
    case = CASES[name]
    Engine(case.make(tmp_path), tmp_path / "straight", progress=False).fit()
    Engine(case.make(tmp_path), tmp_path / "resumed", progress=False).fit(stop_at=case.steps // 2)
    Engine(case.make(tmp_path), tmp_path / "resumed", resume=True, progress=False).fit()
    a, b = final_tensors(tmp_path / "straight"), final_tensors(tmp_path / "resumed")
    assert a.keys() == b.keys() and a, "no tensors saved"
    for k in a:
        assert torch.equal(a[k], b[k]), f"{name}: {k} differs after resume"


@pytest.mark.slow
def test_grad_accum_changes_nothing_but_float_order(tmp_path):
    """Every random draw of a step (noise, label dropout, network dropout masks) depends only on
    (seed, step, sample index): 1 micro-batch of 8 == 2 of 4."""
    from recipe_cases import diffusion

    assert diffusion.CONFIG["model"]["dropout"] > 0 and diffusion.CONFIG["train"]["grad_accum"] == 2
    Engine(diffusion.make(tmp_path), tmp_path / "two", progress=False).fit()
    Engine(diffusion.make(tmp_path, "train.grad_accum=1"), tmp_path / "one", progress=False).fit()
    a, b = final_tensors(tmp_path / "one"), final_tensors(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_two_processes_match_one(name, tmp_path, free_port):
    """``accelerate launch`` with 2 CPU processes (gloo) == 1 process at the same global batch."""
    case = CASES[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port), __file__, "worker", name, str(tmp_path), str(tmp_path / "two")]
    Engine(case.make(tmp_path), tmp_path / "one", progress=False).fit()  # first: it writes any shared data
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "world_size=2" in proc.stdout, proc.stdout[-3000:]
    a, b = final_tensors(tmp_path / "one"), final_tensors(tmp_path / "two")
    assert a.keys() == b.keys()
    rtol, atol = case.tolerance
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=f"{name}: {k}")


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "worker":
    torch.set_num_threads(1)
    engine = Engine(CASES[sys.argv[2]].make(Path(sys.argv[3])), sys.argv[4], progress=False)
    print(f"rank={engine.rank} world_size={engine.world}", flush=True)
    engine.fit()
