"""Runs that start from runs: ``init.from_run`` (full or a delta via ``init.trainable``), ``teacher.run`` with the
distill recipe, the hashes a run records, and the refusals when a dependency is missing, corrupt, of another
shape or changed since."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_cases.diffusion import CONFIG  # noqa: E402

from denoisekit.engine.checkpoint import latest_checkpoint, load_checkpoint  # noqa: E402
from denoisekit.io import load_tensors, save_tensors  # noqa: E402
from denoisekit.train.config import apply_overrides, config_from_dict  # noqa: E402
from denoisekit.train.run import load_run  # noqa: E402
from denoisekit.train.trainer import Trainer, train_from_config  # noqa: E402

pytestmark = pytest.mark.slow  # every test trains a tiny run


def cfg(*overrides: str):
    return config_from_dict(apply_overrides(CONFIG, ("train.steps=2", "train.grad_accum=1", *overrides)))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return train_from_config(cfg("train.steps=4"), tmp_path_factory.mktemp("lineage") / "base", progress=False)


def latest(run: Path) -> dict:
    return load_checkpoint(latest_checkpoint(run / "checkpoints"))


def test_from_run_starts_from_the_base_weights_and_records_its_hash(base, tmp_path):
    t = Trainer(cfg(f"init.from_run={base}"), tmp_path / "child", progress=False)
    ema = latest(base)["ema"]
    for k, v in t.raw_net.state_dict().items():
        assert torch.equal(v, ema[k]), k
    raw = Trainer(cfg(f"init.from_run={base}", "init.weights=model"), tmp_path / "raw", progress=False)
    model = latest(base)["model"]
    assert all(torch.equal(v, model[k]) for k, v in raw.raw_net.state_dict().items())
    t.fit()
    dep, = latest(tmp_path / "child")["state"]["depends"]
    assert dep["role"] == "init" and dep["run"] == str(base) and len(dep["sha256"]) == 64


def test_resume_and_load_refuse_a_changed_base(base, tmp_path):
    base2 = tmp_path / "base2"
    train_from_config(cfg(), base2, progress=False)
    child = tmp_path / "child"
    Trainer(cfg(f"init.from_run={base2}", "train.steps=4"), child, progress=False).fit(stop_at=2)
    ema_file = latest_checkpoint(base2 / "checkpoints") / "ema.safetensors"
    tensors = load_tensors(ema_file)
    save_tensors(ema_file, {k: v + 1 if v.is_floating_point() else v for k, v in tensors.items()})
    with pytest.raises(ValueError, match=rf"init run '{base2}' changed since it was used .*sha256"):
        Trainer(cfg(f"init.from_run={base2}", "train.steps=4"), child, resume=True, progress=False)
    with pytest.raises(ValueError, match="changed since"):
        load_run(child)
    load_run(child, check_depends=False)  # the child's own weights do not need the base


def test_bad_from_run_is_one_line_and_writes_nothing(base, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(FileNotFoundError, match="init.from_run '/nonexistent' does not exist"):
        Trainer(cfg("init.from_run=/nonexistent"), out, progress=False)
    with pytest.raises(ValueError, match=r"init.from_run .*: tensor .* has shape .*, the config needs"):
        Trainer(cfg(f"init.from_run={base}", "model.channels=4", "model.norm_groups=2", "model.head_channels=4"),
                out, progress=False)
    corrupt = tmp_path / "corrupt"
    train_from_config(cfg(), corrupt, progress=False)
    (latest_checkpoint(corrupt / "checkpoints") / "ema.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read safetensors"):
        Trainer(cfg(f"init.from_run={corrupt}"), out, progress=False)
    assert not out.exists()
    with pytest.raises(ValueError, match="init.trainable must be empty unless init.from_run is set"):
        cfg("init.trainable=[out.*]")
    with pytest.raises(ValueError, match=r"init.trainable: 'nothing\*' matches no parameter"):
        Trainer(cfg(f"init.from_run={base}", "init.trainable=[nothing*]"), out, progress=False)


def test_a_delta_run_stores_only_what_it_trained_and_loads_composed(base, tmp_path):
    child = train_from_config(cfg(f"init.from_run={base}", "init.trainable=[conv_out.*]"), tmp_path / "delta",
                              progress=False)
    ck = latest(child)
    assert set(ck["model"]) == set(ck["ema"]) == {"conv_out.weight", "conv_out.bias"}
    assert ck["state"]["delta_of"] == "init"
    den, _ = load_run(child)
    base_den, _ = load_run(base)
    for k, v in den.net.state_dict().items():
        if k.startswith("conv_out."):
            assert torch.equal(v, ck["ema"][k]) and not torch.equal(v, base_den.net.state_dict()[k]), k
        else:
            assert torch.equal(v, base_den.net.state_dict()[k]), k
    # a delta always needs its base: refused when it changed, even with check_depends=False
    ema_file = latest_checkpoint(base / "checkpoints") / "ema.safetensors"
    original = ema_file.read_bytes()
    try:
        tensors = load_tensors(ema_file)
        save_tensors(ema_file, {k: v * 2 if v.is_floating_point() else v for k, v in tensors.items()})
        with pytest.raises(ValueError, match="changed since"):
            load_run(child, check_depends=False)
    finally:
        ema_file.write_bytes(original)


def test_distill_recipe_learns_from_a_frozen_teacher(base, tmp_path):
    student = train_from_config(cfg(f"teacher.run={base}", "train.recipe=distill", "train.steps=3",
                                    "model.channels=4", "model.norm_groups=2", "model.head_channels=4"),
                                tmp_path / "student", progress=False)
    roles = [d["role"] for d in latest(student)["state"]["depends"]]
    assert roles == ["teacher"]
    with pytest.raises(ValueError, match="teacher.run is not set"):
        Trainer(cfg("train.recipe=distill"), tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="teacher.run is set but train.recipe 'diffusion'"):
        Trainer(cfg(f"teacher.run={base}"), tmp_path / "y", progress=False)


def test_distillation_target_is_the_teachers_denoiser():
    """With teacher = the exact denoiser of the data the target equals the data's own expected target: the loss of
    a student that *is* the teacher is 0."""
    from denoisekit.losses import DiffusionLoss
    from denoisekit.prediction import Denoiser
    from denoisekit.process import get_process

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    student = Denoiser(lambda x, t, cond=None: net(x), get_process("ddpm"), "eps")
    x0 = torch.randn(4, 1, 8, 8)
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    loss = DiffusionLoss(weighting="min_snr")(student, x0, None, gens, teacher=lambda y, s, c: student(y, s, c))
    assert loss.abs().max() < 1e-9
