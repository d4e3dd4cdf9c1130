"""Progressive distillation: its target against an exact Gaussian-mixture teacher, its weighting, and bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from denoisekit.oracle import GaussianMixture  # noqa: E402
from denoisekit.prediction import Denoiser  # noqa: E402
from denoisekit.process import get_process  # noqa: E402
from denoisekit.samplers import sample_ddim  # noqa: E402
from denoisekit.schedules import get_sigmas  # noqa: E402
from denoisekit.train.recipes.progressive import (  # noqa: E402
    halving_schedule,
    progressive_target,
    teacher_grid,
    truncated_snr_weight,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_progressive_target_equals_two_teacher_ddim_steps():
    """One student DDIM step to x~ lands exactly where the exact teacher's two DDIM steps do."""
    process = get_process("vp_linear")
    gmm = GaussianMixture.random(dim=2, components=4, seed=1)
    teacher = Denoiser(gmm.as_network(process, "eps"), process, "eps")
    student, mid = teacher_grid(process, "auto", 4)
    full = get_sigmas(process, "auto", 8).to(torch.float64)
    torch.testing.assert_close(student, full[::2])  # every second teacher level, the last step included
    torch.testing.assert_close(mid, full[1::2])
    assert student[-1] == 0 and torch.all(student[1:] < mid) and torch.all(mid < student[:-1])
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        y = torch.randn(5, 2, generator=g, dtype=torch.float64) * student[i]
        s, m, n = (v.expand(5) for v in (student[i], mid[i], student[i + 1]))
        x_t = progressive_target(teacher, y, s, m, n)
        two = sample_ddim(teacher, y, torch.stack([student[i], mid[i], student[i + 1]]))
        one = sample_ddim(lambda *_: x_t, y, torch.stack([student[i], student[i + 1]]))
        torch.testing.assert_close(one, two, rtol=1e-9, atol=1e-9)


def test_truncated_snr_weight_and_halving():
    torch.testing.assert_close(truncated_snr_weight(torch.tensor([0.1, 1.0, 10.0])),
                               torch.tensor([100.0, 1.0, 1.0], dtype=torch.float64))
    assert halving_schedule(8) == [8, 4, 2, 1]
    with pytest.raises(ValueError, match="power of two"):
        halving_schedule(6)


def _student(tmp_path, *overrides):
    from recipe_cases import progressive

    from denoisekit.train.config import apply_overrides, config_from_dict
    from denoisekit.train.recipes import ProgressiveRecipe

    progressive.make(tmp_path)  # trains the tiny teacher once
    base = apply_overrides(progressive.CONFIG, [f"teacher.run={tmp_path / 'teacher'}", "train.recipe=progressive",
                                                "sample.nfe=2", "sample.sampler=ddim", "train.steps=2", *overrides])
    return ProgressiveRecipe(config_from_dict(base))


@pytest.mark.slow
def test_progressive_bad_teacher_is_one_line_nothing_written(tmp_path):
    from denoisekit.engine import Engine

    with pytest.raises(ValueError, match="teacher.run"):
        Engine(_student(tmp_path, "data.size=16"), tmp_path / "s1", progress=False).fit()
    assert not (tmp_path / "s1" / "checkpoints").exists()
    with pytest.raises(FileNotFoundError, match="teacher.run"):
        Engine(_student(tmp_path, f"teacher.run={tmp_path / 'nope'}"), tmp_path / "s2", progress=False).fit()
    assert not (tmp_path / "s2" / "checkpoints").exists()


@pytest.mark.slow
def test_progressive_student_records_its_step_count(tmp_path):
    import json

    from denoisekit.engine import Engine
    from denoisekit.engine.checkpoint import latest_checkpoint

    Engine(_student(tmp_path, f"init.from_run={tmp_path / 'teacher'}"), tmp_path / "s", progress=False).fit()
    state = json.loads((latest_checkpoint(tmp_path / "s" / "checkpoints") / "state.json").read_text())
    sigmas = state["fewstep"].pop("sigmas")
    assert len(sigmas) == 3 and sigmas[-1] == 0  # the student's own grid: 2 steps, every second teacher level
    assert state["fewstep"] == {"method": "progressive", "sampler": "ddim", "steps": 2, "schedule": "auto"}


@pytest.mark.slow
def test_rounds_halve_and_each_student_samples_only_on_its_own_grid(tmp_path, capsys):
    """distill-progressive 2 -> 1: each round's teacher is the last student, each student's grid is every second
    level of its teacher's, ``generate`` samples on it and refuses another sampler or step count (one line)."""
    from recipe_cases import progressive

    from denoisekit.cli import main
    from denoisekit.generation import generate
    from denoisekit.train.config import config_from_dict, save_config
    from denoisekit.train.halving import distill_progressively
    from denoisekit.train.run import load_model

    progressive.make(tmp_path)  # the tiny diffusion teacher
    teacher = tmp_path / "teacher"
    save_config(config_from_dict(progressive.CONFIG), teacher / "config.yaml")  # steps as the case trains
    runs = distill_progressively(teacher, tmp_path / "pd", 2, overrides=["train.steps=2"], progress=False)
    assert [r.name for r in runs] == ["nfe-2", "nfe-1"]
    two, one = (load_model(r) for r in runs)
    base = load_model(teacher)
    full = get_sigmas(base.process, base.defaults.schedule, 4).to(torch.float64)
    torch.testing.assert_close(two.trained_steps.sigmas, full[::2])
    torch.testing.assert_close(one.trained_steps.sigmas, full[::4])  # the chain: every second of every second
    assert one.trained_steps.steps == 1 and one.defaults.nfe == 1 and one.defaults.sampler == "ddim"
    x = generate(one, 2, torch.tensor([1, 2]), seed=0)
    assert x.shape == (2, *one.image_shape) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="trained for 1 ddim steps"):
        generate(one, 2, torch.tensor([1, 2]), nfe=4)
    with pytest.raises(ValueError, match="sampler 'ddim'"):
        generate(one, 2, torch.tensor([1, 2]), sampler="dpmpp_2m", nfe=1)
    assert main(["sample", str(runs[1]), "--n", "2", "--nfe", "2", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained for 1 ddim steps" in err and "\n" not in err and not (tmp_path / "x.png").exists()
    with pytest.raises(ValueError, match="sample.nfe=1"):  # a round's teacher must take twice the student's steps
        distill_progressively(runs[0], tmp_path / "bad", 4, stop=4, overrides=["train.steps=2"], progress=False)
